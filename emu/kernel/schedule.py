"""Scenario time on the wall clock, for a kernel run: shifted, never raced.

The emulator changes the cluster in an instant; a real `event_N` function
(namespaces, veths, routes, a udp proxy restarted) takes a second or more,
longer on a loaded machine. Rather than letting a command start into a
half-built cluster, or failing the run because the machine was slow, the
schedule keeps the scenario's order and lets its clock slip:

- a chain of commands (an entry with `at:`) starts at its time, and never
  before every event at that time or earlier has ended;
- a command chained after another starts once no event is running;
- when an event ends after the next scheduled item's time (its slot was too
  short), every later item shifts by that overrun.

Each item's shifted time is kept: `verify_kernel` runs the emulator on the
scenario as the kernel ran it (`shifted_scenario`), so timers that depend on
the gaps (a neighbour's 5 s delay probe) see the same gaps on both sides.
The clock is injectable so the rules are tested without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable


class ScheduleCancelled(Exception):
    """The run is being torn down: stop waiting."""


class WallSchedule:
    """Scheduled items (chain starts and events, by scenario time in seconds)
    on `clock`, starting now; thread-safe."""

    def __init__(self, starts: Iterable[float], events: Iterable[float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.start = clock()
        self.shift = 0.0  # seconds every item still to come is late by
        self._starts = sorted(starts)  # times of chains not begun
        self._events = sorted(events)  # times of events not ended
        self._unbegun = list(self._events)  # times of events not begun
        self._running = False
        self._cancelled = False
        self._cond = threading.Condition()

    def elapsed(self) -> float:
        """Wall-clock seconds since the start (what captures and reports use)."""
        return self._clock() - self.start

    def _due(self, at: float) -> bool:
        return self._clock() >= self.start + at + self.shift

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait (holding the condition) until `ready()`; wakes on every change
        and every 10 ms to read the clock again."""
        while not ready():
            if self._cancelled:
                raise ScheduleCancelled
            self._cond.wait(0.01)

    # The rules, as predicates (called with the condition held; tests call them too).
    def chain_may_begin(self, at: float) -> bool:
        """A chain scheduled at `at`: due, and every event at `at` or before has ended."""
        return self._due(at) and not self._running and not any(t <= at for t in self._events)

    def chained_may_begin(self) -> bool:
        """A command chained after another: no event running or due."""
        return not self._running and not any(self._due(t) for t in self._unbegun)

    def event_may_begin(self, at: float) -> bool:
        """The event at `at`: due, and every chain scheduled before it has begun."""
        return self._due(at) and not self._running and not any(t < at for t in self._starts)

    def _shifted(self, at: float) -> float:
        """`at` as the run kept it: plus the shift, to the millisecond."""
        return round(at + self.shift, 3)

    def begin_chain(self, at: float) -> tuple[float, float]:
        """Block until the chain of commands scheduled at `at` may begin; its
        start (elapsed seconds) and its shifted time."""
        with self._cond:
            self._wait(lambda: self.chain_may_begin(at))
            self._starts.remove(at)
            self._cond.notify_all()
            return self.elapsed(), self._shifted(at)

    def begin_chained(self) -> float:
        """Block until a command chained after another may begin; its start."""
        with self._cond:
            self._wait(self.chained_may_begin)
            return self.elapsed()

    def begin_event(self, at: float) -> tuple[float, float]:
        """Block until the event at `at` may begin and mark it running; its
        start and its shifted time."""
        with self._cond:
            self._wait(lambda: self.event_may_begin(at))
            self._unbegun.remove(at)
            self._running = True
            return self.elapsed(), self._shifted(at)

    def end_event(self, at: float) -> float:
        """The event at `at` has ended: when it ran past the time of the next
        item, everything still to come shifts by that overrun. Its end."""
        with self._cond:
            now = self._clock()
            self._running = False
            self._events.remove(at)
            upcoming = sorted([*self._starts, *self._unbegun])
            if upcoming:
                self.shift += max(0.0, now - (self.start + upcoming[0] + self.shift))
            self._cond.notify_all()
            return now - self.start

    def cancel(self) -> None:
        """Every waiter raises ScheduleCancelled (the run is torn down)."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
