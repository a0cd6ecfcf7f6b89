"""When and how a namespace sends ICMP errors, as Linux's icmp_send does.

No error about an ICMP error, a non-first fragment, a broadcast/multicast
packet or a packet from 0.0.0.0; the error quotes as much of the offending
datagram as fits in 576 bytes, uses tos (orig & 0x1e) | 0xc0, TTL 64, DF
clear; per-destination rate limiting (icmp_ratelimit 1 s, burst 6, the
inet_peer token bucket) except for fragmentation-needed, which Linux never
limits.
"""

from __future__ import annotations

from emu.wire import icmp
from emu.wire.icmp import IcmpRepr

ICMP_ERROR_MAX_LEN = 576
IPTOS_TOS_MASK = 0x1E
IPTOS_PREC_INTERNETCONTROL = 0xC0
RATELIMIT_NS = 1_000_000_000
BURST_FACTOR = 6


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
        tokens, last = self.peers.get(dst, (0, now_ns - 60 * 1_000_000_000))
        tokens = min(tokens + now_ns - last, BURST_FACTOR * RATELIMIT_NS)
        allowed = tokens >= RATELIMIT_NS
        if allowed:
            tokens -= RATELIMIT_NS
        self.peers[dst] = (tokens, now_ns)
        return allowed
