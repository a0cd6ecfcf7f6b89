"""`emu trace`: one line per hop, with the decision in iproute2's words.

Expected hops are written by hand from the scenario file (addresses, MACs,
leases it fixes) and from what Linux does on that path: the pod's ARP for
its gateway is flooded by cni0, n1 routes 10.244.2.0/24 onlink via
flannel.1, whose neighbour and FDB entries flannel made PERMANENT, the
VXLAN packet crosses the underlay, n2 decapsulates and routes to cni0.
A traced run's pcaps must be the same bytes as an untraced run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import dpkt
import pytest
import yaml
from click.testing import CliRunner

from emu.cli import main
from emu.explain.flowfilter import FilterError, parse_filter
from emu.explain.dissect import dissect
from emu.explain.trace import traced_run
from emu.scenario import load_scenario, load_scenario_text
from emu.scenario.run import run_scenario

EXAMPLES = Path(__file__).parent.parent / "examples"
VXLAN = EXAMPLES / "vxlan-cross-node.yaml"


@pytest.fixture(scope="module")
def vxlan_trace():
    return traced_run(load_scenario(VXLAN))


def first(packets, text):
    return next(p for p in packets if text in p.summary)


def test_the_first_echo_request_walks_the_vxlan_path(vxlan_trace):
    request = first(vxlan_trace.flow("icmp and host 10.244.2.2"), "echo request")
    walk = [(h.namespace, h.device, h.stage) for h in request.hops if h.namespace != "ul"]
    frames = [(ns, dev) for ns, dev, stage in walk if stage in ("xmit", "rcv", "tap")]
    assert list(dict.fromkeys(frames)) == [
        ("p1a", "eth0"), ("n1", "veth1a"), ("n1", "cni0"), ("n1", "flannel.1"), ("n1", "eth0"),
        ("n2", "eth0"), ("n2", "flannel.1"), ("n2", "cni0"), ("n2", "veth2a"), ("p2a", "eth0")]
    decided = [(h.namespace, h.stage, h.evidence, h.verdict) for h in request.hops if not h.is_frame]
    for expected in [
        ("n1", "bridge", "fdb 0a:58:0a:f4:01:01 dev cni0 master cni0 permanent: local", "delivered"),
        ("n1", "ip_forward", "route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink", "forwarded"),
        ("n1", "neigh", "10.244.2.0 dev flannel.1 lladdr 6e:2d:54:00:02:02 PERMANENT", "sent"),
        ("n1", "vxlan_xmit", "fdb 6e:2d:54:00:02:02 dev flannel.1 dst 172.18.0.12 self permanent", "sent"),
        ("n1", "neigh", "172.18.0.12 dev eth0 INCOMPLETE", "queued"),  # first contact: ARP on the underlay
        ("n2", "bridge", "fdb 0a:58:0a:f4:02:02 dev veth2a master cni0", "forwarded"),
        ("p2a", "icmp_rcv", f"echo request id {request.dissected.icmp_id} seq 1: reply", "consumed"),
    ]:
        assert expected in decided, expected
    stages = [(ns, stage) for ns, stage, _, _ in decided]
    assert stages.index(("n2", "vxlan_rcv")) < stages.index(("n2", "ip_forward"))
    times = [h.t_ns for h in request.hops]
    assert times == sorted(times)


def test_arp_broadcast_is_flooded_and_reply_forwarded_by_fdb(vxlan_trace):
    packets = vxlan_trace.flow("arp")
    who_has = first(packets, "ARP who-has 10.244.1.1 tell 10.244.1.2")
    assert ("n1", "bridge", "flood: broadcast", "flooded") in [
        (h.namespace, h.stage, h.evidence, h.verdict) for h in who_has.hops]
    reply = first(packets, "ARP 10.244.1.1 is-at 0a:58:0a:f4:01:01")
    assert ("n1", "bridge", "fdb 0a:58:0a:f4:01:02 dev veth1a master cni0", "forwarded") in [
        (h.namespace, h.stage, h.evidence, h.verdict) for h in reply.hops]


def test_a_ttl_that_runs_out_is_dropped_with_its_reason(tmp_path):
    document = yaml.safe_load(VXLAN.read_text())
    document["traffic"] = [{"from": "p1a", "run": "ping -c 1 -t 1 -W 1 10.244.2.2"}]
    traced = traced_run(load_scenario_text(yaml.safe_dump(document)))
    request = first(traced.flow(0), "echo request")
    last = request.hops[-1]
    assert (last.namespace, last.stage, last.verdict) == ("n1", "ip_forward", "dropped:IP_INHDR")
    assert any("ICMP time exceeded 10.244.1.1 > 10.244.1.2" in p.summary for p in traced.flow(0))


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_traced_runs_write_the_same_pcaps(tmp_path, path):
    plain, traced = tmp_path / "plain", tmp_path / "traced"
    run_scenario(load_scenario(path), plain)
    run = traced_run(load_scenario(path), traced)
    assert run.tracer.packets
    names = sorted(p.name for p in plain.glob("*.pcap"))
    assert names == sorted(p.name for p in traced.glob("*.pcap"))
    for name in names:
        assert (plain / name).read_bytes() == (traced / name).read_bytes(), name

    def frames(path):
        with open(path, "rb") as handle:
            return [(ts, bytes(buf)) for ts, buf in dpkt.pcapng.Reader(handle)]
    assert frames(plain / "all.pcapng") == frames(traced / "all.pcapng")


def test_cli_text_and_json_agree():
    runner = CliRunner()
    text = runner.invoke(main, ["trace", str(VXLAN), "--flow", "icmp and dst 10.244.2.2"])
    as_json = runner.invoke(main, ["trace", str(VXLAN), "--flow", "icmp and dst 10.244.2.2", "--json"])
    assert text.exit_code == 0 and as_json.exit_code == 0, text.output + as_json.output
    hops = [json.loads(line) for line in as_json.output.splitlines()]
    hop_lines = [line for line in text.output.splitlines() if line.startswith("  ")]
    assert len(hops) == len(hop_lines) > 20
    assert {hop["packet"] for hop in hops} == {int(line.split()[1].rstrip(":"))
                                               for line in text.output.splitlines() if line.startswith("packet ")}
    assert set(hops[0]) == {"packet", "t_ns", "time", "namespace", "device", "stage", "evidence", "verdict"}
    for hop, line in zip(hops, hop_lines):
        assert line.split()[:4] == [hop["time"], hop["namespace"], hop["device"], hop["stage"]]


@pytest.mark.parametrize(
    "flow, message",
    [("icmp and hst 1", "emu: error: --flow: 'icmp and hst 1': 'hst' is not a primitive (icmp, udp, tcp, arp, "
                        "ip, host, net, port, src, dst) or an IPv4 address"),
     ("7", "emu: error: --flow 7: the scenario has 1 commands (0..0)"),
     ("icmp and", "emu: error: --flow: 'icmp and': expected a primitive at the end")],
)
def test_bad_flows_are_one_line_errors(flow, message):
    result = CliRunner().invoke(main, ["trace", str(VXLAN), "--flow", flow])
    assert result.exit_code == 2 and result.output.strip() == message


def test_filter_language():
    request = dissect(bytes.fromhex(
        "0a580af40101" "0a580af40102" "0800" "4500001c00010000400100000af401020af40202" "0800f7ff00000000"))
    assert request.proto == "icmp" and (request.src, request.dst) == ("10.244.1.2", "10.244.2.2")
    for text, expected in [("icmp", True), ("udp", False), ("host 10.244.2.2", True), ("src 10.244.2.2", False),
                           ("dst host 10.244.2.2", True), ("net 10.244.2.0/24", True), ("not icmp", False),
                           ("(udp or icmp) && !arp", True), ("10.244.1.2", True), ("port 53", False)]:
        assert parse_filter(text)(request) is expected, text
    with pytest.raises(FilterError, match="expected '\\)'"):
        parse_filter("(icmp udp")


def test_tshark_follows_one_packet_id_across_every_hop(tmp_path):
    import shutil
    import subprocess

    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    traced_run(load_scenario(VXLAN), tmp_path)
    done = subprocess.run(
        ["tshark", "-r", str(tmp_path / "all.pcapng"), "-d", "udp.port==8472,vxlan", "-Y", "icmp.type == 8",
         "-T", "fields", "-E", "separator=|", "-e", "frame.interface_name", "-e", "frame.packet_id",
         "-e", "frame.packet_flags_direction", "-e", "icmp.seq", "-e", "frame.comment"],
        capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in done.stdout.splitlines()]
    first = [row for row in rows if row[3] == "1"]
    assert [row[0] for row in first] == ["p1a/eth0", "n1/veth1a", "n1/cni0", "n1/flannel.1", "n1/eth0",
                                         "n2/eth0", "n2/flannel.1", "n2/cni0", "n2/veth2a", "p2a/eth0"]
    assert len({row[1] for row in first}) == 1 and first[0][1] != ""
    second = {row[1] for row in rows if row[3] == "2"}
    assert len(second) == 1 and second != {first[0][1]}  # the next echo request is another packet
    outbound, inbound = "0x00000002", "0x00000001"
    assert [row[2] for row in first] == [outbound, inbound, inbound, outbound, outbound,
                                         inbound, inbound, outbound, outbound, inbound]
    comments = {row[0]: row[4] for row in first}
    assert "ip_forward: route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink -> forwarded" in comments["n1/cni0"]
    assert "vxlan_xmit: fdb 6e:2d:54:00:02:02 dev flannel.1 dst 172.18.0.12 self permanent -> sent" \
        in comments["n1/flannel.1"]
    assert "icmp_rcv: echo request" in comments["p2a/eth0"]


def test_flanneld_proxies_the_packet_it_read_from_its_tun():
    traced = traced_run(load_scenario(EXAMPLES / "udp-cross-node.yaml"))
    for seq in (1, 2):
        request = [p for p in traced.flow("icmp and dst 10.244.2.2") if f"seq {seq} " in p.summary][0]
        walk = [(h.namespace, h.device, h.stage, h.evidence, h.verdict) for h in request.hops]
        read = walk.index(("n1", "flannel0", "flanneld", "lease for 10.244.2.2: udp to 172.18.0.12:8285", "sent"))
        assert walk[read - 1][:3] == ("n1", "flannel0", "xmit")  # right after the TUN showed it
        assert walk[read + 1][:3] == ("n1", "eth0", "ip_output")
        assert ("n2", "flannel0", "flanneld", "udp from 172.18.0.11:8285: write to flannel0", "delivered") in walk


def test_a_traffic_index_selects_that_commands_packets():
    """Two pings from one node at once (to a pod on the other node, from
    eth0's address, and to a local pod, from cni0's) and three nc commands
    over one pod's loopback: each traffic index keeps its own packets (the
    scenario files fix the addresses and ports) and the ARP they waited for."""
    run = traced_run(load_scenario(EXAMPLES / "host-gw-node-to-pod.yaml"))

    def ends(index):
        return {(p.dissected.src, p.dissected.dst) for p in run.traffic_packets(index) if p.dissected.kind == "ip"}
    assert ends(0) == {("172.18.0.11", "10.244.2.2"), ("10.244.2.2", "172.18.0.11")}
    assert ends(1) == {("10.244.1.1", "10.244.1.2"), ("10.244.1.2", "10.244.1.1")}
    assert any(p.dissected.proto == "arp" for p in run.traffic_packets(1))

    run = traced_run(load_scenario(EXAMPLES / "localhost-containers.yaml"))

    def ports(index):
        return {frozenset((p.dissected.sport, p.dissected.dport)) & {8080, 8081}
                for p in run.traffic_packets(index) if p.dissected.proto == "udp"}
    assert ports(0) == ports(1) == {frozenset({8080})}  # the listener and its client share the exchange
    assert ports(2) == {frozenset({8081})}
    assert any(p.dissected.proto == "icmp" for p in run.traffic_packets(2))  # port unreachable
