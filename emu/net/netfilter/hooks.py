"""The netfilter hooks of one namespace, in the order Linux runs them for IPv4.

    PREROUTING   conntrack (-200), nat DNAT (-100)
    INPUT        filter (0), nat SNAT (100), conntrack confirm
    FORWARD      filter (0)
    OUTPUT       conntrack (-200), nat DNAT (-100), filter (0)
    POSTROUTING  nat SNAT (100), conntrack confirm

The stack (emu.net.stack) calls one method per hook where Linux's NF_HOOK
sits and acts on the `HookResult` (a drop, a REJECT's ICMP error or RST, or
the packet rewritten in place). A packet's netfilter state (its
connection, direction, ctstate, mark) lives in a `PacketState` the stack
carries from hook to hook inside the namespace, as an skb carries nfct and
mark; through `lo` it travels with the packet (`loop` / `unloop`), as the
skb keeps its conntrack across the loopback device.

Which hooks run is what Linux registers per namespace: a table's chains run
once iptables-restore loaded that table, and connection tracking (with
nf_defrag_ipv4) runs once the nat table is loaded or a rule uses
`-m conntrack` (nf_ct_netns_get). The nat table is walked only for the
first packet of a connection, once per manipulation; later packets are
translated from the connection. A namespace with no rule, every policy
ACCEPT and nothing tracked has `active` False and the stack skips the
hooks, so the data path of a cluster without netfilter stays as it was.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Callable

from emu.net.netfilter.conntrack import DST, ORIGINAL, REPLY, SRC, Conntrack, Tracked, Tuple, packet_tuple
from emu.net.netfilter.engine import Evaluator, PacketInfo, Verdict
from emu.net.netfilter.listing import list_table
from emu.net.netfilter.rules import Ruleset, parse_rules
import emu.wire.ipv4 as ipv4
from emu.wire import icmp
from emu.wire import nat as wire_nat
from emu.wire.errors import WireError

ICMP, TCP, UDP = 1, 6, 17
UNTRACKED = Tracked(None, ORIGINAL, "UNTRACKED")
LOOPED_KEPT = 64


@dataclass
class PacketState:
    """What netfilter remembers about one packet inside one namespace."""

    tracked: Tracked
    mark: int = 0
    in_dev: str | None = None
    bridged: bool = False
    confirmed: bool = False  # conntrack's update done (a looped-back packet is not counted twice)
    frag_max_size: int = 0  # reassembled by nf_defrag_ipv4: its largest fragment's length
    physdev_in: str | None = None  # br_netfilter: the bridge port it came in on
    physdev_out: str | None = None  # br_netfilter: the port it is bridged to (bridged from FORWARD on)
    bridge_routed: bool = False  # br_nf_pre_routing_finish routed it after a DNAT (its IPCB, and so
    # IPSKB_DOREDIRECT, is overwritten by the bridge: no redirect)
    host_copy: bool = False  # a promiscuous bridge's copy of a bridged DNAT frame (PACKET_HOST: routed)


@dataclass(frozen=True)
class HookResult:
    """ACCEPT (the packet, possibly rewritten in place, goes on), DROP, or
    REJECT with what to send back (`reject_with`, iptables' names); `where`
    names the table/chain that decided a drop; `evidence` says what each
    step did, for the trace."""

    verdict: str
    reject_with: str | None = None
    where: str = ""
    evidence: str = ""


class Netfilter:
    """iptables + conntrack of one network namespace.

    `address_type(address)` answers -m addrtype; `masquerade_source(out_dev,
    nexthop)` is the address MASQUERADE takes (inet_select_addr on the out
    device for the next hop); `on_change` is called when rules are loaded
    (the namespace's generation moves, so no cached walk survives)."""

    def __init__(self, rng: random.Random, address_type: Callable[[bytes], str],
                 masquerade_source: Callable[[str, bytes], bytes | None],
                 on_change: Callable[[], None] | None = None) -> None:
        self.ruleset = Ruleset()
        parse_rules("", self.ruleset)
        self.conntrack = Conntrack(random.Random(rng.random()))
        self.evaluator = Evaluator(self.ruleset, address_type, random.Random(rng.random()))
        self.masquerade_source = masquerade_source
        self._on_change = on_change
        self.loaded: set[str] = set()  # tables iptables-restore instantiated
        self.active = False
        self.tracking = False
        self._looped: OrderedDict[bytes, PacketState] = OrderedDict()

    def load(self, text: str) -> None:
        """iptables-restore: each table the text holds is replaced; raises RulesError."""
        parse_rules(text, self.ruleset)
        self.loaded |= {line.strip()[1:].strip() for line in text.splitlines() if line.strip().startswith("*")}
        self.tracking = "nat" in self.loaded or any(
            match.kind == "ctstate" for table in self.ruleset.tables.values()
            for chain in table.chains.values() for rule in chain.rules for match in rule.matches)
        self.active = self.tracking or not self.ruleset.is_empty()
        if self._on_change is not None:
            self._on_change()

    # -- the hooks -----------------------------------------------------------

    def prerouting(self, packet: bytearray, in_dev: str, now_ns: int, physdev_in: str | None = None) -> tuple[
            HookResult, PacketState]:
        """PREROUTING; `physdev_in`: the bridge port of a frame br_netfilter
        hands over (`in_dev` is then the bridge, as setup_pre_routing sets it)."""
        tracked = self.conntrack.track(packet, now_ns) if self.tracking else UNTRACKED
        state = PacketState(tracked, in_dev=in_dev, physdev_in=physdev_in)
        steps = self._ct_step(tracked)
        result = self._nat(packet, state, "PREROUTING", DST, None, None, steps)
        return result, state

    def local_out(self, packet: bytearray, out_dev: str | None, now_ns: int,
                  related: PacketState | None = None) -> tuple[HookResult, PacketState]:
        """OUTPUT. `related`: the state of the packet this one answers for
        netfilter itself (REJECT's TCP reset, nf_ct_attach): RELATED to its
        connection, in the other direction."""
        if related is not None and related.tracked.connection is not None:
            connection = related.tracked.connection
            direction = REPLY if related.tracked.direction == ORIGINAL else ORIGINAL
            tracked = Tracked(connection, direction, "RELATED", related_to=_quoted_tuple(packet, connection))
        elif self.tracking:
            tracked = self.conntrack.track(packet, now_ns)
        else:
            tracked = UNTRACKED
        state = PacketState(tracked)
        steps = self._ct_step(tracked)
        result = self._nat(packet, state, "OUTPUT", DST, out_dev, None, steps)
        if result.verdict != "ACCEPT":
            return result, state
        return self._filter(packet, state, "OUTPUT", out_dev, steps), state

    def local_in(self, packet: bytearray, state: PacketState, now_ns: int) -> HookResult:
        steps: list[str] = []
        result = self._filter(packet, state, "INPUT", None, steps)
        if result.verdict != "ACCEPT":
            return result
        result = self._nat(packet, state, "INPUT", SRC, None, None, steps)
        if result.verdict == "ACCEPT":
            result = self._confirm(state, packet, now_ns, steps)
        return result

    def forward(self, packet: bytearray, state: PacketState, out_dev: str) -> HookResult:
        return self._filter(packet, state, "FORWARD", out_dev, [])

    def postrouting(self, packet: bytearray, state: PacketState, out_dev: str, nexthop: bytes,
                    now_ns: int) -> HookResult:
        steps: list[str] = []
        result = self._nat(packet, state, "POSTROUTING", SRC, out_dev, nexthop, steps)
        if result.verdict == "ACCEPT":
            result = self._confirm(state, packet, now_ns, steps)
        return result

    # -- a packet's state across lo ------------------------------------------

    def loop(self, packet: bytes, state: PacketState) -> None:
        """`packet` leaves by lo (or a bridge passes it up after br_netfilter's
        PREROUTING): it comes back into the stack with the same state. Only
        the last few are kept (a packet the stack then drops before looking)."""
        self._looped[bytes(packet)] = state
        if len(self._looped) > LOOPED_KEPT:
            self._looped.popitem(last=False)

    def unloop(self, packet: bytes) -> PacketState | None:
        return self._looped.pop(bytes(packet), None) if self._looped else None

    def is_host_copy(self, packet) -> bool:
        """A packet a bridge passed up that the stack takes although its
        destination MAC is another host's (see emu.net.br_netfilter)."""
        if not self._looped:
            return False
        state = self._looped.get(bytes(packet))
        return state is not None and state.host_copy

    # -- internals -----------------------------------------------------------

    def _ct_step(self, tracked: Tracked) -> list[str]:
        return [f"ct {tracked.state}"] if tracked is not UNTRACKED else []

    def _info(self, packet: bytes | bytearray, state: PacketState, out_dev: str | None) -> PacketInfo:
        protocol = ipv4.protocol(packet)
        ihl = ipv4.header_length(packet)
        info = PacketInfo(ipv4.src(packet), ipv4.dst(packet), protocol, len(packet),
                          in_dev=state.in_dev, out_dev=out_dev, mark=state.mark, ctstate=state.tracked.state,
                          bridged=state.bridged, physdev_in=state.physdev_in, physdev_out=state.physdev_out)
        connection = state.tracked.connection
        if connection is not None:
            info.ct_status = frozenset(flag.replace("_NAT", "NAT") for flag in connection.status
                                       if flag in ("SRC_NAT", "DST_NAT"))
        try:
            ports = wire_nat.l4_ports(packet)
        except WireError:
            ports = None
        if ports is not None and protocol in (TCP, UDP):
            info.sport, info.dport = ports
        if protocol == ICMP and len(packet) >= ihl + 2 and not ipv4.flags_offset(packet) & ipv4.OFFSET_MASK:
            message = packet[ihl:]
            info.icmp_type, info.icmp_code = icmp.message_type(message), icmp.message_code(message)
        return info

    def _filter(self, packet: bytearray, state: PacketState, chain: str, out_dev: str | None,
                steps: list[str]) -> HookResult:
        if "filter" not in self.loaded:
            return _result(Verdict("ACCEPT"), "", steps)
        info = self._info(packet, state, out_dev)
        verdict = self.evaluator.run("filter", chain, info)
        state.mark = info.mark
        steps.append(f"filter/{chain} {verdict.decided_by}")
        return _result(verdict, f"filter/{chain}", steps)

    def _nat(self, packet: bytearray, state: PacketState, chain: str, manip: str,
             out_dev: str | None, nexthop: bytes | None, steps: list[str]) -> HookResult:
        tracked = state.tracked
        connection = tracked.connection
        if connection is None or "nat" not in self.loaded:
            return _result(Verdict("ACCEPT"), "", steps)
        if tracked.state == "NEW" and manip not in connection.nat_done:
            info = self._info(packet, state, out_dev)
            verdict = self.evaluator.run("nat", chain, info)
            state.mark = info.mark
            steps.append(f"nat/{chain} {verdict.decided_by}")
            if verdict.action != "ACCEPT":
                return _result(verdict, f"nat/{chain}", steps)
            self._bind(connection, manip, verdict, out_dev, nexthop, packet)
        before = (ipv4.addresses(packet), wire_nat.l4_ports(packet))
        self.conntrack.translate(tracked, packet, manip)
        after = (ipv4.addresses(packet), wire_nat.l4_ports(packet))
        if after != before:
            steps.append(f"{'DNAT' if manip == DST else 'SNAT'} {_endpoints(before)} -> {_endpoints(after)}")
        return _result(Verdict("ACCEPT"), "", steps)

    def _bind(self, connection, manip: str, verdict: Verdict, out_dev: str | None, nexthop: bytes | None,
              packet: bytes) -> None:
        target = verdict.nat
        if target is None:
            self.conntrack.bind(connection, manip, None, None)
            return
        if target.name == "MASQUERADE":
            source = self.masquerade_source(out_dev or "", nexthop if nexthop is not None else ipv4.dst(packet))
            ports = target.option("ports")
            self.conntrack.bind(connection, SRC, source, ports, random_fully=bool(target.option("random-fully")))
            return
        first, last, ports = target.option("to")
        address = first if first == last else IPv4Address(
            int(first) + self.conntrack.rng.randrange(int(last) - int(first) + 1))
        self.conntrack.bind(connection, manip, address.packed, ports,
                            random_fully=bool(target.option("random-fully")))

    def _confirm(self, state: PacketState, packet: bytes | bytearray, now_ns: int,
                 steps: list[str]) -> HookResult:
        """The last hook: conntrack's per-protocol update and, for a new
        connection, its insertion (a clash with a connection inserted
        meanwhile drops the packet, as __nf_conntrack_confirm does)."""
        if state.confirmed or state.tracked.connection is None:
            return _result(Verdict("ACCEPT"), "", steps)
        state.confirmed = True
        if not self.conntrack.seen(state.tracked, packet, now_ns):
            steps.append("ct confirm: clash")
            return _result(Verdict("DROP"), "conntrack", steps)
        return _result(Verdict("ACCEPT"), "", steps)

    # -- what stats.json shows -----------------------------------------------

    def show(self, now_ns: int) -> dict:
        """`iptables -L -v -n -x` per table and `conntrack -L` lines."""
        return {"iptables": {name: list_table(self.ruleset.tables[name]) for name in ("filter", "nat")},
                "conntrack": self.conntrack.listing(now_ns)}


def _quoted_tuple(packet: bytes | bytearray, connection) -> Tuple | None:
    """For an ICMP error netfilter sends about a packet (REJECT), the tuple
    it quotes, so it is translated as an error (outer and quote); None for
    anything else (a TCP reset)."""
    try:
        inner = wire_nat.icmp_error_inner(packet)
    except WireError:
        return None
    if inner is None:
        return None
    return packet_tuple(bytes(packet[inner:])) or connection.original


def _endpoints(view: tuple[bytes, tuple[int, int] | None]) -> str:
    addresses, ports = view
    src, dst = IPv4Address(addresses[:4]), IPv4Address(addresses[4:])
    if ports is None:
        return f"{src} > {dst}"
    return f"{src}:{ports[0]} > {dst}:{ports[1]}"


def _result(verdict: Verdict, where: str, steps: list[str]) -> HookResult:
    evidence = "; ".join(steps)
    if verdict.action == "ACCEPT":
        return HookResult("ACCEPT", evidence=evidence)
    if verdict.reject_with is not None:
        return HookResult("REJECT", verdict.reject_with, where, evidence)
    return HookResult("DROP", None, where, evidence)
