"""kube-proxy's iptables mode rules: chain names as kube-proxy hashes them
(checked against names every real cluster shows), the rules it writes for
ClusterIP and NodePort Services, and their effect walked through the
netfilter model."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

from emu.k8s.kube_proxy import Service, ServicePort, kube_proxy_rules, svc_chain
from emu.net.netfilter import Evaluator, PacketInfo, address_type_of, parse_rules

CLUSTER = IPv4Network("10.244.0.0/16")
NODE = IPv4Address("172.18.0.11").packed


def test_chain_names_are_the_ones_real_clusters_show():
    """kube-dns's and the API server's Service chains carry the same names on
    every cluster (the hash of "namespace/name:port" + protocol)."""
    dns = Service("kube-dns", IPv4Address("10.96.0.10"),
                  (ServicePort(53, 53, "UDP", "dns"), ServicePort(53, 53, "TCP", "dns-tcp")), (), "kube-system")
    api = Service("kubernetes", IPv4Address("10.96.0.1"), (ServicePort(443, 6443, "TCP", "https"),), ())
    assert svc_chain(dns, dns.ports[0]) == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert svc_chain(dns, dns.ports[1]) == "KUBE-SVC-ERIFXISQEP7F7OF4"
    assert svc_chain(api, api.ports[0]) == "KUBE-SVC-NPX46M4PTMTKRN6Y"


def walk(services: list[Service]) -> Evaluator:
    return Evaluator(parse_rules(kube_proxy_rules(services, CLUSTER)),
                     lambda address: address_type_of(address, lambda a: a == NODE), random.Random(2))


def tcp(src: str, dst: str, dport: int) -> PacketInfo:
    return PacketInfo(IPv4Address(src).packed, IPv4Address(dst).packed, 6, 60, sport=41000, dport=dport)


WEB = Service("web", IPv4Address("10.96.0.20"), (ServicePort(80, 8080, "TCP", "http", 30080),),
              (IPv4Address("10.244.1.5"), IPv4Address("10.244.2.7"), IPv4Address("10.244.2.8")), type="NodePort")


def test_three_endpoints_share_connections_evenly():
    evaluator = walk([WEB])
    counts: dict = {}
    for _ in range(3000):
        target = evaluator.run("nat", "PREROUTING", tcp("10.244.3.3", "10.96.0.20", 80)).nat.option("to")
        counts[(target[0], target[2])] = counts.get((target[0], target[2]), 0) + 1
    assert set(counts) == {(address, (8080, 8080)) for address in WEB.endpoints}
    assert all(abs(count - 1000) < 5 * (3000 * (1 / 3) * (2 / 3)) ** 0.5 for count in counts.values())


def test_outside_traffic_to_a_cluster_ip_and_nodeport_traffic_is_masqueraded():
    evaluator = walk([WEB])
    inside = tcp("10.244.3.3", "10.96.0.20", 80)
    evaluator.run("nat", "PREROUTING", inside)
    assert inside.mark == 0
    outside = tcp("172.18.0.12", "10.96.0.20", 80)
    evaluator.run("nat", "PREROUTING", outside)
    assert outside.mark == 0x4000
    nodeport = tcp("172.18.0.12", "172.18.0.11", 30080)
    assert evaluator.run("nat", "PREROUTING", nodeport).nat.name == "DNAT" and nodeport.mark == 0x4000
    post = evaluator.run("nat", "POSTROUTING", nodeport)
    assert post.nat.name == "MASQUERADE" and post.nat.option("random-fully") and nodeport.mark == 0
    assert evaluator.run("filter", "FORWARD", tcp("172.18.0.12", "10.244.2.7", 8080)).action == "ACCEPT"


def test_a_service_without_endpoints_is_rejected_in_the_filter_table():
    empty = Service("empty", IPv4Address("10.96.0.30"), (ServicePort(80, 80),), ())
    evaluator = walk([empty])
    verdict = evaluator.run("filter", "OUTPUT", tcp("10.244.1.2", "10.96.0.30", 80))
    assert (verdict.action, verdict.reject_with) == ("DROP", "icmp-port-unreachable")
    assert evaluator.run("nat", "OUTPUT", tcp("10.244.1.2", "10.96.0.30", 80)).nat is None


def test_flannel_and_kube_proxy_rules_together_as_on_a_node():
    """flannel's e2e test expects FORWARD to hold kube-proxy's jumps then
    flannel's; its masquerade leaves pod-to-pod traffic alone and masquerades
    pod traffic leaving the pod network."""
    from emu.flannel.iptables_rules import flannel_rules
    from emu.net.netfilter.rules import merge_restore

    text = merge_restore(kube_proxy_rules([WEB], CLUSTER),
                         flannel_rules(CLUSTER, IPv4Network("10.244.1.0/24")),
                         "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    ruleset = parse_rules(text)
    forward = [rule.target.name for rule in ruleset.tables["filter"].chains["FORWARD"].rules]
    assert forward == ["KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES",
                       "FLANNEL-FWD"]
    assert ruleset.tables["filter"].chains["FORWARD"].policy == "DROP"
    evaluator = Evaluator(ruleset, lambda address: address_type_of(address, lambda a: a == NODE), random.Random(1))
    established = tcp("10.244.1.2", "10.244.2.7", 80)
    assert evaluator.run("filter", "FORWARD", established).action == "ACCEPT"  # FLANNEL-FWD, despite DROP
    assert evaluator.run("filter", "FORWARD", tcp("192.168.9.9", "172.18.0.99", 80)).action == "DROP"
    assert evaluator.run("nat", "POSTROUTING", tcp("10.244.1.2", "10.244.2.7", 80)).nat is None
    leaving = evaluator.run("nat", "POSTROUTING", tcp("10.244.1.2", "1.1.1.1", 443))
    assert leaving.nat.name == "MASQUERADE" and leaving.nat.option("random-fully")
    assert evaluator.run("nat", "POSTROUTING", tcp("172.18.0.11", "10.244.1.2", 80)).nat is None
    assert evaluator.run("nat", "POSTROUTING", tcp("172.18.0.11", "10.244.2.7", 80)).nat.name == "MASQUERADE"
