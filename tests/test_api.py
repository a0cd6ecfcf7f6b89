"""emu.Cluster, the Python entry point: the same cluster and files as
`emu run`, addressing by name, sending at interfaces and through a
namespace's stack, settling, tables in iproute2's JSON shapes, and errors
that name the argument."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from emu import Cluster, ScenarioError, SettleError
from emu.scenario import load_scenario
from emu.scenario.run import run_scenario

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))
CROSS = {path.stem: path for path in EXAMPLES}


@pytest.mark.parametrize("path", [CROSS["vxlan-cross-node"], CROSS["udp-node-to-pod"],
                                  CROSS["host-gw-same-node"]], ids=lambda p: p.stem)
def test_run_and_write_pcaps_give_the_files_emu_run_writes(path, tmp_path):
    run_scenario(load_scenario(path), tmp_path / "cli")
    cluster = Cluster.from_file(path)
    cluster.run()
    counts = cluster.write_pcaps(tmp_path / "api")
    cli_files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert cli_files == sorted(p.name for p in (tmp_path / "api").iterdir())
    for name in cli_files:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name
    assert cluster.stats() == json.loads((tmp_path / "cli" / "stats.json").read_text())
    assert counts == {i.name: len(cluster.captures(i)) for i in cluster.interfaces if cluster.captures(i)}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_run_until_idle_returns_on_every_example(path):
    """Bounded, so a run that stopped settling fails (SettleError) instead of
    running on: the examples settle within 61 s of virtual time (TCP's
    TIME_WAIT is 60 s) and a few hundred events."""
    cluster = Cluster.from_file(path)
    cluster.run_until_idle(max_seconds=90, max_events=5_000)
    # Every command ended (background ones may still run), and nothing that can change a frame is left.
    traffic = cluster.stats()["traffic"]
    assert all(t["exit_status"] is not None for t in traffic)
    assert len(traffic) >= sum(not spec.background for spec in load_scenario(path).traffic)
    assert cluster._emulated.sim.settled()
    frames = sum(len(cluster.captures(i)) for i in cluster.interfaces)
    cluster.run(for_=120)  # what is left only expires state: no frame in 2 minutes
    assert sum(len(cluster.captures(i)) for i in cluster.interfaces) == frames


@pytest.mark.parametrize("backend", ["vxlan", "udp", "host-gw"])
def test_an_idle_cluster_settles_at_once(backend):
    """No traffic: nothing can change a frame, so it settles at time 0 without
    running an event (flanneld's lease renewal only expires state)."""
    cluster = Cluster.from_file(CROSS[f"{backend}-cross-node"], traffic=False)
    cluster.run_until_idle(max_seconds=0, max_events=1)
    cluster.run()
    assert cluster.now_ns == 0 and cluster.stats()["traffic"] == []
    coded = Cluster(backend=backend)
    coded.add_node("n1")
    coded.run_until_idle(max_seconds=0, max_events=1)
    assert coded.now_ns == 0


def test_a_cluster_that_cannot_settle_stops_with_a_clear_error():
    cluster = Cluster.from_file(CROSS["vxlan-cross-node"], traffic=False)
    cluster.command("p1a", "ping -c 100000 -i 1 p2a")
    with pytest.raises(SettleError, match="did not settle within 30 s.* next event that can change a frame"):
        cluster.run_until_idle(max_seconds=30)
    assert 29 <= cluster.now <= 30


def _built_in_code(backend: str) -> Cluster:
    cluster = Cluster(backend=backend, name="coded", seed=7)
    cluster.add_node("n1", ip="172.18.0.11")
    cluster.add_node("n2", ip=IPv4Address("172.18.0.12"), subnet=IPv4Network("10.244.5.0/24"))
    cluster.add_pod("p1a", node="n1")
    cluster.add_pod("p2a", node="n2", ip="10.244.5.9")
    return cluster


def test_a_cluster_built_in_code_is_the_scenario_it_spells():
    coded = _built_in_code("host-gw")
    same = Cluster.from_yaml("""
name: coded
seed: 7
net-conf: {Network: 10.244.0.0/16, SubnetLen: 24, Backend: {Type: host-gw}}
underlay: {mtu: 1500}
cni: {bridge: cni0, hairpinMode: true}
nodes:
  - {name: n1, ip: 172.18.0.11, pods: [{name: p1a}]}
  - {name: n2, ip: 172.18.0.12, subnet: 10.244.5.0/24, pods: [{name: p2a, ip: 10.244.5.9}]}
""")
    for cluster in (coded, same):
        assert cluster.ping("p1a", "p2a", "-c 2").received == 2
    assert coded.stats()["namespaces"] == same.stats()["namespaces"]
    assert coded.pod("p2a").ip == IPv4Address("10.244.5.9")
    assert coded.node("n2").subnet == IPv4Network("10.244.5.0/24")
    assert [p.name for p in coded.node("n1").pods] == ["p1a"]


def test_nodes_and_pods_added_later_join_the_running_cluster():
    cluster = _built_in_code("vxlan")
    assert cluster.ping("p1a", "p2a").received == 1
    cluster.add_node("n3", ip="172.18.0.13")
    cluster.add_pod("p3a", node="n3")
    cluster.add_pod("p1b", node="n1")
    result = cluster.ping("p3a", "p1b", "-c 2")
    assert result.received == 2, result.lines
    assert any(ICMP in p for p in cluster.captures("n3/flannel.1").scapy())
    assert "node n3 added" in " ".join(cluster.stats()["notes"])
    with pytest.raises(ScenarioError, match=r"^nodes\[\d\]\.pods\[0\]\.name: name p1b is taken"):
        cluster.add_pod("p1b", node="n3")
    with pytest.raises(ScenarioError, match="duplicate IP 172.18.0.13"):
        cluster.add_node("n4", ip="172.18.0.13")


def test_names_address_nodes_pods_and_interfaces():
    cluster = Cluster.from_file(CROSS["vxlan-cross-node"])
    assert cluster["p1a"].ip == IPv4Address("10.244.1.2") == cluster.pod("p1a").ip
    assert cluster["n1/cni0"].kind == "bridge" and cluster["n1/cni0"].mac == "0a:58:0a:f4:01:01"
    assert cluster["p1a"]["eth0"].name == "p1a/eth0" and cluster["p1a"].node.name == "n1"
    assert {i.name for i in cluster["n2"].interfaces} >= {"n2/eth0", "n2/flannel.1", "n2/cni0"}
    with pytest.raises(KeyError, match="no node or pod named 'p9'"):
        cluster["p9"]
    with pytest.raises(KeyError, match="n1 has no interface 'eth9'"):
        cluster["n1/eth9"]
    with pytest.raises(KeyError, match="not a pod"):
        cluster.pod("n1")


def test_an_ip_packet_gets_the_ethernet_header_the_stack_gives_it():
    cluster = Cluster.from_file(CROSS["vxlan-cross-node"], traffic=False)
    packet = IP(src="10.244.1.2", dst="10.244.2.2", ttl=9) / UDP(sport=4000, dport=5000) / Raw(b"hello")
    cluster.send("p1a", packet)
    cluster.run_until_idle()
    first = cluster.captures("p1a/eth0").scapy()
    assert ARP in first[0] and first[0][ARP].pdst == "10.244.1.1"  # the gateway, resolved first
    sent = [p for p in first if UDP in p]
    assert len(sent) == 1 and sent[0].dst == "0a:58:0a:f4:01:01" and sent[0].src == "0a:58:0a:f4:01:02"
    arrived = [p for p in cluster.captures("p2a/eth0").scapy() if UDP in p]
    assert len(arrived) == 1 and arrived[0][Raw].load == b"hello" and arrived[0][IP].ttl == 7
    assert arrived[0].sniffed_on == "p2a/eth0"
    assert cluster["p2a/eth0"].stats()["rx_packets"] >= 1


def test_an_ethernet_frame_leaves_an_interface_as_written():
    cluster = Cluster.from_file(CROSS["host-gw-same-node"], traffic=False)
    frame = Ether(src="0a:58:0a:f4:01:02", dst="0a:58:0a:f4:01:03") / IP(
        src="10.244.1.2", dst="10.244.1.3") / UDP(sport=1, dport=2) / Raw(b"x" * 20)
    cluster.send("p1a/eth0", frame)
    cluster.send(cluster["p1a/eth0"], bytes(frame))
    cluster.run_until_idle()
    udp = bytes(frame)
    assert [f for _, f in cluster.sent("p1a/eth0") if UDP in Ether(f)] == [udp, udp]
    assert [f for _, f in cluster.received("p1b/eth0") if UDP in Ether(f)] == [udp, udp]
    # Nothing listens on port 2: p1b resolves p1a and answers port unreachable
    # (hairpin mode also floods p1a's first frame back to it).
    answers = [Ether(f) for _, f in cluster.received("p1a/eth0")]
    arps = [p for p in answers if ARP in p]
    assert arps[0][ARP].op == 1 and arps[0][ARP].pdst == "10.244.1.2"
    unreachable = [p for p in answers if ICMP in p]
    assert unreachable and all(p[ICMP].type == 3 and p[ICMP].code == 3 for p in unreachable)
    assert not any(UDP in Ether(f) for _, f in cluster.sent("p1b/eth0"))


@pytest.mark.parametrize("where, frame, error, named", [
    ("p1a/eth0", 42, TypeError, "frame"),
    ("p1a/eth0", "hello", TypeError, "frame"),
    (3, b"x", TypeError, "where"),
    ("p1a", Ether() / IP(), ValueError, "frame"),
    ("p1a/eth0", ARP(), ValueError, "frame"),
    ("p1a", b"\x60" + bytes(39), ValueError, "packet"),
])
def test_bad_sends_name_the_argument(where, frame, error, named):
    cluster = Cluster.from_file(CROSS["vxlan-cross-node"], traffic=False)
    with pytest.raises(error, match=f"^{named}: "):
        cluster.send(where, frame)


def test_scenario_errors_are_the_clis_one_line():
    with pytest.raises(ScenarioError) as caught:
        Cluster.from_yaml("net-conf: {Network: 10.244.0.0/16}\nnodes: [{name: n1, pods: [{name: p, ip: 10.9.0.1}]}]\n")
    assert str(caught.value) == "nodes[0].pods[0].ip: 10.9.0.1 is outside net-conf.Network 10.244.0.0/16"
    with pytest.raises(ScenarioError, match="^nodes: at least one node is required"):
        Cluster(backend="vxlan").run()
    with pytest.raises(ScenarioError, match=r"^net-conf.Backend.Type: "):
        Cluster(backend="geneve").add_node("n1").ip
    with pytest.raises(TypeError, match="^document: "):
        Cluster.from_dict(["nodes"])
    with pytest.raises(ScenarioError, match="^run: "):
        Cluster.from_file(CROSS["vxlan-cross-node"]).command("p1a", "ping -f p2a")
    with pytest.raises(ValueError, match="^for_: "):
        Cluster.from_file(CROSS["vxlan-cross-node"]).run(for_=-1)


def test_tables_come_in_iproute2_json_shapes():
    """Expected values as `ip -j route`, `ip -j neigh`, `bridge -j fdb show`
    print them on a kernel set up the same way (checked on this machine)."""
    cluster = Cluster.from_file(CROSS["vxlan-cross-node"])
    cluster.run()
    assert cluster.routes("p1a") == [
        {"dst": "10.244.1.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link",
         "prefsrc": "10.244.1.2", "flags": []},
        {"dst": "default", "gateway": "10.244.1.1", "dev": "eth0", "flags": []},
    ]
    assert {"dst": "10.244.2.0/24", "gateway": "10.244.2.0", "dev": "flannel.1", "flags": ["onlink"]} \
        in cluster.routes("n1")
    assert cluster.neighbours("p1a") == [{"dst": "10.244.1.1", "dev": "eth0", "lladdr": "0a:58:0a:f4:01:01",
                                          "state": ["REACHABLE"]}]
    vtep = cluster.neighbours("n1/flannel.1")
    assert len(vtep) == 1 and vtep[0]["state"] == ["PERMANENT"] and vtep[0]["dst"] == "10.244.2.0"
    bridge = cluster.fdb("n1/cni0")
    assert {"mac": "0a:58:0a:f4:01:02", "ifname": "veth1a", "flags": [], "master": "cni0", "state": ""} in bridge
    assert {"mac": "0a:58:0a:f4:01:01", "ifname": "cni0", "flags": [], "master": "cni0",
            "state": "permanent"} in bridge
    (tunnel,) = cluster.fdb("n1/flannel.1")
    assert tunnel["dst"] == "172.18.0.12" and tunnel["flags"] == ["self"] and tunnel["state"] == "permanent"
    assert len(cluster.fdb("n1")) == len(bridge) + 1
    with pytest.raises(ValueError, match="^where: n1/eth0 is a veth, which has no forwarding database"):
        cluster.fdb("n1/eth0")


def test_commands_chain_and_report_their_output():
    cluster = Cluster.from_file(CROSS["udp-cross-node"], traffic=False)
    first = cluster.command("p1a", "ping -c 1 p2a")
    second = cluster.command("p2a", "ping -c 1 -s 100 n1")
    timed = cluster.command("p1b", "ping -c 1 10.244.2.2", at=5)
    assert not first.done and first.output == ""
    cluster.run()
    assert first.done and second.done and timed.done
    assert first.result.finished_ns <= second.result.started_ns and timed.result.started_ns == 5 * 10**9
    assert "1 received" in first.output and "108 bytes from 172.18.0.11" in second.output


def test_nc_commands_with_stdin():
    cluster = Cluster.from_file(CROSS["vxlan-cross-node"], traffic=False)
    listener = cluster.command("p2a", "nc -u -l 5000 &")
    client = cluster.command("p1a", "nc -u -q 0 p2a 5000", stdin="hello\n")
    cluster.run()
    assert client.done and client.result.exit_status == 0 and not listener.done
    assert "nc -u -l 5000 &" in repr(listener)
    with pytest.raises(ScenarioError, match="^run: unsupported option -v"):
        cluster.command("p1a", "nc -v -u -q 0 p2a 5000")


def test_captures_off():
    cluster = Cluster.from_file(CROSS["vxlan-cross-node"], capture=False)
    cluster.run()
    with pytest.raises(RuntimeError, match="captures are off"):
        cluster.captures("p1a/eth0")
