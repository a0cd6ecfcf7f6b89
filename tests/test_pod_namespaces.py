"""Pods are shared network namespaces wired by the CNI bridge plugin (emu.k8s).

Containers of a pod share its namespace (loopback, eth0, IP); the CNI plugin
gives eth0 the scenario's or the derived MAC, the address, a default route via
cni0 and flannel's MTU; hairpinMode decides whether cni0 reflects a pod's own
broadcasts. Captures are read back from the pcaps a run writes.
"""

from __future__ import annotations

import dpkt
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP

from emu.scenario import load_scenario_text
from emu.scenario.build import build_cluster
from emu.scenario.run import run_scenario
from helpers_net import collect, run_ping, two_nodes, two_nodes_yaml

ZERO_MAC = b"\x00" * 6


def read_pcap(path) -> list[bytes]:
    with open(path, "rb") as handle:
        return [frame for _, frame in dpkt.pcap.Reader(handle)]


def test_containers_of_a_pod_talk_over_loopback_and_it_is_captured_on_lo(tmp_path):
    scenario = load_scenario_text(two_nodes_yaml(
        traffic="  - {from: p1b/sidecar, run: ping -c 1 127.0.0.1}"))
    result = run_scenario(scenario, tmp_path)
    assert result.traffic[0].ping.received == 1
    frames = read_pcap(tmp_path / "p1b_lo.pcap")
    assert len(frames) == 2  # tcpdump -i lo shows each packet once (kernel run: 2 frames)
    kinds = []
    for raw in frames:
        eth = dpkt.ethernet.Ethernet(raw)
        assert eth.src == ZERO_MAC and eth.dst == ZERO_MAC and eth.type == 0x0800
        assert eth.data.src == eth.data.dst == bytes([127, 0, 0, 1])
        kinds.append(eth.data.data.type)
    assert kinds == [8, 0]
    assert sorted(p.name for p in tmp_path.glob("p1*.pcap")) == ["p1b_lo.pcap"]


def test_loopback_of_one_pod_is_invisible_from_another():
    cluster = two_nodes().cluster
    p1a, p1b = cluster.pods["p1a"].ns, cluster.pods["p1b"].ns
    watchers = [collect(dev) for dev in p1b.devices.values()]
    assert run_ping(p1a, "127.0.0.1", 2, 0.2).received == 2
    assert [len(w) for w in watchers] == [0] * len(watchers)
    assert p1b.delivered == 0


def test_containers_share_eth0_and_its_ip(tmp_path):
    scenario = load_scenario_text(two_nodes_yaml(traffic="\n".join([
        "  - {from: p1b/app, run: ping -c 1 10.244.1.2}",
        "  - {from: p1b/sidecar, run: ping -c 1 10.244.1.2}",
    ])))
    result = run_scenario(scenario, tmp_path)
    assert [t.ping.received for t in result.traffic] == [1, 1]
    requests = [dpkt.ethernet.Ethernet(raw) for raw in read_pcap(tmp_path / "p1a_eth0.pcap")]
    requests = [e for e in requests if e.type == 0x0800 and e.data.data.type == 8]
    assert len(requests) == 2
    p1b_eth0 = (bytes.fromhex("0a580af40103"), bytes([10, 244, 1, 3]))
    assert {(e.src, e.data.src) for e in requests} == {p1b_eth0}


def test_cni_gives_eth0_derived_mac_address_default_route_and_flannel_mtu():
    for backend, mtu in (("host-gw", 1500), ("vxlan", 1450)):
        cluster = two_nodes(backend=backend).cluster
        p1a = cluster.pods["p1a"].ns
        eth0 = p1a.devices["eth0"]
        assert eth0.mac == bytes.fromhex("0a580af40102")  # 0a:58 + 10.244.1.2
        assert p1a.show_addresses() == ["lo: inet 127.0.0.1/8", "eth0: inet 10.244.1.2/24"]
        assert "default via 10.244.1.1 dev eth0" in p1a.show_routes()
        node = cluster.nodes["n1"].ns
        assert (eth0.mtu, node.devices["veth1a"].mtu, node.devices["cni0"].mtu) == (mtu, mtu, mtu), backend


def test_cni_uses_the_scenario_mac_and_an_mtu_override():
    text = two_nodes_yaml(backend="vxlan", mtu="1400").replace(
        "{name: p1a, ip: 10.244.1.2,", "{name: p1a, ip: 10.244.1.2, mac: 02:aa:bb:cc:dd:ee,")
    cluster = build_cluster(load_scenario_text(text)).cluster
    eth0 = cluster.pods["p1a"].ns.devices["eth0"]
    assert eth0.mac == bytes.fromhex("02aabbccddee")
    assert eth0.mtu == 1400 and cluster.nodes["n1"].ns.devices["veth1a"].mtu == 1400


def own_arp_requests_seen(hairpin: str) -> int:
    cluster = two_nodes(hairpin=hairpin).cluster
    p1a = cluster.pods["p1a"].ns
    wire = collect(p1a.devices["eth0"])
    run_ping(p1a, "10.244.1.1", 1)
    return len([f for f in wire.ether()
                if ARP in f and f[ARP].op == 1 and f[ARP].psrc == "10.244.1.2"])


def test_hairpin_mode_reflects_the_pods_own_arp_request_and_off_does_not():
    # Kernel (bridge port with and without `hairpin on`, tcpdump on the pod's
    # eth0, ping the bridge address): 2 copies of the request with hairpin
    # (sent, then flooded back), 1 without.
    assert own_arp_requests_seen("true") == 2
    assert own_arp_requests_seen("false") == 1


def test_a_pod_reaches_a_pod_on_the_other_node():
    cluster = two_nodes().cluster
    wire = collect(cluster.pods["p1a"].ns.devices["eth0"])
    result = run_ping(cluster.pods["p1a"].ns, "10.244.2.2", 1)
    assert result.received == 1
    reply = [f for f in wire.ether() if ICMP in f and f[ICMP].type == 0][0]
    assert reply[IP].ttl == 62  # two routing hops: n2, n1
