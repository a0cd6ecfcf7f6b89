"""Replayed frames a capture set writes later, many instants in one batch.

Why: an application that sends at intervals (`ping -i 0.001`, a UDP client
in a loop) is replayed one datagram per instant, and building each of its
frames and each capture record in Python costs more than the replay. When
every tap a flow's frames meet is a point of one sink that can defer
(`CaptureSet.defer`), the flow cache only notes each replayed datagram
(its instant, payload and the identifiers its stacks gave it) in a
DeferredFrames; the sink calls `write` before anything else reaches it,
and the frames are built with numpy (templates.py) and recorded with one
timestamp per row: the same bytes, in the same order, as replaying them
one by one.

Consecutive replays of one flow share a batch while the devices' taps are
those it was planned for; another flow's replay, or any other frame
recorded in between, closes it (the sink writes it first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emu.fastpath.replay import Replay

if TYPE_CHECKING:
    from emu.fastpath.replay import FlowEntry
    from emu.net.device import NetDevice

MAX_DEFERRED = 4096  # datagrams per batch: bounds the frame matrices one write builds


class TapPlan:
    """Where a flow's frames go with the devices' taps as they are now: the
    (tap, template, outgoing) triples in the order one datagram meets them,
    and the sink that may defer them all (None: some tap is not its point)."""

    def __init__(self, entry: "FlowEntry") -> None:
        self.devices: list["NetDevice"] = [dev for dev, _, _ in entry.frames]
        self.snapshot = [list(dev.taps) for dev in self.devices]
        self.pairs = [(tap, template, outgoing) for dev, template, outgoing in entry.frames
                      for tap in dev.taps]
        sinks = {id(getattr(tap, "batch_sink", None)): getattr(tap, "batch_sink", None)
                 for tap, _, _ in self.pairs}
        sink = next(iter(sinks.values())) if len(sinks) == 1 else None
        self.sink: Any = sink if callable(getattr(sink, "defer", None)) else None
        self.points = list({id(tap): tap for tap, _, _ in self.pairs}.values())

    def holds(self) -> bool:
        """The devices still have the taps this plan was made for."""
        return [dev.taps for dev in self.devices] == self.snapshot


class DeferredFrames:
    """Datagrams replayed on one flow, whose frames a sink writes later."""

    def __init__(self, entry: "FlowEntry", plan: TapPlan) -> None:
        self.entry = entry
        self.plan = plan
        self.times: list[int] = []
        self.payloads: list[bytes] = []
        self.bases: dict[Any, list[int]] = {stack: [] for stack in entry.ident_counts}

    def add(self, replay: Replay, now_ns: int) -> None:
        """Note `replay`'s datagrams (their identifiers are `replay.bases`)."""
        count = replay.count
        if count == 1:
            self.times.append(now_ns)
            self.payloads.append(replay.raw_payloads[0])
            for stack, bases in self.bases.items():
                bases.append(replay.bases[stack])
            return
        self.times.extend([now_ns] * count)
        self.payloads.extend(replay.raw_payloads)
        for stack, per_datagram in self.entry.ident_counts.items():
            base = replay.bases[stack]
            self.bases[stack].extend(base + j * per_datagram for j in range(count))

    def __len__(self) -> int:
        return len(self.times)

    def write(self) -> None:
        """Build every frame and hand them to the sink (`CaptureSet.defer`)."""
        import numpy as np

        replay = Replay(self.entry, self.payloads)
        replay.row_bases = {stack: np.array(bases, np.uint64) for stack, bases in self.bases.items()}
        frames = [(tap, replay.rows(template), outgoing) for tap, template, outgoing in self.plan.pairs]
        self.plan.sink.record_interleaved(np.array(self.times, np.uint64), frames)
