"""kube-proxy's endpoint choice in the emulator follows the probabilities it
configures, over many connections.

A Service with n endpoints gets one `-m statistic --mode random
--probability 1/(n-i)` rule per endpoint but the last; walked in order,
each endpoint is chosen with probability 1/n. The kernel draws at random
(so its runs are verified with one endpoint per Service); the emulator
draws from the namespace's seeded netfilter stream, once per connection (the
nat table is walked for a connection's first packet only), so a run is
reproducible and, over many connections, balanced.

The bound. Each endpoint's count X over N connections is Binomial(N, 1/n).
The test accepts X in [lo, hi], the narrowest interval around N/n whose
two tails together hold less than ALPHA = 1e-6 of the exact binomial
distribution (computed below with exact integers, no normal
approximation): a correct implementation with an arbitrary seed fails with
probability below n * ALPHA (3e-6 here); with the fixed seed the test is
deterministic. The same interval rejects the classic mistake of giving
every rule 1/n instead of 1/(n-i) (endpoints then get 1/3, 2/9, 4/9):
the test checks that its expected counts fall outside, so it can fail.
"""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction
from ipaddress import IPv4Address, IPv4Network
from math import comb

from scapy.layers.inet import IP, TCP

from emu.k8s.kube_proxy import Service, ServicePort, kube_proxy_rules
from emu.net.netfilter import Netfilter, address_type_of

CONNECTIONS = 3000
ALPHA = Fraction(1, 10**6)
ENDPOINTS = (IPv4Address("10.244.1.5"), IPv4Address("10.244.2.7"), IPv4Address("10.244.2.8"))
NODE = IPv4Address("172.18.0.11").packed


def binomial_interval(n: int, p: Fraction, alpha: Fraction) -> tuple[int, int]:
    """[lo, hi] such that P(X < lo) + P(X > hi) < alpha for X ~ Binomial(n, p),
    widened symmetrically in probability mass from the mode."""
    a, b = p.numerator, p.denominator
    pmf = [comb(n, k) * a**k * (b - a) ** (n - k) for k in range(n + 1)]  # times b**n: exact integers
    total = b**n
    lo = hi = n * a // b
    inside = pmf[lo]
    while (total - inside) * alpha.denominator >= alpha.numerator * total:
        below = pmf[lo - 1] if lo > 0 else -1
        above = pmf[hi + 1] if hi < n else -1
        if below >= above:
            lo -= 1
            inside += below
        else:
            hi += 1
            inside += above
    return lo, hi


SYN = bytes(IP(src="10.244.3.3", dst="10.96.0.20", ttl=63) / TCP(sport=20000, dport=80, flags="S"))


def syn(sport: int) -> bytearray:
    """The SYN from another source port (its TCP checksum left stale: netfilter does not check it)."""
    packet = bytearray(SYN)
    packet[20:22] = sport.to_bytes(2, "big")
    return packet


def test_three_endpoints_each_get_a_third_of_the_connections():
    web = Service("web", IPv4Address("10.96.0.20"), (ServicePort(80, 8080),), ENDPOINTS)
    netfilter = Netfilter(random.Random("seed-13"), lambda ip: address_type_of(ip, lambda a: a == NODE),
                          lambda device, nexthop: NODE)
    netfilter.load(kube_proxy_rules([web], IPv4Network("10.244.0.0/16")))
    chosen: Counter = Counter()
    for number in range(CONNECTIONS):
        packet = syn(20000 + number)  # a new connection each time: the nat table is walked
        result, _ = netfilter.prerouting(packet, "cni0", now_ns=number * 1000)
        assert result.verdict == "ACCEPT"
        chosen[IPv4Address(bytes(packet[16:20]))] += 1
    lo, hi = binomial_interval(CONNECTIONS, Fraction(1, 3), ALPHA)
    assert set(chosen) == set(ENDPOINTS)
    assert all(lo <= count <= hi for count in chosen.values()), (chosen, lo, hi)
    wrong = [CONNECTIONS * Fraction(1, 3), CONNECTIONS * Fraction(2, 9), CONNECTIONS * Fraction(4, 9)]
    assert sum(not lo <= expected <= hi for expected in wrong) == 2  # 1/n per rule would fail


def test_the_interval_is_the_narrowest_binomial_one():
    """Binomial(100, 1/2), summed here independently: the tails outside the
    interval hold less than ALPHA, one step narrower they would not."""
    lo, hi = binomial_interval(100, Fraction(1, 2), ALPHA)
    assert lo + hi == 100  # symmetric, as the distribution
    tails = sum(comb(100, k) for k in range(lo)) * 2 / Fraction(2**100)
    assert tails < ALPHA
    assert sum(comb(100, k) for k in range(lo + 1)) * 2 / Fraction(2**100) >= ALPHA
