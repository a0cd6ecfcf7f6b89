"""Where the netfilter hooks sit in the emulated stack (emu.net.stack), on the
reference vxlan cluster: a FORWARD policy of DROP stops cross-node traffic at
the node but not what the node delivers locally; a namespace whose rules
change nothing forwards byte for byte as one without rules; flows through a
namespace with rules are never replayed by the flow cache; the trace names
the hook, chain and rule; DNAT before routing and un-DNAT of replies.
(Frames against the live kernel: tests/test_netfilter_kernel.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP

from emu import Cluster
from emu.explain.trace import Tracer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vxlan-cross-node.yaml"
PING = "-c 3 -i 0.2 -W 1"


def cluster() -> Cluster:
    return Cluster.from_file(EXAMPLE, traffic=False)


def test_forward_drop_stops_cross_node_traffic_but_not_local_delivery():
    c = cluster()
    c.iptables_restore("n1", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
    assert c.ping("p1a", "10.244.2.2", PING).received == 0
    assert dict(c._namespace("n1").drops) == {"NETFILTER_DROP": 3}
    assert c.ping("p1a", "10.244.1.1", PING).received == 3  # the node's own address: INPUT, not FORWARD
    shown = c.netfilter("n1")["iptables"]["filter"]
    assert (shown["FORWARD"]["packets"], shown["FORWARD"]["bytes"]) == (3, 3 * 84)
    assert shown["INPUT"]["packets"] == 3 and shown["OUTPUT"]["packets"] == 3  # requests in, replies out
    assert not any(IP in f and f[IP].dst == "10.244.2.2" for f in c.captures("n1/eth0").scapy())


def test_rules_that_change_nothing_leave_every_frame_as_without_rules():
    plain, ruled = cluster(), cluster()
    ruled.iptables_restore("n1", "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -s 10.244.0.0/16 -j ACCEPT\nCOMMIT\n")
    ruled.iptables_restore("n2", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp -j ACCEPT\nCOMMIT\n")
    for c in (plain, ruled):
        assert c.ping("p1a", "10.244.2.2", PING).received == 3
    for interface in plain.interfaces:
        assert plain.captures(interface) == ruled.captures(interface), interface.name
    rules = ruled.netfilter("n1")["iptables"]["filter"]["FORWARD"]["rules"]
    assert rules[0]["packets"] == 6  # three requests, three replies


def test_an_empty_ruleset_keeps_the_hooks_off():
    c = cluster()
    c.iptables_restore("n1", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
    assert not c._namespace("n1").netfilter.active
    c.iptables_restore("n1", "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
    assert c._namespace("n1").netfilter.active  # a nat table registers conntrack, as nf_ct_netns_get does


@pytest.mark.parametrize("destination", ["10.244.2.2", "10.244.1.3"])  # routed, and bridged (br_netfilter)
def test_flows_through_a_namespace_with_rules_are_never_replayed(destination):
    flow_cache = pytest.importorskip("emu.fastpath").flow_cache  # a fast-path test (EMU_FASTPATH=off skips it)
    def replayed(rules: str | None) -> tuple[int, dict]:
        c = cluster()
        if rules:
            c.iptables_restore("n1", rules)
        c.ping("p1a", destination, "-c 8 -i 0.2 -W 1")
        stats = flow_cache(c._emulated_now().sim).stats
        return stats.datagrams_replayed, dict(stats.not_recorded)

    assert replayed(None)[0] > 0  # the same pings are replayed without rules
    count, reasons = replayed("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\nCOMMIT\n")
    assert count == 0 and reasons.get("netfilter:accepted", 0) > 0


def test_the_trace_names_the_hook_chain_and_rule_of_a_drop():
    c = cluster()
    c.iptables_restore("n1", "*filter\n:FORWARD ACCEPT [0:0]\n"
                             "-A FORWARD -d 10.244.2.2/32 -p icmp -j DROP\nCOMMIT\n")
    tracer = Tracer(c._emulated_now().sim).attach()
    c.ping("p1a", "10.244.2.2", "-c 1 -W 1")
    hops = [hop for packet in tracer.packets for hop in packet.hops if hop.stage == "netfilter"]
    drops = [hop for hop in hops if hop.verdict == "dropped:NETFILTER_DROP"]
    assert len(drops) == 1 and drops[0].namespace == "n1" and drops[0].device == "flannel.1"
    assert drops[0].evidence == "FORWARD: filter/FORWARD -A FORWARD -d 10.244.2.2/32 -p icmp -j DROP"


def test_dnat_before_routing_and_the_reply_un_natted():
    c = cluster()
    c.iptables_restore("n1", "*nat\n:PREROUTING ACCEPT [0:0]\n"
                             "-A PREROUTING -d 10.96.0.10/32 -j DNAT --to-destination 10.244.2.2\nCOMMIT\n")
    result = c.ping("p1a", "10.96.0.10", "-c 2 -i 0.2 -W 1")
    assert result.received == 2 and "64 bytes from 10.96.0.10: icmp_seq=1 ttl=62" in result.lines[1]
    at_pod = [f for f in c.captures("p2a/eth0").scapy() if ICMP in f]
    assert [(f[IP].src, f[IP].dst, f[ICMP].type) for f in at_pod[:2]] == [
        ("10.244.1.2", "10.244.2.2", 8), ("10.244.2.2", "10.244.1.2", 0)]
    entries = c.netfilter("n1")["conntrack"]
    pings = [e for e in entries if e.startswith("icmp")]  # one echo id, one connection
    assert len(pings) == 1 and "src=10.244.1.2 dst=10.96.0.10 type=8 code=0" in pings[0]
    assert "src=10.244.2.2 dst=10.244.1.2 type=0 code=0" in pings[0] and "UNREPLIED" not in pings[0]
    # the node's own VXLAN packets are tracked too (udp 8472, one entry per direction's hashed port)
    assert {e.split()[0] for e in entries} == {"icmp", "udp"}


def test_bridged_traffic_meets_forward_only_with_bridge_nf_call_iptables():
    c = cluster()
    c.iptables_restore("n1", "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    assert c.ping("p1a", "10.244.1.3", PING).received == 0  # br_netfilter: p1a -> p1b is FORWARDed, dropped
    assert c.netfilter("n1")["iptables"]["filter"]["FORWARD"]["packets"] == 3
    c._namespace("n1").bridge_nf_call_iptables = False
    assert c.ping("p1a", "10.244.1.3", PING).received == 3  # plain bridging again
    assert c.netfilter("n1")["iptables"]["filter"]["FORWARD"]["packets"] == 3


def test_a_ping_dropped_by_output_is_counted_as_sent_and_prints_nothing():
    # Linux 6.18 + iputils, live: OUTPUT DROP, `ping -c 1 -W 1 127.0.0.1` prints the header, then
    # "1 packets transmitted, 0 received, 100% packet loss" (no sendmsg error, no "+1 errors"),
    # and iptables-save -c shows ":OUTPUT DROP [1:84]".
    c = cluster()
    c.iptables_restore("p1a", "*filter\n:OUTPUT DROP [0:0]\nCOMMIT\n")
    result = c.ping("p1a", "10.244.1.3", "-c 1 -W 1")
    assert [line for line in result.lines if "sendmsg" in line or "errors" in line] == []
    assert (result.transmitted, result.received) == (1, 0)
    assert c.netfilter("p1a")["iptables"]["filter"]["OUTPUT"]["packets"] == 1
    assert dict(c._namespace("p1a").drops) == {"NETFILTER_DROP": 1}
