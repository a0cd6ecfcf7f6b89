"""Scenario files: examples load, every validation error has its exact message,
defaults are as documented, and garbage only ever raises ScenarioError."""

import copy
import json
import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.scenario import (
    Backend,
    PingSpec,
    ScenarioError,
    load_default,
    load_scenario,
    load_scenario_text,
    parse_ping,
)

settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "tests" / "kernel-captures"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
FOLDERS = [
    f"{backend}-{scenario}"
    for backend in ("vxlan", "host-gw", "udp")
    for scenario in ("cross-node", "same-node", "node-to-pod")
]


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def reference() -> dict:
    """The two-node reference cluster of kernel-captures, vxlan backend."""
    return {
        "name": "ref",
        "net-conf": {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}},
        "underlay": {"subnet": "172.18.0.0/24", "mtu": 1500},
        "cni": {"bridge": "cni0", "mtu": "auto", "hairpinMode": True},
        "nodes": [
            {
                "name": "n1",
                "ip": "172.18.0.11",
                "mac": "02:42:ac:12:00:0b",
                "subnet": "10.244.1.0/24",
                "cni-mac": "0a:58:0a:f4:01:01",
                "vtep-mac": "6e:2d:54:00:01:01",
                "pods": [
                    {"name": "p1a", "ip": "10.244.1.2", "mac": "0a:58:0a:f4:01:02",
                     "host-veth": "veth1a", "host-veth-mac": "ee:ee:00:00:01:0a"},
                    {"name": "p1b", "ip": "10.244.1.3", "host-veth": "veth1b",
                     "host-veth-mac": "ee:ee:00:00:01:0b", "containers": ["app", "sidecar"]},
                ],
            },
            {
                "name": "n2",
                "ip": "172.18.0.12",
                "mac": "02:42:ac:12:00:0c",
                "subnet": "10.244.2.0/24",
                "vtep-mac": "6e:2d:54:00:02:02",
                "pods": [
                    {"name": "p2a", "ip": "10.244.2.2", "host-veth": "veth2a", "host-veth-mac": "ee:ee:00:00:02:0a"},
                ],
            },
        ],
        "traffic": [
            {"from": "p1a", "run": "ping -c 2 -i 0.2 -W 1 10.244.2.2"},
            {"from": "n1", "run": "ping -c 1 10.244.1.2"},
            {"from": "p1b/sidecar", "run": "ping -c 1 127.0.0.1"},
        ],
        "events": [
            {"at": 2.0, "remove-node": "n3"},
            {"at": 1.0, "add-node": {"name": "n3", "ip": "172.18.0.13", "pods": [{"name": "p3a"}]}},
        ],
    }


def load(document: dict):
    return load_scenario_text(json.dumps(document), "json")


def changed(*edits) -> dict:
    """The reference document with (key path, value) edits; value DELETE removes the key."""
    document = reference()
    for keys, value in edits:
        parent = document
        for key in keys[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[keys[-1]]
        else:
            parent[keys[-1]] = value
    return document


DELETE = object()
N0, N1, P0, P1 = ("nodes", 0), ("nodes", 1), ("nodes", 0, "pods", 0), ("nodes", 0, "pods", 1)


# Examples and the default scenario.


def test_there_is_one_example_per_kernel_capture_folder():
    # the other examples (application traffic) are held against the live
    # kernel by tests/test_kernel_live.py instead of a stored capture
    assert set(FOLDERS) <= {path.stem for path in EXAMPLES}
    assert sorted(path.name for path in CAPTURES.iterdir() if path.is_dir()) == sorted(FOLDERS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_example_matches_its_kernel_capture(folder):
    scenario = load_scenario(ROOT / "examples" / f"{folder}.yaml")
    assert scenario.name == folder
    assert scenario.net_conf.backend.type == next(b for b in ("vxlan", "host-gw", "udp") if folder.startswith(b + "-"))
    n1, n2 = scenario.nodes
    assert (n1.name, n1.ip, n1.mac, n1.subnet) == ("n1", IPv4Address("172.18.0.11"), mac("02:42:ac:12:00:0b"), IPv4Network("10.244.1.0/24"))
    assert (n2.name, n2.ip, n2.mac, n2.subnet) == ("n2", IPv4Address("172.18.0.12"), mac("02:42:ac:12:00:0c"), IPv4Network("10.244.2.0/24"))
    assert (n1.cni_mac, n2.cni_mac) == (mac("0a:58:0a:f4:01:01"), mac("0a:58:0a:f4:02:01"))
    pods = [(p.name, str(p.ip), p.mac.hex(":"), p.host_veth, p.host_veth_mac.hex(":")) for n in scenario.nodes for p in n.pods]
    assert pods == [
        ("p1a", "10.244.1.2", "0a:58:0a:f4:01:02", "veth1a", "ee:ee:00:00:01:0a"),
        ("p1b", "10.244.1.3", "0a:58:0a:f4:01:03", "veth1b", "ee:ee:00:00:01:0b"),
        ("p2a", "10.244.2.2", "0a:58:0a:f4:02:02", "veth2a", "ee:ee:00:00:02:0a"),
    ]
    commands = json.loads((CAPTURES / folder / "commands.json").read_text())
    assert [(t.source, t.ping.command) for t in scenario.traffic] == [(c["who"], c["cmd"]) for c in commands]


def test_vxlan_examples_carry_the_reference_vtep_macs():
    scenario = load_scenario(ROOT / "examples" / "vxlan-cross-node.yaml")
    assert scenario.net_conf.backend == Backend("vxlan", 1, 8472, False)
    assert [n.vtep_mac for n in scenario.nodes] == [mac("6e:2d:54:00:01:01"), mac("6e:2d:54:00:02:02")]


def test_default_scenario():
    scenario = load_default()
    assert scenario.name == "default"
    assert scenario.net_conf.backend == Backend("vxlan", 1, 8472, False)
    assert [(t.source, t.ping.command) for t in scenario.traffic] == [
        ("p1a", "ping -c 2 -i 0.2 -W 1 10.244.2.2"),
        ("n1", "ping -c 1 -W 1 10.244.2.2"),
        ("n1", "ping -c 1 -W 1 10.244.1.2"),
    ]
    assert [n.vtep_mac for n in scenario.nodes] == [mac("6e:2d:54:00:01:01"), mac("6e:2d:54:00:02:02")]


def test_reference_document_in_full():
    scenario = load(reference())
    assert scenario.net_conf.raw == reference()["net-conf"]
    assert (scenario.underlay.subnet, scenario.underlay.mtu) == (IPv4Network("172.18.0.0/24"), 1500)
    assert (scenario.cni.bridge, scenario.cni.mtu, scenario.cni.hairpin_mode) == ("cni0", None, True)
    p1b = scenario.nodes[0].pods[1]
    assert (p1b.containers, p1b.mac, p1b.path) == (("app", "sidecar"), None, "nodes[0].pods[1]")
    sidecar = scenario.traffic[2]
    assert (sidecar.source, sidecar.container, sidecar.at, sidecar.path) == ("p1b", "sidecar", None, "traffic[2]")
    # events come sorted by time; the added node keeps its own path
    assert [(e.at, e.path) for e in scenario.events] == [(1.0, "events[1]"), (2.0, "events[0]")]
    added = scenario.events[0].add_node
    assert (added.name, added.path, added.pods[0].path) == ("n3", "events[1].add-node", "events[1].add-node.pods[0]")
    assert scenario.events[1].remove_node == "n3"
    assert [n.name for n in scenario.nodes] == ["n1", "n2"]


def test_yaml_and_json_give_equal_scenarios():
    text = (ROOT / "examples" / "vxlan-cross-node.yaml").read_text()
    as_json = json.dumps(yaml.safe_load(text))
    assert load_scenario_text(text, "yaml", "x.yaml") == load_scenario_text(as_json, "json", "x.yaml")
    as_yaml = yaml.safe_dump(reference())
    assert load_scenario_text(as_yaml, "yaml") == load(reference())


def test_json_file_is_read_as_json(tmp_path):
    path = tmp_path / "from-json.json"
    document = changed((("name",), DELETE))
    path.write_text(json.dumps(document))
    assert load_scenario(path).name == "from-json"


# YAML 1.2 scalars.


def test_unquoted_all_digit_mac_stays_a_mac():
    text = yaml.safe_dump(changed((N0 + ("mac",), "MAC"))).replace("MAC", "10:11:22:33:44:55")
    assert "10:11:22:33:44:55" in text  # unquoted: PyYAML 1.1 would read 10*60**5 + ...
    assert load_scenario_text(text).nodes[0].mac == bytes([0x10, 0x11, 0x22, 0x33, 0x44, 0x55])


def test_yaml_11_oddities_stay_strings():
    document = changed((N0 + ("name",), "NAME"), (("traffic",), []), (("events",), []))
    text = yaml.safe_dump(document).replace("NAME", "no")  # YAML 1.1: false
    assert load_scenario_text(text).nodes[0].name == "no"


# Defaults.


def test_node_ip_and_mac_defaults_skip_explicit_addresses():
    document = {
        "net-conf": {"Network": "10.244.0.0/16"},
        "nodes": [{"name": "a"}, {"name": "b", "ip": "172.18.0.1"}, {"name": "c"}],
        "events": [{"at": 0, "add-node": {"name": "d", "ip": "172.18.0.3"}}],
    }
    scenario = load(document)
    assert [(n.name, str(n.ip), n.mac.hex(":")) for n in scenario.nodes] == [
        ("a", "172.18.0.2", "02:42:ac:12:00:02"),
        ("b", "172.18.0.1", "02:42:ac:12:00:01"),
        ("c", "172.18.0.4", "02:42:ac:12:00:04"),
    ]
    assert scenario.name == "scenario"  # no file, no name
    assert scenario.seed == 0
    assert scenario.net_conf.backend == Backend("udp", 0, 8285, True)
    assert scenario.net_conf.subnet_len == 24
    assert (scenario.cni.bridge, scenario.cni.mtu, scenario.cni.hairpin_mode) == ("cni0", None, True)
    assert (scenario.underlay.subnet, scenario.underlay.mtu) == (IPv4Network("172.18.0.0/24"), 1500)
    assert scenario.traffic == ()


def test_default_node_ips_can_run_out():
    document = {"net-conf": {"Network": "10.244.0.0/16"}, "underlay": {"subnet": "172.18.0.0/30"},
                "nodes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}
    with pytest.raises(ScenarioError) as caught:
        load(document)
    assert str(caught.value) == "nodes[2].ip: not given, and underlay.subnet 172.18.0.0/30 has no free address left"


def test_pod_defaults_are_derived_from_node_and_pod_name():
    scenario = load({"net-conf": {"Network": "10.244.0.0/16"}, "nodes": [{"name": "n1", "pods": [{"name": "p1a"}]}]})
    pod = scenario.nodes[0].pods[0]
    # sha256("n1/p1a") = d37f7a7a5ef2...; first byte 0xd3 -> 0xd2 (local, unicast)
    assert (pod.host_veth, pod.host_veth_mac, pod.ip, pod.mac, pod.containers) == (
        "vethd37f7a7a", mac("d2:7f:7a:7a:5e:f2"), None, None, ()
    )
    assert (scenario.nodes[0].subnet, scenario.nodes[0].cni_mac, scenario.nodes[0].vtep_mac) == (None, None, None)


def test_backend_and_net_conf_defaults():
    def backend(config):
        no_vteps = [(N0 + ("vtep-mac",), DELETE), (N1 + ("vtep-mac",), DELETE)]
        return load(changed((("net-conf", "Backend"), config), *no_vteps)).net_conf.backend

    assert backend({"Type": "vxlan"}) == Backend("vxlan", 1, 8472, False)
    assert backend({"Type": "udp"}) == Backend("udp", 0, 8285, False)
    assert backend({"Type": "host-gw"}) == Backend("host-gw", 0, 0, False)
    small = {"net-conf": {"Network": "10.244.0.0/23"}, "nodes": [{"name": "a"}]}
    assert load(small).net_conf.subnet_len == 25  # flannel: Network prefix + 2 below a /22
    bounds = load(changed((("net-conf", "SubnetMin"), "10.244.10.0"), (("net-conf", "SubnetMax"), "10.244.20.0/24")))
    assert (bounds.net_conf.subnet_min, bounds.net_conf.subnet_max) == (
        IPv4Network("10.244.10.0/24"), IPv4Network("10.244.20.0/24")
    )


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "my-run.yaml"
    path.write_text(yaml.safe_dump(changed((("name",), DELETE))))
    scenario = load_scenario(path)
    assert (scenario.name, scenario.source) == ("my-run", str(path))


# Validation errors: each from a small broken document, exact message.

POD_KEYS = "name, ip, mac, host-veth, host-veth-mac, containers"
NAME_RULE = "(lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
IFNAME_RULE = "(1-15 characters, no '/', ':' or whitespace)"

ERRORS = [
    ([(("nodes", 1, "pods", 0, "ip"), "10.244.3.2")],
     "nodes[1].pods[0].ip: 10.244.3.2 is outside node n2's subnet 10.244.2.0/24"),
    ([(P0 + ("colour",), "red")], f"nodes[0].pods[0].colour: unknown key (allowed: {POD_KEYS})"),
    ([(N1 + ("name",), "n1")], "nodes[1].name: duplicate name n1 (also nodes[0].name)"),
    ([(("nodes", 1, "pods", 0, "name"), "n1")], "nodes[1].pods[0].name: duplicate name n1 (also nodes[0].name)"),
    ([(P1 + ("ip",), "10.244.1.2")], "nodes[0].pods[1].ip: duplicate IP 10.244.1.2 (also nodes[0].pods[0].ip)"),
    ([(N1 + ("ip",), "172.18.0.11")], "nodes[1].ip: duplicate IP 172.18.0.11 (also nodes[0].ip)"),
    ([(("nodes", 1, "pods", 0, "mac"), "02:42:ac:12:00:0b")],
     "nodes[1].pods[0].mac: duplicate MAC 02:42:ac:12:00:0b (also nodes[0].mac)"),
    ([(N0 + ("mac",), "02:42:ac:12:00:0c"), (N1 + ("mac",), DELETE)],
     "nodes[1].mac: duplicate MAC 02:42:ac:12:00:0c (default) (also nodes[0].mac)"),
    ([(P1 + ("host-veth-mac",), "6e:2d:54:00:01:01")],
     "nodes[0].pods[1].host-veth-mac: duplicate MAC 6e:2d:54:00:01:01 (also nodes[0].vtep-mac)"),
    ([(("underlay", "subnet"), "172.18.0.0/33")], "underlay.subnet: 172.18.0.0/33 is not an IPv4 network"),
    ([(("underlay", "subnet"), "10.244.128.0/24")],
     "underlay.subnet: 10.244.128.0/24 overlaps net-conf.Network 10.244.0.0/16"),
    ([(N0 + ("subnet",), "10.244.1.5/24")], "nodes[0].subnet: 10.244.1.5/24 has host bits set (did you mean 10.244.1.0/24?)"),
    ([(N0 + ("subnet",), "10.244.1.0/25")], "nodes[0].subnet: 10.244.1.0/25 must be a /24 (net-conf.SubnetLen)"),
    ([(N0 + ("subnet",), "10.245.1.0/24")], "nodes[0].subnet: 10.245.1.0/24 is outside net-conf.Network 10.244.0.0/16"),
    ([(N1 + ("subnet",), "10.244.1.0/24"), (("nodes", 1, "pods", 0, "ip"), DELETE)],
     "nodes[1].subnet: duplicate subnet 10.244.1.0/24 (also nodes[0].subnet)"),
    ([(N0 + ("ip",), "172.19.0.11")], "nodes[0].ip: 172.19.0.11 is outside underlay.subnet 172.18.0.0/24"),
    ([(N0 + ("ip",), "172.18.0.255")], "nodes[0].ip: 172.18.0.255 is the broadcast address of underlay.subnet 172.18.0.0/24"),
    ([(N0 + ("ip",), "172.18.0.300")], "nodes[0].ip: 172.18.0.300 is not an IPv4 address"),
    ([(P0 + ("ip",), "10.244.1.1")],
     "nodes[0].pods[0].ip: 10.244.1.1 is the gateway (cni0) address of node n1's subnet 10.244.1.0/24"),
    ([(P0 + ("ip",), "10.244.1.0")], "nodes[0].pods[0].ip: 10.244.1.0 is the network address of node n1's subnet 10.244.1.0/24"),
    ([(N0 + ("subnet",), DELETE), (P0 + ("ip",), "10.244.7.255")],
     "nodes[0].pods[0].ip: 10.244.7.255 is the broadcast address of the /24 10.244.7.0/24 node n1 would lease"),
    ([(N0 + ("subnet",), DELETE), (P0 + ("ip",), "10.9.0.2")],
     "nodes[0].pods[0].ip: 10.9.0.2 is outside net-conf.Network 10.244.0.0/16"),
    ([(N0 + ("mac",), "01:00:5e:00:00:01")], "nodes[0].mac: 01:00:5e:00:00:01 is a multicast MAC (must be unicast)"),
    ([(N0 + ("mac",), "00:00:00:00:00:00")], "nodes[0].mac: 00:00:00:00:00:00 is the all-zero MAC"),
    ([(N0 + ("mac",), "02-42-ac-12-00-0b")],
     "nodes[0].mac: 02-42-ac-12-00-0b is not a MAC address (expected aa:bb:cc:dd:ee:ff)"),
    ([(N0 + ("cni-mac",), 5)],
     "nodes[0].cni-mac: expected a MAC address string like 0a:58:0a:f4:01:02, got integer 5"),
    ([(P1 + ("host-veth",), "veth1a")],
     "nodes[0].pods[1].host-veth: duplicate interface name on node n1: veth1a (also nodes[0].pods[0].host-veth)"),
    ([(P0 + ("host-veth",), "flannel.1")], "nodes[0].pods[0].host-veth: flannel.1 clashes with node n1's own device of that name"),
    ([(P0 + ("host-veth",), "veth-much-too-long")],
     f"nodes[0].pods[0].host-veth: 'veth-much-too-long' is not a valid interface name {IFNAME_RULE}"),
    ([(("cni", "bridge"), "br:0")], f"cni.bridge: 'br:0' is not a valid interface name {IFNAME_RULE}"),
    ([(P0 + ("name",), "P1A")], f"nodes[0].pods[0].name: 'P1A' is not a valid name {NAME_RULE}"),
    ([(N0 + ("name",), "n" * 64)], f"nodes[0].name: '{'n' * 37}...' is not a valid name {NAME_RULE}"),
    ([(N0 + ("name",), 5)], "nodes[0].name: expected a string, got integer 5"),
    ([(N0 + ("name",), DELETE)], "nodes[0].name: required but missing"),
    ([(P1 + ("containers",), ["app", "app"])],
     "nodes[0].pods[1].containers[1]: duplicate container app (also nodes[0].pods[1].containers[0])"),
    ([(("net-conf", "Backend", "VNI"), 16777216)],
     "net-conf.Backend.VNI: integer 16777216 is out of range (expected an integer 0..16777215)"),
    ([(("net-conf", "Backend", "Port"), 0)], "net-conf.Backend.Port: integer 0 is out of range (expected an integer 1..65535)"),
    ([(("net-conf", "Backend", "Type"), "ipip")], "net-conf.Backend.Type: ipip is not supported by emu (vxlan, host-gw, udp)"),
    ([(("net-conf", "Backend"), {"Type": "udp", "VNI": 2})], "net-conf.Backend.VNI: only the vxlan backend has a VNI, not udp"),
    ([(("net-conf", "Backend", "GBP"), True)],
     "net-conf.Backend.GBP: not supported by emu (emu models Type, VNI, Port, DirectRouting)"),
    ([(("net-conf", "EnableIPv6"), True)],
     "net-conf.EnableIPv6: not supported by emu (emu models Network, SubnetLen, SubnetMin, SubnetMax, Backend)"),
    ([(("net-conf", "SubnetLen"), 31)], "net-conf.SubnetLen: integer 31 is out of range (expected an integer 18..30)"),
    ([(("net-conf", "SubnetLen"), "24")], "net-conf.SubnetLen: expected an integer 18..30, got string '24'"),
    ([(("net-conf", "Network"), "10.244.0.0/29")], "net-conf.Network: 10.244.0.0/29 is too small (flannel needs /28 or larger)"),
    ([(("net-conf", "Network"), DELETE)], "net-conf.Network: required but missing"),
    ([(("net-conf", "SubnetMin"), "10.245.0.0")], "net-conf.SubnetMin: 10.245.0.0 is outside net-conf.Network 10.244.0.0/16"),
    ([(("net-conf", "SubnetMin"), "10.244.1.5")],
     "net-conf.SubnetMin: 10.244.1.5 is not on a /24 boundary (did you mean 10.244.1.0?)"),
    ([(("net-conf", "SubnetMin"), "10.244.9.0"), (("net-conf", "SubnetMax"), "10.244.8.0")],
     "net-conf.SubnetMax: 10.244.8.0/24 is below SubnetMin 10.244.9.0/24"),
    ([(N1 + ("vtep-mac",), "6e:2d:54:00:02:02"), (("net-conf", "Backend"), {"Type": "host-gw"}), (N0 + ("vtep-mac",), DELETE)],
     "nodes[1].vtep-mac: only the vxlan backend has a VTEP (backend is host-gw)"),
    ([(("cni", "mtu"), "big")], "cni.mtu: expected an integer 68..65535 or auto, got string 'big'"),
    ([(("underlay", "mtu"), 67)], "underlay.mtu: integer 67 is out of range (expected an integer 68..65535)"),
    ([(("net-conf", "Backend"), {"Type": "host-gw", "DirectRouting": True})],
     "net-conf.Backend.DirectRouting: only the vxlan backend has DirectRouting, not host-gw"),
    ([(("net-conf", "Backend"), {"Type": "vxlan", "DirectRouting": "yes"})],
     "net-conf.Backend.DirectRouting: expected true or false, got string 'yes'"),
    ([(("underlay", "mtu"), 117), (("net-conf", "Backend"), {"Type": "vxlan"})],
     "underlay.mtu: 117 leaves the vxlan backend's device an MTU of 67, below the IPv4 minimum 68 "
     "(needs at least 118)"),
    ([(("underlay", "mtu"), 95), (("net-conf", "Backend"), {"Type": "udp"})],
     "underlay.mtu: 95 leaves the udp backend's device an MTU of 67, below the IPv4 minimum 68 "
     "(needs at least 96)"),
    ([(("cni", "hairpinMode"), "yes")], "cni.hairpinMode: expected true or false, got string 'yes'"),
    ([(("nodes",), [])], "nodes: at least one node is required"),
    ([(("nodes",), {"name": "n1"})], "nodes: expected a list, or {count: N, pods-per-node: P}, "
                                     "got a mapping without count"),
    ([(("nodes",), {"count": 2, "pods": 1})], "nodes.pods: unknown key (allowed: count, pods-per-node)"),
    ([(("nodes",), {"count": 300})], "nodes.count: 300 nodes do not fit underlay.subnet 172.18.0.0/24 "
                                     "(254 addresses)"),
    ([(("nodes",), {"count": 2, "pods-per-node": 254})],
     "nodes.pods-per-node: 254 pods do not fit a node's /24 subnet (253 usable addresses)"),
    ([(("name",), "a/b")],
     "name: 'a/b' is not a valid folder name (letters, digits, '.', '_' and '-', starting with a letter or digit, "
     "at most 100 characters)"),
    ([(("seed",), -1)], "seed: integer -1 is out of range (expected an integer >= 0)"),
    ([(("traffic", 0, "from"), "p9")], "traffic[0].from: no node or pod named 'p9'"),
    ([(("traffic", 0, "from"), "p1a/sidecar")], "traffic[0].from: pod p1a has no container 'sidecar' (declared: none)"),
    ([(("traffic", 0, "from"), "n1/app")], "traffic[0].from: n1 is a node; only pods have containers"),
    ([(("traffic", 0, "at"), -1)], "traffic[0].at: -1 is not a time (expected a number of seconds >= 0)"),
    ([(("traffic", 0, "run"), "ping 10.244.2.2")], "traffic[0].run: ping needs -c COUNT or -w DEADLINE"),
    ([(("traffic", 0, "run"), "curl http://x")], "traffic[0].run: unknown program 'curl' (supported: ping, nc)"),
    ([(("events", 0, "remove-node"), "n9")], "events[0].remove-node: no node n9 exists at t=2 s"),
    ([(("events", 0, "at"), 0.5)], "events[0].remove-node: no node n3 exists at t=0.5 s"),
    ([(("events", 0, "add-node"), {"name": "n4"})], "events[0]: needs exactly one of add-node, remove-node"),
    ([(("events", 1, "add-node", "pods", 0, "ip"), "10.8.0.2")],
     "events[1].add-node.pods[0].ip: 10.8.0.2 is outside net-conf.Network 10.244.0.0/16"),
    ([(("events", 1, "add-node", "ip"), "172.18.0.12")], "events[1].add-node.ip: duplicate IP 172.18.0.12 (also nodes[1].ip)"),
    ([(("events", 1, "at"), DELETE)], "events[1].at: required but missing"),
]


@pytest.mark.parametrize("edits, message", ERRORS, ids=[message.split(":")[0] + f"#{i}" for i, (_, message) in enumerate(ERRORS)])
def test_validation_error(edits, message):
    with pytest.raises(ScenarioError) as caught:
        load(changed(*edits))
    assert str(caught.value) == message
    assert caught.value.path == message.split(": ")[0]


UNKNOWN_KEYS = [
    ((), "", "name, seed, start, net-conf, underlay, cni, nodes, traffic, events, linger, etcd, faults, "
             "kube-proxy, services, flannel, forward-policy, bridge-nf-call-iptables"),
    (("net-conf",), "net-conf.", "Network, SubnetLen, SubnetMin, SubnetMax, Backend"),
    (("net-conf", "Backend"), "net-conf.Backend.", "Type, VNI, Port, DirectRouting"),
    (("underlay",), "underlay.", "subnet, mtu, latency"),
    (("cni",), "cni.", "bridge, mtu, hairpinMode"),
    (N1, "nodes[1].", "name, ip, mac, subnet, cni-mac, vtep-mac, pods, forward-policy, iptables"),
    (("nodes", 1, "pods", 0), "nodes[1].pods[0].", POD_KEYS),
    (("traffic", 1), "traffic[1].", "from, run, at, stdin"),
    (("events", 0), "events[0].", "at, add-node, remove-node"),
    (("events", 1, "add-node"), "events[1].add-node.",
     "name, ip, mac, subnet, cni-mac, vtep-mac, pods, forward-policy, iptables"),
]


@pytest.mark.parametrize("keys, prefix, allowed", UNKNOWN_KEYS)
def test_unknown_key_at_every_level(keys, prefix, allowed):
    with pytest.raises(ScenarioError) as caught:
        load(changed((keys + ("Colour",), 1)))
    assert str(caught.value) == f"{prefix}Colour: unknown key (allowed: {allowed})"


# Whole-file problems.


def test_file_not_found(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ScenarioError) as caught:
        load_scenario(missing)
    assert (caught.value.path, str(caught.value)) == ("", f"{missing}: file not found")


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text("name: x\nnodes: [a\nseed: 1\n", "yaml", "bad.yaml")
    assert str(caught.value).startswith("bad.yaml:3:5: invalid YAML: ")


def test_yaml_duplicate_key_names_the_line():
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text("name: x\nseed: 1\nseed: 2\n", "yaml", "dup.yaml")
    assert str(caught.value) == "dup.yaml:3:1: invalid YAML: duplicate key 'seed'"


def test_json_syntax_error_names_the_line():
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text('{"name": "x",\n "seed": }', "json", "bad.json")
    assert str(caught.value) == "bad.json:2:10: invalid JSON: Expecting value"


@pytest.mark.parametrize("text, shown", [("- a\n- b\n", "a list"), ("", "nothing (null)"), ("42", "integer 42")])
def test_top_level_must_be_a_mapping(text, shown):
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "yaml", "top.yaml")
    assert str(caught.value) == f"top.yaml: top level must be a mapping, got {shown}"


# Ping command lines.


def test_ping_full_form():
    assert parse_ping("ping -c 2 -i 0.2 -W 1 10.244.2.2") == PingSpec(
        destination=IPv4Address("10.244.2.2"), count=2, interval=0.2, size=56, ttl=None, timeout=1.0,
        pmtudisc="want", interface=None, quiet=False, command="ping -c 2 -i 0.2 -W 1 10.244.2.2",
    )


# Garbage in, ScenarioError out.


def assert_only_scenario_errors(text: str) -> None:
    for fmt in ("yaml", "json"):
        try:
            load_scenario_text(text, fmt)
        except ScenarioError as error:
            assert "\n" not in str(error)


@given(st.text(max_size=200))
def test_random_text_gives_only_scenario_errors(text):
    assert_only_scenario_errors(text)


KEYS = st.sampled_from(
    ["name", "seed", "net-conf", "nodes", "pods", "ip", "mac", "Network", "Backend", "Type", "traffic", "from",
     "run", "at", "events", "add-node", "remove-node", "subnet", "containers", "cni", "underlay", "mtu"]
) | st.text(max_size=5)
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
    | st.sampled_from(["10.244.1.2", "10.244.1.0/24", "02:42:ac:12:00:0b", "n1", "p1a", "ping -c 1 10.0.0.1", "auto"])
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=25
)


@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_random_documents_give_only_scenario_errors(document):
    assert_only_scenario_errors(json.dumps(document))


def leaf_paths(value, prefix=()):
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return [prefix]
    return [prefix] + [path for key, item in items for path in leaf_paths(item, prefix + (key,))]


REFERENCE_PATHS = leaf_paths(reference())[1:]


@given(st.sampled_from(REFERENCE_PATHS), VALUES)
def test_mutated_reference_gives_only_scenario_errors(keys, value):
    document = copy.deepcopy(reference())
    parent = document
    for key in keys[:-1]:
        parent = parent[key]
    parent[keys[-1]] = value
    assert_only_scenario_errors(json.dumps(document))


# Destinations by name: nodes and pods, resolved when the command starts.

NAMED = """
name: named
net-conf: {Network: 10.244.0.0/16, Backend: {Type: host-gw}}
nodes:
  - name: n1
    pods: [{name: a1}]
  - name: n2
    pods: [{name: b1}]
events:
  - {at: 5, add-node: {name: n3, pods: [{name: c1}]}}
traffic:
  - {from: a1, run: ping -c 1 -W 1 b1}
  - {from: a1, run: ping -c 1 -W 1 n2}
  - {from: a1, run: ping -c 1 -W 1 c1}
"""


def test_ping_destination_may_name_a_node_or_pod():
    scenario = load_scenario_text(NAMED)
    assert [t.ping.destination for t in scenario.traffic] == ["b1", "n2", "c1"]
    assert parse_ping("ping -c 1 p2a").destination == "p2a"


def test_an_unknown_destination_name_is_refused():
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(NAMED.replace("-W 1 n2", "-W 1 n9"))
    assert str(caught.value) == "traffic[1].run: destination 'n9' is not an IPv4 address, node or pod"


def test_names_resolve_to_the_addresses_the_cluster_chose(tmp_path):
    from emu.scenario.run import run_scenario

    result = run_scenario(load_scenario_text(NAMED), tmp_path)
    b1, n2, c1 = result.traffic
    stats = result.stats["namespaces"]
    b1_ip = stats["b1"]["addresses"][-1].split()[-1].split("/")[0]
    assert b1.ping.lines[0].startswith(f"PING b1 ({b1_ip})") and b1.ping.received == 1
    assert n2.ping.lines[0].startswith("PING n2 (172.18.0.2)") and n2.ping.received == 1
    # c1 joins at t=5 s, after this command ran: the name does not resolve yet.
    assert c1.ping.fatal == "ping: c1: Name or service not known"


def test_linger_keeps_the_cluster_running_after_the_last_command(tmp_path):
    from emu.scenario.run import run_scenario

    text = """
name: linger
net-conf: {Network: 10.244.0.0/16, Backend: {Type: vxlan}}
nodes:
  - {name: n1, subnet: 10.244.1.0/24, pods: [{name: a1}, {name: a2}]}
traffic:
  - {from: a1, run: ping -c 1 -W 1 a2}
"""
    assert load_scenario_text(text).linger == 0.0
    short = run_scenario(load_scenario_text(text), tmp_path / "short")
    long = run_scenario(load_scenario_text(text + "linger: 7\n"), tmp_path / "long")
    assert short.end_ns < 10**9 and long.end_ns == short.end_ns + 7 * 10**9
    # a2 learnt a1 from its ARP request (STALE), used it for the reply (DELAY)
    # and, 5 s later with no confirmation, probes it with a unicast request:
    # only a run that keeps going sees it (the kernel does the same).
    assert short.capture_counts["a2_eth0"] + 2 == long.capture_counts["a2_eth0"]
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text + "linger: -1\n")
    assert str(caught.value) == "linger: -1 is not a time (expected a number of seconds >= 0)"
