"""The flow cache of one simulation: record a flow's walk once, replay it after.

It is the simulation's offload (`Scheduler.offload`) for two kinds of sends:
- `udp_burst(sock, payloads, address, index)`: each step of a
  `UdpSocket.sendto_batch` burst asks how many datagrams the cache served.
  A flow (socket, destination, payload length) with a valid entry is
  replayed, as many datagrams as can go in one step;
- `process_send(stack, dst, protocol, segment, options)`: one datagram an
  application sends from process context (`Ipv4Stack.send(process=True)`:
  ping's echo requests, `UdpSocket.sendto`); True when the cache sent it.
  A flow is (stack, destination, protocol, the segment's constant header
  fields, its length, the send options); the payload is what follows the
  UDP header or the ICMP type, code and checksum (an echo's identifier,
  sequence and data, which its reply carries back). The replay runs as an
  ordinary event once the sending step is over, where the slow path would
  run the walk; a second send in the same step takes it back (both go
  the slow way, their walks interleave).
A flow without a valid entry is sent once on the slow path under a
Recorder, which caches its walk if it is replayable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from emu.fastpath.deferred import MAX_DEFERRED, DeferredFrames, TapPlan
from emu.fastpath.errors import Unsupported
from emu.fastpath.recorder import Recorder
from emu.fastpath.replay import FlowEntry, Replay
from emu.fastpath.templates import ICMP_CHECKSUM, ICMP_HEADER, UDP_CHECKSUM, UDP_HEADER
from emu.net.namespace import namespaces_of
from emu.net.observe import attach, detach
from emu.wire.icmp import IcmpMessage
from emu.wire.ipv4 import PROTO_ICMP, PROTO_UDP

if TYPE_CHECKING:
    from emu.net.namespace import Namespace
    from emu.net.stack import Ipv4Stack
    from emu.net.udp import UdpSocket
    from emu.sim import Scheduler

SERVICE = "flow-cache"
# protocol -> (bytes before the payload, how many of them are constant for a flow)
SEGMENT_HEADERS = {PROTO_UDP: (UDP_HEADER, UDP_CHECKSUM), PROTO_ICMP: (ICMP_HEADER, ICMP_CHECKSUM)}
MAX_REPLAY = 8192  # datagrams per replay step: bounds the frame matrices a huge burst builds


def flow_cache(sim: "Scheduler") -> "FlowCache":
    """The flow cache of one simulation, installed as its offload on first use."""
    cache = sim.services.get(SERVICE)
    if cache is None:
        cache = sim.services[SERVICE] = FlowCache(sim)
        sim.offload = cache
    return cache


@dataclass
class FastPathStats:
    """What the fast path did: proof that replays happen, and why they did not."""

    flows_recorded: int = 0
    datagrams_replayed: int = 0
    datagrams_slow: int = 0
    not_recorded: Counter = field(default_factory=Counter)
    fallbacks: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"flows_recorded": self.flows_recorded, "datagrams_replayed": self.datagrams_replayed,
                "datagrams_slow": self.datagrams_slow, "not_recorded": dict(self.not_recorded),
                "fallbacks": dict(self.fallbacks)}


class FlowCache:
    """Recorded flows of one simulation, and the burst steps that use them.

    `enabled` False leaves every datagram of a burst to the slow path (same
    process steps): the reference the fast path is checked against."""

    def __init__(self, sim: "Scheduler") -> None:
        self.sim = sim
        self.flows: dict[tuple, FlowEntry] = {}
        self.stats = FastPathStats()
        self.enabled = True
        # A process send's replay waiting for its step to end: (the step's
        # event number, the queued event, the replay, the send's arguments).
        self._queued: tuple | None = None
        self._bypass = False  # sending a taken-back replay on the slow path

    @property
    def namespaces(self) -> list["Namespace"]:
        return namespaces_of(self.sim)

    def udp_burst(self, sock: "UdpSocket", payloads: list[bytes], address: tuple[bytes, int],
                  index: int) -> int:
        """Serve payloads[index] (replay it, and the next ones of the same
        length when nothing else runs at this instant, or send it under a
        recorder); return how many datagrams were served (0: none)."""
        if not self.enabled:
            self.stats.datagrams_slow += 1
            return 0
        length = len(payloads[index])
        key = (sock, address, length)
        entry = self.flows.get(key)
        if entry is not None:
            reason = entry.invalid_reason(self.sim.now_ns)
            if reason is None:
                stop = index + 1
                # Several at once when the process runs alone (no interleaving)
                # and no reader is woken between datagrams (it reads as they come).
                if self.sim.next_time() != self.sim.now_ns and not entry.wakes_reader:
                    limit = min(len(payloads), index + MAX_REPLAY)
                    while stop < limit and len(payloads[stop]) == length:
                        stop += 1
                self.stats.datagrams_replayed += stop - index
                self._replay(Replay(entry, payloads[index:stop]))
                return stop - index
            del self.flows[key]
            self.stats.fallbacks[reason] += 1
        self.stats.datagrams_slow += 1
        if self.sim.context is not None:
            return 0
        self._record(key, sock, payloads[index], address)
        return 1

    def process_send(self, stack: "Ipv4Stack", dst: bytes, protocol: int, segment: bytes,
                     options: tuple) -> bool:
        """Serve `stack.send(dst, protocol, segment, ...)` from process context:
        replay the flow's walk, or send it under a recorder; False: the caller
        sends it (the cache is off, recording, or the protocol is not one it
        knows)."""
        sim = self.sim
        sizes = SEGMENT_HEADERS.get(protocol)
        if (not self.enabled or self._bypass or not sim.in_process or sim.context is not None
                or sizes is None or len(segment) < sizes[0]):
            return False  # a send from packet processing (a proxy) is part of another walk
        queued = self._queued
        if queued is not None and queued[0] == sim.events_run:
            # A second send in one step: the walks of both would interleave.
            self._send_queued_slowly()
            return False
        if sim.softirq_pending():
            return False  # this step's earlier work runs first, interleaved with the walk
        size, constant = sizes
        payload = bytes(segment[size:])
        key = ("send", stack, dst, protocol, bytes(segment[:constant]), len(segment), options)
        entry = self.flows.get(key)
        if entry is not None:
            reason = entry.invalid_reason(sim.now_ns)
            if reason is None:
                self.stats.datagrams_replayed += 1
                replay = Replay(entry, [payload])
                event = sim.call_soon(self._replay_queued, replay)
                self._queued = (sim.events_run, event, replay, stack, dst, protocol, segment, options)
                return True
            del self.flows[key]
            self.stats.fallbacks[reason] += 1
        self.stats.datagrams_slow += 1
        self._recorded(Recorder(self, key, payload), stack.ns, None, stack.send, dst, protocol, segment,
                       **self._send_options(options))
        return True

    @staticmethod
    def _send_options(options: tuple) -> dict:
        src, ttl, tos, pmtudisc, oif, confirm = options
        return dict(src=src, ttl=ttl, tos=tos, pmtudisc=pmtudisc, oif=oif, confirm=confirm, process=True)

    def _replay_queued(self, replay: Replay) -> None:
        """A process send's replay, run once the sending step is over: where
        the slow path runs the datagram's walk (the softirq backlog)."""
        self._queued = None
        self._replay(replay)

    def _send_queued_slowly(self) -> None:
        """The step that queued a replay sends again: take the replay back and
        send its datagram on the slow path now, before the new one, so both
        walks interleave as they would have."""
        _, event, replay, stack, dst, protocol, segment, options = self._queued
        self._queued = None
        event.cancel()
        self.stats.datagrams_replayed -= 1
        self.stats.datagrams_slow += 1
        self.stats.fallbacks["several-sends-in-one-step"] += 1
        self._bypass = True
        try:
            stack.send(dst, protocol, segment, **self._send_options(options))
        finally:
            self._bypass = False

    def _record(self, key: tuple, sock: "UdpSocket", payload: bytes, address: tuple[bytes, int]) -> None:
        self._recorded(Recorder(self, key, payload), sock.ns, sock, sock.sendto, payload, address)

    def _recorded(self, recorder: Recorder, ns: "Namespace", sock: "UdpSocket | None",
                  send: Callable, *args, **options) -> None:
        """Run `send(*args, **options)` with `recorder` watching the walk."""
        recorder.read("socket", sock)
        recorder.read("namespace", ns)
        self.sim.context = recorder
        attach(self.sim, recorder)
        try:
            recorder.on_enter(None)
            try:
                send(*args, **options)
            except BaseException:
                recorder.unsupported("send-error")
                raise
            finally:
                recorder.on_exit(None)
        finally:
            self.sim.context = None

    def finish_recording(self, recorder: Recorder) -> None:
        """Called when the recorded walk has no more events in flight."""
        detach(self.sim, recorder)
        try:
            entry = recorder.build()
        except Unsupported as reason:
            self.stats.not_recorded[str(reason)] += 1
            return
        self.flows[recorder.key] = entry
        self.stats.flows_recorded += 1

    # -- replay ----------------------------------------------------------------------
    def _replay(self, replay: Replay) -> None:
        """Every effect of the M walks at once: identifiers reserved as M walks
        one after the other take them, FDB and neighbour entries refreshed,
        counters += M x the recorded change, the frames shown to the taps
        datagram after datagram, the datagrams delivered."""
        entry = replay.entry
        now = self.sim.now_ns
        count = replay.count
        for stack, per_datagram in entry.ident_counts.items():
            replay.bases[stack] = stack.reserve_idents(count * per_datagram)
        for fdb, mac, port in entry.fdb_learned:
            fdb.learn(mac, port, now)
        for _, n, confirm in entry.neighbours:
            n.note_use(now, confirm)
        for mapping, name, delta in entry.counted:
            mapping[name] += delta * count
        for target, name, delta in entry.attributes:
            setattr(target, name, getattr(target, name) + delta * count)
        if any(dev.taps for dev, _, _ in entry.frames) and not self._defer(replay, now):
            if count == 1:
                self._emit_one(replay, now)
            else:
                self._emit_taps(replay, now)
        if entry.delivery is not None:
            self._deliver(replay, entry.delivery)

    @staticmethod
    def _defer(replay: Replay, now: int) -> bool:
        """Leave the frames to the sink of every tap they meet, to build later
        (deferred.py); False when there is no such sink or it declines."""
        entry = replay.entry
        plan = entry.tap_plan
        if plan is None or not plan.holds():
            plan = entry.tap_plan = TapPlan(entry)
        sink = plan.sink
        if sink is None:
            return False
        batch = sink.last_deferred
        if isinstance(batch, DeferredFrames) and batch.plan is plan and len(batch) < MAX_DEFERRED:
            batch.add(replay, now)
            return True
        batch = DeferredFrames(entry, plan)
        batch.add(replay, now)
        return sink.defer(batch, plan.points)

    @staticmethod
    def _emit_one(replay: Replay, now: int) -> None:
        """One datagram: every tap in recorded order, frames built without numpy."""
        for dev, template, outgoing in replay.entry.frames:
            if dev.taps:
                frame = replay.one(template)
                for tap in dev.taps:
                    if getattr(tap, "with_direction", False):
                        tap(now, frame, outgoing)
                    else:
                        tap(now, frame)

    @staticmethod
    def _emit_taps(replay: Replay, now: int) -> None:
        """Show the frames to the taps: for each datagram, for each (device,
        template) in recorded order, for each tap of the device. Taps with a
        `batch_sink` get the whole replay through it at once (one call per
        sink); the others are called frame by frame. Sinks and other taps
        write to separate places, so only the order each one sees matters."""
        sinks: dict[int, tuple[Any, list]] = {}
        single: list[tuple[Callable, list[bytes], tuple]] = []
        for dev, template, outgoing in replay.entry.frames:
            for tap in dev.taps:
                sink = getattr(tap, "batch_sink", None)
                if sink is None:
                    direction = (outgoing,) if getattr(tap, "with_direction", False) else ()
                    single.append((tap, replay.frames(template), direction))
                else:
                    sinks.setdefault(id(sink), (sink, []))[1].append((tap, replay.rows(template), outgoing))
        for sink, frames in sinks.values():
            sink.record_interleaved(now, frames)
        for j in range(replay.count):
            for tap, frames, direction in single:
                tap(now, frames[j], *direction)

    def _deliver(self, replay: Replay, delivery: tuple) -> None:
        if delivery[0] == "echo":
            _, handler, template, header_len = delivery
            packets = [replay.one(template)] if replay.count == 1 else replay.frames(template)
            for packet in packets:
                handler("reply", packet, IcmpMessage(memoryview(packet)[header_len:]))
            return
        _, sock, source, template, dev = delivery
        if sock.on_receive is None:
            datagrams = [(payload, source) for payload in replay.raw_payloads]
            if sock.on_wake is None:
                sock.queue.extend(datagrams)
            else:
                # A program reads it (nc): on the slow path the walk runs once
                # the sending step is over, so the reader's wakeup is queued
                # after whatever that step queued. The same here.
                self.sim.call_soon(sock.enqueue, datagrams)
            return
        packets = [replay.one(template)] if replay.count == 1 else replay.frames(template)
        for payload, packet in zip(replay.raw_payloads, packets):
            sock.on_receive(payload, source, packet, dev)
