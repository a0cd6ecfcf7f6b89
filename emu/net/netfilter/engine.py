"""Walking a packet through iptables chains, as the kernel's ipt_do_table does.

A rule matches when all of its matches do; a matching rule's counters grow
by one packet and the packet's IP length in bytes, then its target decides:
ACCEPT and DROP end the table, RETURN goes back to the rule after the jump
(or to the policy at the end of a built-in chain), a jump pushes a return
point (a goto does not), MARK changes the packet's mark and goes on, REJECT
drops and asks for an ICMP error or a TCP reset, and a NAT target ends the
nat table with the mapping to apply. The end of a user chain returns; the end
of a built-in chain applies its policy and counts it.

`PacketInfo` is what the matches read; the stack fills it from the packet
(emu.wire codecs) and from where the packet is (hook, devices, conntrack).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Callable

from emu.net.netfilter.rules import Chain, Match, Rule, Ruleset, Target
from emu.wire.addr import ipv4_is_multicast

MAX_JUMPS = 512
"""A chain loop iptables-restore would refuse; a ruleset with a deeper jump
stack is refused at run time with a drop reason rather than a crash."""


@dataclass
class PacketInfo:
    """The fields iptables matches read (addresses as 4-byte values)."""

    src: bytes
    dst: bytes
    protocol: int
    length: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    in_dev: str | None = None
    out_dev: str | None = None
    mark: int = 0
    ctstate: str = "NEW"          # INVALID, NEW, ESTABLISHED, RELATED, UNTRACKED
    ct_status: frozenset = frozenset()  # {"SNAT", "DNAT"} of the connection, for --ctstate SNAT/DNAT
    bridged: bool = False         # br_netfilter: the packet is being bridged (physdev-is-bridged)
    physdev_in: str | None = None  # br_netfilter: the bridge port it came in on
    physdev_out: str | None = None  # ... and the one it leaves by (FORWARD on)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one table: ACCEPT, DROP or REJECT (with `reject_with`),
    and for the nat table the NAT target that decided (None: no mapping)."""

    action: str
    reject_with: str | None = None
    nat: Target | None = None
    decided_by: str = ""  # the rule's text, or "policy ACCEPT" of the built-in chain


@dataclass
class Evaluator:
    """Runs chains against packets for one namespace: `address_type(address)`
    is the type the namespace's routing gives an address (LOCAL, BROADCAST,
    UNICAST, ... as xt_addrtype asks), `rng` draws statistic --mode random
    (seeded, per namespace)."""

    ruleset: Ruleset
    address_type: Callable[[bytes], str]
    rng: random.Random
    nth_counters: dict[int, int] = field(default_factory=dict)

    def run(self, table: str, chain: str, packet: PacketInfo) -> Verdict:
        """Traverse built-in `chain` of `table` with `packet` (its mark may change)."""
        chains = self.ruleset.table(table).chains
        start = chains[chain]
        stack: list[tuple[Chain, int]] = []
        current, index = start, 0
        while True:
            if index >= len(current.rules):
                if stack:
                    current, index = stack.pop()
                    continue
                return self._policy(start, packet)
            rule = current.rules[index]
            index += 1
            if not all(self._matches(match, rule, packet) for match in rule.matches):
                continue
            rule.packets += 1
            rule.bytes += packet.length
            target = rule.target
            if target is None:
                continue
            name = target.name
            if name in ("ACCEPT", "DROP"):
                return Verdict(name, decided_by=rule.text)
            if name == "RETURN":
                if stack:
                    current, index = stack.pop()
                    continue
                return self._policy(start, packet)
            if name == "MARK":
                value, mask = target.option("xmark")
                packet.mark = ((packet.mark & ~mask) ^ value) & 0xFFFFFFFF
                continue
            if name == "REJECT":
                return Verdict("DROP", reject_with=target.option("reject-with"), decided_by=rule.text)
            if name in ("DNAT", "SNAT", "MASQUERADE"):
                return Verdict("ACCEPT", nat=target, decided_by=rule.text)
            if not target.goto:
                stack.append((current, index))
                if len(stack) > MAX_JUMPS:
                    return Verdict("DROP", decided_by=f"{rule.text} (more than {MAX_JUMPS} nested jumps)")
            current, index = chains[name], 0

    @staticmethod
    def _policy(chain: Chain, packet: PacketInfo) -> Verdict:
        chain.packets += 1
        chain.bytes += packet.length
        policy = chain.policy or "ACCEPT"
        return Verdict(policy, decided_by=f"policy {policy}")

    def _matches(self, match: Match, rule: Rule, packet: PacketInfo) -> bool:
        return self._test(match, rule, packet) != match.negated

    def _test(self, match: Match, rule: Rule, packet: PacketInfo) -> bool:
        kind, value = match.kind, match.value
        if kind == "source":
            return IPv4Address(packet.src) in value
        if kind == "destination":
            return IPv4Address(packet.dst) in value
        if kind == "protocol":
            return value == 0 or packet.protocol == value
        if kind == "in":
            return _interface(value, packet.in_dev)
        if kind == "out":
            return _interface(value, packet.out_dev)
        if kind == "dport":
            return packet.dport is not None and value[0] <= packet.dport <= value[1]
        if kind == "sport":
            return packet.sport is not None and value[0] <= packet.sport <= value[1]
        if kind == "comment":
            return True
        if kind == "mark":
            mark, mask = value
            return packet.mark & mask == mark
        if kind == "ctstate":
            return packet.ctstate in value or bool(value & packet.ct_status)
        if kind in ("addrtype-dst", "addrtype-src"):
            address = packet.dst if kind == "addrtype-dst" else packet.src
            return self.address_type(address) in value
        if kind == "statistic-random":
            return self.rng.random() < value
        if kind == "statistic-nth":
            every, position = value
            seen = self.nth_counters.get(id(match), every - 1)
            seen = (seen + 1) % every  # xt_statistic: the counter wraps at `every`
            self.nth_counters[id(match)] = seen
            return seen == position
        if kind == "physdev-is-bridged":
            return packet.bridged
        if kind == "physdev-in":
            return _interface(value, packet.physdev_in)
        if kind == "physdev-out":
            return _interface(value, packet.physdev_out)
        if kind == "icmp-type":
            wanted_type, wanted_code = value
            return (packet.icmp_type is not None and (wanted_type is None or packet.icmp_type == wanted_type)
                    and (wanted_code is None or packet.icmp_code == wanted_code))
        raise AssertionError(f"match kind {kind} has no test")  # the parser creates no other kind


def _interface(pattern: str, name: str | None) -> bool:
    """iptables' -i/-o: exact, or a prefix when the pattern ends in '+'."""
    if name is None:
        return False
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def address_type_of(address: bytes, local: Callable[[bytes], bool]) -> str:
    """The address type for the cases a node's rules ask about, given which
    addresses are the namespace's own (its broadcast addresses count as LOCAL
    too in Linux's local table only for the namespace's own; here: LOCAL)."""
    if local(address):
        return "LOCAL"
    if address == b"\xff\xff\xff\xff":
        return "BROADCAST"
    if ipv4_is_multicast(address):
        return "MULTICAST"
    if address == b"\x00\x00\x00\x00":
        return "UNSPEC"
    return "UNICAST"


