"""Rule counters as `iptables -L -v -n -x` and `iptables-save -c` show them.

`list_table` gives, per chain, the policy and its counters and every rule
with its packets and bytes, keyed the way `iptables-save -c` prints rules
(`[packets:bytes] -A CHAIN ...`), so a kernel run's counters compare rule by
rule; `listing_lines` renders the same as `iptables -L -v -n -x` columns
(pkts, bytes, target, prot, opt, in, out, source, destination) for reading.
"""

from __future__ import annotations

from emu.net.netfilter.rules import Chain, Rule, Table

_PROTOCOL_NAMES = {0: "all", 1: "icmp", 6: "tcp", 17: "udp"}


def list_table(table: Table) -> dict:
    """{chain: {"policy", "packets", "bytes", "references", "rules": [...]}} of one table."""
    references = _references(table)
    chains = {}
    for name, chain in table.chains.items():
        entry: dict = {"policy": chain.policy, "rules": [
            {"rule": rule.text, "packets": rule.packets, "bytes": rule.bytes} for rule in chain.rules]}
        if chain.policy is not None:
            entry["packets"], entry["bytes"] = chain.packets, chain.bytes
        else:
            entry["references"] = references.get(name, 0)
        chains[name] = entry
    return chains


def save_lines(table: Table) -> list[str]:
    """The table as `iptables-save -c` prints it."""
    lines = [f"*{table.name}"]
    for chain in table.chains.values():
        policy = chain.policy or "-"
        lines.append(f":{chain.name} {policy} [{chain.packets}:{chain.bytes}]")
    for chain in table.chains.values():
        lines.extend(f"[{rule.packets}:{rule.bytes}] {rule.text}" for rule in chain.rules)
    lines.append("COMMIT")
    return lines


def listing_lines(table: Table) -> list[str]:
    """`iptables -t TABLE -L -v -n -x`, column for column as iptables prints them."""
    references = _references(table)
    lines: list[str] = []
    for chain in table.chains.values():
        if lines:
            lines.append("")
        lines.append(_header(chain, references.get(chain.name, 0)))
        lines.append(f"{'pkts':>8} {'bytes':>10} {'target':<9}  prot opt {'in':<6} {'out':<6}  "
                     f"{'source':<19}  {'destination':<19} ".rstrip())
        lines.extend(_rule_line(rule) for rule in chain.rules)
    return lines


def _header(chain: Chain, references: int) -> str:
    if chain.policy is not None:
        return f"Chain {chain.name} (policy {chain.policy} {chain.packets} packets, {chain.bytes} bytes)"
    return f"Chain {chain.name} ({references} references)"


def _rule_line(rule: Rule) -> str:
    protocol, source, destination, in_dev, out_dev = " all", "0.0.0.0/0", "0.0.0.0/0", "*", "*"
    extras: list[str] = []
    for match in rule.matches:
        bang = "!" if match.negated else ""
        if match.kind == "protocol":
            protocol = f"{'!' if match.negated else ' '}{_PROTOCOL_NAMES.get(match.value, match.value)}"
        elif match.kind == "source":
            source = f"{bang}{_cidr(match.value)}"
        elif match.kind == "destination":
            destination = f"{bang}{_cidr(match.value)}"
        elif match.kind == "in":
            in_dev = f"{bang}{match.value}"
        elif match.kind == "out":
            out_dev = f"{bang}{match.value}"
        else:
            extras.append(_match_text(match, protocol.strip()))
    target = rule.target.name if rule.target is not None else ""
    if rule.target is not None:
        extras.append(_target_text(rule.target))
    text = (f"{rule.packets:>8} {rule.bytes:>8} {target:<9} {protocol:<5} --  {in_dev:<6} {out_dev:<6} "
            f"{source:<19}  {destination:<19} " + " ".join(extra for extra in extras if extra))
    return text.rstrip()


def _cidr(network) -> str:
    return str(network.network_address) if network.prefixlen == 32 else str(network)


def _match_text(match, protocol: str) -> str:
    bang = "! " if match.negated else ""
    kind, value = match.kind, match.value
    if kind == "comment":
        return f"/* {value} */"
    if kind in ("dport", "sport"):
        low, high = value
        short = "dpt" if kind == "dport" else "spt"
        return f"{protocol} {short}{'s' if low != high else ''}:{bang.strip()}{low}{':' + str(high) if low != high else ''}"
    if kind == "mark":
        return f"mark match {bang}{value[0]:#x}/{value[1]:#x}"
    if kind == "ctstate":
        return f"ctstate {bang}{','.join(sorted(value, key=_state_order))}"
    if kind in ("addrtype-dst", "addrtype-src"):
        side = "dst" if kind == "addrtype-dst" else "src"
        return f"ADDRTYPE match {side}-type {bang}{','.join(sorted(value))}"
    if kind == "statistic-random":
        return f"statistic mode random {bang}probability {value:.11f}"
    if kind == "statistic-nth":
        return f"statistic mode nth {bang}every {value[0]} packet {value[1]}"
    if kind == "physdev-is-bridged":
        return f"PHYSDEV match {bang}--physdev-is-bridged"
    if kind in ("physdev-in", "physdev-out"):
        return f"PHYSDEV match {bang}--{kind} {value}"
    if kind == "icmp-type":
        kind_, code = value
        return f"icmp{' !' if match.negated else ''}type {kind_ if kind_ is not None else 'any'}" + \
            (f" code {code}" if code is not None else "")
    return ""


def _target_text(target) -> str:
    if target.name == "MARK":
        value, mask = target.option("xmark")
        if mask == value:
            return f"MARK or {value:#x}"
        if value == 0:
            return f"MARK and {(~mask) & 0xFFFFFFFF:#x}"
        if mask == 0:
            return f"MARK xor {value:#x}"
        return f"MARK xset {value:#x}/{mask:#x}"
    if target.name == "REJECT":
        return f"reject-with {target.option('reject-with')}"
    if target.name in ("DNAT", "SNAT"):
        first, last, ports = target.option("to")
        address = str(first) if first == last else f"{first}-{last}"
        port = "" if ports is None else f":{ports[0]}" + ("" if ports[0] == ports[1] else f"-{ports[1]}")
        flags = " ".join(flag for flag in ("random", "random-fully", "persistent") if target.option(flag))
        return f"to:{address}{port}" + (f" {flags}" if flags else "")
    if target.name == "MASQUERADE":
        parts = []
        if target.option("ports"):
            low, high = target.option("ports")
            parts.append(f"masq ports: {low}" + ("" if low == high else f"-{high}"))
        parts.extend(flag for flag in ("random", "random-fully") if target.option(flag))
        return " ".join(parts)
    return ""


def _state_order(state: str) -> int:
    return ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT").index(state)


def _references(table: Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for chain in table.chains.values():
        for rule in chain.rules:
            if rule.target is not None and rule.target.name in table.chains:
                counts[rule.target.name] = counts.get(rule.target.name, 0) + 1
    return counts
