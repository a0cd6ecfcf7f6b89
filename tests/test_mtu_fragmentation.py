"""MTUs across nodes: flannel's encapsulation overheads, PMTU discovery, fragmentation.

The vxlan frag-needed / PMTU / fragment sizes below were checked on a 6.18
kernel (netns, a flannel-style flannel.1 with MTU 1450, pods with MTU 1500,
iputils ping): the node answers "Frag needed and DF set (mtu = 1450)" from
its cni0 address in a 576-byte ICMP error with tos 0xc0; the next default
(-M want) ping leaves the pod as 1444 + 76 byte fragments, and the reply,
sent whole by the remote pod, is fragmented the same way by the remote node.
"""

from __future__ import annotations

import dpkt
import pytest

from emu.scenario import load_scenario_text
from emu.scenario.build import build_cluster
from emu.scenario.run import run_scenario

BACKENDS = {"vxlan": "{Type: vxlan}", "host-gw": "{Type: host-gw}", "udp": "{Type: udp}"}


def scenario_yaml(backend: str, traffic: list[str], cni: str = "{}", underlay_mtu: int = 1500) -> str:
    commands = "\n".join(f"  - {{from: p1, run: {command}}}" for command in traffic)
    return f"""
name: mtu
net-conf: {{Network: 10.244.0.0/16, Backend: {BACKENDS[backend]}}}
underlay: {{subnet: 172.18.0.0/24, mtu: {underlay_mtu}}}
cni: {cni}
nodes:
  - {{name: n1, ip: 172.18.0.11, subnet: 10.244.1.0/24, pods: [{{name: p1, ip: 10.244.1.2}}]}}
  - {{name: n2, ip: 172.18.0.12, subnet: 10.244.2.0/24, pods: [{{name: p2, ip: 10.244.2.2}}]}}
traffic:
{commands}
"""


def ip_packets(path) -> list[dpkt.ip.IP]:
    """Every IPv4 packet of an Ethernet pcap."""
    with open(path, "rb") as handle:
        frames = [dpkt.ethernet.Ethernet(frame) for _, frame in dpkt.pcap.Reader(handle)]
    return [frame.data for frame in frames if isinstance(frame.data, dpkt.ip.IP)]


def shape(packet: dpkt.ip.IP) -> tuple[str, str, int, bool, bool, int]:
    """(src, dst, total length, DF, MF, fragment offset in bytes)."""
    return (dpkt.utils.inet_to_str(packet.src), dpkt.utils.inet_to_str(packet.dst), packet.len,
            bool(packet.df), bool(packet.mf), packet.offset * 8)


# -- PMTU discovery through flannel.1 -----------------------------------------------------

@pytest.fixture(scope="module")
def pmtu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pmtu")
    text = scenario_yaml("vxlan", ["ping -c 1 -s 1472 -M do -W 1 10.244.2.2", "ping -c 1 -s 1472 -W 1 10.244.2.2"],
                         cni="{mtu: 1500}")
    return run_scenario(load_scenario_text(text), out), out


def test_df_ping_too_big_for_flannel_1_gets_frag_needed_from_the_gateway(pmtu_run):
    result, out = pmtu_run
    ping = result.traffic[0].ping
    assert (ping.transmitted, ping.received, ping.errors) == (1, 0, 1)
    assert "From 10.244.1.1 icmp_seq=1 Frag needed and DF set (mtu = 1450)" in ping.lines
    errors = [p for p in ip_packets(out / "p1_eth0.pcap") if isinstance(p.data, dpkt.icmp.ICMP) and p.data.type == 3]
    assert len(errors) == 1
    error = errors[0]
    assert shape(error)[:2] == ("10.244.1.1", "10.244.1.2")
    assert error.data.code == 4
    assert int.from_bytes(bytes(error.data)[6:8], "big") == 1450  # next-hop MTU
    assert error.tos == 0xC0 and error.ttl == 64 and not error.df
    assert error.len == 576  # quotes as much as fits in 576 bytes
    quoted = dpkt.ip.IP(bytes(error.data)[8:])
    assert (dpkt.utils.inet_to_str(quoted.dst), quoted.len, bool(quoted.df)) == ("10.244.2.2", 1500, True)
    assert result.stats["namespaces"]["n1"]["stack"]["drops"].get("PKT_TOO_BIG") == 1


def test_after_frag_needed_the_pod_fragments_locally(pmtu_run):
    result, out = pmtu_run
    ping = result.traffic[1].ping
    assert (ping.transmitted, ping.received) == (1, 1)
    assert any(line.startswith("1480 bytes from 10.244.2.2: icmp_seq=1 ttl=62 ") for line in ping.lines)
    at_p1 = [shape(p) for p in ip_packets(out / "p1_eth0.pcap") if not isinstance(p.data, dpkt.icmp.ICMP)
             or p.data.type != 3]
    assert at_p1[-4:] == [
        ("10.244.1.2", "10.244.2.2", 1444, False, True, 0),  # 1424 data bytes, a multiple of 8
        ("10.244.1.2", "10.244.2.2", 76, False, False, 1424),
        ("10.244.2.2", "10.244.1.2", 1444, False, True, 0),  # fragmented by n2 into flannel.1
        ("10.244.2.2", "10.244.1.2", 76, False, False, 1424),
    ]
    # Every outer packet of the flow, fragments included, has one source port (as on the kernel).
    assert len({p.data.sport for p in ip_packets(out / "n1_eth0.pcap") if isinstance(p.data, dpkt.udp.UDP)}) == 1
    # p2 reassembled the request and answered with one 1500-byte packet.
    replies = [shape(p) for p in ip_packets(out / "p2_eth0.pcap") if p.src == bytes([10, 244, 2, 2])]
    assert replies[-1] == ("10.244.2.2", "10.244.1.2", 1500, False, False, 0)


# -- DF clear through each backend -------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_1400_byte_ping_with_df_clear_crosses_unfragmented(tmp_path, backend):
    result = run_scenario(load_scenario_text(scenario_yaml(backend, ["ping -c 1 -s 1400 -M dont -W 1 10.244.2.2"])),
                          tmp_path)
    assert result.traffic[0].ping.received == 1
    for capture in ("p1_eth0.pcap", "p2_eth0.pcap"):
        assert {shape(p)[2:] for p in ip_packets(tmp_path / capture)} == {(1428, False, False, 0)}
    # vxlan: outer IPv4 + UDP + VXLAN + the inner Ethernet header = 50 bytes more
    outer_len = {"vxlan": 1428 + 50, "udp": 1428 + 28, "host-gw": 1428}[backend]
    assert {p.len for p in ip_packets(tmp_path / "n1_eth0.pcap")} == {outer_len}


# (pod MTU, first fragment length, last fragment length) for a 1500-byte packet; host-gw pods have 1500.
FRAGMENTS = {"vxlan": (1450, 1444, 76), "udp": (1472, 1468, 52), "host-gw": (1500, 1500, 1500)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_1472_byte_ping_with_df_clear_is_fragmented_at_the_pod_and_reassembled(tmp_path, backend):
    result = run_scenario(load_scenario_text(scenario_yaml(backend, ["ping -c 1 -s 1472 -M dont -W 1 10.244.2.2"])),
                          tmp_path)
    ping = result.traffic[0].ping
    assert ping.received == 1
    assert any(line.startswith("1480 bytes from 10.244.2.2: icmp_seq=1 ") for line in ping.lines)
    _, first, last = FRAGMENTS[backend]
    for capture, src in (("p1_eth0.pcap", "10.244.1.2"), ("p2_eth0.pcap", "10.244.2.2")):
        sent = [shape(p)[2:] for p in ip_packets(tmp_path / capture) if dpkt.utils.inet_to_str(p.src) == src]
        if backend == "host-gw":
            assert sent == [(1500, False, False, 0)]
        else:  # the request by p1 and the reply by p2, each split by its sender
            assert sent == [(first, False, True, 0), (last, False, False, first - 20)]
    assert result.stats["namespaces"]["p2"]["stack"]["delivered"] == 1  # one reassembled datagram


# -- underlay MTUs other than 1500 -------------------------------------------------------

@pytest.mark.parametrize("underlay_mtu", [9000, 1400])
@pytest.mark.parametrize("backend, device, overhead", [("vxlan", "flannel.1", 50), ("udp", "flannel0", 28),
                                                       ("host-gw", None, 0)])
def test_flannel_mtu_follows_the_underlay(underlay_mtu, backend, device, overhead):
    emulated = build_cluster(load_scenario_text(scenario_yaml(backend, [], underlay_mtu=underlay_mtu)
                                                .replace("traffic:\n", "")))
    expected = underlay_mtu - overhead
    n1 = emulated.cluster.nodes["n1"].ns
    if device is not None:
        assert n1.devices[device].mtu == expected
    assert n1.devices["eth0"].mtu == underlay_mtu
    assert n1.devices["cni0"].mtu == expected
    assert emulated.cluster.pods["p1"].ns.devices["eth0"].mtu == expected
    assert f"FLANNEL_MTU={expected}\n" in emulated.flanneld["n1"].subnet_env


def test_jumbo_underlay_carries_a_jumbo_df_ping_over_vxlan(tmp_path):
    text = scenario_yaml("vxlan", ["ping -c 1 -s 8900 -M do -W 1 10.244.2.2"], underlay_mtu=9000)
    result = run_scenario(load_scenario_text(text), tmp_path)
    assert result.traffic[0].ping.received == 1
    assert max(p.len for p in ip_packets(tmp_path / "n1_eth0.pcap")) == 8928 + 50
