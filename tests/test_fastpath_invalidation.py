"""Tests the flow cache cannot fool: random payload bytes, every piece of
state a replay depends on changed between bursts (each setter of the
generations, FDB ageing, neighbours no longer sendable), and the state the
fast path leaves behind (FDB contents, learned PMTUs, IP identifiers)
compared with the slow path's. Each change must make the cache fall back
(the reason is counted) and the outcome must equal the slow path's."""

from __future__ import annotations

import random
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from emu.fastpath import flow_cache
from emu.net.bridge import Bridge
from emu.scenario import load_scenario_text
from emu.scenario.run import run_scenario
from emu.sim import seconds
from tests.test_fastpath import PORT, Run, scenario_text


def _state(run: Run) -> dict:
    """What the outcome of test_fastpath does not show: FDBs, PMTUs, identifiers."""
    cluster = run.emulated.cluster
    state = {}
    for ns in [*cluster.namespaces(), cluster.underlay]:
        bridges = {dev.name: sorted((mac, e.port.name if e.port else None, e.updated_ns, e.static)
                                    for mac, e in dev.fdb.entries.items())
                   for dev in ns.devices.values() if isinstance(dev, Bridge)}
        state[ns.name] = (bridges, dict(ns.stack.pmtu), ns.stack._next_ident,
                          ns.show_neighbours(), ns.rng.getstate())
    return state


def _play(text: str, change, fast: bool, rounds: int = 4, length: int = 120) -> Run:
    """Bursts of random payloads p1a -> p2a; `change(run)` between rounds 1 and 2."""
    run = Run(text, fast)
    run.sim.run(until_ns=seconds(1))
    draw = random.Random(7)
    for number in range(rounds):
        payloads = [bytes(draw.randrange(256) for _ in range(length)) for _ in range(6)]
        run.send(("p1a", "p2a", length), payloads)
        run.sim.run(until_ns=run.sim.now_ns + seconds(0.01))
        if number == 1:
            change(run)
            run.sim.run(until_ns=run.sim.now_ns + seconds(0.01))
    run.sim.run(until_ns=run.sim.now_ns + seconds(5))
    return run


def _both(change, backend: str = "vxlan", mtu: int = 1500) -> Run:
    text = scenario_text(backend, [1, 1], mtu)
    slow = _play(text, change, fast=False)
    fast = _play(text, change, fast=True)
    assert fast.outcome() == slow.outcome()
    assert _state(fast) == _state(slow)
    return fast


def _node(run: Run, name: str = "n1"):
    return run.namespace(name)


def _sender(run: Run):
    return next(sock for flow, sock in run.senders.items() if flow[:2] == ("p1a", "p2a"))


CHANGES = {
    "ip_forward off": (lambda run: setattr(_node(run), "ip_forward", False), "namespace-changed"),
    "default_ttl": (lambda run: setattr(run.namespace("p1a"), "default_ttl", 3), "namespace-changed"),
    "device mtu": (lambda run: setattr(_node(run).device("flannel.1"), "mtu", 1400), "namespace-changed"),
    "device down": (lambda run: setattr(_node(run, "n2").device("cni0"), "up", False), "namespace-changed"),
    "fdb ageing": (lambda run: setattr(_node(run).device("cni0").fdb, "ageing_ns", 1), "fdb-changed"),
    "bridge promiscuous": (lambda run: setattr(_node(run).device("cni0"), "promiscuous", True),
                           "namespace-changed"),
    "bridge port state": (lambda run: setattr(_node(run).device("cni0").ports[0].bridge_port, "state",
                                              "blocking"), "namespace-changed"),
    "bridge port learning": (lambda run: setattr(_node(run, "n2").device("cni0").ports[0].bridge_port,
                                                 "learning", False), "namespace-changed"),
    "bridge port hairpin": (lambda run: setattr(_node(run).device("cni0").ports[0].bridge_port, "hairpin",
                                                False), "namespace-changed"),
    "socket pmtudisc": (lambda run: setattr(_sender(run), "pmtudisc", "dont"), "socket-changed"),
    "socket checksum": (lambda run: setattr(_sender(run), "checksum", False), "socket-changed"),
    "neighbour removed": (lambda run: _node(run, "n2").neighbours(_node(run, "n2").device("cni0")).remove(
        IPv4Address(run.emulated.cluster.pods["p2a"].ip).packed), "neighbour-changed"),
    "fdb entry aged": (lambda run: run.sim.run(until_ns=run.sim.now_ns + seconds(400)), None),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_each_change_falls_back_and_matches_the_slow_path(name):
    change, reason = CHANGES[name]
    fast = _both(change)
    stats = flow_cache(fast.sim).stats
    assert stats.datagrams_replayed > 0, stats
    if reason is not None:
        assert stats.fallbacks[reason] >= 1, stats
    else:
        assert sum(stats.fallbacks.values()) >= 1, stats


def test_random_payloads_replay_exactly():
    fast = _both(lambda run: None)
    assert flow_cache(fast.sim).stats.datagrams_replayed >= 12
    received = [payload for payload, _ in fast.receivers["p2a"].queue]
    assert len(set(received)) == len(received) == 24  # every payload its own bytes, in order


def test_learned_pmtu_is_the_same_on_both_paths():
    """A DF datagram too big for a hop teaches the sender a PMTU (ICMP frag
    needed): never replayed, and the tables must agree afterwards."""
    def shrink(run: Run) -> None:
        _node(run, "n2").device("eth0").mtu = 1200
        _sender(run).pmtudisc = "do"
    text = scenario_text("host-gw", [1, 1], 1500)
    for length in (1300,):
        slow = _play(text, shrink, fast=False, length=length)
        fast = _play(text, shrink, fast=True, length=length)
        assert fast.outcome() == slow.outcome() and _state(fast) == _state(slow)


PING = """name: pings
net-conf: {Network: 10.244.0.0/16, SubnetLen: 24, Backend: {Type: vxlan}}
underlay: {subnet: 172.18.0.0/24}
nodes:
  - {name: n1, ip: 172.18.0.11, subnet: 10.244.1.0/24, pods: [{name: p1a, ip: 10.244.1.2}]}
  - {name: n2, ip: 172.18.0.12, subnet: 10.244.2.0/24, pods: [{name: p2a, ip: 10.244.2.2}]}
traffic:
  - {from: p1a, run: ping -c 60 -i 0.001 -q -p a5c3 10.244.2.2}
  - {from: p2a, run: ping -c 30 -i 0.002 -s 300 10.244.1.2}
"""


def test_ping_flows_are_replayed_byte_identically(tmp_path: Path):
    """Scenario pings (requests and replies) are recorded once and replayed;
    every capture file and stats.json equal the slow path's."""
    outputs = {}
    for fast in (False, True):
        def setup(emulated, capture_set, fast=fast):
            flow_cache(emulated.sim).enabled = fast
            outputs[(fast, "sim")] = emulated.sim
        out = tmp_path / ("fast" if fast else "slow")
        run_scenario(load_scenario_text(PING), out, setup=setup)
        outputs[fast] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert outputs[True] == outputs[False]
    assert len(outputs[True]) > 5
    assert flow_cache(outputs[(True, "sim")]).stats.datagrams_replayed >= 80


def test_an_fdb_entry_aged_while_nothing_else_changed_falls_back():
    """FDB ageing is lazy (no generation moves when an entry expires): the
    replay itself must see that a looked-up entry is no longer live."""
    def age(run: Run) -> None:
        run.sim.run(until_ns=run.sim.now_ns + seconds(6))  # past the 5 s ageing, before any neighbour timer

    def play(fast: bool) -> Run:
        text = scenario_text("vxlan", [1, 1], 1500)
        run = Run(text, fast)
        for node in ("n1", "n2"):
            run.namespace(node).device("cni0").fdb.ageing_ns = seconds(5)
        run.sim.run(until_ns=seconds(1))
        draw = random.Random(3)
        for number in range(4):
            run.send(("p1a", "p2a", 64), [bytes(draw.randrange(256) for _ in range(64)) for _ in range(5)])
            run.sim.run(until_ns=run.sim.now_ns + seconds(0.01))
            if number == 1:
                age(run)
        run.sim.run(until_ns=run.sim.now_ns + seconds(1))
        return run

    slow, fast = play(False), play(True)
    assert fast.outcome() == slow.outcome() and _state(fast) == _state(slow)
    stats = flow_cache(fast.sim).stats
    assert stats.fallbacks["fdb-entry-aged"] >= 1 and stats.datagrams_replayed > 0, stats


def test_a_drop_in_another_namespace_than_the_event_is_not_replayed():
    """The recorder compares counters only in the namespace an event runs in:
    a pod's send whose frame the host-side veth refuses (PKT_TOO_BIG, counted
    in the node) is heard outside that namespace, so the walk is left to the
    slow path, and both paths count the same drops."""
    def shrink_host_veth(run: Run) -> None:
        run.namespace("p1a").device("eth0").peer.mtu = 100

    fast = _both(shrink_host_veth)
    stats = flow_cache(fast.sim).stats
    assert stats.not_recorded["counters-outside-snapshot"] >= 1, stats
    host_veth = fast.namespace("p1a").device("eth0").peer
    assert host_veth.stats.drops["PKT_TOO_BIG"] == 12  # rounds 3 and 4, six datagrams each
