"""`emu import`: scenarios written from a real cluster's state (Node objects and
the kube-flannel ConfigMap, a live etcd, one node's subnet.env), the comments
naming what could not be mapped, one-line errors for bad input, and the
imported 3-node cluster matching the kernel live."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emu.kernel.live import kernel_unavailable
from emu.scenario import load_scenario_text
from emu.scenario.run import run_scenario
from helpers_etcd import UNAVAILABLE as ETCD_UNAVAILABLE, etcd_server

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "import-fixtures"
NODES, PODS, CONFIGMAP = FIXTURES / "nodes.json", FIXTURES / "pods.json", FIXTURES / "kube-flannel-cfg.yaml"


def emu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True, text=True, cwd=ROOT)


def with_traffic(text: str, *lines: str) -> str:
    return text.replace("traffic: []\n", "traffic:\n" + "".join(f"  - {line}\n" for line in lines), 1)


def test_kube_import_maps_every_node_and_pod_from_the_api_objects(tmp_path):
    done = emu("import", "--kube", str(NODES), "--net-conf", str(CONFIGMAP), "--pods", str(PODS),
               "-o", str(tmp_path / "s.yaml"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "s.yaml").read_text()
    document = yaml.safe_load(text)
    api_nodes = json.loads(NODES.read_text())["items"]
    assert [node["ip"] for node in document["nodes"]] == \
        [n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"] for n in api_nodes]
    assert [node["subnet"] for node in document["nodes"]] == [n["spec"]["podCIDR"] for n in api_nodes]
    assert [node["vtep-mac"] for node in document["nodes"]] == \
        [json.loads(n["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"])["VtepMAC"].lower()
         for n in api_nodes]
    assert [node["name"] for node in document["nodes"]] == ["control-plane", "worker-1", "worker-2-lab-internal"]
    pods = {pod["name"]: (node["name"], pod["ip"]) for node in document["nodes"] for pod in node.get("pods", [])}
    assert pods == {"coredns-7c65d6cfc9-9z8xq": ("control-plane", "10.244.0.2"),
                    "web-0": ("worker-1", "10.244.1.5"), "web-1": ("worker-2-lab-internal", "10.244.2.7")}
    assert document["net-conf"] == {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"},
                                    "SubnetMin": "10.244.0.0"}
    assert document["underlay"] == {"subnet": "172.18.0.0/24", "mtu": 1500}
    assert document["cni"] == {"hairpinMode": True}
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any("EnableNFTables = false" in line for line in comments)
    assert sum("flannel.alpha.coreos.com/kube-subnet-manager" in line for line in comments) == 3
    assert any("'worker-2.lab.internal' written as 'worker-2-lab-internal'" in line for line in comments)
    assert any("kube-flannel-ds-7xkq2): hostNetwork pod" in line for line in comments)
    assert "wrote" in done.stderr and "3 nodes, 3 pods" in done.stderr


def test_imported_cluster_runs_every_pod_reaching_every_other(tmp_path):
    text = emu("import", "--kube", str(NODES), "--net-conf", str(CONFIGMAP), "--pods", str(PODS)).stdout
    pods = ["coredns-7c65d6cfc9-9z8xq", "web-0", "web-1"]
    lines = [f"{{from: {a}, run: ping -c 1 -W 1 {b}}}" for a in pods for b in pods if a != b]
    result = run_scenario(load_scenario_text(with_traffic(text, *lines)), None, capture=False)
    assert [item.ping.received for item in result.traffic] == [1] * len(lines)


@pytest.mark.skipif(kernel_unavailable() is not None, reason=f"kernel runs: {kernel_unavailable()}")
def test_imported_kube_cluster_matches_the_kernel(tmp_path):
    text = emu("import", "--kube", str(NODES), "--net-conf", str(CONFIGMAP), "--pods", str(PODS)).stdout
    scenario = tmp_path / "imported.yaml"
    scenario.write_text(with_traffic(text, "{from: web-0, run: ping -c 2 -i 0.2 -W 1 web-1}",
                                     "{from: control-plane, run: ping -c 1 -W 1 coredns-7c65d6cfc9-9z8xq}"))
    done = emu("verify", "--kernel", str(scenario))
    assert done.returncode == 0, done.stdout + done.stderr
    points = re.search(r"fidelity: (\d+)/(\d+) points match", done.stdout)
    assert points and points[1] == points[2] and int(points[2]) >= 10


def test_subnet_env_import_infers_the_backend_from_the_mtu(tmp_path):
    for mtu, backend in ((1450, "vxlan"), (1472, "udp"), (1500, "host-gw")):
        env = tmp_path / f"subnet-{mtu}.env"
        env.write_text(f"FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_MTU={mtu}\n"
                       "FLANNEL_IPMASQ=true\n")
        done = emu("import", "--subnet-env", str(env), "--public-ip", "192.168.56.10")
        assert done.returncode == 0, done.stderr
        document = yaml.safe_load(done.stdout)
        assert document["net-conf"]["Backend"] == {"Type": backend}
        assert document["nodes"] == [{"name": "node", "ip": "192.168.56.10", "subnet": "10.5.34.0/24"}]
        assert document["underlay"]["mtu"] == 1500
        assert "FLANNEL_IPMASQ=true (flannel's masquerade is not modelled)" in done.stdout
        scenario = load_scenario_text(with_traffic(done.stdout, "{from: node, run: ping -c 1 10.5.34.0}"))
        assert scenario.nodes[0].subnet.with_prefixlen == "10.5.34.0/24"


@pytest.mark.skipif(ETCD_UNAVAILABLE is not None, reason=ETCD_UNAVAILABLE or "")
def test_etcd_import_reads_flannels_config_and_leases(tmp_path):
    with etcd_server() as server:
        def etcdctl(*args):
            return subprocess.run(["etcdctl", "--endpoints", server.url, *args], check=True, capture_output=True,
                                  text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}).stdout
        etcdctl("put", "/coreos.com/network/config",
                '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"GBP":true}}')
        for index, subnet in ((11, "10.244.37.0-24"), (12, "10.244.81.0-24")):
            lease = etcdctl("lease", "grant", "86400").split()[1]
            etcdctl("put", "--lease", lease, f"/coreos.com/network/subnets/{subnet}",
                    json.dumps({"PublicIP": f"172.18.0.{index}", "PublicIPv6": None, "BackendType": "vxlan",
                                "BackendData": {"VNI": 1, "VtepMAC": f"6e:2d:54:00:0{index - 10}:0{index - 10}"}},
                               separators=(",", ":")))
        etcdctl("put", "/coreos.com/network/subnets/10.244.90.0-24", "garbage")
        done = emu("import", "--etcd", server.url)
    assert done.returncode == 0, done.stderr
    document = yaml.safe_load(done.stdout)
    assert [(n["name"], n["ip"], n["subnet"], n["vtep-mac"]) for n in document["nodes"]] == [
        ("lease-10-244-37-0-24", "172.18.0.11", "10.244.37.0/24", "6e:2d:54:00:01:01"),
        ("lease-10-244-81-0-24", "172.18.0.12", "10.244.81.0/24", "6e:2d:54:00:02:02")]
    assert document["net-conf"]["Backend"] == {"Type": "vxlan", "VNI": 1}
    assert "Backend.GBP = true (not modelled by emu)" in done.stdout
    assert "/coreos.com/network/subnets/10.244.90.0-24: malformed lease, skipped" in done.stdout
    text = with_traffic(done.stdout, "{from: lease-10-244-37-0-24, run: ping -c 1 -W 1 10.244.81.0}")
    result = run_scenario(load_scenario_text(text), None, capture=False)
    assert result.traffic[0].ping.received == 1


@pytest.mark.parametrize("args, message", [
    (["--kube", "{NODES}"], "emu: error: import: --kube needs --net-conf FILE (net-conf.json or the kube-flannel ConfigMap)"),
    (["--kube", "{NODES}", "--net-conf", "{CONFIGMAP}", "--subnet-env", "x"],
     "emu: error: import: give exactly one of --etcd URL, --kube NODES.json, --subnet-env FILE"),
    (["--kube", "{NO_PODCIDR}", "--net-conf", "{CONFIGMAP}"],
     "emu: error: {NO_PODCIDR}: items[1].spec.podCIDR: missing: flannel's kube subnet manager needs every "
     "node's podCIDR"),
    (["--kube", "{NODES}", "--net-conf", "{NOT_JSON}"], "emu: error: {NOT_JSON}: is neither JSON nor YAML (line 1)"),
    (["--kube", "{NODES}", "--net-conf", "{BARE_CM}"],
     "emu: error: {BARE_CM}: data.net-conf.json: missing: the kube-flannel ConfigMap holds "
     "net-conf.json there"),
    (["--kube", "{MISSING}", "--net-conf", "{CONFIGMAP}"], "emu: error: {MISSING}: cannot read the node list: "
     "No such file or directory"),
    (["--etcd", "http://127.0.0.1:9"], "emu: error: --etcd: cannot reach etcd at http://127.0.0.1:9: "
     "connection refused"),
])
def test_bad_import_input_is_one_line_naming_the_file_and_field(tmp_path, args, message):
    nodes = json.loads(NODES.read_text())
    del nodes["items"][1]["spec"]["podCIDR"]
    files = {"NODES": NODES, "CONFIGMAP": CONFIGMAP, "MISSING": tmp_path / "missing.json",
             "NO_PODCIDR": tmp_path / "no-podcidr.json", "NOT_JSON": tmp_path / "bad.json",
             "BARE_CM": tmp_path / "cm.yaml"}
    files["NO_PODCIDR"].write_text(json.dumps(nodes))
    files["NOT_JSON"].write_text("{: [\n")
    files["BARE_CM"].write_text("kind: ConfigMap\ndata: {}\n")
    paths = {name: str(path) for name, path in files.items()}
    done = emu("import", *[arg.format(**paths) for arg in args])
    expected = message.format(**paths)
    assert done.returncode == 2
    assert done.stderr.strip() == expected
    assert done.stdout == ""


def test_nodes_sharing_a_long_name_prefix_get_underlay_ports_of_their_own():
    """Imported node names are often long and alike (worker-node-1, worker-node-2):
    the underlay port names must still differ and fit IFNAMSIZ."""
    text = ("net-conf: {Network: 10.244.0.0/16, Backend: {Type: vxlan}}\n"
            "nodes: [{name: worker-node-1, pods: [{name: a}]}, {name: worker-node-2, pods: [{name: b}]}]\n"
            "traffic: [{from: a, run: ping -c 1 -W 1 b}]\n")
    result = run_scenario(load_scenario_text(text), None, capture=False)
    assert result.traffic[0].ping.received == 1
    ports = sorted(result.stats["namespaces"]["ul"]["devices"])
    assert len(ports) == len(set(ports)) >= 3 and all(len(name) <= 15 for name in ports)
