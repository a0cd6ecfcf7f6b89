"""Nodes joining and leaving a running cluster, for every backend.

flanneld on the other nodes sees the lease appear and disappear in the
store and programs / unprograms the backend (vxlan: route, permanent
neighbour, FDB entry; host-gw: route; udp: the proxy's route table only).
Pings from p1 (on n1) to p3 (on n3) before n3 exists, while it exists and
after it left: while it is there they are answered; otherwise, like Linux
forwarding with no route and no default route (ip_error ->
ICMP net unreachable, source from the route back to the pinger: n1's cni0
address), vxlan and host-gw answer "Destination Net Unreachable", while
over udp the packet reaches flanneld through the 10.244.0.0/16 route and
flannel's proxy.c finds no lease, does not answer ICMP with ICMP, and
drops it: the ping times out.
"""

from __future__ import annotations

import json

import dpkt
import pytest

from emu.scenario import load_scenario_text
from emu.scenario.run import run_scenario

BACKENDS = {"vxlan": "{Type: vxlan}", "host-gw": "{Type: host-gw}", "udp": "{Type: udp}"}
N3_VTEP_MAC = "6e:2d:54:00:03:03"


def scenario_yaml(backend: str, remove: bool) -> str:
    vtep = f', vtep-mac: "{N3_VTEP_MAC}"' if backend == "vxlan" else ""
    removal = "  - {at: 3.0, remove-node: n3}\n" if remove else ""
    return f"""
name: events-{backend}
net-conf: {{Network: 10.244.0.0/16, Backend: {BACKENDS[backend]}}}
underlay: {{subnet: 172.18.0.0/24}}
nodes:
  - {{name: n1, ip: 172.18.0.11, subnet: 10.244.1.0/24, pods: [{{name: p1, ip: 10.244.1.2}}]}}
  - {{name: n2, ip: 172.18.0.12, subnet: 10.244.2.0/24}}
events:
  - {{at: 1.0, add-node: {{name: n3, ip: 172.18.0.13, subnet: 10.244.3.0/24{vtep},
                          pods: [{{name: p3, ip: 10.244.3.2}}]}}}}
{removal}traffic:
  - {{from: p1, at: 0.5, run: ping -c 1 -W 1 10.244.3.2}}
  - {{from: p1, at: 1.5, run: ping -c 2 -i 0.2 -W 1 10.244.3.2}}
  - {{from: p1, at: 4.0, run: ping -c 1 -W 1 10.244.3.2}}
"""


def run(backend: str, remove: bool, out) -> tuple:
    result = run_scenario(load_scenario_text(scenario_yaml(backend, remove)), out)
    return result, json.loads((out / "stats.json").read_text())


# What each backend programs on the other nodes for n3's lease.
N3_STATE = {
    "vxlan": {
        "routes": ["10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink"],
        "neighbours": [f"10.244.3.0 dev flannel.1 lladdr {N3_VTEP_MAC} PERMANENT"],
        "vxlan_fdb": [f"{N3_VTEP_MAC} dev flannel.1 dst 172.18.0.13 self permanent"],
    },
    "host-gw": {"routes": ["10.244.3.0/24 via 172.18.0.13 dev eth0"], "neighbours": [], "vxlan_fdb": []},
    "udp": {"routes": [], "neighbours": [], "vxlan_fdb": []},
}
N3_LEASE_KEY = "/coreos.com/network/subnets/10.244.3.0-24"


@pytest.mark.parametrize("backend", BACKENDS)
def test_joined_node_is_programmed_on_every_other_node(tmp_path, backend):
    _, stats = run(backend, remove=False, out=tmp_path)
    assert stats["flannel"]["leases"][N3_LEASE_KEY]["PublicIP"] == "172.18.0.13"
    for node in ("n1", "n2"):
        tables = stats["namespaces"][node]
        for table, lines in N3_STATE[backend].items():
            for line in lines:
                assert line in tables.get(table, []), (node, table, tables.get(table))
        assert any(line.endswith(f"{node}: added lease 10.244.3.0/24 (172.18.0.13)")
                   for line in stats["flannel"]["log"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_node_is_unprogrammed_everywhere(tmp_path, backend):
    _, stats = run(backend, remove=True, out=tmp_path)
    assert N3_LEASE_KEY not in stats["flannel"]["leases"]
    assert "n3" not in stats["flannel"]["subnet_env"]
    for node in ("n1", "n2"):
        tables = stats["namespaces"][node]
        for table in ("routes", "neighbours", "vxlan_fdb"):
            leftovers = [line for line in tables.get(table, [])
                         if "10.244.3." in line or N3_VTEP_MAC in line]
            assert leftovers == [], (node, table)
        assert any(line.endswith(f"{node}: removed lease 10.244.3.0/24 (172.18.0.13)")
                   for line in stats["flannel"]["log"])
    if backend == "vxlan":  # n2 still reaches n1 the same way
        assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in stats["namespaces"]["n2"]["routes"]


def icmp_in(pcap_path) -> list[tuple[float, str, str, int, int]]:
    """(time, src, dst, type, code) of every ICMP packet in an Ethernet pcap."""
    found = []
    with open(pcap_path, "rb") as handle:
        for timestamp, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.icmp.ICMP):
                found.append((timestamp, dpkt.utils.inet_to_str(ip.src), dpkt.utils.inet_to_str(ip.dst),
                              ip.data.type, ip.data.code))
    return found


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_pings_before_and_after_the_node_are_net_unreachable(tmp_path, backend):
    result, stats = run(backend, remove=True, out=tmp_path)
    before, during, after = (t.ping for t in result.traffic)
    assert (during.transmitted, during.received, during.errors) == (2, 2, 0)
    for ping in (before, after):
        assert (ping.transmitted, ping.received, ping.errors) == (1, 0, 1)
        assert "From 10.244.1.1 icmp_seq=1 Destination Net Unreachable" in ping.lines
    assert stats["namespaces"]["n1"]["stack"]["drops"].get("IP_INNOROUTES") == 2
    start = result.scenario.start_ns / 1e9  # capture timestamps count from the scenario's start
    unreachable = [(round(t - start, 3), src, dst) for t, src, dst, kind, code in icmp_in(tmp_path / "p1_eth0.pcap")
                   if (kind, code) == (3, 0)]
    assert unreachable == [(0.5, "10.244.1.1", "10.244.1.2"), (4.0, "10.244.1.1", "10.244.1.2")]


def test_udp_pings_without_a_lease_time_out_silently(tmp_path):
    result, stats = run("udp", remove=True, out=tmp_path)
    before, during, after = (t.ping for t in result.traffic)
    assert (during.transmitted, during.received) == (2, 2)
    for ping in (before, after):
        assert (ping.transmitted, ping.received, ping.errors) == (1, 0, 0)
        assert not any(line.startswith("From ") for line in ping.lines)
    flannel0 = stats["namespaces"]["n1"]["devices"]["flannel0"]
    assert flannel0["drops"].get("FLANNELD_NO_LEASE") == 2
    # Nothing came back to the pod but the two answered echoes.
    replies = [(src, kind) for _, src, _, kind, _ in icmp_in(tmp_path / "p1_eth0.pcap") if src != "10.244.1.2"]
    assert replies == [("10.244.3.2", 0), ("10.244.3.2", 0)]
    assert stats["traffic"][2]["output"][-1] == "1 packets transmitted, 0 received, 100% packet loss"
