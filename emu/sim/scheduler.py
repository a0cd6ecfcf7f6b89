"""A discrete-event scheduler over integer nanoseconds of virtual time.

Why: every output file must be byte-identical between runs, so nothing may
read the wall clock and ties must break the same way every time. Events at
the same instant run in the order they were scheduled (FIFO), which also
models the kernel's per-CPU backlog queue: a frame handed to a veth is
processed after the frames queued before it, never recursively.

Batches: `call_soon_batched(fn, item)` coalesces consecutive same-instant
events for one callback into one call `fn([item, ...])`. The coalesced items
would have been consecutive FIFO events anyway, so a callee that handles the
list exactly like consecutive single events sees the same world.

Process context: `call_process_at` / `call_process` schedule work that an
application does (ping sending, a process's next fragment). At any instant
these run only once every ordinary event of that instant, including the ones
they cause, has run: Linux processes the softirq backlog when a sending
system call re-enables bottom halves, so a packet's whole same-instant chain
completes before the process sends its next packet.

Housekeeping: `call_housekeeping_at` schedules a timer that only expires
state (a flannel lease renewal, a neighbour entry going STALE): it runs in
its turn like any event, but it cannot change a frame, so it does not keep
a run going. `run()` without `until_ns` returns once every event left is
such a timer (`settled()`): an idle cluster, whose lease renewals re-arm
every 23 hours forever, settles at once instead of running virtual years.
A timer whose effect depends on state (a REACHABLE entry goes DELAY, and
later probes, only if it was used lately) passes `quiet_if`, asked each
time settling is checked.

Contexts: an object in `context` follows the events it causes. While it is
set, every event scheduled for the current instant inherits it and the
context hears `on_scheduled(event)`, `on_enter(event)` and `on_exit(event)`.
The fast path's flow recorder (emu.fastpath) uses this to watch one
datagram's walk through the slow path while other traffic shares the queue.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable

NS_PER_SECOND = 1_000_000_000
PRIORITY_SOFTIRQ = 0
PRIORITY_WAKEUP = 1
PRIORITY_PROCESS = 2


def seconds(value: float) -> int:
    """Convert seconds (as written in scenarios) to integer nanoseconds."""
    return round(value * NS_PER_SECOND)


class SettleError(RuntimeError):
    """A run that was asked to settle still had work left at its bound."""


@dataclass(order=True)
class Event:
    """A scheduled callback; `cancel()` stops it from running."""

    time_ns: int
    priority: int
    seq: int
    callback: Callable[..., Any] = field(compare=False)
    args: tuple = field(compare=False, default=())
    cancelled: bool = field(compare=False, default=False)
    context: Any = field(compare=False, default=None)
    # False: the event may change a frame; True: it cannot (housekeeping);
    # a callable: ask it (True = cannot) when settling is checked.
    quiet: bool | Callable[[], bool] = field(compare=False, default=False)

    def cancel(self) -> None:
        self.cancelled = True

    def is_quiet(self) -> bool:
        """True if running this event cannot change any frame (see module docstring)."""
        quiet = self.quiet
        return quiet if isinstance(quiet, bool) else bool(quiet())


class Scheduler:
    """Runs callbacks in (time, insertion order); time only moves forward."""

    def __init__(self, epoch_ns: int = 0) -> None:
        self.now_ns = 0
        # The wall-clock time (Unix ns) of virtual time 0: what
        # gettimeofday() and capture timestamps show (`realtime_ns`).
        self.epoch_ns = epoch_ns
        self._queue: list[Event] = []
        self._seq = 0
        self.events_run = 0
        self.context: Any = None
        # Whoever watches the network model (emu.net.observe: a tracer, the
        # flow cache's recorder), and an upper layer that may serve an
        # application's sends itself (the flow cache); None: nobody.
        self.observer: Any = None
        self.offload: Any = None
        self.in_process = False  # the running event is process context (an application's step)
        # Per-simulation singletons of upper layers (the fast path's flow
        # cache), so they live and die with the scheduler.
        self.services: dict[str, Any] = {}
        self._open_batch: Event | None = None
        # Called whenever an instant is over (time is about to move on, or
        # run() returns): buffered capture files flush here.
        self.on_advance: list[Callable[[], None]] = []

    def realtime_ns(self, time_ns: int | None = None) -> int:
        """CLOCK_REALTIME at virtual time `time_ns` (default: now)."""
        return self.epoch_ns + (self.now_ns if time_ns is None else time_ns)

    def call_at(self, time_ns: int, callback: Callable[..., Any], *args: Any) -> Event:
        """Run `callback(*args)` at absolute virtual time `time_ns`."""
        return self._schedule(time_ns, PRIORITY_SOFTIRQ, callback, args)

    def call_housekeeping_at(self, time_ns: int, callback: Callable[..., Any], *args: Any,
                             quiet_if: Callable[[], bool] | None = None) -> Event:
        """`call_at` for a timer that only expires state, so it does not keep
        `run()` going (see the module docstring); with `quiet_if`, only while
        `quiet_if()` is true."""
        event = self._schedule(time_ns, PRIORITY_SOFTIRQ, callback, args)
        event.quiet = True if quiet_if is None else quiet_if
        return event

    def call_process_at(self, time_ns: int, callback: Callable[..., Any], *args: Any) -> Event:
        """Run `callback(*args)` at `time_ns` in process context: after every
        ordinary event of that instant (see the module docstring)."""
        return self._schedule(time_ns, PRIORITY_PROCESS, callback, args)

    def call_wakeup(self, callback: Callable[..., Any], *args: Any) -> Event:
        """Process context at this instant, ahead of the process work already
        queued: a process woken on another CPU (a TCP reader) runs as soon as
        the softirq work is done, before the sending process's next step."""
        return self._schedule(self.now_ns, PRIORITY_WAKEUP, callback, args)

    def call_process(self, callback: Callable[..., Any], *args: Any) -> Event:
        """`call_process_at` the current instant."""
        return self._schedule(self.now_ns, PRIORITY_PROCESS, callback, args)

    def _schedule(self, time_ns: int, priority: int, callback: Callable[..., Any],
                  args: tuple) -> Event:
        if time_ns < self.now_ns:
            raise ValueError(f"cannot schedule in the past ({time_ns} < {self.now_ns})")
        event = Event(time_ns, priority, self._seq, callback, args)
        self._seq += 1
        self._open_batch = None
        context = self.context
        if context is not None:
            if time_ns == self.now_ns:
                event.context = context
            context.on_scheduled(event)
        heapq.heappush(self._queue, event)
        return event

    def call_later(self, delay_ns: int, callback: Callable[..., Any], *args: Any) -> Event:
        """Run `callback(*args)` `delay_ns` nanoseconds from now."""
        return self.call_at(self.now_ns + delay_ns, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Event:
        """Run `callback(*args)` at the current instant, after what is queued."""
        return self.call_at(self.now_ns, callback, *args)

    def call_soon_batched(self, callback: Callable[[list], Any], item: Any) -> Event:
        """Like `call_soon(callback, [item])`, but if the most recently scheduled
        event is a not-yet-run call of the same callback at this instant (in
        the same context), `item` joins its list instead."""
        batch = self._open_batch
        if (batch is not None and batch.callback == callback and batch.context is self.context
                and not batch.cancelled):
            batch.args[0].append(item)
            return batch
        event = self.call_at(self.now_ns, callback, [item])
        self._open_batch = event
        return event

    def softirq_pending(self) -> bool:
        """True when an ordinary event of this instant waits to run (from a
        process step: work the step queued, which runs once it is over).
        A cancelled one at the head counts too: a cautious answer."""
        queue = self._queue
        return bool(queue) and queue[0].time_ns == self.now_ns and queue[0].priority == PRIORITY_SOFTIRQ

    def pending(self) -> int:
        return sum(1 for event in self._queue if not event.cancelled)

    def next_time(self) -> int | None:
        """Time of the next live event, or None when nothing is pending."""
        while self._queue and self._queue[0].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0].time_ns if self._queue else None

    def settled(self) -> bool:
        """True when no pending event can change a frame any more (only
        housekeeping timers are left, or nothing at all)."""
        return all(event.cancelled or event.is_quiet() for event in self._queue)

    def run(self, until_ns: int | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Run events until `until_ns` is reached, `stop()` is true, or (without
        `until_ns`) the cluster has settled: only housekeeping timers are left,
        which stay queued for a later run. The clock then stays at the last
        event run.

        With `until_ns`, every event up to it runs (housekeeping too) and the
        clock ends exactly at `until_ns` even if idle.
        """
        queue = self._queue
        try:
            self._run(queue, until_ns, stop)
        finally:
            for hook in self.on_advance:
                hook()

    def run_until_settled(self, limit_ns: int, max_events: int | None = None) -> None:
        """`run()` until the cluster has settled (see `settled`), but raise
        SettleError rather than go past `limit_ns` of virtual time from now or
        run more than `max_events` events: a run that cannot settle (a ping
        with a huge count, a loop at one instant) stops with a clear error
        instead of running for ever. Events past the bound stay queued."""
        deadline = self.now_ns + limit_ns
        start = self.events_run

        def beyond_bound() -> bool:
            following = self.next_time()
            too_many = max_events is not None and self.events_run - start >= max_events
            return too_many or (following is not None and following > deadline)

        if not self.settled() and not beyond_bound():
            self.run(stop=beyond_bound)
        if not self.settled():
            event = min(e for e in self._queue if not e.cancelled and not e.is_quiet())
            name = getattr(event.callback, "__qualname__", repr(event.callback))
            ran = self.events_run - start
            raise SettleError(f"the cluster did not settle within {limit_ns / NS_PER_SECOND:g} s of virtual "
                              f"time{f' or {max_events} events' if max_events is not None else ''} "
                              f"({ran} events run, now t={self.now_ns / NS_PER_SECOND:g} s); next event that "
                              f"can change a frame: {name} at t={event.time_ns / NS_PER_SECOND:g} s")

    def _run(self, queue: list[Event], until_ns: int | None, stop: Callable[[], bool] | None) -> None:
        while queue:
            event = queue[0]
            if until_ns is not None:
                if event.time_ns > until_ns:
                    break
            elif event.quiet is not False and self.settled():
                return
            heapq.heappop(queue)
            if event is self._open_batch:
                self._open_batch = None
            if event.cancelled:
                continue
            if event.time_ns != self.now_ns:
                for hook in self.on_advance:
                    hook()
            self.now_ns = event.time_ns
            self.events_run += 1
            self.in_process = event.priority == PRIORITY_PROCESS
            context = event.context
            if context is None:
                event.callback(*event.args)
            else:
                self._run_in_context(event, context)
            if stop is not None and stop():
                return
        if until_ns is not None and until_ns > self.now_ns:
            self.now_ns = until_ns

    def _run_in_context(self, event: Event, context: Any) -> None:
        outer, self.context = self.context, context
        context.on_enter(event)
        try:
            event.callback(*event.args)
        finally:
            context.on_exit(event)
            self.context = outer
