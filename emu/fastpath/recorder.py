"""The recorder: watches one datagram's walk through the slow path.

It is two things at once: the scheduler's context (emu.sim), so it follows
exactly the events this one datagram causes, and an emu.net.observe
Observer, so it hears what each of them did (events of other traffic
sharing the queue are ignored: the scheduler's context is not this
recorder then).

Replay by whitelist: a walk is replayable only if every step it took is
one the flow cache knows how to reproduce: every hop's (stage, verdict) is
in REPLAYABLE, every scheduled event of the walk said something (a frame, a
hop, a drop or a delivery; a silent step is one nobody taught the recorder),
no timer was armed, every neighbour used was sendable, at most one
delivery ended it, and nothing it read changed while it ran (generations).
Anything else, such as a new protocol or a stage added later, falls back to
the slow path by default.

Counters are compared around each event of the walk in the event's own
namespace only (the one its callback belongs to: a frame arriving at a
device, or the sending namespace), not in the whole cluster: a flooded
broadcast makes one event per node, so a cluster-wide snapshot per event
would cost nodes^2. Every counter emu/net changes is changed along with an
observer event naming its namespace (a frame, a hop, a drop), so an event
that is heard in a namespace it was not snapshotted in is not replayable
("counters-outside-snapshot"); once a walk is known not to be replayable,
nothing more is snapshotted.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from emu.fastpath.errors import Unsupported
from emu.fastpath.replay import SENDABLE_STATES, FlowEntry, Read
import emu.wire.ipv4 as ipv4
from emu.fastpath.templates import ICMP_HEADER, FrameTemplate, IdentSource
from emu.net.namespace import Namespace
from emu.net.observe import Observer
from emu.sim.scheduler import PRIORITY_SOFTIRQ

if TYPE_CHECKING:
    from emu.fastpath.cache import FlowCache
    from emu.net.device import NetDevice
    from emu.net.fdb import Fdb
    from emu.net.neighbour import Neighbour, NeighbourTable
    from emu.net.stack import Ipv4Stack
    from emu.net.udp import UdpSocket
    from emu.sim import Event

ANY = None
# stage -> the verdicts a replay reproduces (ANY: every verdict). Drops are
# counters (taken around each event), so a walk may end in one.
REPLAYABLE: dict[str, frozenset | None] = {
    "bridge": frozenset({"forwarded", "flooded", "delivered", "dropped:BRIDGE_SAME_PORT"}),
    "ip_rcv": frozenset({"delivered", "forwarded"}),
    "ip_forward": frozenset({"forwarded"}),
    "ip_output": frozenset({"sent"}),
    "neigh": frozenset({"sent"}),
    "udp_rcv": frozenset({"delivered"}),
    "vxlan_xmit": frozenset({"sent", "dropped:VXLAN_NO_REMOTE"}),
    "icmp_rcv": frozenset({"consumed", "delivered"}),  # echo request answered, reply to ping
    "vxlan_rcv": frozenset({"delivered"}),
    "tun": frozenset({"delivered", "received"}),
    "flanneld": frozenset({"sent", "delivered"}),
}
NAMESPACE_COUNTERS = ("sent", "delivered", "forwarded")
DEVICE_COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
BRIDGE_COUNTERS = ("flooded", "forwarded", "delivered_local")


class Recorder(Observer):
    """Watches one datagram's walk and builds a FlowEntry."""

    def __init__(self, cache: "FlowCache", key: tuple, payload: bytes) -> None:
        self.cache = cache
        self.sim = cache.sim
        self.key = key
        self.payload = payload
        self.failure: str | None = None
        self.pending = 0
        self._reads: dict[int, Read] = {}
        self._before: dict = {}
        self._scope: list["Namespace"] | None = None  # snapshotted around this event (None: every one)
        self._heard: dict[int, "Namespace"] = {}  # namespaces heard of during this event
        self._said = 0  # observer events heard: a step that says nothing is not replayable
        self._said_at_enter = 0
        self._counters: list[tuple[Any, str, int]] = []
        self._frames: list[tuple["NetDevice", bytes, bool]] = []
        self._idents: list[tuple["Ipv4Stack", int]] = []
        self._fdb_learned: list[tuple["Fdb", bytes, "NetDevice"]] = []
        self._fdb_looked_up: list[tuple["Fdb", bytes]] = []
        self._neighbours: list[tuple["NeighbourTable", "Neighbour", bool]] = []
        self._deliveries: list[tuple] = []
        self._activity_mark = 0
        self._waking: "UdpSocket | None" = None  # the socket a delivery is being made to

    def unsupported(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def read(self, kind: str, owner: Any) -> None:
        """Note that the walk read `owner`'s state (first reading counts)."""
        if kind == "namespace" and owner is not None:
            self._heard[id(owner)] = owner
        if owner is not None and id(owner) not in self._reads:
            self._reads[id(owner)] = Read(kind, owner, owner.generation)

    def _mine(self) -> bool:
        """True while the scheduler runs an event of this walk."""
        if self.sim.context is self:
            self._said += 1
            return True
        return False

    # -- scheduler context protocol ---------------------------------------------
    def on_scheduled(self, event: "Event") -> None:
        if event.time_ns != self.sim.now_ns:
            self.unsupported("timer")
            return
        if self._waking is not None and getattr(event.callback, "__self__", None) is self._waking \
                and event.priority != PRIORITY_SOFTIRQ:
            # The receiving socket wakes its reader (poll() returns): the
            # reader's next step is the program's, not this datagram's walk;
            # a replay reproduces it by delivering through `enqueue`.
            event.context = None
            return
        self.pending += 1

    def on_enter(self, event: "Event | None") -> None:
        if self.failure is None:
            self._scope = self._event_scope(event)
            self._heard = {}
            self._before = self._snapshot(self._scope)
        self._said_at_enter = self._said

    def on_exit(self, event: "Event | None") -> None:
        """Counter changes are taken around each event of the walk, so other
        traffic running in between does not count."""
        if self.failure is None:
            self._count_changes()
        if event is not None:
            if self._said == self._said_at_enter:
                self.unsupported(f"silent-step:{getattr(event.callback, '__qualname__', '?')}")
            self.pending -= 1
        if self.pending == 0:
            self.cache.finish_recording(self)

    # -- observer events ----------------------------------------------------------
    def frame(self, dev: "NetDevice", frame, outgoing: bool) -> None:
        if self._mine():
            self.read("namespace", dev.namespace)
            self._frames.append((dev, bytes(frame), outgoing))

    def hop(self, ns, dev, stage: str, verdict: str, evidence: str) -> None:
        if not self._mine():
            return
        self.read("namespace", ns)
        allowed = REPLAYABLE.get(stage, frozenset())
        if allowed is not ANY and verdict not in allowed:
            self.unsupported(f"{stage}:{verdict}")

    def drop(self, ns, dev, reason: str) -> None:
        if self._mine():
            self.read("namespace", ns)

    def ident(self, stack: "Ipv4Stack", ident: int) -> None:
        if self._mine():
            self._idents.append((stack, ident))

    def fdb_learn(self, fdb: "Fdb", mac: bytes, port: "NetDevice") -> None:
        if self._mine():
            self.read("fdb", fdb)
            self._fdb_learned.append((fdb, bytes(mac), port))

    def fdb_lookup(self, fdb: "Fdb", mac: bytes, found: bool) -> None:
        if self._mine():
            self.read("fdb", fdb)
            if found:
                self._fdb_looked_up.append((fdb, bytes(mac)))

    def neigh_use(self, table: "NeighbourTable", n: "Neighbour | None", confirm: bool) -> None:
        if not self._mine():
            return
        self.read("neighbour", table)
        if n is None or n.state.value not in SENDABLE_STATES:
            self.unsupported("neighbour-resolution")
            return
        self._neighbours.append((table, n, confirm))

    def deliver(self, sock: "UdpSocket", data: bytes, source: tuple, packet: bytes,
                dev: "NetDevice") -> None:
        if not self._mine():
            return
        self.read("socket", sock)
        self._waking = sock
        self._activity_mark = self._activity()
        self._deliveries.append((sock, source, bytes(packet), dev, bytes(data)))

    def delivered(self, sock: "UdpSocket") -> None:
        if not self._mine():
            return
        self._waking = None
        if self._activity() != self._activity_mark:
            # The receiver forwarded it (a userspace proxy): a hop, not the end.
            self._deliveries.pop()
        elif self._deliveries[-1][-1] != self.payload:
            self.unsupported("payload-rewritten")

    def echo(self, stack, handler, packet: bytes, message) -> None:
        if not self._mine():
            return
        self.read("namespace", stack.ns)
        header_len = ipv4.header_length(packet)
        if bytes(packet[header_len + ICMP_HEADER:]) != self.payload:
            self.unsupported("payload-rewritten")
        self._deliveries.append(("echo", handler, bytes(packet), header_len))

    def _activity(self) -> int:
        return len(self._frames) + len(self._idents) + self.pending

    def _event_scope(self, event: "Event | None") -> list["Namespace"] | None:
        """The namespace an event runs in: its callback's device's, stack's or
        socket's; for the send that starts the walk, the sender's (read
        before it). None (every namespace) when the callback names none."""
        if event is None:
            return [read.owner for read in self._reads.values() if read.kind == "namespace"]
        owner = getattr(event.callback, "__self__", None)
        if isinstance(owner, Namespace):
            return [owner]
        ns = getattr(owner, "namespace", None)
        if ns is None:
            ns = getattr(owner, "ns", None)
        return [ns] if isinstance(ns, Namespace) else None

    def _count_changes(self) -> None:
        if self._scope is not None:
            inside = {id(ns) for ns in self._scope}
            if any(key not in inside for key in self._heard):
                self.unsupported("counters-outside-snapshot")
                return
        before = self._before
        for key, (target, name, value) in self._snapshot(self._scope).items():
            old = before.get(key)
            delta = value - (old[2] if old is not None else 0)
            if delta:
                self._counters.append((target, name, delta))

    def _snapshot(self, scope: list["Namespace"] | None) -> dict:
        values: dict = {}
        for ns in self.cache.namespaces if scope is None else scope:
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
        for read in self._reads.values():
            if not read.holds():
                raise Unsupported(f"{read.kind}-changed-during-walk")
        idents = self._ident_sources()
        entry = FlowEntry(list(self._reads.values()), [], counters=self._counters,
                          fdb_learned=self._fdb_learned, fdb_looked_up=self._fdb_looked_up,
                          neighbours=self._neighbours)
        by_frame: dict[tuple[bytes, bool], int] = {}

        def template_of(frame: bytes, ethernet: bool) -> int:
            key = (frame, ethernet)
            if key not in by_frame:
                by_frame[key] = len(entry.templates)
                entry.templates.append(FrameTemplate(frame, ethernet, self.payload, idents))
            return by_frame[key]

        entry.frames = [(dev, template_of(frame, dev.has_l2), outgoing)
                        for dev, frame, outgoing in self._frames]
        for delivery in self._deliveries:
            if delivery[0] == "echo":
                _, handler, packet, header_len = delivery
                entry.delivery = ("echo", handler, template_of(packet, False), header_len)
            else:
                sock, source, packet, dev, _ = delivery
                entry.delivery = ("socket", sock, source, template_of(packet, False), dev)
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
