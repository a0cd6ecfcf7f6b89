"""A discrete-event scheduler over integer nanoseconds of virtual time.

Why: every output file must be byte-identical between runs, so nothing may
read the wall clock and ties must break the same way every time. Events at
the same instant run in the order they were scheduled (FIFO), which also
models the kernel's per-CPU backlog queue: a frame handed to a veth is
processed after the frames queued before it, never recursively.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable

NS_PER_SECOND = 1_000_000_000


def seconds(value: float) -> int:
    """Convert seconds (as written in scenarios) to integer nanoseconds."""
    return round(value * NS_PER_SECOND)


@dataclass(order=True)
class Event:
    """A scheduled callback; `cancel()` stops it from running."""

    time_ns: int
    seq: int
    callback: Callable[..., Any] = field(compare=False)
    args: tuple = field(compare=False, default=())
    cancelled: bool = field(compare=False, default=False)

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Runs callbacks in (time, insertion order); time only moves forward."""

    def __init__(self) -> None:
        self.now_ns = 0
        self._queue: list[Event] = []
        self._seq = 0
        self.events_run = 0

    def call_at(self, time_ns: int, callback: Callable[..., Any], *args: Any) -> Event:
        """Run `callback(*args)` at absolute virtual time `time_ns`."""
        if time_ns < self.now_ns:
            raise ValueError(f"cannot schedule in the past ({time_ns} < {self.now_ns})")
        event = Event(time_ns, self._seq, callback, args)
        self._seq += 1
        heapq.heappush(self._queue, event)
        return event

    def call_later(self, delay_ns: int, callback: Callable[..., Any], *args: Any) -> Event:
        """Run `callback(*args)` `delay_ns` nanoseconds from now."""
        return self.call_at(self.now_ns + delay_ns, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Event:
        """Run `callback(*args)` at the current instant, after what is queued."""
        return self.call_at(self.now_ns, callback, *args)

    def pending(self) -> int:
        return sum(1 for event in self._queue if not event.cancelled)

    def next_time(self) -> int | None:
        """Time of the next live event, or None when nothing is pending."""
        while self._queue and self._queue[0].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0].time_ns if self._queue else None

    def run(self, until_ns: int | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Run events until the queue is empty, `until_ns` is reached or `stop()`.

        With `until_ns`, the clock ends exactly at `until_ns` even if idle.
        """
        queue = self._queue
        while queue:
            event = queue[0]
            if until_ns is not None and event.time_ns > until_ns:
                break
            heapq.heappop(queue)
            if event.cancelled:
                continue
            self.now_ns = event.time_ns
            self.events_run += 1
            event.callback(*event.args)
            if stop is not None and stop():
                return
        if until_ns is not None and until_ns > self.now_ns:
            self.now_ns = until_ns
