"""When and how a namespace sends ICMP errors, as Linux's icmp_send does.

No error about an ICMP error, a non-first fragment, a broadcast/multicast
packet or a packet from 0.0.0.0; the error quotes as much of the offending
datagram as fits in 576 bytes, uses tos (orig & 0x1e) | 0xc0, TTL 64, DF
clear.

Rate limits (Linux 6.x, net/ipv4/icmp.c, route.c, inetpeer.c). The types of
icmp_ratemask (destination unreachable, source quench, time exceeded,
parameter problem), except fragmentation-needed, which Linux never limits,
pass two limits: the namespace-wide one (icmp_global_allow, a credit of
icmp_msgs_burst 50 refilled at icmp_msgs_per_sec 1000) and the one of the
destination's inet_peer entry (icmpv4_xrlim_allow: a token bucket, 1 s a
message, burst 6 s).

That inet_peer entry (one per address, per namespace) is shared by three
paths, which is why they are one `PeerLimits` here:
- icmpv4_xrlim_allow (errors sent *to* the address) reads and writes
  rate_tokens and rate_last;
- ip_error (a packet *from* the address had no route) spends from the same
  rate_tokens with its own cost and burst (1 s, 5 s) before icmp_send spends
  again: so each such packet costs a token twice;
- ip_rt_send_redirect (redirects about packets *from* the address) keeps
  n_redirects and rate_last: the first redirect goes at once, each next one
  only 20 ms << n_redirects after rate_last, at most 9, and when rate_last
  is more than 20.48 s old it starts over *and zeroes rate_tokens*; a sent
  redirect sets rate_last to now without adding tokens.
So a first redirect leaves the error bucket empty (a new entry has no tokens
and only its rate_last 60 s ago would have filled it): errors to that address
in the next second are suppressed; every sent redirect takes the tokens
accrued since the last error; and every error or no-route packet moves
rate_last, which delays the next redirect and keeps the 20.48 s silence from
ever starting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import emu.wire.ipv4 as ipv4
from emu.sim import NS_PER_SECOND
from emu.wire import icmp
from emu.wire.addr import ipv4_is_class_d_or_e
from emu.wire.icmp import IcmpRepr

ICMP_ERROR_MAX_LEN = 576
IPTOS_TOS_MASK = 0x1E
IPTOS_PREC_INTERNETCONTROL = 0xC0
RATELIMIT_NS = 1_000_000_000
BURST_FACTOR = 6  # XRLIM_BURST_FACTOR
PEER_NEW_AGE_NS = 60 * NS_PER_SECOND
MSGS_PER_SEC = 1000  # net.ipv4.icmp_msgs_per_sec
MSGS_BURST = 50  # net.ipv4.icmp_msgs_burst
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
    if len(packet) < ipv4.MIN_HEADER_LEN:
        return False
    if ipv4.flags_offset(packet) & ipv4.OFFSET_MASK:
        return False
    src, dst = ipv4.src(packet), ipv4.dst(packet)
    if src == bytes(4) or ipv4_is_class_d_or_e(src) or ipv4_is_class_d_or_e(dst):
        return False
    if ipv4.protocol(packet) == ipv4.PROTO_ICMP:
        header_len = ipv4.header_length(packet)
        if len(packet) > header_len and icmp.message_type(packet[header_len:]) not in icmp.QUERY_TYPES:
            return False  # never an error about an error (or an unknown type)
    return True


def error_tos(packet: bytes) -> int:
    return (ipv4.tos(packet) & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL


def build_error(packet: bytes, icmp_type: int, code: int, rest: int, route_mtu: int) -> bytes:
    """The ICMP error message quoting `packet` (the datagram as received)."""
    room = min(route_mtu, ICMP_ERROR_MAX_LEN) - ipv4.MIN_HEADER_LEN - icmp.HEADER_LEN
    quoted = bytes(packet[:min(ipv4.total_length(packet), len(packet), room)])
    return IcmpRepr(icmp_type, code, rest, quoted).build()


@dataclass
class InetPeer:
    """struct inet_peer's rate-limiting fields (times in virtual ns)."""

    rate_tokens: int
    rate_last: int
    n_redirects: int = 0


class PeerLimits:
    """net->ipv4.peers: the inet_peer entries of one namespace, by address."""

    def __init__(self) -> None:
        self.peers: dict[bytes, InetPeer] = {}

    def peer(self, addr: bytes, now_ns: int) -> InetPeer:
        """inet_getpeer_v4: a new entry has no tokens and a rate_last 60 s
        ago, "enough high so that the first calculation of tokens is at its
        maximum" (inetpeer.c)."""
        entry = self.peers.get(addr)
        if entry is None:
            entry = self.peers[addr] = InetPeer(0, now_ns - PEER_NEW_AGE_NS)
        return entry

    def icmp_allow(self, dst: bytes, now_ns: int) -> bool:
        """icmpv4_xrlim_allow -> inet_peer_xrlim_allow for an error to `dst`."""
        peer = self.peer(dst, now_ns)
        delta = now_ns - peer.rate_last
        if delta:
            peer.rate_last = now_ns
            peer.rate_tokens = min(peer.rate_tokens + delta, BURST_FACTOR * RATELIMIT_NS)
        if peer.rate_tokens >= RATELIMIT_NS:
            peer.rate_tokens -= RATELIMIT_NS
            return True
        return False

    def route_error_allow(self, src: bytes, now_ns: int) -> bool:
        """ip_error's check before an error about a packet from `src` that
        has no route goes to icmp_send (and so to `icmp_allow` as well)."""
        peer = self.peer(src, now_ns)
        peer.rate_tokens = min(peer.rate_tokens + now_ns - peer.rate_last, ROUTE_ERROR_BURST_NS)
        peer.rate_last = now_ns
        if peer.rate_tokens >= ROUTE_ERROR_COST_NS:
            peer.rate_tokens -= ROUTE_ERROR_COST_NS
            return True
        return False

    def redirect_allow(self, src: bytes, now_ns: int) -> bool:
        """ip_rt_send_redirect's backoff for a redirect about a packet from `src`."""
        peer = self.peer(src, now_ns)
        if now_ns > peer.rate_last + REDIRECT_SILENCE_NS:
            peer.rate_tokens = 0
            peer.n_redirects = 0
        if peer.n_redirects >= REDIRECT_NUMBER:
            peer.rate_last = now_ns
            return False
        if peer.n_redirects == 0 or now_ns > peer.rate_last + (REDIRECT_LOAD_NS << peer.n_redirects):
            peer.rate_last = now_ns
            peer.n_redirects += 1
            return True
        return False


class GlobalLimit:
    """icmp_global_allow / icmp_global_consume, one per namespace (6.12+).

    An error may go while the credit is positive; a credit at or below zero
    is refilled (icmp_msgs_per_sec for each second since the last refill, at
    most one second's worth, at most icmp_msgs_burst) only once 20 ms have
    passed. A message that also passed its peer's limit then costs a random
    0, 1 or 2 credits (get_random_u32_below(3)). The kernel's draw cannot be
    reproduced; `rng` is a seeded stream of the namespace's own, so the same
    scenario always spends the same credits and the average is the kernel's.
    """

    def __init__(self, rng: random.Random | str) -> None:
        """`rng` is the stream, or the seed of a `random.Random` made on the
        first draw (most namespaces never send an ICMP error)."""
        self._rng = rng
        self.credit = 0
        self.stamp: int | None = None  # None: the namespace never refilled (jiffies far away)

    def allow(self, now_ns: int) -> bool:
        if self.credit > 0:
            return True
        delta = NS_PER_SECOND if self.stamp is None else min(now_ns - self.stamp, NS_PER_SECOND)
        if delta < NS_PER_SECOND // 50:
            return False
        increment = MSGS_PER_SEC * delta // NS_PER_SECOND
        if not increment:
            return False
        self.stamp = now_ns
        self.credit = min(self.credit + increment, MSGS_BURST)
        return True

    @property
    def rng(self):
        if isinstance(self._rng, str):
            self._rng = random.Random(self._rng)
        return self._rng

    def consume(self) -> None:
        self.credit -= self.rng.randrange(3)
