"""What a recorded walk did (FlowEntry), and M datagrams walking it (Replay)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emu.fastpath.templates import FrameTemplate, IdentSource
from emu.net.neighbour import Nud

if TYPE_CHECKING:
    import numpy as np

    from emu.net.device import NetDevice
    from emu.net.fdb import Fdb
    from emu.net.neighbour import Neighbour, NeighbourTable
    from emu.net.stack import Ipv4Stack

SENDABLE_STATES = ("REACHABLE", "DELAY", "PROBE", "PERMANENT")
SENDABLE = frozenset(Nud(state) for state in SENDABLE_STATES)


def _is_data_descriptor(cls: type, name: str) -> bool:
    """True when setting `name` on an instance of `cls` runs code (a property)."""
    return hasattr(getattr(cls, name, None), "__set__")


@dataclass(frozen=True)
class Read:
    """State a walk read: an owner of a generation (a namespace, an FDB, a
    neighbour table, a socket) and the generation it had."""

    kind: str
    owner: Any
    generation: int

    def holds(self) -> bool:
        return self.owner.generation == self.generation


@dataclass
class FlowEntry:
    """A replayable walk: the effects of one datagram's whole same-instant chain.

    Valid while every generation it read is unchanged and, at the replay's
    instant, every FDB entry it looked up is live (FDB ageing is lazy, so it
    moves no generation) and every neighbour it used is in a state where the
    slow path just sends."""

    reads: list[Read]
    templates: list[FrameTemplate]
    frames: list[tuple["NetDevice", int, bool]] = field(default_factory=list)  # in tap order, outgoing
    ident_counts: dict["Ipv4Stack", int] = field(default_factory=dict)
    counters: list[tuple[Any, str, int]] = field(default_factory=list)
    fdb_learned: list[tuple["Fdb", bytes, "NetDevice"]] = field(default_factory=list)
    fdb_looked_up: list[tuple["Fdb", bytes]] = field(default_factory=list)
    neighbours: list[tuple["NeighbourTable", "Neighbour", bool]] = field(default_factory=list)
    # ("socket", socket, source, packet template, device) or ("echo", handler, template, IP header length)
    delivery: tuple | None = None

    def __post_init__(self) -> None:
        self.tap_plan = None  # where its frames go (deferred.py's TapPlan), made at the first replay
        # Counters sorted once by how they are reached, so a replay only adds:
        # a mapping (a Counter, or the instance dict of a plain attribute) or,
        # for an attribute behind a property, getattr/setattr.
        self.counted: list[tuple[Any, str, int]] = []
        self.attributes: list[tuple[Any, str, int]] = []
        for target, name, delta in self.counters:
            if isinstance(target, Counter):
                self.counted.append((target, name, delta))
            elif name in getattr(target, "__dict__", {}) and not _is_data_descriptor(type(target), name):
                self.counted.append((vars(target), name, delta))
            else:
                self.attributes.append((target, name, delta))
        self.generations = [(read.owner, read.generation) for read in self.reads]

    @property
    def wakes_reader(self) -> bool:
        """The datagram ends in a socket a program polls (nc): delivering it
        wakes the program."""
        delivery = self.delivery
        return delivery is not None and delivery[0] == "socket" and delivery[1].on_wake is not None

    def invalid_reason(self, now_ns: int) -> str | None:
        for owner, generation in self.generations:
            if owner.generation != generation:
                return next(f"{read.kind}-changed" for read in self.reads if not read.holds())
        for fdb, mac in self.fdb_looked_up:
            if not fdb.is_live(mac, now_ns):
                return "fdb-entry-aged"
        for table, n, _ in self.neighbours:
            if table.entries.get(n.ip) is not n or n.state not in SENDABLE:
                return "neighbour-not-sendable"
        return None


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
        # Per datagram, each stack's first identifier, when the datagrams are
        # not one walk after the other (deferred.py: replays of many instants).
        self.row_bases: dict["Ipv4Stack", "np.ndarray"] | None = None
        self._one: dict[int, bytes] = {}
        self._one_sum: int | None = None

    def one(self, template: int) -> bytes:
        """The frame of `template` for a replay of one datagram (no numpy)."""
        built = self._one.get(template)
        if built is None:
            if self._one_sum is None:
                from emu.wire.checksum import ones_sum
                self._one_sum = ones_sum(self.raw_payloads[0])
            built = self._one[template] = self.entry.templates[template].build_one(
                self.raw_payloads[0], self._one_sum, self.bases)
        return built

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
        the identifiers base + j * per_datagram + 0 .. per_datagram - 1
        (or row_bases[j] + 0 .. per_datagram - 1)."""
        import numpy as np
        idents = self._idents.get(source)
        if idents is None and self.row_bases is not None:
            idents = self._idents[source] = (self.row_bases[source.stack] + np.uint64(source.index)) \
                & np.uint64(0xFFFF)
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
