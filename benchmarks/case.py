"""What a benchmark case is: set up once, measured in timed rounds, closed.

The suite interleaves rounds of every case (round-robin), so each case keeps
its expensive state (a built cluster, a million-MAC FDB, kernel namespaces)
alive between rounds; that is why a case is an object with `setup`,
`measure` and `close` rather than a function. A round is given a time budget,
not a frame count, so a case at 600 frames/s and one at 6 M frames/s both
take the same wall time.
"""

from __future__ import annotations

import os
import time


class CaseUnavailable(Exception):
    """This case cannot run here (no root, no gcc, ...): its fps is null."""


class Case:
    """A named measurement; subclasses implement `setup` and `measure`.

    `group` says which table section and plot a case belongs to; `params`
    are its coordinates (frame size, FDB size, batch, ...); `extra` is what
    setup measured besides speed (e.g. the FDB's memory).
    """

    def __init__(self, name: str, group: str, **params: object) -> None:
        self.name = name
        self.group = group
        self.params = params
        self.extra: dict[str, float] = {}

    def describe(self) -> str:
        """One short line for the table: what this case measures."""
        return " ".join(f"{key}={value}" for key, value in self.params.items())

    def setup(self) -> None:
        """Build the state the rounds share; raise CaseUnavailable if impossible."""

    def measure(self, budget_s: float) -> tuple[int, float]:
        """Run for about `budget_s` seconds: (frames that arrived, seconds taken)."""
        raise NotImplementedError

    def side_rates(self) -> dict[str, float]:
        """Other per-second rates of the last round, reported beside its fps
        (e.g. what the kernel's senders sent, next to what arrived)."""
        return {}

    def close(self) -> None:
        """Release what setup took (files, namespaces); called even after failures."""


class SteppedCase(Case):
    """A case made of short CPU-bound steps, repeated until the budget is spent."""

    def step(self) -> int:
        """Process one batch of frames; return how many arrived at the far end."""
        raise NotImplementedError

    def measure(self, budget_s: float) -> tuple[int, float]:
        clock = time.perf_counter
        frames = 0
        start = clock()
        while True:
            frames += self.step()
            elapsed = clock() - start
            if elapsed >= budget_s:
                return frames, elapsed


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
