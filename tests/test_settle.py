"""Settling: a run without a time limit ends when no event left can change a
frame. Housekeeping timers (lease renewals, neighbour entries going STALE,
reassembly queues without their first fragment) stay queued for later runs
instead of keeping an idle cluster running for virtual years; timers that
send (ARP probes, pings, ICMP time exceeded) still run first."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.l2 import ARP

from emu.sim import NS_PER_SECOND, Scheduler, SettleError
from helpers_net import collect, run_ping, two_nodes


def test_housekeeping_alone_settles_and_stays_queued():
    sim = Scheduler()
    ran = []
    sim.call_housekeeping_at(10 * NS_PER_SECOND, ran.append, "renew")
    sim.run()
    assert sim.now_ns == 0 and ran == [] and sim.pending() == 1
    sim.run(until_ns=20 * NS_PER_SECOND)  # a timed run still runs it at its time
    assert ran == ["renew"]


def test_frame_events_run_even_after_housekeeping():
    sim = Scheduler()
    ran = []
    sim.call_housekeeping_at(1, ran.append, "expire")
    sim.call_at(5, ran.append, "send")
    sim.run()
    assert ran == ["expire", "send"] and sim.now_ns == 5


def test_quiet_if_is_asked_when_settling():
    sim = Scheduler()
    loud = [True]
    ran = []
    sim.call_housekeeping_at(7, ran.append, "timer", quiet_if=lambda: not loud[0])
    sim.run()
    assert ran == ["timer"]
    loud[0] = False
    sim.call_housekeeping_at(9, ran.append, "timer2", quiet_if=lambda: not loud[0])
    sim.run()
    assert ran == ["timer"] and sim.now_ns == 7


def test_idle_cluster_settles_at_time_zero():
    emulated = two_nodes(backend="vxlan")
    emulated.sim.run_until_settled(3600 * NS_PER_SECOND)  # raises if renewals kept it going
    emulated.sim.run()  # used to run lease renewals every 23 h for ever
    assert emulated.sim.now_ns == 0 and emulated.sim.settled()


def test_a_used_stale_entry_still_probes_before_settling():
    """The reply to a pod's first ping goes out through an entry its peer
    learnt STALE from the ARP request, so the peer probes it 5 s later (the
    kernel's unicast probe): run() goes on until that probe is answered. An
    entry's REACHABLE timeout that can only make it STALE keeps nothing
    running."""
    emulated = two_nodes(backend="host-gw")
    sim = emulated.sim
    pod = emulated.cluster.pods["p1a"]
    eth0 = collect(pod.ns.device("eth0"))

    def unicast_requests() -> list:
        return [f for f in eth0.ether() if ARP in f and f[ARP].op == 1 and f.dst != "ff:ff:ff:ff:ff:ff"]

    assert run_ping(pod.ns, "10.244.1.3", 1).received == 1
    sim.run()
    assert sim.settled() and 5 * NS_PER_SECOND < sim.now_ns < 15 * NS_PER_SECOND
    assert len(unicast_requests()) == 1  # p1b's probe of p1a, answered
    frames = len(eth0.frames)
    sim.run(until_ns=sim.now_ns + 60 * NS_PER_SECOND)  # both entries time out to STALE
    assert len(eth0.frames) == frames
    start = sim.now_ns
    assert run_ping(pod.ns, "10.244.1.3", 1).received == 1
    sim.run()
    assert sim.settled() and sim.now_ns - start > 5 * NS_PER_SECOND
    assert len(unicast_requests()) == 3  # now both ends probe the entries they used
    assert sum(ICMP in f for f in eth0.ether()) == 4


def test_a_run_that_cannot_settle_stops_at_its_bound():
    sim = Scheduler()

    def tick() -> None:
        sim.call_later(NS_PER_SECOND, tick)

    sim.call_at(0, tick)
    with pytest.raises(SettleError, match=r"did not settle within 60 s .*next event that can change a frame: "
                                          r"test_a_run_that_cannot_settle_stops_at_its_bound.<locals>.tick at t=61 s"):
        sim.run_until_settled(60 * NS_PER_SECOND)
    assert sim.now_ns == 60 * NS_PER_SECOND and sim.pending() == 1


def test_a_loop_at_one_instant_stops_at_the_event_bound():
    sim = Scheduler()

    def spin() -> None:
        sim.call_soon(spin)

    sim.call_at(0, spin)
    with pytest.raises(SettleError, match="or 1000 events .1000 events run, now t=0 s"):
        sim.run_until_settled(NS_PER_SECOND, max_events=1000)
