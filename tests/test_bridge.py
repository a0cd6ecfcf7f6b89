"""The cni0 learning bridge behaves like Linux's bridge (net/bridge/br_input.c, br_forward.c, br_fdb.c).

A bare bridge with wired ports: each test injects frames from the hosts and
checks exactly which ports put them out (`lab.seen[i]` is what host i
received), what the FDB learned and which counters moved. Expected values are
written down here, never asked of the bridge.
"""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP

from emu.net import Bridge, Namespace, veth_pair
from emu.sim import Scheduler
from helpers_net import (MAC_BRIDGE, advance, bridge_lab, collect, ether_frame, host_mac, run_ping,
                         two_nodes)

BROADCAST = b"\xff" * 6
MULTICAST = bytes.fromhex("01005e000001")
STRANGER = bytes.fromhex("02000000ee01")


def counts(lab) -> list[int]:
    return [len(collector) for collector in lab.seen]


def test_source_macs_are_learned_per_port():
    lab = bridge_lab(3)
    lab.send_from(0, ether_frame(BROADCAST, host_mac(0)))
    lab.send_from(2, ether_frame(BROADCAST, host_mac(2)))
    entries = lab.bridge.fdb.entries
    assert entries[host_mac(0)].port is lab.ports[0]
    assert entries[host_mac(2)].port is lab.ports[2]
    assert host_mac(1) not in entries
    assert not entries[host_mac(0)].static and not entries[host_mac(0)].local


def test_a_mac_that_moves_is_relearned_on_its_new_port():
    lab = bridge_lab(3)
    lab.send_from(0, ether_frame(BROADCAST, host_mac(0)))
    lab.send_from(1, ether_frame(BROADCAST, host_mac(0)))
    assert lab.bridge.fdb.entries[host_mac(0)].port is lab.ports[1]


def test_known_unicast_goes_only_to_its_port():
    lab = bridge_lab(4)
    lab.send_from(2, ether_frame(BROADCAST, host_mac(2)))
    lab.clear()
    frame = ether_frame(host_mac(2), host_mac(0), payload=b"known unicast".ljust(46, b"."))
    lab.send_from(0, frame)
    assert counts(lab) == [0, 0, 1, 0]
    assert lab.seen[2].raw() == [frame]  # forwarded byte for byte


def test_unknown_unicast_broadcast_and_multicast_flood_to_every_other_port():
    for dst in (STRANGER, BROADCAST, MULTICAST):
        lab = bridge_lab(4)
        frame = ether_frame(dst, host_mac(1))
        lab.send_from(1, frame)
        assert counts(lab) == [1, 0, 1, 1], dst.hex()
        assert lab.seen[0].raw() == [frame]
        assert lab.bridge.flooded == 1


def test_flood_order_is_newest_port_first_like_linux():
    # br_add_if puts a new port at the head of the list the flood walks.
    lab = bridge_lab(3)
    order = []
    for index, host in enumerate(lab.hosts):
        host.taps.append(lambda _t, _f, index=index: order.append(index))
    lab.send_from(0, ether_frame(BROADCAST, host_mac(0)))
    assert order == [2, 1]


def test_hairpin_port_gets_the_flood_back_and_others_do_not():
    lab = bridge_lab(3, hairpin=(1,))
    lab.send_from(1, ether_frame(BROADCAST, host_mac(1)))
    assert counts(lab) == [1, 1, 1]
    lab.clear()
    lab.send_from(0, ether_frame(BROADCAST, host_mac(0)))
    assert counts(lab) == [0, 1, 1]


def test_known_unicast_back_to_the_ingress_port_is_dropped_unless_hairpin():
    lab = bridge_lab(3)
    lab.send_from(0, ether_frame(BROADCAST, host_mac(0)))
    lab.send_from(0, ether_frame(BROADCAST, bytes.fromhex("020000000099")))  # a 2nd host behind port0
    lab.clear()
    lab.send_from(0, ether_frame(host_mac(0), bytes.fromhex("020000000099")))
    assert counts(lab) == [0, 0, 0]
    assert lab.ports[0].stats.drops["BRIDGE_SAME_PORT"] == 1

    hairpin = bridge_lab(3, hairpin=(0,))
    hairpin.send_from(0, ether_frame(BROADCAST, host_mac(0)))
    hairpin.clear()
    hairpin.send_from(0, ether_frame(host_mac(0), bytes.fromhex("020000000099")))
    assert counts(hairpin) == [1, 0, 0]


def test_an_entry_older_than_the_default_300_s_ageing_time_is_forgotten():
    lab = bridge_lab(3)
    lab.send_from(2, ether_frame(BROADCAST, host_mac(2)))
    advance(lab.sim, 299)
    lab.clear()
    lab.send_from(0, ether_frame(host_mac(2), host_mac(0)))
    assert counts(lab) == [0, 0, 1]  # still known at 299 s
    advance(lab.sim, 2)  # 301 s since host2 last spoke
    lab.clear()
    lab.send_from(0, ether_frame(host_mac(2), host_mac(0)))
    assert counts(lab) == [0, 1, 1]  # unknown again: flooded
    assert host_mac(2) not in lab.bridge.fdb.entries


def test_traffic_from_a_mac_refreshes_its_age_but_traffic_to_it_does_not():
    lab = bridge_lab(2)
    lab.send_from(1, ether_frame(BROADCAST, host_mac(1)))
    advance(lab.sim, 200)
    lab.send_from(1, ether_frame(BROADCAST, host_mac(1)))  # refresh at t=200
    advance(lab.sim, 200)
    lab.send_from(0, ether_frame(host_mac(1), host_mac(0)))  # only used at t=400
    assert host_mac(1) in lab.bridge.fdb.entries
    advance(lab.sim, 150)  # 350 s since host1 last spoke
    lab.clear()
    lab.send_from(0, ether_frame(host_mac(1), host_mac(0)))
    assert host_mac(1) not in lab.bridge.fdb.entries
    assert lab.bridge.flooded == 3


def test_the_ageing_time_is_settable():
    lab = bridge_lab(3, ageing_s=10)
    lab.send_from(2, ether_frame(BROADCAST, host_mac(2)))
    advance(lab.sim, 11)
    lab.clear()
    lab.send_from(0, ether_frame(host_mac(2), host_mac(0)))
    assert counts(lab) == [0, 1, 1]


def test_static_entries_never_age():
    lab = bridge_lab(3)
    lab.bridge.fdb.add_static(STRANGER, lab.ports[2])
    advance(lab.sim, 10 * 3600)
    lab.send_from(0, ether_frame(STRANGER, host_mac(0)))
    assert counts(lab) == [0, 0, 1]
    assert lab.bridge.fdb.show("br0", lab.sim.now_ns)[-1].endswith("static")


def test_frames_for_the_bridge_mac_go_up_to_the_bridge_device_only():
    lab = bridge_lab(3)
    up = collect(lab.bridge)
    frame = ether_frame(MAC_BRIDGE, host_mac(0))
    lab.send_from(0, frame)
    assert counts(lab) == [0, 0, 0]
    assert up.raw() == [frame]
    assert lab.bridge.delivered_local == 1 and lab.bridge.flooded == 0


def test_cni0_answers_pings_to_the_gateway_address_it_carries():
    cluster = two_nodes()
    p1a = cluster.cluster.pods["p1a"].ns
    cni0 = cluster.cluster.nodes["n1"].ns.devices["cni0"]
    result = run_ping(p1a, "10.244.1.1", 1)
    assert result.received == 1
    assert cni0.stats.rx_packets == 2  # the ARP request (broadcast) and the echo request
    assert cni0.stats.tx_packets == 2  # the ARP reply and the echo reply


def test_broadcast_is_flooded_and_passed_up():
    lab = bridge_lab(2)
    up = collect(lab.bridge)
    lab.send_from(0, ether_frame(BROADCAST, host_mac(0)))
    assert counts(lab) == [0, 1] and len(up) == 1


def test_without_promiscuous_mode_forwarded_unicast_is_not_copied_up():
    lab = bridge_lab(2)
    up = collect(lab.bridge)
    lab.send_from(1, ether_frame(BROADCAST, host_mac(1)))
    up.clear()
    lab.send_from(0, ether_frame(host_mac(1), host_mac(0)))
    assert len(up) == 0
    lab.bridge.promiscuous = True  # what tcpdump -i cni0 does
    lab.send_from(0, ether_frame(host_mac(1), host_mac(0)))
    assert len(up) == 1 and lab.seen[1].raw()[-1] == up.raw()[0]


def test_the_cni0_capture_sees_pod_to_pod_frames():
    cluster = two_nodes()
    cni0 = cluster.cluster.nodes["n1"].ns.devices["cni0"]
    cni0.promiscuous = True
    capture = collect(cni0)
    run_ping(cluster.cluster.pods["p1a"].ns, "10.244.1.3", 1)
    summary = [(f[ARP].op, f[ARP].psrc) if ARP in f else (f[ICMP].type, f[IP].src)
               for f in capture.ether()]
    assert summary == [(1, "10.244.1.2"), (2, "10.244.1.3"), (8, "10.244.1.2"), (0, "10.244.1.3")]
    # the node itself did not answer or route anything
    assert cluster.cluster.nodes["n1"].ns.forwarded == 0


def test_invalid_source_macs_are_dropped_with_a_named_reason():
    lab = bridge_lab(2)
    for src in (BROADCAST, MULTICAST, b"\x00" * 6):
        lab.send_from(0, ether_frame(BROADCAST, src))
    assert lab.ports[0].stats.drops["MAC_INVALID_SOURCE"] == 3
    assert counts(lab) == [0, 0]
    assert set(lab.bridge.fdb.entries) == {MAC_BRIDGE, *(p.mac for p in lab.ports)}


def test_per_port_and_per_bridge_counters():
    lab = bridge_lab(3)
    lab.send_from(0, ether_frame(BROADCAST, host_mac(0)))  # flood to port1, port2
    lab.send_from(1, ether_frame(host_mac(0), host_mac(1), payload=b"y" * 86))  # known: port0
    port0, port1, port2 = lab.ports
    assert (port0.stats.rx_packets, port0.stats.rx_bytes) == (1, 60)
    assert (port0.stats.tx_packets, port0.stats.tx_bytes) == (1, 100)
    assert (port1.stats.rx_packets, port1.stats.tx_packets) == (1, 1)
    assert (port2.stats.rx_packets, port2.stats.tx_packets) == (0, 1)
    assert lab.bridge.counters() == {"flooded": 1, "forwarded": 1, "delivered_local": 1,
                                     "fdb_entries": 1 + 3 + 2}


def test_a_frame_too_big_for_the_egress_port_is_dropped_there():
    lab = bridge_lab(2)
    lab.ports[1].mtu = 100
    lab.send_from(0, ether_frame(BROADCAST, host_mac(0), payload=b"z" * 101))
    assert counts(lab) == [0, 0]
    assert lab.ports[1].stats.drops["PKT_TOO_BIG"] == 1


def test_fdb_show_lists_entries_like_bridge_fdb_show():
    sim = Scheduler()
    ns = Namespace(sim, "n1")
    cni0 = Bridge(sim, "cni0", bytes.fromhex("0a580af40101"))
    ns.add_device(cni0)
    pod_end, veth1a = veth_pair(sim, "eth0", bytes.fromhex("0a580af40102"), "veth1a",
                                bytes.fromhex("eeee0000010a"))
    ns.add_device(veth1a)
    cni0.add_port(veth1a)
    pod_end.transmit(ether_frame(BROADCAST, pod_end.mac))
    sim.run()
    assert cni0.fdb.show("cni0", sim.now_ns) == [
        "0a:58:0a:f4:01:01 dev cni0 master cni0 permanent",
        "0a:58:0a:f4:01:02 dev veth1a master cni0 ",
        "ee:ee:00:00:01:0a dev veth1a master cni0 permanent",
    ]
