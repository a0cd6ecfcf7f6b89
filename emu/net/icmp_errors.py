"""When and how a namespace sends ICMP errors, as Linux's icmp_send does.

No error about an ICMP error, a non-first fragment, a broadcast/multicast
packet or a packet from 0.0.0.0; the error quotes as much of the offending
datagram as fits in 576 bytes, uses tos (orig & 0x1e) | 0xc0, TTL 64, DF
clear; per-destination rate limiting (icmp_ratelimit 1 s, burst 6, the
inet_peer token bucket) for the types of icmp_ratemask (destination
unreachable, source quench, time exceeded, parameter problem) except for
fragmentation-needed, which Linux never limits.

A packet with no route is first held against ip_error's own limit
(ip_rt_error_cost 1 s, burst 5 s), kept in the same per-address token
bucket as icmp_send's: so each such packet spends a token twice, and once
the burst is gone, packets closer than 2 s apart get no error at all (the
first spends the token that ip_error earned, icmp_send then finds none).

Redirects have their own limit instead (ip_rt_send_redirect): per source
address the first is sent at once, each next one only after 20 ms << the
number already sent, at most 9, and 20.48 s of silence start it over.
"""

from __future__ import annotations

from emu.wire import icmp
from emu.wire.icmp import IcmpRepr

ICMP_ERROR_MAX_LEN = 576
IPTOS_TOS_MASK = 0x1E
IPTOS_PREC_INTERNETCONTROL = 0xC0
RATELIMIT_NS = 1_000_000_000
BURST_FACTOR = 6
ROUTE_ERROR_COST_NS = 1_000_000_000  # ip_rt_error_cost: HZ
ROUTE_ERROR_BURST_NS = 5 * ROUTE_ERROR_COST_NS  # ip_rt_error_burst: 5 * HZ
RATEMASK_TYPES = frozenset({3, 4, 11, 12})  # net.ipv4.icmp_ratemask 0x1818
REDIRECT = 5
REDIRECT_HOST = 1
REDIRECT_LOAD_NS = 20_000_000  # ip_rt_redirect_load: HZ / 50
REDIRECT_NUMBER = 9  # ip_rt_redirect_number
REDIRECT_SILENCE_NS = REDIRECT_LOAD_NS << (REDIRECT_NUMBER + 1)  # ip_rt_redirect_silence


def may_send_error(packet: bytes, l2_broadcast: bool) -> bool:
    """The icmp_send preconditions about the offending packet."""
    if l2_broadcast:
        return False
    if len(packet) < 20:
        return False
    flags_offset = (packet[6] << 8) | packet[7]
    if flags_offset & 0x1FFF:
        return False
    src, dst = packet[12:16], packet[16:20]
    if src == b"\x00\x00\x00\x00" or src[0] >= 224 or dst[0] >= 224 or dst == b"\xff" * 4:
        return False
    if packet[9] == 1:
        header_len = (packet[0] & 0x0F) * 4
        if len(packet) > header_len and packet[header_len] not in (
                icmp.ECHO_REPLY, icmp.ECHO_REQUEST, 13, 14, 15, 16, 17, 18):
            return False  # never an error about an error (or an unknown type)
    return True


def error_tos(packet: bytes) -> int:
    return (packet[1] & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL


def build_error(packet: bytes, icmp_type: int, code: int, rest: int, route_mtu: int) -> bytes:
    """The ICMP error message quoting `packet` (the datagram as received)."""
    room = min(route_mtu, ICMP_ERROR_MAX_LEN) - 20 - 8
    total = (packet[2] << 8) | packet[3]
    quoted = bytes(packet[:min(total, len(packet), room)])
    return IcmpRepr(icmp_type, code, rest, quoted).build()


class RateLimiter:
    """icmpv4_xrlim_allow: a token bucket per destination address."""

    def __init__(self) -> None:
        self.peers: dict[bytes, tuple[int, int]] = {}

    def allow(self, dst: bytes, now_ns: int) -> bool:
        return self._spend(dst, now_ns, RATELIMIT_NS, BURST_FACTOR * RATELIMIT_NS)

    def route_error_allow(self, dst: bytes, now_ns: int) -> bool:
        """ip_error's check, on the same bucket, before an error about a packet
        without a route goes to icmp_send (and its `allow`)."""
        return self._spend(dst, now_ns, ROUTE_ERROR_COST_NS, ROUTE_ERROR_BURST_NS)

    def _spend(self, dst: bytes, now_ns: int, cost: int, burst: int) -> bool:
        tokens, last = self.peers.get(dst, (0, now_ns - 60 * 1_000_000_000))
        tokens = min(tokens + now_ns - last, burst)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self.peers[dst] = (tokens, now_ns)
        return allowed


class RedirectLimiter:
    """ip_rt_send_redirect's backoff, per source address of the redirected packets."""

    def __init__(self) -> None:
        self.peers: dict[bytes, tuple[int, int]] = {}  # source -> (redirects sent, rate_last)

    def allow(self, src: bytes, now_ns: int) -> bool:
        sent, last = self.peers.get(src, (0, now_ns))
        if now_ns > last + REDIRECT_SILENCE_NS:
            sent = 0
        if sent >= REDIRECT_NUMBER:
            self.peers[src] = (sent, now_ns)
            return False
        if sent == 0 or now_ns > last + (REDIRECT_LOAD_NS << sent):
            self.peers[src] = (sent + 1, now_ns)
            return True
        return False
