"""ICMP errors, no-route errors and redirects share one inet_peer entry per
address, as in Linux 6.x (icmpv4_xrlim_allow, ip_error, ip_rt_send_redirect),
and ICMP errors pass the namespace-wide limit (icmp_global_allow/consume).

Expected values are worked out by hand from the kernel's algorithm (times in
ms): the two scenarios under tests/regressions/ with these numbers were
checked against a live 6.18 kernel, and their kernel captures are compared
frame by frame in test_random_topologies.py (and replayed live in
test_kernel_live.py).
"""

from __future__ import annotations

from pathlib import Path

import dpkt
from hypothesis import given
from hypothesis import strategies as st

from emu.net.icmp_errors import GlobalLimit, PeerLimits
from emu.net.namespace import Namespace
from emu.scenario import load_scenario
from emu.scenario.run import run_scenario
from emu.sim import Scheduler

MS = 1_000_000
PEER = bytes([10, 244, 1, 2])
REGRESSIONS = Path(__file__).resolve().parent / "regressions"


def test_a_new_peer_allows_a_burst_of_six_errors():
    peers = PeerLimits()
    assert [peers.icmp_allow(PEER, 5000 * MS) for _ in range(7)] == [True] * 6 + [False]


def test_a_first_redirect_empties_the_error_bucket():
    """A new entry's rate_last is 60 s ago (a full burst for a first error);
    the redirect moves it to now and adds no tokens."""
    peers = PeerLimits()
    assert peers.redirect_allow(PEER, 0)
    assert not peers.icmp_allow(PEER, 300 * MS)  # 0.3 s of tokens
    assert not peers.icmp_allow(PEER, 999 * MS)
    assert peers.icmp_allow(PEER, 1000 * MS)  # 1 s since the redirect


def test_an_error_attempt_delays_the_next_redirect():
    peers = PeerLimits()
    assert peers.redirect_allow(PEER, 0)
    assert not peers.icmp_allow(PEER, 30 * MS)  # refused, but rate_last moves to 30 ms
    assert not peers.redirect_allow(PEER, 60 * MS)  # 20 ms << 1 after 30 ms: not before 70 ms
    assert peers.redirect_allow(PEER, 71 * MS)


def test_a_sent_redirect_takes_the_tokens_accrued_since_the_last_error():
    peers = PeerLimits()
    assert peers.redirect_allow(PEER, 0)
    assert not peers.icmp_allow(PEER, 500 * MS)  # 0.5 s of tokens
    assert peers.redirect_allow(PEER, 600 * MS)  # rate_last = 600 ms, tokens still 0.5 s
    assert not peers.icmp_allow(PEER, 1050 * MS)  # 0.5 + 0.45 s
    assert peers.icmp_allow(PEER, 1100 * MS)  # 0.5 + 0.5 s


def test_errors_keep_the_redirect_silence_from_starting():
    peers = PeerLimits()
    now = 0
    for n in range(9):
        assert peers.redirect_allow(PEER, now), n
        now += (20 * MS << (n + 1)) + MS
    assert not peers.redirect_allow(PEER, now)  # nine sent: no more
    for _ in range(6):
        now += 10_000 * MS
        peers.icmp_allow(PEER, now)  # each moves rate_last
    assert not peers.redirect_allow(PEER, now + 20_000 * MS)  # 20 s < 20.48 s of silence
    assert peers.redirect_allow(PEER, now + 20_000 * MS + 20_481 * MS)
    assert not peers.icmp_allow(PEER, now + 20_000 * MS + 20_481 * MS + 900 * MS)


def test_no_route_errors_spend_the_bucket_twice():
    peers = PeerLimits()
    sent = []
    for _ in range(3):
        if peers.route_error_allow(PEER, 0):  # ip_error: burst 5 s, cost 1 s
            sent.append(peers.icmp_allow(PEER, 0))  # icmp_send: cost 1 s
    assert sent == [True, True, False]


def test_peers_are_per_address():
    peers = PeerLimits()
    assert peers.redirect_allow(PEER, 0)
    assert peers.icmp_allow(bytes([10, 244, 1, 3]), 100 * MS)


class _FixedCost:
    """A stand-in for the random stream: every message costs `cost` credits."""

    def __init__(self, cost: int) -> None:
        self.cost = cost

    def randrange(self, stop: int) -> int:
        assert stop == 3
        return self.cost


def test_global_limit_starts_full_then_refills_after_20_ms():
    limit = GlobalLimit(_FixedCost(2))
    allowed = 0
    for _ in range(100):
        if not limit.allow(0):
            break
        limit.consume()
        allowed += 1
    assert allowed == 25  # 50 credits, 2 each
    assert not limit.allow(19 * MS)
    assert limit.allow(20 * MS)
    assert limit.credit == 20  # 1000/s for 20 ms


def test_global_limit_costs_are_seeded_and_leave_the_namespace_stream_alone():
    def draws(seed: int) -> tuple[list[int], int]:
        ns = Namespace(Scheduler(), "n1", seed=seed)
        costs = [ns.stack.icmp_global.rng.randrange(3) for _ in range(40)]
        return costs, ns.rng.randrange(1 << 30)

    first, same, other = draws(7), draws(7), draws(8)
    assert first == same
    assert first[0] != other[0]
    assert first[1] == Namespace(Scheduler(), "n1", seed=7).rng.randrange(1 << 30)
    assert set(first[0]) == {0, 1, 2}


events = st.lists(st.tuples(st.integers(0, 30_000), st.sampled_from(["error", "redirect", "IP_INNOROUTES"])),
                  max_size=60)


@given(events)
def test_limits_hold_whatever_the_interleaving(steps):
    """Errors: at most 6 + one per second over any run; redirects: at most 9
    within 20.48 s, never two closer than 20 ms."""
    peers = PeerLimits()
    now = 0
    errors, redirects = 0, []
    for gap_ms, kind in steps:
        now += gap_ms * MS
        if kind == "redirect":
            if peers.redirect_allow(PEER, now):
                redirects.append(now)
        elif kind == "error" or peers.route_error_allow(PEER, now):
            errors += peers.icmp_allow(PEER, now)
    assert errors <= 6 + now // (1000 * MS)
    assert all(b - a > 20 * MS for a, b in zip(redirects, redirects[1:]))
    assert all(redirects[i + 9] - redirects[i] > 20_480 * MS for i in range(len(redirects) - 9))


def _icmp_from_router(pcap: Path) -> list[tuple[int, int]]:
    """(ms since the first frame, ICMP type) of every ICMP error in `pcap`."""
    found, start = [], None
    with pcap.open("rb") as handle:
        for ts, frame in dpkt.pcap.Reader(handle):
            start = ts if start is None else start
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.icmp.ICMP) and ip.data.type in (5, 11):
                found.append((round((ts - start) * 1000), ip.data.type))
    return found


def test_redirect_then_errors_in_a_cluster(tmp_path):
    run_scenario(load_scenario(REGRESSIONS / "redirect-then-error.yaml"), tmp_path)
    assert _icmp_from_router(tmp_path / "a_eth0.pcap") == [(0, 5), (1600, 11)]


def test_interleaved_redirects_and_errors_in_a_cluster(tmp_path):
    run_scenario(load_scenario(REGRESSIONS / "redirects-and-errors-interleaved.yaml"), tmp_path)
    assert _icmp_from_router(tmp_path / "a_eth0.pcap") == [(0, 5), (200, 5), (400, 5), (1280, 11)]
