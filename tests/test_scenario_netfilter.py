"""The scenario's netfilter keys (kube-proxy, services, flannel, forward-policy,
iptables): what they default to, what they refuse (one line naming the
field, exit 2 from `emu check`), the rules each node gets and the kernel
export's copy of them."""

from __future__ import annotations

import copy
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

from emu.kernel import export_netns
from emu.net.netfilter.rules import parse_rules
from emu.scenario import ScenarioError, load_scenario_document
from emu.scenario.build import build_cluster
from emu.scenario.play import resolve_destination

ROOT = Path(__file__).resolve().parent.parent

BASE = {
    "name": "svc",
    "net-conf": {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}},
    "kube-proxy": {"mode": "iptables", "service-cidr": "10.96.0.0/12"},
    "services": [
        {"name": "web", "ports": [{"port": 80, "target-port": 8080}], "endpoints": ["p2a"]},
        {"name": "dns", "type": "NodePort", "cluster-ip": "10.96.0.1",
         "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "tcp", "port": 53}],
         "endpoints": ["p2a", "p1a"]},
    ],
    "nodes": [
        {"name": "n1", "subnet": "10.244.1.0/24", "pods": [{"name": "p1a"}]},
        {"name": "n2", "subnet": "10.244.2.0/24", "forward-policy": "DROP", "pods": [{"name": "p2a"}],
         "iptables": "*filter\n-A INPUT -p udp --dport 9 -j DROP\nCOMMIT\n"},
    ],
    "traffic": [{"from": "p2a", "run": "nc -l 8080 &"}, {"from": "p1a", "run": "nc -N web 80", "stdin": "hi\n"}],
}


def load(change=None):
    document = copy.deepcopy(BASE)
    if change is not None:
        change(document)
    return load_scenario_document(document, "svc.yaml")


def test_cluster_ips_and_node_ports_are_allocated_in_order_around_given_ones():
    services = {service.name: service for service in load().netfilter.services}
    assert services["dns"].cluster_ip == IPv4Address("10.96.0.1")
    assert services["web"].cluster_ip == IPv4Address("10.96.0.2")  # .1 is taken by dns, given explicitly
    assert [port.node_port for port in services["dns"].ports] == [30000, 30000]  # one per protocol
    assert services["web"].ports[0].node_port is None and services["web"].ports[0].protocol == "TCP"


def test_no_netfilter_key_means_no_rule_anywhere():
    """The reference captures were taken on nodes without rules: a scenario
    without any netfilter key gets none (and its export runs no iptables)."""
    def strip(document):
        for key in ("kube-proxy", "services"):
            del document[key]
        for node in document["nodes"]:
            node.pop("forward-policy", None)
            node.pop("iptables", None)
        document["traffic"] = []
    scenario = load(strip)
    assert not scenario.netfilter.enabled
    emulated = build_cluster(scenario)
    assert emulated.iptables == {}
    assert not any(ns.netfilter.active for ns in emulated.cluster.namespaces())
    assert "iptables-restore" not in export_netns(scenario, "emut-").script


def test_each_node_gets_kube_proxy_then_flannel_then_its_policy_and_own_rules():
    emulated = build_cluster(load())
    n1, n2 = emulated.iptables["n1"], emulated.iptables["n2"]
    for text in (n1, n2):
        parse_rules(text)
        assert text.index("KUBE-SERVICES") < text.index("FLANNEL-FWD") < text.rindex("COMMIT")
    assert "-A FLANNEL-POSTRTG -s 10.244.2.0/24 -d 10.244.0.0/16" in n2  # the node's own lease
    assert "-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16" in n1
    assert ":FORWARD DROP" in n2 and ":FORWARD DROP" not in n1
    assert n2.index("FLANNEL-FWD -d") < n2.index("-A INPUT -p udp --dport 9 -j DROP")
    p2a, p1a = (emulated.cluster.pods[name].ip for name in ("p2a", "p1a"))
    assert f"--to-destination {p2a}:8080" in n1 and f"--to-destination {p1a}:53" in n1
    assert "FLANNEL_IPMASQ=true" in emulated.flanneld["n1"].subnet_env
    for name, text in emulated.iptables.items():
        ruleset = emulated.cluster.nodes[name].ns.netfilter.ruleset
        assert ruleset.tables["filter"].chains["FLANNEL-FWD"].rules  # loaded, not only written


def test_flannel_switches_and_a_cluster_wide_forward_policy():
    def change(document):
        document["flannel"] = {"ip-masq": False}
        document["forward-policy"] = "DROP"
    emulated = build_cluster(load(change))
    assert "FLANNEL-POSTRTG" not in emulated.iptables["n1"] and "FLANNEL-FWD" in emulated.iptables["n1"]
    assert ":FORWARD DROP" in emulated.iptables["n1"]
    assert "FLANNEL_IPMASQ=false" in emulated.flanneld["n1"].subnet_env


def test_service_names_resolve_to_their_cluster_ip():
    emulated = build_cluster(load())
    assert resolve_destination(emulated, "web") == "10.96.0.2"
    assert resolve_destination(emulated, "p2a") == str(emulated.cluster.pods["p2a"].ip)
    assert resolve_destination(emulated, "nowhere") is None


def test_the_export_restores_the_very_rules_the_emulator_loaded():
    scenario = load()
    emulated = build_cluster(scenario)
    export = export_netns(scenario, "emut-")
    assert export.netfilter_nodes == ["n1", "n2"]
    assert export.hosts["web"] == "10.96.0.2"
    script = export.script
    for name, text in emulated.iptables.items():
        start = script.index(f'ip netns exec "${{P}}{name}" iptables-restore <<\'EMU_IPTABLES\'\n')
        body = script[start:].split("\n", 1)[1]
        assert body.split("\nEMU_IPTABLES\n", 1)[0] + "\n" == text
        assert f'ip netns exec "${{P}}{name}" sysctl -qw net.bridge.bridge-nf-call-iptables=1' in script


def set_in(path: str, value):
    """A change setting document[path] (dotted, [i] indexes)."""
    def change(document):
        target = document
        keys = [int(key) if key.isdigit() else key for key in path.replace("[", ".").replace("]", "").split(".")]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


@pytest.mark.parametrize("path, value, message", [
    ("services[0].ports[0].port", 0, "services[0].ports[0].port: integer 0 is out of range (expected an integer "
                                     "1..65535)"),
    ("services[0].ports[0].target-port", 65536, "services[0].ports[0].target-port: integer 65536 is out of range"),
    ("services[1].ports[0].node-port", 29999, "services[1].ports[0].node-port: integer 29999 is out of range "
                                              "(expected an integer 30000..32767)"),
    ("services[0].ports[0].node-port", 30001, "services[0].ports[0].node-port: only a NodePort Service has node "
                                              "ports (type is ClusterIP)"),
    ("services[0].endpoints", ["p2a", "p9"], "services[0].endpoints[1]: no pod named 'p9'"),
    ("services[0].endpoints", ["n1"], "services[0].endpoints[0]: no pod named 'n1'"),
    ("services[0].endpoints", ["p2a", "p2a"], "services[0].endpoints[1]: duplicate endpoint p2a"),
    ("services[0].cluster-ip", "10.112.0.1", "services[0].cluster-ip: 10.112.0.1 is outside "
                                             "kube-proxy.service-cidr 10.96.0.0/12"),
    ("services[0].cluster-ip", "10.96.0.1", "services[1].cluster-ip: duplicate cluster-ip 10.96.0.1 "
                                            "(also services[0].cluster-ip)"),
    ("services[0].ports[0].protocol", "SCTP", "services[0].ports[0].protocol: expected TCP or UDP, got 'SCTP'"),
    ("services[0].type", "LoadBalancer", "services[0].type: 'LoadBalancer' is not modelled"),
    ("services[0].name", "p1a", "services[0].name: p1a is already a node or pod name"),
    ("services[1].name", "web", "services[1].name: duplicate Service name web (also services[0].name)"),
    ("services[1].ports[1].name", "dns", "services[1].ports[1].name: duplicate port name dns"),
    ("kube-proxy.mode", "ipvs", "kube-proxy.mode: 'ipvs' is not modelled (emu has iptables)"),
    ("kube-proxy.service-cidr", "10.244.0.0/16", "kube-proxy.service-cidr: 10.244.0.0/16 overlaps "
                                                 "net-conf.Network"),
    ("forward-policy", "REJECT", "forward-policy: expected ACCEPT or DROP, got string 'REJECT'"),
    ("nodes[1].iptables", "*filter\n-A INPUT -j ACCEPT\n-A INPUT -m frobnicate -j DROP\nCOMMIT\n",
     "nodes[1].iptables: line 3: "),
    ("nodes[0].iptables", "*raw\nCOMMIT\n", "nodes[0].iptables: line 1: table 'raw' is not modelled"),
    ("nodes[0].iptables", "*filter\n-A FORWARD -j NOWHERE\nCOMMIT\n", "nodes[0].iptables: line 2: "),
    ("flannel", {"ip-masq": "yes"}, "flannel.ip-masq: expected true or false"),
    ("flannel", {"ipmasq": True}, "flannel.ipmasq: unknown key (allowed: ip-masq, iptables-forward-rules)"),
])
def test_a_bad_value_is_one_line_naming_the_field(path, value, message):
    with pytest.raises(ScenarioError) as caught:
        load(set_in(path, value))
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_emu_check_exits_2_with_the_same_line(tmp_path):
    document = copy.deepcopy(BASE)
    document["services"][0]["ports"][0]["port"] = 70000
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    for command in ("check", "run"):
        proc = subprocess.run([sys.executable, "-m", "emu.cli", command, str(path), "--out", str(tmp_path / "o")]
                              if command == "run" else [sys.executable, "-m", "emu.cli", command, str(path)],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2, proc.stderr
        assert "services[0].ports[0].port: integer 70000 is out of range" in proc.stderr


def test_stats_json_and_the_summary_show_each_node_with_rules(tmp_path):
    from emu.scenario.run import netfilter_summary, run_scenario

    result = run_scenario(load(), tmp_path)
    namespaces = result.stats["namespaces"]
    assert {name for name, entry in namespaces.items() if "iptables" in entry} == {"n1", "n2"}
    chains = namespaces["n2"]["iptables"]["filter"]
    assert chains["FORWARD"]["policy"] == "DROP"
    assert chains["INPUT"]["rules"][-1]["rule"] == "-A INPUT -p udp --dport 9 -j DROP"
    assert isinstance(namespaces["n1"]["conntrack"], list)
    lines = netfilter_summary(result.stats)
    rules = sum(len(chain["rules"]) for table in namespaces["n1"]["iptables"].values() for chain in table.values())
    assert lines[0].startswith(f"n1: {rules} rules (") and len(lines) == 2
    assert any(line.startswith("service web ClusterIP 10.96.0.2 80/TCP -> 8080: p2a") for line in result.nodes)


def test_a_later_program_s_policy_wins_in_the_merge():
    """The node's own `iptables:` comes last: its `:FORWARD ACCEPT` (as every
    iptables-save prints) overrides forward-policy, as a later iptables-restore would."""
    from emu.net.netfilter.rules import merge_restore

    merged = merge_restore("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n", "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\n"
                           "COMMIT\n")
    assert parse_rules(merged).tables["filter"].chains["FORWARD"].policy == "ACCEPT"
    assert merged.count(":FORWARD") == 1
