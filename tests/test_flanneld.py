"""flanneld inside a run: lease life cycle, lease JSON, renewal, exhaustion, subnet.env.

Every expected value here is written down from flannel's source
(pkg/subnet/etcd/local_manager.go, pkg/lease/lease.go, pkg/subnet/subnet.go)
or from the scenario text itself, never read back from the emulator.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from click.testing import CliRunner

from emu.cli import main as emu_main
from emu.flannel.leases import subnet_key
from emu.scenario import load_scenario_text
from emu.scenario.build import build_cluster
from emu.scenario.run import run_scenario

HOUR_NS = 3600 * 10**9
BACKENDS = {"vxlan": "{Type: vxlan}", "host-gw": "{Type: host-gw}", "udp": "{Type: udp}"}


def random_lease_yaml(seed: int) -> str:
    """Three nodes that let flannel pick their subnet in 10.244.10.0 .. 10.244.20.0."""
    return f"""
name: leases
seed: {seed}
net-conf:
  Network: 10.244.0.0/16
  SubnetMin: 10.244.10.0
  SubnetMax: 10.244.20.0
  Backend: {{Type: host-gw}}
nodes:
  - {{name: n1}}
  - {{name: n2}}
  - {{name: n3}}
"""


def leased_subnets(seed: int, tmp_path) -> dict[str, IPv4Network]:
    """node public IP -> leased subnet, read from stats.json's lease keys."""
    out = tmp_path / f"seed{seed}"
    run_scenario(load_scenario_text(random_lease_yaml(seed)), out)
    leases = json.loads((out / "stats.json").read_text())["flannel"]["leases"]
    result = {}
    for key, value in leases.items():
        address, _, length = key.rpartition("/")[2].rpartition("-")
        result[value["PublicIP"]] = IPv4Network(f"{address}/{length}")
    return result


def test_unrequested_leases_are_random_inside_subnet_min_max(tmp_path):
    subnets = leased_subnets(7, tmp_path)
    assert sorted(subnets) == ["172.18.0.1", "172.18.0.2", "172.18.0.3"]
    assert len(set(subnets.values())) == 3
    for subnet in subnets.values():
        assert subnet.prefixlen == 24
        assert 10 <= subnet.network_address.packed[2] <= 20
        assert subnet.network_address.packed[3] == 0


def test_same_seed_same_leases_other_seeds_differ(tmp_path):
    first = leased_subnets(3, tmp_path)
    assert leased_subnets(3, tmp_path / "again") == first
    picks = {tuple(sorted(map(str, leased_subnets(seed, tmp_path).values()))) for seed in range(6)}
    assert len(picks) > 1, "every seed picked the same subnets: the pick is not random"
    in_order = ("10.244.10.0/24", "10.244.11.0/24", "10.244.12.0/24")
    assert picks != {in_order}, "flannel picks at random among free subnets, not the first ones"


REFERENCE_NODES = """
nodes:
  - {name: n1, ip: 172.18.0.11, subnet: 10.244.1.0/24, vtep-mac: "6e:2d:54:00:01:01"}
  - {name: n2, ip: 172.18.0.12, subnet: 10.244.2.0/24, vtep-mac: "6e:2d:54:00:02:02"}
"""
HOST_GW_NODES = """
nodes:
  - {name: n1, ip: 172.18.0.11, subnet: 10.244.1.0/24}
  - {name: n2, ip: 172.18.0.12, subnet: 10.244.2.0/24}
"""


def test_lease_json_is_flannels_for_vxlan(tmp_path):
    text = "name: j\nnet-conf: {Network: 10.244.0.0/16, Backend: {Type: vxlan, VNI: 1, Port: 8472}}\n"
    scenario = load_scenario_text(text + REFERENCE_NODES)
    run_scenario(scenario, tmp_path)
    leases = json.loads((tmp_path / "stats.json").read_text())["flannel"]["leases"]
    assert leases == {
        "/coreos.com/network/subnets/10.244.1.0-24": {
            "PublicIP": "172.18.0.11", "PublicIPv6": None, "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": "6e:2d:54:00:01:01"}},
        "/coreos.com/network/subnets/10.244.2.0-24": {
            "PublicIP": "172.18.0.12", "PublicIPv6": None, "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": "6e:2d:54:00:02:02"}},
    }
    stored = build_cluster(scenario).store.get(subnet_key(IPv4Network("10.244.1.0/24")), 0)
    # Go's json.Marshal of lease.LeaseAttrs: compact, struct field order,
    # PublicIPv6 (no omitempty) as null.
    assert stored.value == ('{"PublicIP":"172.18.0.11","PublicIPv6":null,"BackendType":"vxlan",'
                            '"BackendData":{"VNI":1,"VtepMAC":"6e:2d:54:00:01:01"}}')


def test_lease_json_is_flannels_for_host_gw():
    text = "name: j\nnet-conf: {Network: 10.244.0.0/16, Backend: {Type: host-gw}}\n"
    emulated = build_cluster(load_scenario_text(text + HOST_GW_NODES))
    stored = emulated.store.get(subnet_key(IPv4Network("10.244.2.0/24")), 0)
    # host-gw has no BackendData: the omitempty key is absent.
    assert stored.value == '{"PublicIP":"172.18.0.12","PublicIPv6":null,"BackendType":"host-gw"}'


def test_lease_json_is_flannels_for_udp():
    # flannel's udp backend registers LeaseAttrs{PublicIP} only: BackendType
    # is empty and omitted, like BackendData.
    text = "name: j\nnet-conf: {Network: 10.244.0.0/16, Backend: {Type: udp}}\n"
    emulated = build_cluster(load_scenario_text(text + HOST_GW_NODES))
    stored = emulated.store.get(subnet_key(IPv4Network("10.244.2.0/24")), 0)
    assert stored.value == '{"PublicIP":"172.18.0.12","PublicIPv6":null}'


def test_vxlan_ignores_a_lease_of_another_backend_type():
    text = "name: j\nnet-conf: {Network: 10.244.0.0/16, Backend: {Type: vxlan}}\n"
    emulated = build_cluster(load_scenario_text(text + HOST_GW_NODES))
    emulated.manager.acquire_lease(IPv4Address("172.18.0.99"), "host-gw", None, 0,
                                   requested=IPv4Network("10.244.9.0/24"))
    n1 = emulated.cluster.nodes["n1"].ns
    assert not any("10.244.9.0" in line for line in n1.show_routes())
    assert any("ignoring non-vxlan subnet 10.244.9.0/24: type=host-gw" in line
               for line in emulated.flanneld["n1"].log)


def test_lease_is_renewed_one_hour_before_its_24_hour_expiry():
    text = "name: r\nnet-conf: {Network: 10.244.0.0/16, Backend: {Type: vxlan}}\n"
    emulated = build_cluster(load_scenario_text(text + REFERENCE_NODES))
    key = subnet_key(IPv4Network("10.244.1.0/24"))
    assert emulated.store.get(key, 0).expires_ns == 24 * HOUR_NS
    emulated.sim.run(until_ns=23 * HOUR_NS - 1)
    assert emulated.store.get(key, emulated.sim.now_ns).expires_ns == 24 * HOUR_NS
    emulated.sim.run(until_ns=23 * HOUR_NS)
    assert emulated.store.get(key, emulated.sim.now_ns).expires_ns == 47 * HOUR_NS
    assert emulated.flanneld["n1"].lease.expires_ns == 47 * HOUR_NS
    emulated.sim.run(until_ns=50 * HOUR_NS)  # second renewal at 46 h
    assert emulated.store.get(key, emulated.sim.now_ns).expires_ns == 70 * HOUR_NS
    # The renewal only refreshes the TTL: n2 still routes to n1's subnet.
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in emulated.cluster.nodes["n2"].ns.show_routes()


def test_exhausted_network_is_a_one_line_error_with_exit_code_2(tmp_path):
    scenario = tmp_path / "full.yaml"
    scenario.write_text("""
name: full
net-conf: {Network: 10.244.0.0/22, SubnetLen: 24, Backend: {Type: vxlan}}
nodes: [{name: n1}, {name: n2}, {name: n3}, {name: n4}]
""")
    result = CliRunner().invoke(emu_main, ["run", str(scenario), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    # /22 holds four /24s; flannel skips the first, so three nodes fit.
    assert lines[0].startswith("emu: error: nodes[3]")
    assert "n4" in lines[0] and "no free subnet" in lines[0]
    assert "Traceback" not in result.output


def test_net_conf_without_backend_uses_udp_and_says_so(tmp_path):
    scenario = load_scenario_text("""
name: nobackend
net-conf: {Network: 10.244.0.0/16}
nodes:
  - {name: n1, subnet: 10.244.1.0/24, pods: [{name: p1}]}
  - {name: n2, subnet: 10.244.2.0/24, pods: [{name: p2}]}
traffic:
  - {from: p1, run: ping -c 1 -W 1 10.244.2.2}
""")
    result = run_scenario(scenario, tmp_path)
    assert any("no Backend" in note and "udp" in note for note in result.notes)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["notes"] == result.notes
    assert "flannel0" in stats["namespaces"]["n1"]["devices"]
    assert "10.244.0.0/16 dev flannel0" in stats["namespaces"]["n1"]["routes"]
    assert result.traffic[0].ping.received == 1
    assert "FLANNEL_MTU=1472\n" in stats["flannel"]["subnet_env"]["n1"]


@pytest.mark.parametrize("backend, mtu", [("vxlan", 1450), ("udp", 1472), ("host-gw", 1500)])
def test_subnet_env_is_flannels_file(tmp_path, backend, mtu):
    scenario = load_scenario_text(f"""
name: env
net-conf: {{Network: 10.244.0.0/16, Backend: {BACKENDS[backend]}}}
nodes:
  - {{name: n1, subnet: 10.244.1.0/24, pods: [{{name: p1}}]}}
  - {{name: n2, subnet: 10.244.2.0/24}}
""")
    run_scenario(scenario, tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["flannel"]["subnet_env"]["n2"] == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.2.1/24\n"
        f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n")
    # The CNI plugin configures the bridge, the veths and the pod with it.
    emulated = build_cluster(scenario)
    node = emulated.cluster.nodes["n1"]
    assert node.ns.devices["cni0"].mtu == mtu
    assert emulated.cluster.pods["p1"].ns.devices["eth0"].mtu == mtu
