"""Cross-node behaviour that depends on the flannel backend.

- vxlan with a non-default VNI and port: what the outer headers carry.
- TTL expiry on the way across nodes: which node answers, from which address
  (checked on a 6.18 kernel with netns + a flannel-style vxlan; host-gw and
  udp reasoned from the same rules: the answering node takes the source of
  its route back to the pinger, and flannel's proxy.c silently drops a
  packet whose TTL it decrements to 0).
- host-gw refusing a lease whose PublicIP is not on the node's segment.
"""

from __future__ import annotations

import shutil
from ipaddress import IPv4Address, IPv4Network

import dpkt
import pytest
from click.testing import CliRunner
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether

from emu.cli import main as emu_main
from emu.scenario import load_scenario_text
from emu.scenario.build import build_cluster
from emu.scenario.run import run_scenario

BACKENDS = {"vxlan": "{Type: vxlan}", "host-gw": "{Type: host-gw}", "udp": "{Type: udp}"}
NODES = """
underlay: {subnet: 172.18.0.0/24}
nodes:
  - {name: n1, ip: 172.18.0.11, subnet: 10.244.1.0/24, pods: [{name: p1, ip: 10.244.1.2}]}
  - {name: n2, ip: 172.18.0.12, subnet: 10.244.2.0/24, pods: [{name: p2, ip: 10.244.2.2}]}
"""


def read_pcap(path) -> list[tuple[float, bytes]]:
    with open(path, "rb") as handle:
        return [(t, bytes(frame)) for t, frame in dpkt.pcap.Reader(handle)]


def udp_checksum_ok(ip: dpkt.ip.IP) -> bool:
    """Recompute the UDP checksum over the pseudo-header (independently of emu.wire)."""
    segment = bytes(ip.data)
    pseudo = ip.src + ip.dst + bytes([0, 17]) + len(segment).to_bytes(2, "big")
    data = pseudo + segment + (b"\0" if len(segment) % 2 else b"")
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


# -- vxlan with VNI 42 on port 4789 -------------------------------------------------

VNI42 = f"""
name: vni42
net-conf: {{Network: 10.244.0.0/16, Backend: {{Type: vxlan, VNI: 42, Port: 4789}}}}
{NODES}
traffic:
  - {{from: p1, run: ping -c 2 -i 0.2 -W 1 10.244.2.2}}
"""


@pytest.fixture(scope="module")
def vni42_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vni42")
    return run_scenario(load_scenario_text(VNI42), out), out


def test_vni_and_port_on_the_wire_follow_the_net_conf(vni42_run):
    result, out = vni42_run
    assert (result.traffic[0].ping.transmitted, result.traffic[0].ping.received) == (2, 2)
    outer = []
    for _, frame in read_pcap(out / "n1_eth0.pcap"):
        ip = dpkt.ethernet.Ethernet(frame).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
            outer.append(ip)
    assert len(outer) == 4  # two requests, two replies
    for ip in outer:
        assert ip.data.dport == 4789
        header = bytes(ip.data.data)[:8]
        assert header[0] == 0x08 and header[1:4] == b"\0\0\0" and header[7] == 0
        assert int.from_bytes(header[4:7], "big") == 42
        assert not ip.df and ip.ttl == 64
        assert ip.data.sum != 0 and udp_checksum_ok(ip)
    directions = {(ip.src, ip.dst) for ip in outer}
    assert directions == {(IPv4Address("172.18.0.11").packed, IPv4Address("172.18.0.12").packed),
                          (IPv4Address("172.18.0.12").packed, IPv4Address("172.18.0.11").packed)}
    source_ports = {ip.data.sport for ip in outer}
    assert len(source_ports) == 1, "both directions of the flow hash to one source port"
    assert 32768 <= source_ports.pop() <= 60999


def test_flannel_1_carries_the_configured_vni(vni42_run):
    result, _ = vni42_run
    routes = result.stats["namespaces"]["n1"]["routes"]
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink" in routes
    assert result.stats["flannel"]["leases"]["/coreos.com/network/subnets/10.244.2.0-24"]["BackendData"]["VNI"] == 42


def test_every_ping_between_two_pods_shares_the_outer_source_port(tmp_path):
    # Linux hashes ICMP flows on addresses only (no echo id): two ping
    # processes p1 -> p2 got the same outer port 45422 on a 6.18 kernel.
    text = VNI42.replace("  - {from: p1, run: ping -c 2 -i 0.2 -W 1 10.244.2.2}",
                         "  - {from: p1, run: ping -c 1 10.244.2.2}\n  - {from: p1, run: ping -c 1 10.244.2.2}")
    run_scenario(load_scenario_text(text), tmp_path)
    ports = {dpkt.ethernet.Ethernet(frame).data.data.sport for _, frame in read_pcap(tmp_path / "n1_eth0.pcap")
             if dpkt.ethernet.Ethernet(frame).type == 0x0800}
    assert len(ports) == 1


def with_inner_ttl(frame: bytes, ttl: int) -> bytes:
    """The same VXLAN frame with the inner IPv4 TTL changed (inner IP and outer UDP checksums fixed)."""
    outer = Ether(frame)
    payload = bytearray(bytes(outer[UDP].payload))
    inner_ip = 8 + 14
    payload[inner_ip + 8] = ttl
    payload[inner_ip + 10:inner_ip + 12] = b"\0\0"
    header = bytes(payload[inner_ip:inner_ip + 20])
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, 20, 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    payload[inner_ip + 10:inner_ip + 12] = (~total & 0xFFFF).to_bytes(2, "big")
    outer[UDP].remove_payload()
    outer[UDP].chksum = None
    return bytes(Ether(bytes(outer / bytes(payload))))


def test_emu_verify_decodes_vxlan_on_the_port_it_is_given(vni42_run, tmp_path):
    _, out = vni42_run
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    frames = read_pcap(out / "n1_eth0.pcap")
    first_vxlan = next(i for i, (_, f) in enumerate(frames) if dpkt.ethernet.Ethernet(f).type == 0x0800)
    frames[first_vxlan] = (frames[first_vxlan][0], with_inner_ttl(frames[first_vxlan][1], 9))
    with open(changed / "n1_eth0.pcap", "wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB, nano=False)
        for timestamp, frame in frames:
            writer.writepkt(frame, ts=timestamp)
    runner = CliRunner()
    same = runner.invoke(emu_main, ["verify", str(out), str(out), "--vxlan-port", "4789"])
    assert same.exit_code == 0, same.output
    differs = runner.invoke(emu_main, ["verify", str(out), str(changed), "--vxlan-port", "4789"])
    assert differs.exit_code == 1
    assert "inner.ip.ttl" in differs.output
    blind = runner.invoke(emu_main, ["verify", str(out), str(changed)])
    assert "inner.ip.ttl" not in blind.output, "on 8472 only, port 4789 is opaque UDP"


# -- TTL expiry across nodes -----------------------------------------------------------------

TTL_CASES = [
    # (backend, -t, what ping prints, the drop and where it is counted)
    ("vxlan", 2, "From 10.244.2.0 icmp_seq=1 Time to live exceeded", ("n2", None, "IP_INHDR")),
    ("host-gw", 2, "From 172.18.0.12 icmp_seq=1 Time to live exceeded", ("n2", None, "IP_INHDR")),
    ("vxlan", 1, "From 10.244.1.1 icmp_seq=1 Time to live exceeded", ("n1", None, "IP_INHDR")),
    ("udp", 2, None, ("n1", "flannel0", "FLANNELD_TTL_ZERO")),
    ("udp", 3, None, ("n2", "flannel0", "FLANNELD_TTL_ZERO")),
    ("udp", 4, "From 10.244.2.0 icmp_seq=1 Time to live exceeded", ("n2", None, "IP_INHDR")),
]


@pytest.mark.parametrize("backend, ttl, line, drop", TTL_CASES)
def test_ttl_expiry_across_nodes(tmp_path, backend, ttl, line, drop):
    scenario = load_scenario_text(f"""
name: ttl
net-conf: {{Network: 10.244.0.0/16, Backend: {BACKENDS[backend]}}}
{NODES}
traffic:
  - {{from: p1, run: ping -c 1 -t {ttl} -W 1 10.244.2.2}}
""")
    result = run_scenario(scenario, tmp_path)
    ping = result.traffic[0].ping
    assert (ping.transmitted, ping.received) == (1, 0)
    if line is None:  # flanneld's proxy drops silently: the ping times out
        assert ping.errors == 0 and not any(text.startswith("From ") for text in ping.lines)
    else:
        assert ping.errors == 1 and line in ping.lines
    node, device, reason = drop
    entry = result.stats["namespaces"][node]
    counters = entry["devices"][device]["drops"] if device else entry["stack"]["drops"]
    assert counters.get(reason) == 1


def test_udp_needs_two_more_hops_than_the_kernel_backends(tmp_path):
    scenario = load_scenario_text(f"""
name: ttl5
net-conf: {{Network: 10.244.0.0/16, Backend: {{Type: udp}}}}
{NODES}
traffic:
  - {{from: p1, run: ping -c 1 -t 5 -W 1 10.244.2.2}}
""")
    ping = run_scenario(scenario, tmp_path).traffic[0].ping
    assert ping.received == 1
    assert any(text.startswith("64 bytes from 10.244.2.2: icmp_seq=1 ttl=60 ") for text in ping.lines)


# -- host-gw refuses an off-segment gateway ------------------------------------------------


def test_host_gw_does_not_program_a_lease_from_another_segment():
    emulated = build_cluster(load_scenario_text(f"name: hg\nnet-conf: {{Network: 10.244.0.0/16, Backend: {{Type: host-gw}}}}\n{NODES}"))
    foreign = emulated.manager.acquire_lease(IPv4Address("192.168.50.7"), "host-gw", None, emulated.sim.now_ns,
                                             requested=IPv4Network("10.244.9.0/24"))
    assert foreign.subnet == IPv4Network("10.244.9.0/24")
    for name in ("n1", "n2"):
        routes = emulated.cluster.nodes[name].ns.show_routes()
        assert not any(route.startswith("10.244.9.0/24") for route in routes), routes
        log = emulated.flanneld[name].log
        refusal = [line for line in log if "10.244.9.0/24" in line]
        assert len(refusal) == 1
        assert "192.168.50.7" in refusal[0] and "cannot add route" in refusal[0]
        assert "L2 segment" in refusal[0]
    # The nodes that are on the segment are still programmed.
    assert "10.244.2.0/24 via 172.18.0.12 dev eth0" in emulated.cluster.nodes["n1"].ns.show_routes()


# -- vxlan DirectRouting ---------------------------------------------------------------------

DIRECT = f"name: dr\nnet-conf: {{Network: 10.244.0.0/16, Backend: {{Type: vxlan, DirectRouting: true}}}}\n{NODES}"


def test_direct_routing_routes_on_link_nodes_via_eth0_and_tunnels_the_rest():
    """flannel's DirectRouting: a node reached without a gateway gets a host-gw
    route and no VTEP entries; a lease whose PublicIP is behind a gateway
    still goes through flannel.1; leaving undoes each kind."""
    emulated = build_cluster(load_scenario_text(DIRECT))
    n1 = emulated.cluster.nodes["n1"].ns
    routes = n1.show_routes()
    assert "10.244.2.0/24 via 172.18.0.12 dev eth0" in routes, routes
    assert not any("flannel.1" in route and "10.244.2.0" in route for route in routes), routes
    flannel = n1.device("flannel.1")
    assert n1.neighbours(flannel).lookup(IPv4Address("10.244.2.0").packed) is None
    assert n1.device("cni0").mtu == 1450  # the pods keep the vxlan MTU
    n1.add_route("192.168.50.0/24", n1.device("eth0"), via="172.18.0.12")
    far = emulated.manager.acquire_lease(IPv4Address("192.168.50.7"), "vxlan",
                                         {"VNI": 1, "VtepMAC": "6e:2d:54:00:09:09"}, emulated.sim.now_ns,
                                         requested=IPv4Network("10.244.9.0/24"))
    assert far.subnet == IPv4Network("10.244.9.0/24")
    assert "10.244.9.0/24 via 10.244.9.0 dev flannel.1 onlink" in n1.show_routes()
    assert n1.neighbours(flannel).lookup(IPv4Address("10.244.9.0").packed) is not None
    backend = emulated.flanneld["n1"].backend
    for lease in list(emulated.flanneld["n1"].remotes.values()):
        backend.remove_remote(lease)
    assert not any(route.startswith(("10.244.2.0/24", "10.244.9.0/24")) for route in n1.show_routes())
    assert n1.neighbours(flannel).lookup(IPv4Address("10.244.9.0").packed) is None


def test_direct_routing_pings_cross_unencapsulated(tmp_path):
    run_scenario(load_scenario_text(DIRECT + "traffic:\n  - {from: p1, run: ping -c 1 -W 1 10.244.2.2}\n"),
                 tmp_path)
    frames = [dpkt.ethernet.Ethernet(frame) for _, frame in read_pcap(tmp_path / "n1_eth0.pcap")]
    icmp = [eth for eth in frames if isinstance(eth.data, dpkt.ip.IP) and eth.data.p == dpkt.ip.IP_PROTO_ICMP]
    assert len(icmp) == 2  # the request and the reply, not wrapped in UDP 8472
    assert IPv4Address(icmp[0].data.src) == IPv4Address("10.244.1.2")
    assert not (tmp_path / "n1_flannel.1.pcap").exists()
