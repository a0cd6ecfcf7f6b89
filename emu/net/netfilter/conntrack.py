"""Connection tracking and NAT bindings, as nf_conntrack and nf_nat keep them.

Every tracked packet maps to a connection by its tuple (protocol, source,
source port, destination, destination port; an ICMP echo's identifier is its
source "port" and type/code its destination "port"). A connection has two
tuples: the original direction as first seen, and the reply direction, the
inverse of the original *after* NAT, so replies find it and are translated
back (un-DNAT of their source, un-SNAT of their destination) without any
rule. An ICMP error quoting a tracked packet is RELATED and is translated
too, outer header and quoted packet.

States for iptables' --ctstate: NEW (original direction, no reply seen yet),
ESTABLISHED (a reply was seen, or this is the reply direction), RELATED,
INVALID (not parseable). Timeouts are Linux's defaults
(nf_conntrack_udp_timeout 30 s, ..._udp_timeout_stream 120 s once a flow
with replies lives past 2 s, nf_conntrack_icmp_timeout 30 s; TCP per state),
counted in virtual time; an expired connection is forgotten when next looked
up. The NAT table is consulted only for a connection's first packet, once
per manipulation (DNAT before routing, SNAT after), as in Linux, so nat rule
counters count connections, not packets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import emu.wire.ipv4 as ipv4
import emu.wire.tcp as tcp
from emu.wire import icmp
from emu.wire import nat as wire_nat
from emu.wire.errors import WireError
from emu.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP

NS = 1_000_000_000
UDP_TIMEOUT_NS = 30 * NS
UDP_STREAM_TIMEOUT_NS = 120 * NS
UDP_STREAM_AFTER_NS = 2 * NS
ICMP_TIMEOUT_NS = 30 * NS
GENERIC_TIMEOUT_NS = 600 * NS
TCP_TIMEOUTS_NS = {"SYN_SENT": 120 * NS, "SYN_RECV": 60 * NS, "ESTABLISHED": 432000 * NS,
                   "FIN_WAIT": 120 * NS, "CLOSE_WAIT": 60 * NS, "LAST_ACK": 30 * NS,
                   "TIME_WAIT": 120 * NS, "CLOSE": 10 * NS}
ICMP_REPLY_TYPE = {8: 0, 13: 14, 15: 16, 17: 18}
MAX_NAT_ATTEMPTS = 128
"""nf_nat_l4proto_unique_tuple tries at most 128 ports before giving up."""

ORIGINAL, REPLY = 0, 1
SRC, DST = "SRC", "DST"


@dataclass(frozen=True)
class Tuple:
    protocol: int
    src: bytes
    sport: int
    dst: bytes
    dport: int

    def inverse(self) -> "Tuple":
        if self.protocol == PROTO_ICMP:
            kind = ICMP_REPLY_TYPE.get(self.dport >> 8, self.dport >> 8)
            return Tuple(self.protocol, self.dst, self.sport, self.src, kind << 8)
        return Tuple(self.protocol, self.dst, self.dport, self.src, self.sport)


@dataclass
class Connection:
    original: Tuple
    reply: Tuple
    created_ns: int
    expires_ns: int
    status: set = field(default_factory=set)  # SEEN_REPLY, ASSURED, SRC_NAT, DST_NAT, CONFIRMED
    tcp_state: str | None = None
    mark: int = 0
    nat_done: set = field(default_factory=set)  # SRC / DST manipulations decided


@dataclass
class Tracked:
    """What conntrack says about one packet: its connection and direction, and
    the --ctstate it has (None connection: untracked or invalid)."""

    connection: Connection | None
    direction: int
    state: str
    related_to: Tuple | None = None  # an ICMP error: the tuple of the packet it quotes


def packet_tuple(packet: bytes | bytearray | memoryview) -> Tuple | None:
    """The tuple of an IPv4 packet (None: not trackable, e.g. a truncated header)."""
    try:
        ports = wire_nat.l4_ports(packet)
    except WireError:
        return None
    protocol = ipv4.protocol(packet)
    src, dst = ipv4.src(packet), ipv4.dst(packet)
    if protocol == PROTO_ICMP:
        if ports is None:
            return None
        message = packet[ipv4.header_length(packet):]
        return Tuple(protocol, src, ports[0], dst, (icmp.message_type(message) << 8) | icmp.message_code(message))
    if protocol in (PROTO_TCP, PROTO_UDP):
        if ports is None:
            return None  # a later fragment: Linux tracks reassembled packets only
        return Tuple(protocol, src, ports[0], dst, ports[1])
    return Tuple(protocol, src, 0, dst, 0)


class Conntrack:
    """The connection table of one network namespace."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._by_tuple: dict[Tuple, tuple[Connection, int]] = {}
        self.connections: list[Connection] = []

    # -- lookup ------------------------------------------------------------

    def track(self, packet: bytes | bytearray | memoryview, now_ns: int) -> Tracked:
        """nf_conntrack_in: the connection of `packet`, created (unconfirmed) if new."""
        try:
            inner = wire_nat.icmp_error_inner(packet)
        except WireError:
            return Tracked(None, ORIGINAL, "INVALID")
        if inner is not None:
            quoted = packet_tuple(bytes(packet[inner:]))
            if quoted is not None:
                found = self._lookup(quoted.inverse(), now_ns) or self._lookup(quoted, now_ns)
                if found is not None:
                    connection, direction = found
                    return Tracked(connection, direction, "RELATED", related_to=quoted)
            return Tracked(None, ORIGINAL, "INVALID")
        key = packet_tuple(packet)
        if key is None:
            return Tracked(None, ORIGINAL, "INVALID")
        found = self._lookup(key, now_ns)
        if found is None:
            connection = Connection(key, key.inverse(), now_ns, now_ns + self._initial_timeout(key))
            return Tracked(connection, ORIGINAL, "NEW")
        connection, direction = found
        if direction == REPLY or "SEEN_REPLY" in connection.status:
            return Tracked(connection, direction, "ESTABLISHED")
        return Tracked(connection, direction, "NEW")

    def _lookup(self, key: Tuple, now_ns: int) -> tuple[Connection, int] | None:
        found = self._by_tuple.get(key)
        if found is None:
            return None
        connection = found[0]
        if connection.expires_ns <= now_ns:
            self._forget(connection)
            return None
        return found

    def _forget(self, connection: Connection) -> None:
        for key in (connection.original, connection.reply):
            if self._by_tuple.get(key, (None,))[0] is connection:
                del self._by_tuple[key]
        if connection in self.connections:
            self.connections.remove(connection)

    # -- after the hooks ---------------------------------------------------

    def seen(self, tracked: Tracked, packet: bytes | bytearray | memoryview, now_ns: int) -> bool:
        """The per-protocol update once a packet passed (timeouts, SEEN_REPLY,
        ASSURED, TCP state), and confirmation of a new connection; False when
        the confirmation clashed (the packet is to be dropped)."""
        connection = tracked.connection
        if connection is None or tracked.state == "RELATED":
            return True
        if "CONFIRMED" not in connection.status and not self.confirm(connection):
            return False
        protocol = connection.original.protocol
        if protocol == PROTO_TCP and tracked.direction == REPLY and "SEEN_REPLY" not in connection.status \
                and _tcp_flags(packet) & 0x04:
            # nf_conntrack_tcp_packet: "If only reply is a RST, we can consider
            # ourselves not to have an established connection" -- deleted at once.
            self._forget(connection)
            return True
        if tracked.direction == REPLY:
            connection.status.add("SEEN_REPLY")
        if protocol == PROTO_UDP:
            timeout = UDP_TIMEOUT_NS
            if "SEEN_REPLY" in connection.status:
                if now_ns > connection.created_ns + UDP_STREAM_AFTER_NS:
                    timeout = UDP_STREAM_TIMEOUT_NS
                    connection.status.add("ASSURED")
            connection.expires_ns = now_ns + timeout
        elif protocol == PROTO_ICMP:
            connection.expires_ns = now_ns + ICMP_TIMEOUT_NS
        elif protocol == PROTO_TCP:
            self._tcp_update(connection, tracked.direction, packet)
            connection.expires_ns = now_ns + TCP_TIMEOUTS_NS[connection.tcp_state]
        else:
            connection.expires_ns = now_ns + GENERIC_TIMEOUT_NS
        return True

    def confirm(self, connection: Connection) -> bool:
        """Insert a new connection under both of its tuples (__nf_conntrack_confirm);
        False when another connection took one of them meanwhile (a clash: the
        packet is dropped, as Linux drops it)."""
        if connection.original in self._by_tuple or connection.reply in self._by_tuple:
            return False
        connection.status.add("CONFIRMED")
        self._by_tuple[connection.original] = (connection, ORIGINAL)
        self._by_tuple[connection.reply] = (connection, REPLY)
        self.connections.append(connection)
        return True

    def _initial_timeout(self, key: Tuple) -> int:
        if key.protocol == PROTO_UDP:
            return UDP_TIMEOUT_NS
        if key.protocol == PROTO_ICMP:
            return ICMP_TIMEOUT_NS
        if key.protocol == PROTO_TCP:
            return TCP_TIMEOUTS_NS["SYN_SENT"]
        return GENERIC_TIMEOUT_NS

    @staticmethod
    def _tcp_update(connection: Connection, direction: int, packet: bytes | bytearray | memoryview) -> None:
        """A coarse nf_conntrack_proto_tcp state machine (SYN, SYN-ACK, ACK, FIN, RST)."""
        flags = _tcp_flags(packet)
        syn, ack, fin, rst = flags & 0x02, flags & 0x10, flags & 0x01, flags & 0x04
        state = connection.tcp_state
        if rst:
            connection.tcp_state = "CLOSE"
        elif syn and not ack and direction == ORIGINAL and state in (None, "CLOSE", "TIME_WAIT"):
            connection.tcp_state = "SYN_SENT"
        elif syn and ack and direction == REPLY and state == "SYN_SENT":
            connection.tcp_state = "SYN_RECV"
        elif fin:
            connection.tcp_state = {"ESTABLISHED": "FIN_WAIT", "SYN_RECV": "FIN_WAIT",
                                    "CLOSE_WAIT": "LAST_ACK", "FIN_WAIT": "LAST_ACK"}.get(state, state)
        elif ack and state == "SYN_RECV" and direction == ORIGINAL:
            connection.tcp_state = "ESTABLISHED"
            connection.status.add("ASSURED")
        elif ack and state == "FIN_WAIT":
            connection.tcp_state = "CLOSE_WAIT"
        elif ack and state == "LAST_ACK":
            connection.tcp_state = "TIME_WAIT"
        elif state is None:
            connection.tcp_state = "ESTABLISHED" if ack else "SYN_SENT"

    # -- NAT -----------------------------------------------------------------

    def bind(self, connection: Connection, manip: str, address: bytes | None, ports: tuple[int, int] | None,
             random_fully: bool = False) -> None:
        """Decide the DNAT (`manip` DST) or SNAT (SRC) mapping of a new connection
        (nf_nat_setup_info): the reply tuple becomes the inverse of the
        translated original, with a source port changed only when the
        original's is already used by another connection's reply tuple (or
        always with --random-fully), drawn as nf_nat_l4proto_unique_tuple does."""
        if manip in connection.nat_done:
            return
        connection.nat_done.add(manip)
        if address is None and ports is None:
            return  # a null binding: the hook ran, nothing to change
        translated = connection.reply.inverse()
        if manip == DST:
            port = translated.dport if ports is None or translated.protocol not in (PROTO_TCP, PROTO_UDP) \
                else ports[0]
            translated = Tuple(translated.protocol, translated.src, translated.sport, address or translated.dst,
                               port)
            connection.status.add("DST_NAT")
        else:
            translated = Tuple(translated.protocol, address or translated.src, translated.sport, translated.dst,
                               translated.dport)
            translated = self._unique_source(connection, translated, ports, random_fully)
            connection.status.add("SRC_NAT")
        connection.reply = translated.inverse()

    def _unique_source(self, connection: Connection, translated: Tuple, ports: tuple[int, int] | None,
                       random_fully: bool) -> Tuple:
        def used(candidate: Tuple) -> bool:
            owner = self._by_tuple.get(candidate.inverse())
            return owner is not None and owner[0] is not connection

        in_range = ports is None or ports[0] <= translated.sport <= ports[1]
        if not random_fully and in_range and not used(translated):
            return translated
        if ports is not None:
            low, size = ports[0], ports[1] - ports[0] + 1
        elif translated.protocol == PROTO_ICMP:
            low, size = 0, 65536
        elif translated.sport < 512:
            low, size = 1, 511
        elif translated.sport < 1024:
            low, size = 600, 424
        else:
            low, size = 1024, 64512
        offset = self.rng.randrange(65536)
        for attempt in range(min(size, MAX_NAT_ATTEMPTS)):
            candidate = Tuple(translated.protocol, translated.src, low + (offset + attempt) % size,
                              translated.dst, translated.dport)
            if not used(candidate):
                return candidate
        return translated  # every port tried is taken: confirm() will see the clash

    def translate(self, tracked: Tracked, packet: bytearray, manip: str) -> None:
        """Rewrite `packet` for the `manip` hook (DST before routing, SRC after)
        to the tuple its direction has after NAT (the original direction: the
        reply tuple's inverse; the reply direction: the original's inverse).
        An ICMP error gets the outer address and its quoted packet the
        opposite manipulation, so the quote reads as the packet its receiver
        sent (nf_nat_icmp_reply_translation)."""
        connection = tracked.connection
        if connection is None:
            return
        target = connection.reply.inverse() if tracked.direction == ORIGINAL else connection.original.inverse()
        if tracked.related_to is not None:
            if manip == DST:
                wire_nat.rewrite(packet, dst=target.dst)
                wire_nat.rewrite_icmp_error_inner(packet, src=target.dst, sport=_port(target, "d"))
            else:
                wire_nat.rewrite(packet, src=target.src)
                wire_nat.rewrite_icmp_error_inner(packet, dst=target.src, dport=_port(target, "s"))
            return
        if manip == DST:
            # An ICMP echo's id is its only "port": the reply gets the sender's id back.
            wire_nat.rewrite(packet, dst=target.dst,
                             dport=target.sport if target.protocol == PROTO_ICMP else target.dport)
        else:
            wire_nat.rewrite(packet, src=target.src, sport=target.sport)

    # -- listing -------------------------------------------------------------

    def listing(self, now_ns: int) -> list[str]:
        """`conntrack -L` lines for the live connections, oldest first."""
        lines = []
        for connection in list(self.connections):
            if connection.expires_ns <= now_ns:
                self._forget(connection)
                continue
            lines.append(_listing_line(connection, now_ns))
        return lines


def _tcp_flags(packet: bytes | bytearray | memoryview) -> int:
    segment = packet[ipv4.header_length(packet):]
    return tcp.flags(segment) if len(segment) > tcp.FLAGS else 0


def _port(key: Tuple, side: str) -> int | None:
    if key.protocol not in (PROTO_TCP, PROTO_UDP):
        return None
    return key.sport if side == "s" else key.dport


_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp"}


def _listing_line(connection: Connection, now_ns: int) -> str:
    """One line as conntrack-tools prints it (`conntrack -L`)."""
    protocol = connection.original.protocol
    name = _NAMES.get(protocol, "unknown")
    remaining = (connection.expires_ns - now_ns) // NS
    parts = [f"{name:<8} {protocol} {remaining}"]
    if connection.tcp_state:
        parts.append(connection.tcp_state)
    parts.append(_tuple_text(connection.original))
    if "SEEN_REPLY" not in connection.status:
        parts.append("[UNREPLIED]")
    parts.append(_tuple_text(connection.reply))
    if "ASSURED" in connection.status:
        parts.append("[ASSURED]")
    parts.append(f"mark={connection.mark} use=1")
    return " ".join(parts)


def _tuple_text(key: Tuple) -> str:
    text = f"src={IPv4Address(key.src)} dst={IPv4Address(key.dst)}"
    if key.protocol == PROTO_ICMP:
        return f"{text} type={key.dport >> 8} code={key.dport & 0xFF} id={key.sport}"
    if key.protocol in (PROTO_TCP, PROTO_UDP):
        return f"{text} sport={key.sport} dport={key.dport}"
    return text
