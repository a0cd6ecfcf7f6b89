"""The netfilter hooks of one namespace, in the order Linux runs them for IPv4.

    PREROUTING   conntrack (-200), nat DNAT (-100)
    INPUT        filter (0), nat SNAT (100), conntrack confirm
    FORWARD      filter (0)
    OUTPUT       conntrack (-200), nat DNAT (-100), filter (0)
    POSTROUTING  nat SNAT (100), conntrack confirm

A packet's netfilter state (its connection, direction, ctstate, mark) lives
in a `PacketState` the stack carries from hook to hook inside the
namespace, as an skb carries nfct and mark. The nat table is walked only for
the first packet of a connection, once per manipulation; later packets are
translated from the connection. A namespace without rules (every policy
ACCEPT, no rule) is never tracked: `active` is False and the stack skips
the hooks, so the data path of a cluster without netfilter stays as it was.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Callable

from emu.net.netfilter.conntrack import DST, SRC, Conntrack, Tracked
from emu.net.netfilter.engine import Evaluator, PacketInfo, Verdict
from emu.net.netfilter.listing import list_table
from emu.net.netfilter.rules import Ruleset, parse_rules
from emu.wire import nat as wire_nat
from emu.wire.errors import WireError

ICMP, TCP, UDP = 1, 6, 17


@dataclass
class PacketState:
    """What netfilter remembers about one packet inside one namespace."""

    tracked: Tracked
    mark: int = 0
    in_dev: str | None = None
    bridged: bool = False


@dataclass(frozen=True)
class HookResult:
    """ACCEPT (the packet, possibly rewritten in place, goes on), DROP, or
    REJECT with what to send back (`reject_with`, iptables' names); `rule`
    names the chain/rule that decided a drop, for the drop reason."""

    verdict: str
    reject_with: str | None = None
    where: str = ""


class Netfilter:
    """iptables + conntrack of one network namespace."""

    def __init__(self, rng: random.Random, address_type: Callable[[bytes], str],
                 masquerade_source: Callable[[str, bytes], bytes | None]) -> None:
        self.ruleset = Ruleset()
        parse_rules("", self.ruleset)
        self.conntrack = Conntrack(random.Random(rng.random()))
        self.evaluator = Evaluator(self.ruleset, address_type, random.Random(rng.random()))
        self.masquerade_source = masquerade_source
        self.active = False

    def load(self, text: str) -> None:
        """iptables-restore: each table the text holds is replaced; raises RulesError."""
        parse_rules(text, self.ruleset)
        self.active = not self.ruleset.is_empty()

    # -- the hooks -----------------------------------------------------------

    def prerouting(self, packet: bytearray, in_dev: str, now_ns: int, bridged: bool = False) -> tuple[
            HookResult, PacketState]:
        state = PacketState(self.conntrack.track(packet, now_ns), in_dev=in_dev, bridged=bridged)
        result = self._nat(packet, state, "PREROUTING", DST, None)
        return result, state

    def local_out(self, packet: bytearray, out_dev: str | None, now_ns: int) -> tuple[HookResult, PacketState]:
        state = PacketState(self.conntrack.track(packet, now_ns))
        result = self._nat(packet, state, "OUTPUT", DST, out_dev)
        if result.verdict != "ACCEPT":
            return result, state
        return self._filter(packet, state, "OUTPUT", out_dev), state

    def local_in(self, packet: bytearray, state: PacketState, now_ns: int) -> HookResult:
        result = self._filter(packet, state, "INPUT", None)
        if result.verdict != "ACCEPT":
            return result
        result = self._nat(packet, state, "INPUT", SRC, None)
        if result.verdict == "ACCEPT":
            self._confirm(state, packet, now_ns)
        return result

    def forward(self, packet: bytearray, state: PacketState, out_dev: str) -> HookResult:
        return self._filter(packet, state, "FORWARD", out_dev)

    def postrouting(self, packet: bytearray, state: PacketState, out_dev: str, now_ns: int) -> HookResult:
        result = self._nat(packet, state, "POSTROUTING", SRC, out_dev)
        if result.verdict == "ACCEPT":
            self._confirm(state, packet, now_ns)
        return result

    # -- internals -----------------------------------------------------------

    def _info(self, packet: bytes | bytearray, state: PacketState, out_dev: str | None) -> PacketInfo:
        protocol = packet[9]
        ihl = (packet[0] & 0x0F) * 4
        info = PacketInfo(bytes(packet[12:16]), bytes(packet[16:20]), protocol, len(packet),
                          in_dev=state.in_dev, out_dev=out_dev, mark=state.mark, ctstate=state.tracked.state,
                          bridged=state.bridged)
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
        if protocol == ICMP and len(packet) >= ihl + 2 and packet[6] & 0x1F == 0 and packet[7] == 0:
            info.icmp_type, info.icmp_code = packet[ihl], packet[ihl + 1]
        return info

    def _filter(self, packet: bytearray, state: PacketState, chain: str, out_dev: str | None) -> HookResult:
        info = self._info(packet, state, out_dev)
        verdict = self.evaluator.run("filter", chain, info)
        state.mark = info.mark
        return _result(verdict, f"filter/{chain}")

    def _nat(self, packet: bytearray, state: PacketState, chain: str, manip: str,
             out_dev: str | None) -> HookResult:
        tracked = state.tracked
        connection = tracked.connection
        if connection is None:
            return HookResult("ACCEPT")
        if tracked.state == "NEW" and manip not in connection.nat_done:
            info = self._info(packet, state, out_dev)
            verdict = self.evaluator.run("nat", chain, info)
            state.mark = info.mark
            if verdict.action != "ACCEPT":
                return _result(verdict, f"nat/{chain}")
            self._bind(connection, manip, verdict, out_dev, packet)
        self.conntrack.translate(tracked, packet, manip)
        return HookResult("ACCEPT")

    def _bind(self, connection, manip: str, verdict: Verdict, out_dev: str | None, packet: bytes) -> None:
        target = verdict.nat
        if target is None:
            self.conntrack.bind(connection, manip, None, None)
            return
        if target.name == "MASQUERADE":
            source = self.masquerade_source(out_dev or "", bytes(packet[16:20]))
            ports = target.option("ports")
            self.conntrack.bind(connection, SRC, source, ports, random_fully=bool(target.option("random-fully")))
            return
        first, last, ports = target.option("to")
        address = first if first == last else IPv4Address(
            int(first) + self.conntrack.rng.randrange(int(last) - int(first) + 1))
        self.conntrack.bind(connection, manip, address.packed, ports,
                            random_fully=bool(target.option("random-fully")))

    def _confirm(self, state: PacketState, packet: bytes | bytearray, now_ns: int) -> None:
        self.conntrack.seen(state.tracked, packet, now_ns)

    # -- what stats.json shows -----------------------------------------------

    def show(self, now_ns: int) -> dict:
        """`iptables -L -v -n -x` per table and `conntrack -L` lines."""
        return {"iptables": {name: list_table(self.ruleset.tables[name]) for name in ("filter", "nat")},
                "conntrack": self.conntrack.listing(now_ns)}


def _result(verdict: Verdict, where: str) -> HookResult:
    if verdict.action == "ACCEPT":
        return HookResult("ACCEPT")
    if verdict.reject_with is not None:
        return HookResult("REJECT", verdict.reject_with, where)
    return HookResult("DROP", None, where)
