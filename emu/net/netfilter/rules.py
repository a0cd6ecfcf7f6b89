"""iptables rules as `iptables-save` writes them, parsed into tables of chains.

A node's rules come in the format `iptables-restore` reads (what a user
copies from a real node with `iptables-save`, and what kube-proxy and
flanneld feed to iptables-restore):

    *nat
    :PREROUTING ACCEPT [0:0]
    :KUBE-SERVICES - [0:0]
    -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
    COMMIT

Only what kube-proxy (iptables mode) and flannel use is understood; anything
else is refused with the line number and the word that was not understood,
never silently ignored (a rule the emulator skipped would make it forward
what the kernel drops).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

TABLES = ("filter", "nat")
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "all": 0}
CT_STATES = ("INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT")
ADDRESS_TYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
                 "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")
REJECT_WITH = ("icmp-net-unreachable", "icmp-host-unreachable", "icmp-port-unreachable",
               "icmp-proto-unreachable", "icmp-net-prohibited", "icmp-host-prohibited",
               "icmp-admin-prohibited", "tcp-reset")
STANDARD_TARGETS = ("ACCEPT", "DROP", "RETURN")
NAT_TARGETS = ("DNAT", "SNAT", "MASQUERADE")
NAT_TARGET_CHAINS = {"DNAT": ("PREROUTING", "OUTPUT"), "SNAT": ("POSTROUTING", "INPUT"),
                     "MASQUERADE": ("POSTROUTING",)}
ICMP_TYPE_NAMES = {"any": (None, None), "echo-reply": (0, None), "destination-unreachable": (3, None),
                   "network-unreachable": (3, 0), "host-unreachable": (3, 1), "protocol-unreachable": (3, 2),
                   "port-unreachable": (3, 3), "fragmentation-needed": (3, 4), "echo-request": (8, None),
                   "time-exceeded": (11, None), "ttl-zero-during-transit": (11, 0)}
MATCH_MODULES = ("tcp", "udp", "icmp", "comment", "mark", "conntrack", "addrtype", "statistic", "physdev")


class RulesError(ValueError):
    """A rules text iptables-restore would refuse, or one emu does not model:
    `line` is the 1-based line number, the message names the word."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class Match:
    """One condition of a rule; `negated` is iptables' `!`.

    kinds: source, destination (IPv4Network), protocol (number, 0 = all),
    in, out (interface name, `+` suffix a wildcard), sport, dport ((low, high)),
    icmp-type (name or number text), comment (text, always true), mark
    ((value, mask)), ctstate (frozenset of states), addrtype-src/-dst
    (frozenset of types), statistic-random (probability), statistic-nth
    ((every, packet)), physdev-is-bridged (True), physdev-in, physdev-out
    (bridge port name, `+` suffix a wildcard).
    """

    kind: str
    value: object
    negated: bool = False


@dataclass(frozen=True)
class Target:
    """What a matching rule does: a standard verdict, a jump (or goto) to a
    user chain, or an extension target (REJECT, MARK, DNAT, SNAT, MASQUERADE)
    with its options."""

    name: str
    goto: bool = False
    options: tuple[tuple[str, object], ...] = ()

    def option(self, name: str, default=None):
        return next((value for key, value in self.options if key == name), default)


@dataclass
class Rule:
    """A rule and its counters (packets, bytes), as `iptables -L -v -x` counts them.
    A rule without a target only counts."""

    chain: str
    matches: tuple[Match, ...]
    target: Target | None
    text: str
    line: int
    packets: int = 0
    bytes: int = 0


@dataclass
class Chain:
    name: str
    policy: str | None  # None for a user chain ("-" in iptables-save)
    rules: list[Rule] = field(default_factory=list)
    packets: int = 0    # policy counters of a built-in chain
    bytes: int = 0


@dataclass
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)


@dataclass
class Ruleset:
    """Every table of one network namespace (a table not loaded: its built-in
    chains, empty, policy ACCEPT, as a new namespace has them)."""

    tables: dict[str, Table] = field(default_factory=dict)

    def table(self, name: str) -> Table:
        if name not in self.tables:
            self.tables[name] = Table(name, {chain: Chain(chain, "ACCEPT") for chain in BUILTIN_CHAINS[name]})
        return self.tables[name]

    def is_empty(self) -> bool:
        """No rule and every policy ACCEPT: the hooks can be skipped entirely."""
        return all(chain.policy in (None, "ACCEPT") and not chain.rules
                   for table in self.tables.values() for chain in table.chains.values())


def parse_rules(text: str, ruleset: Ruleset | None = None) -> Ruleset:
    """Apply an iptables-restore text to `ruleset` (a fresh one by default).

    As iptables-restore without --noflush does, each `*table ... COMMIT`
    block replaces that table whole; tables the text does not name stay.
    Counters given as `[packets:bytes]` (iptables-save -c) are kept.
    """
    ruleset = ruleset if ruleset is not None else Ruleset()
    for name in TABLES:
        ruleset.table(name)
    current: Table | None = None
    pending: list[tuple[int, list[str], tuple[int, int] | None]] = []
    number = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            if current is not None:
                raise RulesError(number, f"table {line[1:]!r} starts before the COMMIT of {current.name!r}")
            name = line[1:].strip()
            if name not in TABLES:
                raise RulesError(number, f"table {name!r} is not modelled (emu has {', '.join(TABLES)})")
            current, pending = Table(name, {}), []
            continue
        if current is None:
            raise RulesError(number, f"{line.split()[0]!r} outside a table (a block starts with *filter or *nat)")
        if line == "COMMIT":
            _finish_table(current, pending)
            ruleset.tables[current.name] = current
            current = None
            continue
        if line.startswith(":"):
            _declare_chain(current, line, number)
            continue
        counters = None
        if line.startswith("["):
            closing = line.find("]")
            counters = _counters(line[: closing + 1], number)
            line = line[closing + 1:].strip()
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise RulesError(number, f"cannot split the line into words: {error}") from None
        pending.append((number, words, counters))
    if current is not None:
        raise RulesError(number, f"table {current.name!r} has no COMMIT")
    return ruleset


def merge_restore(*texts: str) -> str:
    """Several iptables-restore texts as one, table by table: chain
    declarations once each, where the first names them (a later policy
    wins, as a later `iptables-restore --noflush` sets it), rules in the order
    the texts give them, as if each program had appended its rules in turn."""
    order: list[str] = []
    declared: dict[str, dict[str, str]] = {}
    rules: dict[str, list[str]] = {}
    for text in texts:
        table = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = line[1:]
                if table not in declared:
                    order.append(table)
                    declared[table], rules[table] = {}, []
            elif line == "COMMIT":
                table = None
            elif table is not None and line.startswith(":"):
                declared[table][line[1:].split()[0]] = line
            elif table is not None:
                rules[table].append(line)
    lines = []
    for table in order:
        lines += [f"*{table}", *declared[table].values(), *rules[table], "COMMIT"]
    return "\n".join(lines) + "\n"


def _declare_chain(table: Table, line: str, number: int) -> None:
    parts = line[1:].split()
    if len(parts) < 2:
        raise RulesError(number, f"chain declaration {line!r} needs a name and a policy")
    name, policy = parts[0], parts[1]
    builtin = name in BUILTIN_CHAINS[table.name]
    if builtin and policy not in ("ACCEPT", "DROP"):
        raise RulesError(number, f"policy {policy!r} of {name}: ACCEPT or DROP")
    if not builtin and policy != "-":
        raise RulesError(number, f"{name} is not a built-in chain of {table.name}: its policy must be '-'")
    if len(name) > 28:
        raise RulesError(number, f"chain name {name!r} is longer than 28 characters")
    chain = Chain(name, policy if builtin else None)
    if len(parts) > 2:
        chain.packets, chain.bytes = _counters(parts[2], number)
    table.chains[name] = chain


def _finish_table(table: Table, pending: list) -> None:
    for name in BUILTIN_CHAINS[table.name]:
        table.chains.setdefault(name, Chain(name, "ACCEPT"))
    for number, words, counters in pending:
        rule = _rule(table, words, number)
        if counters is not None:
            rule.packets, rule.bytes = counters
        table.chains[rule.chain].rules.append(rule)


def _counters(text: str, number: int) -> tuple[int, int]:
    packets, _, octets = text.strip().strip("[]").partition(":")
    if not packets.isdigit() or not octets.isdigit():
        raise RulesError(number, f"counters {text!r} are not [packets:bytes]")
    return int(packets), int(octets)


class _Words:
    """The words of one rule, read left to right as iptables' parser reads them."""

    def __init__(self, words: list[str], number: int) -> None:
        self.words = words
        self.index = 0
        self.number = number

    def more(self) -> bool:
        return self.index < len(self.words)

    def take(self, what: str) -> str:
        if not self.more():
            self.fail(f"{what} is missing at the end of the rule")
        word = self.words[self.index]
        self.index += 1
        return word

    def peek(self) -> str | None:
        return self.words[self.index] if self.more() else None

    def fail(self, problem: str):
        raise RulesError(self.number, problem)


def _rule(table: Table, words: list[str], number: int) -> Rule:
    reader = _Words(words, number)
    command = reader.take("a command")
    if command not in ("-A", "--append"):
        reader.fail(f"{command!r}: iptables-restore rules are appended with -A")
    chain = reader.take("the chain name")
    if chain not in table.chains:
        reader.fail(f"chain {chain!r} is not declared in table {table.name}")
    matches: list[Match] = []
    target: Target | None = None
    modules: set[str] = set()
    protocol: str | None = None
    negate = False
    while reader.more():
        word = reader.take("an option")
        if word == "!":
            if negate:
                reader.fail("'!' twice")
            negate = True
            continue
        if word in ("-s", "--source", "-d", "--destination"):
            kind = "source" if word in ("-s", "--source") else "destination"
            matches.append(Match(kind, _network(reader.take(word), reader), negate))
        elif word in ("-p", "--protocol"):
            protocol = reader.take(word)
            if protocol not in PROTOCOLS:
                reader.fail(f"protocol {protocol!r} is not modelled ({', '.join(PROTOCOLS)})")
            matches.append(Match("protocol", PROTOCOLS[protocol], negate))
        elif word in ("-i", "--in-interface", "-o", "--out-interface"):
            kind = "in" if word in ("-i", "--in-interface") else "out"
            matches.append(Match(kind, reader.take(word), negate))
        elif word in ("-m", "--match"):
            module = reader.take(word)
            if module not in MATCH_MODULES:
                reader.fail(f"match module {module!r} is not modelled ({', '.join(MATCH_MODULES)})")
            if negate:
                reader.fail("'!' must stand before an option, not before -m")
            modules.add(module)
        elif word in ("--dport", "--destination-port", "--sport", "--source-port"):
            if protocol not in ("tcp", "udp") and not modules & {"tcp", "udp"}:
                reader.fail(f"{word} needs -p tcp or -p udp")
            kind = "dport" if word in ("--dport", "--destination-port") else "sport"
            matches.append(Match(kind, _port_range(reader.take(word), reader), negate))
        elif word == "--icmp-type":
            if protocol != "icmp" and "icmp" not in modules:
                reader.fail("--icmp-type needs -p icmp")
            matches.append(Match("icmp-type", _icmp_type(reader.take(word), reader), negate))
        elif word == "--comment":
            _needs(modules, "comment", word, reader)
            matches.append(Match("comment", reader.take(word)))
        elif word == "--mark":
            _needs(modules, "mark", word, reader)
            matches.append(Match("mark", _value_mask(reader.take(word), reader), negate))
        elif word == "--ctstate":
            _needs(modules, "conntrack", word, reader)
            states = tuple(reader.take(word).split(","))
            unknown = [state for state in states if state not in CT_STATES]
            if unknown:
                reader.fail(f"conntrack state {unknown[0]!r} is not one of {', '.join(CT_STATES)}")
            matches.append(Match("ctstate", frozenset(states), negate))
        elif word in ("--dst-type", "--src-type"):
            _needs(modules, "addrtype", word, reader)
            types = tuple(reader.take(word).split(","))
            unknown = [kind for kind in types if kind not in ADDRESS_TYPES]
            if unknown:
                reader.fail(f"address type {unknown[0]!r} is not one of {', '.join(ADDRESS_TYPES)}")
            kind = "addrtype-dst" if word == "--dst-type" else "addrtype-src"
            matches.append(Match(kind, frozenset(types), negate))
        elif word == "--mode":
            _needs(modules, "statistic", word, reader)
            matches.append(_statistic(reader, negate))
        elif word == "--physdev-is-bridged":
            _needs(modules, "physdev", word, reader)
            matches.append(Match("physdev-is-bridged", True, negate))
        elif word in ("--physdev-in", "--physdev-out"):
            _needs(modules, "physdev", word, reader)
            matches.append(Match(word[2:], reader.take(word), negate))
        elif word in ("-j", "--jump", "-g", "--goto"):
            if target is not None:
                reader.fail("a rule has one target")
            if negate:
                reader.fail("'!' cannot negate a target")
            target = _target(table, chain, reader.take(word), word in ("-g", "--goto"), reader, protocol)
        else:
            reader.fail(f"option {word!r} is not modelled")
        negate = False
    if negate:
        reader.fail("'!' at the end of the rule")
    for module in ("tcp", "udp", "icmp"):
        if module in modules and protocol != module:
            reader.fail(f"-m {module} needs -p {module}")
    text = " ".join(f'"{word}"' if (" " in word or not word) else word for word in words)
    return Rule(chain, tuple(matches), target, text, number)


def _needs(modules: set[str], module: str, option: str, reader: _Words) -> None:
    if module not in modules:
        reader.fail(f"{option} needs -m {module} before it")


def _statistic(reader: _Words, negate: bool) -> Match:
    mode = reader.take("--mode")
    if mode == "random":
        if reader.take("--probability") != "--probability":
            reader.fail("--mode random needs --probability P")
        text = reader.take("the probability")
        try:
            probability = float(text)
        except ValueError:
            reader.fail(f"--probability {text!r} is not a number")
        if not 0.0 <= probability <= 1.0:
            reader.fail(f"--probability {text} is outside 0..1")
        return Match("statistic-random", probability, negate)
    if mode == "nth":
        every, packet = None, 0
        while reader.peek() in ("--every", "--packet"):
            option = reader.take("an option")
            text = reader.take(option)
            if not text.isdigit():
                reader.fail(f"{option} {text!r} is not a whole number")
            if option == "--every":
                every = int(text)
            else:
                packet = int(text)
        if every is None or every < 1 or not 0 <= packet < every:
            reader.fail("--mode nth needs --every N (N >= 1) and --packet P with 0 <= P < N")
        return Match("statistic-nth", (every, packet), negate)
    reader.fail(f"statistic mode {mode!r}: random or nth")


def _target(table: Table, chain: str, name: str, goto: bool, reader: _Words, protocol: str | None) -> Target:
    if name in STANDARD_TARGETS:
        return Target(name)
    user_chain = table.chains.get(name)
    if user_chain is not None:
        if user_chain.policy is not None:
            reader.fail(f"cannot jump to the built-in chain {name}")
        return Target(name, goto=goto)
    options: list[tuple[str, object]] = []
    if name == "REJECT":
        if table.name != "filter":
            reader.fail("REJECT is valid in the filter table only")
        reject_with = "icmp-port-unreachable"
        if reader.peek() == "--reject-with":
            reader.take("--reject-with")
            reject_with = reader.take("--reject-with")
            if reject_with not in REJECT_WITH:
                reader.fail(f"--reject-with {reject_with!r}: one of {', '.join(REJECT_WITH)}")
            if reject_with == "tcp-reset" and protocol != "tcp":
                reader.fail("--reject-with tcp-reset needs -p tcp")
        options.append(("reject-with", reject_with))
    elif name == "MARK":
        options.append(("xmark", _mark_operation(reader)))
    elif name in NAT_TARGETS:
        options.extend(_nat_options(table, chain, name, reader))
    else:
        reader.fail(f"target {name!r} is neither a chain of table {table.name} nor a modelled target")
    return Target(name, options=tuple(options))


def _mark_operation(reader: _Words) -> tuple[int, int]:
    """Every MARK option as libxt_MARK stores it: mark = (mark & ~mask) ^ value."""
    option = reader.take("MARK's --set-xmark, --set-mark, --or-mark, --and-mark or --xor-mark")
    text = reader.take(option)
    if option == "--set-xmark":
        return _value_mask(text, reader)
    if option == "--set-mark":
        value, mask = _value_mask(text, reader)
        return value, mask | value
    bits = _number(text, reader)
    if option == "--or-mark":
        return bits, bits
    if option == "--and-mark":
        return 0, (~bits) & 0xFFFFFFFF
    if option == "--xor-mark":
        return bits, 0
    reader.fail(f"MARK option {option!r} is not modelled")


def _nat_options(table: Table, chain: str, name: str, reader: _Words) -> list[tuple[str, object]]:
    if table.name != "nat":
        reader.fail(f"{name} is valid in the nat table only")
    if chain in BUILTIN_CHAINS["nat"] and chain not in NAT_TARGET_CHAINS[name]:
        reader.fail(f"{name} is not valid in chain {chain} (only {', '.join(NAT_TARGET_CHAINS[name])})")
    options: list[tuple[str, object]] = []
    expected = {"DNAT": "--to-destination", "SNAT": "--to-source"}.get(name)
    while reader.more() and reader.peek().startswith("--"):
        option = reader.take("an option")
        if option == expected:
            options.append(("to", _nat_range(reader.take(option), reader)))
        elif option == "--to-ports" and name == "MASQUERADE":
            options.append(("ports", _port_range(reader.take(option), reader)))
        elif option in ("--random", "--random-fully", "--persistent"):
            options.append((option[2:], True))
        else:
            reader.fail(f"{name} option {option!r} is not modelled")
    if expected is not None and not any(key == "to" for key, _ in options):
        reader.fail(f"{name} needs {expected}")
    return options


def _icmp_type(text: str, reader: _Words) -> tuple[int | None, int | None]:
    """--icmp-type NAME, TYPE or TYPE/CODE as (type, code), None meaning any."""
    if text in ICMP_TYPE_NAMES:
        return ICMP_TYPE_NAMES[text]
    kind, _, code = text.partition("/")
    if not kind.isdigit() or int(kind) > 255 or (code and (not code.isdigit() or int(code) > 255)):
        reader.fail(f"--icmp-type {text!r}: a name ({', '.join(ICMP_TYPE_NAMES)}) or TYPE[/CODE]")
    return int(kind), (int(code) if code else None)


def _network(text: str, reader: _Words) -> IPv4Network:
    try:
        return IPv4Network(text, strict=False)
    except ValueError:
        reader.fail(f"{text!r} is not an IPv4 address or CIDR")


def _number(text: str, reader: _Words) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        reader.fail(f"{text!r} is not a number")
    if not 0 <= value <= 0xFFFFFFFF:
        reader.fail(f"{text} does not fit 32 bits")
    return value


def _value_mask(text: str, reader: _Words) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return _number(value, reader), (_number(mask, reader) if mask else 0xFFFFFFFF)


def _port(text: str, reader: _Words) -> int:
    if not text.isdigit() or int(text) > 65535:
        reader.fail(f"port {text!r} is not 0..65535 (service names are not resolved)")
    return int(text)


def _port_range(text: str, reader: _Words) -> tuple[int, int]:
    """PORT, PORT:PORT (iptables) or PORT-PORT (NAT targets); an open end is 0 or 65535."""
    separator = ":" if ":" in text else "-"
    low, found, high = text.partition(separator)
    first = _port(low, reader) if low else 0
    last = (_port(high, reader) if high else 65535) if found else first
    if first > last:
        reader.fail(f"port range {text!r} is empty")
    return first, last


def _nat_range(text: str, reader: _Words) -> tuple[IPv4Address, IPv4Address, tuple[int, int] | None]:
    """ADDR[-ADDR][:PORT[-PORT]] of --to-destination / --to-source."""
    address, _, ports = text.partition(":")
    low, _, high = address.partition("-")
    try:
        first = IPv4Address(low)
        last = IPv4Address(high) if high else first
    except ValueError:
        reader.fail(f"{text!r} is not ADDRESS[-ADDRESS][:PORT[-PORT]]")
    if first > last:
        reader.fail(f"address range {address!r} is empty")
    return first, last, (_port_range(ports, reader) if ports else None)
