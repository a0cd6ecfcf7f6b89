"""A user's test, written against the public API only (emu and
emu.testing; nothing from emu.net, emu.sim or the scenario internals): a
scapy Ether()/IP()/UDP()/Raw() frame from one pod to a pod on another node,
read back as scapy at every hop of each backend, and VXLAN round trips as a
property over random clusters.

Tunnelled payloads are decoded here, per call, from the datagram's own
bytes: never by scapy's port-based guessing. That guessing is global (one
`bind_layers` changes how every later test decodes) and gives a port to the
layer that claimed it first: with every scapy layer loaded, as
`from scapy.all import ...` in another test module does, UDP port 161 is
SNMP's, so a random cluster whose VXLAN port was 161 once showed no VXLAN
on the wire. This module loads them all on purpose, so that trap is always
armed here, whatever ran before.
"""

from __future__ import annotations

import pytest
import scapy.all  # noqa: F401  (every layer's port bindings: SNMP on 161, DNS on 53, ...)
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from emu import Cluster
from emu.testing.strategies import clusters

PAYLOAD = b"emu user test payload"


def two_node_cluster(backend: str, **options) -> Cluster:
    cluster = Cluster(backend=backend, **options)
    cluster.add_node("n1")
    cluster.add_node("n2")
    cluster.add_pod("p1a", node="n1")
    cluster.add_pod("p2a", node="n2")
    return cluster


def udp_payload(packet) -> bytes:
    """The bytes a UDP datagram carries, as they were on the wire (scapy's
    `.original` of the UDP layer), whatever scapy guessed they were."""
    udp = packet[UDP]
    return bytes(udp.original)[8:udp.len]


def vxlan(packet, port: int):
    """The VXLAN header and inner frame of an outer frame sent to `port`
    (None for anything else), decoded by this call."""
    if IP not in packet or UDP not in packet or packet[UDP].dport != port:
        return None
    return VXLAN(udp_payload(packet))


def innermost_ip(packet, backend: str, port: int):
    """The pod's IP packet inside whatever carries it: VXLAN to `port`,
    flanneld's UDP between `port`s (8285 by default), or nothing."""
    if backend == "vxlan" and vxlan(packet, port) is not None:
        return vxlan(packet, port)[IP]
    if backend == "udp" and UDP in packet and (packet[UDP].sport, packet[UDP].dport) == (port, port):
        return IP(udp_payload(packet))
    return packet[IP] if IP in packet else None


def datagrams(cluster: Cluster, where: str) -> list:
    """The packets at `where` carrying our datagram (not the ICMP error
    that quotes it: nothing listens on port 9 of p2a)."""
    backend = cluster.scenario.net_conf.backend
    found = []
    for packet in cluster.captures(where).scapy():
        inner = innermost_ip(packet, backend.type, backend.port)
        if inner is not None and UDP in inner and inner[UDP].dport == 9 and ICMP not in inner:
            found.append((packet, inner))
    return found


@pytest.mark.parametrize("backend", ["vxlan", "udp", "host-gw"])
def test_a_scapy_datagram_crosses_every_hop(backend):
    cluster = two_node_cluster(backend)
    src, dst = cluster.pod("p1a"), cluster.pod("p2a")
    frame = (Ether(src=src.mac, dst=cluster["n1/cni0"].mac)
             / IP(src=str(src.ip), dst=str(dst.ip), ttl=64) / UDP(sport=40000, dport=9) / Raw(PAYLOAD))
    cluster.send("p1a/eth0", frame)
    cluster.run_until_idle()

    tunnel = {"vxlan": "flannel.1", "udp": "flannel0", "host-gw": None}[backend]
    hops = ["p1a/eth0", src.host_veth.name, "n1/cni0", *([f"n1/{tunnel}"] if tunnel else []), "n1/eth0",
            "n2/eth0", *([f"n2/{tunnel}"] if tunnel else []), "n2/cni0", dst.host_veth.name, "p2a/eth0"]
    for hop in hops:
        seen = datagrams(cluster, hop)
        assert len(seen) == 1, (hop, [p.summary() for p in cluster.captures(hop).scapy()])
        packet, inner = seen[0]
        assert packet.sniffed_on == hop
        if hop.endswith("/eth0") and hop[0] == "n" and backend != "host-gw":
            outer = packet[IP]
            assert (outer.src, outer.dst) == (str(cluster.node("n1").ip), str(cluster.node("n2").ip))
        assert (inner.src, inner.dst, inner[UDP].dport, inner[Raw].load) == (str(src.ip), str(dst.ip), 9, PAYLOAD)

    # TTL: one hop per routing node (udp: flanneld's proxy takes one more per side).
    arrived, _ = datagrams(cluster, "p2a/eth0")[0]
    assert arrived[IP].ttl == {"vxlan": 62, "host-gw": 62, "udp": 60}[backend]
    assert arrived.dst == dst.mac and arrived.src == cluster["n2/cni0"].mac


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster=clusters(backends=["vxlan"], min_nodes=2, max_nodes=3, min_pods=1, max_pods=2),
       pair=st.integers(0, 35), payload=st.binary(min_size=1, max_size=400))
@example(cluster=two_node_cluster("vxlan", port=161, vni=5), pair=0, payload=b"SNMP's port")  # the flake
@example(cluster=two_node_cluster("vxlan", port=53, vni=1), pair=0, payload=b"DNS's port")
def test_vxlan_round_trips_over_random_clusters(cluster, pair, payload):
    """For any two pods on different nodes and any payload: what flannel.1
    sends on one node is what the other node's flannel.1 decapsulates, the
    outer frame on the underlay carries exactly that inner frame under the
    scenario's VNI, and the datagram arrives as sent."""
    backend = cluster.scenario.net_conf.backend
    assume(not backend.direct_routing)  # DirectRouting on one subnet: nothing is tunnelled
    vni, port = backend.vni, backend.port
    pairs = [(a, b) for a in cluster.pods for b in cluster.pods if a.node.name != b.node.name]
    src, dst = pairs[pair % len(pairs)]
    cluster.send(src.name, IP(src=str(src.ip), dst=str(dst.ip)) / UDP(sport=1234, dport=7) / Raw(payload))
    cluster.run_until_idle()

    sent_inner = [f for _, f in cluster.sent(f"{src.node.name}/flannel.1")]
    decapsulated = [f for _, f in cluster.received(f"{dst.node.name}/flannel.1")]
    assert len(sent_inner) == 1 and decapsulated == sent_inner
    on_wire = [vxlan(p, port) for p in cluster.captures(f"{src.node.name}/eth0").scapy()
               if vxlan(p, port) is not None and p[IP].src == str(src.node.ip)]
    assert len(on_wire) == 1 and on_wire[0].vni == vni and bytes(on_wire[0].payload) == sent_inner[0]
    assert Ether(sent_inner[0])[UDP].dport == 7
    arrived = [p for p in cluster.captures(f"{dst.name}/eth0").scapy() if UDP in p and p[UDP].dport == 7]
    assert len(arrived) == 1 and arrived[0][Raw].load == payload


def test_this_module_uses_the_public_api_only():
    """What this file imports from emu is the public API: emu and emu.testing."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    emu_modules = {m for m in modules if m == "emu" or m.startswith("emu.")}
    assert emu_modules == {"emu", "emu.testing.strategies"}
