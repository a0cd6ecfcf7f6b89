"""`emu trace --flow`: a BPF-like filter over packets, as tcpdump writes it.

Why a filter of our own and not libpcap's: it chooses *packets* by their
innermost header (the pod's echo request inside a VXLAN frame is the
packet being followed), and it must work without libpcap. The language is
the part of pcap-filter(7) people use for this: `icmp`, `udp`, `tcp`,
`arp`, `ip`; `[src|dst] host ADDR`, `[src|dst] net CIDR`,
`[src|dst] port N`; `and`/`&&`, `or`/`||`, `not`/`!`, parentheses.
A bare address means `host ADDR`. A mistake is a FilterError naming the word.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Callable

from emu.explain.dissect import Dissected

Predicate = Callable[[Dissected], bool]
_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[^\s()!]+)")
_PROTOCOLS = ("icmp", "udp", "tcp", "arp")


class FilterError(ValueError):
    """A filter that does not parse; the message names the offending word."""


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:  # pragma: no cover - the pattern accepts any non-space run
            raise FilterError(f"cannot read {text[position:]!r}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, what: str) -> str:
        word = self.peek()
        if word is None:
            raise FilterError(f"{self.text!r}: expected {what} at the end")
        self.position += 1
        return word

    def parse(self) -> Predicate:
        if not self.tokens:
            raise FilterError("empty filter")
        predicate = self.expression()
        if self.peek() is not None:
            raise FilterError(f"{self.text!r}: unexpected {self.peek()!r}")
        return predicate

    def expression(self) -> Predicate:
        terms = [self.term()]
        while self.peek() in ("or", "||"):
            self.position += 1
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else (lambda p: any(t(p) for t in terms))

    def term(self) -> Predicate:
        factors = [self.factor()]
        while self.peek() in ("and", "&&"):
            self.position += 1
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else (lambda p: all(f(p) for f in factors))

    def factor(self) -> Predicate:
        word = self.take("a primitive")
        if word in ("not", "!"):
            inner = self.factor()
            return lambda p: not inner(p)
        if word == "(":
            inner = self.expression()
            if self.take("')'") != ")":
                raise FilterError(f"{self.text!r}: expected ')'")
            return inner
        if word in _PROTOCOLS:
            return lambda p: p.proto == word
        if word == "ip":
            return lambda p: p.kind == "ip"
        direction = None
        if word in ("src", "dst"):
            direction, word = word, self.take("host, net, port or an address after " + word)
        return self.qualified(direction, word)

    def qualified(self, direction: str | None, word: str) -> Predicate:
        if word == "host":
            address = self.address(self.take("an address after host"))
            return _on_addresses(direction, lambda value: value == address)
        if word == "net":
            text = self.take("a network after net")
            try:
                network = IPv4Network(text, strict=False)
            except ValueError:
                raise FilterError(f"{self.text!r}: {text!r} is not a network (such as 10.244.2.0/24)") from None
            return _on_addresses(direction, lambda value: value != "" and IPv4Address(value) in network)
        if word == "port":
            text = self.take("a port number after port")
            if not text.isdigit() or not 0 <= int(text) <= 65535:
                raise FilterError(f"{self.text!r}: {text!r} is not a port number")
            port = int(text)
            pick = {"src": lambda p: (p.sport,), "dst": lambda p: (p.dport,)}.get(
                direction, lambda p: (p.sport, p.dport))
            return lambda p: port in pick(p)
        address = self.address(word)  # a bare address: host ADDR
        return _on_addresses(direction, lambda value: value == address)

    def address(self, text: str) -> str:
        try:
            return str(IPv4Address(text))
        except ValueError:
            raise FilterError(f"{self.text!r}: {text!r} is not a primitive (icmp, udp, tcp, arp, ip, host, "
                              "net, port, src, dst) or an IPv4 address") from None


def _on_addresses(direction: str | None, test: Callable[[str], bool]) -> Predicate:
    if direction == "src":
        return lambda p: test(p.src)
    if direction == "dst":
        return lambda p: test(p.dst)
    return lambda p: test(p.src) or test(p.dst)


def parse_filter(text: str) -> Predicate:
    """A predicate over `Dissected` packets; raises FilterError."""
    return _Parser(text).parse()
