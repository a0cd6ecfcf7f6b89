"""The flow cache: walk the slow path once per flow, replay the walk for the rest.

Why: a datagram's hop-by-hop walk (veths, bridge, routing, VXLAN or flannel
encapsulation, delivery) costs tens of microseconds in Python, but every
datagram of a flow takes the same decisions. So `UdpSocket.sendto_batch`
sends the first datagram of a flow (socket, destination, payload length)
through the slow path while a `Recorder` watches it, and replays the
recording for later datagrams.

A burst is a process: `sendto_batch` runs as process-context steps (see
emu.sim), and each datagram's whole same-instant chain (every hop, every
queue) runs before the process sends the next one, as in Linux, where the
softirq backlog runs when the send system call re-enables bottom halves.
So one datagram's walk is a closed unit, and M walks of a flow are M copies
of it, one after the other.

Recording (the recorder is the scheduler's `context`, so it follows exactly
the events this one datagram causes): every frame shown to a device's taps,
in order, the counters each event changed (all namespaces' and devices'
counters, snapshotted around each event), the IP identifiers each stack
consumed, FDB entries learned and looked up, neighbour entries used and the
terminal delivery. A walk is cached only if it ended in at most one
terminal delivery, with no configuration change (epoch) during the walk, no
fragmentation, no ICMP, no neighbour resolution and no timer.

Replay of M datagrams, in one step: counters += M x the recorded change,
each stack's identifier counter advances as M walks in a row would, FDB
entries and neighbours are refreshed, taps get the exact frames datagram
after datagram (rebuilt from layered templates: payload, identifiers and
IPv4/UDP checksums recomputed with numpy over the batch), the terminal
socket gets the datagrams. A replay is valid while the global configuration
epoch is unchanged and, at the batch's instant, every looked-up FDB entry is
live and every neighbour used is in a state where the slow path just sends.
When other events are due at the same instant (other traffic, another
process), a step replays one datagram only and lets them run in between, as
the slow path would.

Taps (emu.net.device.Tap) are called ``tap(ts_ns, frame)`` (with
``outgoing`` as a third argument for a tap whose ``with_direction`` is
true, as the slow path calls it). A tap that
also has a ``batch_sink`` attribute (not None) may take a whole replay
instead: the fast path calls ``sink.record_interleaved(ts_ns, frames)`` once
per sink and replay, ``frames`` being the (tap, matrix, outgoing) triples of
that sink's taps in the order one datagram meets them, each matrix the (M, length)
uint8 rows (read-only) of one template; the sink must leave exactly the
trace of calling ``tap(ts_ns, bytes(matrix[j]))`` for each row j, for each
pair in order. emu.capture's capture points are such taps (the sink is
their CaptureSet); any other tap is called frame by frame.

Not replayed (the slow path runs instead, counted in `FastPathStats`): the
reasons above, frames other than IPv4/UDP (with VXLAN or IPv4-in-UDP
encapsulation), ambiguous identifiers. Userspace forwarding state that acts
like configuration (flanneld's udp-backend lease map) bumps the epoch too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from emu.wire.checksum import ones_sum, pseudo_header_sum
from emu.wire.errors import WireError
from emu.wire.ipv4 import PROTO_UDP, Ipv4Packet
from emu.wire.udp import UdpDatagram

# numpy is imported where templates are built (only replays need it).
if TYPE_CHECKING:
    import numpy as np

    from emu.net.device import NetDevice
    from emu.net.fdb import Fdb
    from emu.net.namespace import Namespace
    from emu.net.neighbour import Neighbour, NeighbourTable
    from emu.net.stack import Ipv4Stack
    from emu.net.udp import UdpSocket
    from emu.sim import Event, Scheduler

_epoch = 0
SERVICE = "flow-cache"
SENDABLE_STATES = ("REACHABLE", "DELAY", "PROBE", "PERMANENT")
NAMESPACE_COUNTERS = ("sent", "delivered", "forwarded")
DEVICE_COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
BRIDGE_COUNTERS = ("flooded", "forwarded", "delivered_local")
MAX_REPLAY = 8192  # datagrams per replay step: bounds the frame matrices a huge burst builds


def config_changed() -> None:
    """Bump the configuration epoch: every cached flow must be re-recorded.

    Called by every change of routes, addresses, devices (added, removed, up
    or down), neighbours, bridge and VXLAN FDB entries (new, moved, removed)
    and socket bindings, in any simulation (one process-wide counter:
    conservative and simple).
    """
    global _epoch
    _epoch += 1


def epoch() -> int:
    """The current configuration epoch (caches keyed on it are still valid)."""
    return _epoch


def flow_cache(sim: "Scheduler") -> "FlowCache":
    """The flow cache of one simulation (created on first use)."""
    cache = sim.services.get(SERVICE)
    if cache is None:
        cache = sim.services[SERVICE] = FlowCache(sim)
    return cache


def register_namespace(ns: "Namespace") -> None:
    """Namespaces register so recordings can snapshot all their counters."""
    flow_cache(ns.sim).namespaces.append(ns)


class Unsupported(Exception):
    """A recorded walk that cannot be replayed; the message is the reason."""


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


# == frame templates ============================================================
@dataclass(frozen=True)
class IdentSource:
    """Which stack produced an identifier: the i-th of m it consumed per datagram."""

    stack: "Ipv4Stack"
    index: int
    per_datagram: int


@dataclass(frozen=True)
class _Layer:
    """One IPv4 header plus the UDP header after it, inside a template."""

    ip_offset: int
    ip_header_len: int
    ident: IdentSource
    udp_offset: int
    udp_length: int
    udp_checksum: bool
    pseudo: int


class FrameTemplate:
    """A recorded frame (or IP packet) as layers: Ethernet / IPv4 / UDP /
    [VXLAN / Ethernet / IPv4 / UDP | IPv4 / UDP] / payload. Constant bytes are
    kept; per datagram the payload, each IPv4 identifier and every checksum
    are recomputed, innermost layer first.

    Checksums are sums, so each header's and each UDP segment's sum is split
    once into a constant part (the recorded bytes with the payload and every
    identifier and checksum field zeroed) and the per-datagram fields: a
    replay adds the payload's sum (once per replay) and the fields computed
    for the inner layers to the constant, instead of summing every byte of
    every row again. This needs every per-datagram field on an even offset
    from the start of the sums it is in (true of IPv4, UDP, VXLAN and
    Ethernet headers); a frame where it is not is not replayed."""

    def __init__(self, frame: bytes, ethernet: bool, payload: bytes,
                 idents: dict[int, list[IdentSource]]) -> None:
        self.frame = frame
        self.layers: list[_Layer] = []
        offset = 0
        while True:
            if ethernet:
                if frame[offset + 12:offset + 14] != b"\x08\x00":
                    raise Unsupported("frame-not-ipv4")
                offset += 14
            layer, inner, inner_len = self._parse_layer(frame, offset, idents)
            self.layers.append(layer)
            if inner_len == len(payload):
                if frame[inner:inner + inner_len] != payload:
                    raise Unsupported("payload-rewritten")
                self.payload_offset = inner
                self._constant_sums = self._split_sums(len(payload))
                return
            if inner_len >= 8 + 14 + 28 and frame[inner] == 0x08:
                offset, ethernet = inner + 8, True  # VXLAN, then an Ethernet frame
            elif inner_len >= 28 and frame[inner] >> 4 == 4:
                offset, ethernet = inner, False  # IPv4 in UDP (flannel's udp backend)
            else:
                raise Unsupported("frame-unknown-encapsulation")

    @staticmethod
    def _parse_layer(frame: bytes, offset: int, idents: dict[int, list[IdentSource]]):
        try:
            ip = Ipv4Packet(memoryview(frame)[offset:])
            if ip.protocol != PROTO_UDP or ip.is_fragment():
                raise Unsupported("frame-not-udp")
            udp_offset = offset + ip.header_len
            udp = UdpDatagram(memoryview(frame)[udp_offset:offset + ip.total_length])
        except WireError as error:
            raise Unsupported(f"frame-{error.reason}") from None
        sources = idents.get(ip.ident, [])
        if len(sources) != 1:
            raise Unsupported("ident-ambiguous" if sources else "ident-unknown")
        pseudo = pseudo_header_sum(ip.src, ip.dst, PROTO_UDP, udp.length)
        layer = _Layer(offset, ip.header_len, sources[0], udp_offset, udp.length,
                       udp.checksum != 0, pseudo)
        return layer, udp_offset + 8, udp.length - 8

    def _split_sums(self, payload_length: int) -> list[tuple[int, int]]:
        """Per layer, the one's-complement sums of the constant part of its
        IPv4 header and of its UDP segment (pseudo-header included)."""
        constant = bytearray(self.frame)
        constant[self.payload_offset:self.payload_offset + payload_length] = bytes(payload_length)
        fields = [self.payload_offset]
        for layer in self.layers:
            for offset in (layer.ip_offset + 4, layer.ip_offset + 10, layer.udp_offset + 6):
                constant[offset:offset + 2] = b"\0\0"
                fields.append(offset)
        sums = []
        for layer in self.layers:
            if any((offset - layer.udp_offset) % 2 for offset in fields if offset > layer.udp_offset):
                raise Unsupported("field-on-odd-offset")
            ip_header = constant[layer.ip_offset:layer.ip_offset + layer.ip_header_len]
            segment = constant[layer.udp_offset:layer.udp_offset + layer.udp_length]
            sums.append((ones_sum(ip_header), ones_sum(segment, layer.pseudo)))
        return sums

    def build(self, replay: "Replay") -> "np.ndarray":
        """The frame of every datagram of `replay`: one read-only row each."""
        import numpy as np

        mask = np.uint64(0xFFFF)
        count = replay.count
        rows = np.empty((count, len(self.frame)), np.uint8)
        rows[:] = np.frombuffer(self.frame, np.uint8)
        start = self.payload_offset
        rows[:, start:start + replay.payloads.shape[1]] = replay.payloads
        inner = replay.payload_sums  # what the layers inside add to the next segment's sum
        for layer, (ip_sum, udp_sum) in zip(reversed(self.layers), reversed(self._constant_sums)):
            idents = replay.idents(layer.ident)
            ip_checksum = ~_fold_positive(idents + np.uint64(ip_sum)) & mask
            fields = [(layer.ip_offset + 4, idents), (layer.ip_offset + 10, ip_checksum)]
            if layer.udp_checksum:
                udp_checksum = ~_fold_positive(inner + np.uint64(udp_sum)) & mask
                udp_checksum[udp_checksum == 0] = 0xFFFF
                inner = inner + udp_checksum
                fields.append((layer.udp_offset + 6, udp_checksum))
            inner = inner + idents + ip_checksum  # this IPv4 header is inside the next segment
            for offset, values in fields:
                rows[:, offset] = values >> np.uint64(8)
                rows[:, offset + 1] = values & np.uint64(0xFF)
        rows.flags.writeable = False  # shared by every tap and the delivery
        return rows


def _fold_positive(sums: "np.ndarray") -> "np.ndarray":
    """One's-complement sums (1..0xffff) of uint64 totals that are never 0:
    the end-around-carry fold of a positive total is its residue mod 0xffff,
    except that a multiple of 0xffff folds to 0xffff. One division instead of
    repeated folds; every total here is positive (an IPv4 header has its
    version, a UDP pseudo-header its protocol)."""
    folded = sums % 0xFFFF
    folded[folded == 0] = 0xFFFF
    return folded


# == what a walk did ==============================================================
@dataclass
class FlowEntry:
    """A replayable walk: the effects of one datagram's whole same-instant chain."""

    epoch: int
    templates: list[FrameTemplate]
    frames: list[tuple["NetDevice", int, bool]] = field(default_factory=list)  # in tap order, outgoing
    ident_counts: dict["Ipv4Stack", int] = field(default_factory=dict)
    counters: list[tuple[Any, str, int]] = field(default_factory=list)
    fdb_learned: list[tuple["Fdb", bytes, "NetDevice"]] = field(default_factory=list)
    fdb_looked_up: list[tuple["Fdb", bytes]] = field(default_factory=list)
    neighbours: list[tuple["NeighbourTable", "Neighbour", bool]] = field(default_factory=list)
    delivery: tuple | None = None  # (socket, source, packet template, device)

    def invalid_reason(self, now_ns: int) -> str | None:
        if _epoch != self.epoch:
            return "config-changed"
        for fdb, mac in self.fdb_looked_up:
            if not fdb.is_live(mac, now_ns):
                return "fdb-entry-aged"
        for table, n, _ in self.neighbours:
            if table.entries.get(n.ip) is not n or n.state.value not in SENDABLE_STATES:
                return "neighbour-not-sendable"
        return None


# == recording ====================================================================
class Recorder:
    """Watches one datagram's walk (as the scheduler context) and builds a FlowEntry."""

    def __init__(self, cache: "FlowCache", key: tuple, payload: bytes) -> None:
        self.cache = cache
        self.key = key
        self.payload = payload
        self.epoch = _epoch
        self.failure: str | None = None
        self.pending = 0
        self._before: dict = {}
        self._counters: list[tuple[Any, str, int]] = []
        self._frames: list[tuple["NetDevice", bytes, bool]] = []
        self._idents: list[tuple["Ipv4Stack", int]] = []
        self._fdb_learned: list[tuple["Fdb", bytes, "NetDevice"]] = []
        self._fdb_looked_up: list[tuple["Fdb", bytes]] = []
        self._neighbours: list[tuple["NeighbourTable", "Neighbour", bool]] = []
        self._deliveries: list[tuple] = []
        self._activity_mark = 0

    def unsupported(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    # -- scheduler context protocol ---------------------------------------------
    def on_scheduled(self, event: "Event") -> None:
        if event.time_ns != self.cache.sim.now_ns:
            self.unsupported("timer")
            return
        self.pending += 1

    def on_enter(self, event: "Event | None") -> None:
        if _epoch != self.epoch:
            self.unsupported("config-changed-during-walk")
        self._before = self._snapshot()

    def on_exit(self, event: "Event | None") -> None:
        """Counter changes are taken around each event of the walk, so other
        traffic running in between does not count."""
        after = self._snapshot()
        for key, (target, name, value) in after.items():
            old = self._before.get(key)
            delta = value - (old[2] if old is not None else 0)
            if delta:
                self._counters.append((target, name, delta))
        if _epoch != self.epoch:
            self.unsupported("config-changed-during-walk")
        if event is not None:
            self.pending -= 1
        if self.pending == 0:
            self.cache.finish_recording(self)

    # -- hooks in the devices and the stack --------------------------------------
    def on_frame(self, dev: "NetDevice", frame: bytes, outgoing: bool = False) -> None:
        self._frames.append((dev, bytes(frame), outgoing))

    def on_ident(self, stack: "Ipv4Stack", ident: int) -> None:
        self._idents.append((stack, ident))

    def on_fdb_learn(self, fdb: "Fdb", mac: bytes, port: "NetDevice") -> None:
        self._fdb_learned.append((fdb, bytes(mac), port))

    def on_fdb_lookup(self, fdb: "Fdb", mac: bytes, found: bool) -> None:
        if found:
            self._fdb_looked_up.append((fdb, bytes(mac)))

    def on_neighbour(self, table: "NeighbourTable", n: "Neighbour | None", confirm: bool) -> None:
        if n is None or n.state.value not in SENDABLE_STATES:
            self.unsupported("neighbour-resolution")
            return
        self._neighbours.append((table, n, confirm))

    def on_deliver_begin(self, sock: "UdpSocket", data: bytes, source: tuple, packet: bytes,
                         dev: "NetDevice") -> None:
        self._activity_mark = self._activity()
        self._deliveries.append((sock, source, bytes(packet), dev, data))

    def on_deliver_end(self, sock: "UdpSocket") -> None:
        if self._activity() != self._activity_mark:
            # The receiver forwarded it (a userspace proxy): a hop, not the end.
            self._deliveries.pop()
        elif self._deliveries[-1][-1] != self.payload:
            self.unsupported("payload-rewritten")

    def _activity(self) -> int:
        return len(self._frames) + len(self._idents) + self.pending

    def _snapshot(self) -> dict:
        values: dict = {}
        for ns in self.cache.namespaces:
            for name in NAMESPACE_COUNTERS:
                values[(id(ns), name)] = (ns, name, getattr(ns, name))
            for reason, count in ns.drops.items():
                values[(id(ns.drops), reason)] = (ns.drops, reason, count)
            for dev in ns.devices.values():
                stats = dev.stats
                for name in DEVICE_COUNTERS:
                    values[(id(stats), name)] = (stats, name, getattr(stats, name))
                for reason, count in stats.drops.items():
                    values[(id(stats.drops), reason)] = (stats.drops, reason, count)
                if hasattr(dev, "flooded"):
                    for name in BRIDGE_COUNTERS:
                        values[(id(dev), name)] = (dev, name, getattr(dev, name))
        return values

    # -- building the entry ---------------------------------------------------------
    def build(self) -> FlowEntry:
        """The replayable entry, or Unsupported with the reason."""
        if self.failure is not None:
            raise Unsupported(self.failure)
        if len(self._deliveries) > 1:
            raise Unsupported("several-deliveries")
        idents = self._ident_sources()
        entry = FlowEntry(self.epoch, [], counters=self._counters, fdb_learned=self._fdb_learned,
                          fdb_looked_up=self._fdb_looked_up, neighbours=self._neighbours)
        by_frame: dict[tuple[bytes, bool], int] = {}

        def template_of(frame: bytes, ethernet: bool) -> int:
            key = (frame, ethernet)
            if key not in by_frame:
                by_frame[key] = len(entry.templates)
                entry.templates.append(FrameTemplate(frame, ethernet, self.payload, idents))
            return by_frame[key]

        entry.frames = [(dev, template_of(frame, dev.has_l2), outgoing) for dev, frame, outgoing in self._frames]
        for sock, source, packet, dev, _ in self._deliveries:
            entry.delivery = (sock, source, template_of(packet, False), dev)
        for stack, _ in self._idents:
            entry.ident_counts[stack] = entry.ident_counts.get(stack, 0) + 1
        return entry

    def _ident_sources(self) -> dict[int, list[IdentSource]]:
        per_walk: Counter = Counter(stack for stack, _ in self._idents)
        seen: Counter = Counter()
        sources: dict[int, list[IdentSource]] = {}
        for stack, ident in self._idents:
            source = IdentSource(stack, seen[stack], per_walk[stack])
            seen[stack] += 1
            sources.setdefault(ident, []).append(source)
        return sources


# == replay =======================================================================
class Replay:
    """M datagrams of one flow, each walking a FlowEntry."""

    def __init__(self, entry: FlowEntry, payloads: list[bytes]) -> None:
        self.entry = entry
        self.raw_payloads = payloads
        self.count = len(payloads)
        self._payloads: "np.ndarray | None" = None
        self._rows: dict[int, "np.ndarray"] = {}
        self._payload_sums: "np.ndarray | None" = None
        self._idents: dict[IdentSource, "np.ndarray"] = {}
        self._frames: dict[int, list[bytes]] = {}
        self.bases: dict["Ipv4Stack", int] = {}

    @property
    def payloads(self) -> "np.ndarray":
        if self._payloads is None:
            import numpy as np
            self._payloads = np.frombuffer(b"".join(self.raw_payloads), np.uint8).reshape(
                self.count, len(self.raw_payloads[0]))
        return self._payloads

    @property
    def payload_sums(self) -> "np.ndarray":
        """Each payload's unfolded one's-complement sum (uint64), for the checksums."""
        if self._payload_sums is None:
            from emu.wire.vxlan_batch import ones_sum_rows
            self._payload_sums = ones_sum_rows(self.payloads, 0, self.payloads.shape[1])
        return self._payload_sums

    def idents(self, source: IdentSource) -> "np.ndarray":
        """The identifiers `source` gave the datagrams (uint64, one per datagram):
        datagram j's walk ends before j+1's starts, so a stack hands datagram j
        the identifiers base + j * per_datagram + 0 .. per_datagram - 1."""
        import numpy as np
        idents = self._idents.get(source)
        if idents is None:
            base = self.bases[source.stack]
            steps = np.arange(self.count, dtype=np.uint64) * np.uint64(source.per_datagram)
            idents = self._idents[source] = (np.uint64(base + source.index) + steps) & np.uint64(0xFFFF)
        return idents

    def rows(self, template: int) -> "np.ndarray":
        """Every datagram's frame of `template` as a (count, length) uint8 matrix."""
        built = self._rows.get(template)
        if built is None:
            built = self._rows[template] = self.entry.templates[template].build(self)
        return built

    def frames(self, template: int) -> list[bytes]:
        """Every datagram's frame of `template` as bytes."""
        built = self._frames.get(template)
        if built is None:
            from emu.wire.vxlan_batch import rows_to_bytes
            built = self._frames[template] = rows_to_bytes(self.rows(template))
        return built


class FlowCache:
    """Recorded flows of one simulation, and the batch send that uses them.

    `enabled` False sends every datagram of a burst on the slow path (same
    process steps): the reference the fast path is checked against."""

    def __init__(self, sim: "Scheduler") -> None:
        self.sim = sim
        self.namespaces: list["Namespace"] = []
        self.flows: dict[tuple, FlowEntry] = {}
        self.stats = FastPathStats()
        self.enabled = True

    def send_batch(self, sock: "UdpSocket", payloads: list[bytes], address: tuple[bytes, int]) -> None:
        """A process calling `sock.sendto(p, address)` for each payload in turn
        (sendmmsg): it starts as a process-context event at this instant, and
        each datagram's whole same-instant chain runs before the next is sent."""
        if payloads:
            self.sim.call_process(self._send_step, sock, [bytes(p) for p in payloads], address, 0)

    def _send_step(self, sock: "UdpSocket", payloads: list[bytes], address: tuple[bytes, int],
                   index: int) -> None:
        """Send payloads[index] (replay it, and the next ones of the same
        length when nothing else runs at this instant), then continue as the
        same process."""
        from emu.net.stack import SendError
        length = len(payloads[index])
        key = (sock, address, length)
        entry = self.flows.get(key) if self.enabled else None
        if entry is not None:
            reason = entry.invalid_reason(self.sim.now_ns)
            if reason is None:
                stop = index + 1
                if self.sim.next_time() != self.sim.now_ns:  # the process runs alone: no interleaving
                    limit = min(len(payloads), index + MAX_REPLAY)
                    while stop < limit and len(payloads[stop]) == length:
                        stop += 1
                self.stats.datagrams_replayed += stop - index
                self._replay(Replay(entry, payloads[index:stop]))
                if stop < len(payloads):
                    self.sim.call_process(self._send_step, sock, payloads, address, stop)
                return
            del self.flows[key]
            self.stats.fallbacks[reason] += 1
        try:
            if self.enabled and self.sim.context is None:
                self._record(key, sock, payloads[index], address)
            else:
                self.stats.datagrams_slow += 1
                sock.sendto(payloads[index], address)
        except SendError as error:
            sock.send_errors.append(error.errno_name)  # sendmmsg stops at a refused datagram
            return
        if index + 1 < len(payloads):
            self.sim.call_process(self._send_step, sock, payloads, address, index + 1)

    def _record(self, key: tuple, sock: "UdpSocket", payload: bytes, address: tuple[bytes, int]) -> None:
        self.stats.datagrams_slow += 1
        recorder = Recorder(self, key, payload)
        self.sim.context = recorder
        try:
            recorder.on_enter(None)
            try:
                sock.sendto(payload, address)
            except BaseException:
                recorder.unsupported("send-error")
                raise
            finally:
                recorder.on_exit(None)
        finally:
            self.sim.context = None

    def finish_recording(self, recorder: Recorder) -> None:
        """Called when the recorded walk has no more events in flight."""
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
        for target, name, delta in entry.counters:
            if isinstance(target, Counter):
                target[name] += delta * count
            else:
                setattr(target, name, getattr(target, name) + delta * count)
        if any(dev.taps for dev, _, _ in entry.frames):
            self._emit_taps(replay, now)
        if entry.delivery is not None:
            self._deliver(replay, entry.delivery)

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

    @staticmethod
    def _deliver(replay: Replay, delivery: tuple) -> None:
        sock, source, template, dev = delivery
        if sock.on_receive is None:
            sock.queue.extend((payload, source) for payload in replay.raw_payloads)
            return
        packets = replay.frames(template)
        for payload, packet in zip(replay.raw_payloads, packets):
            sock.on_receive(payload, source, packet, dev)
