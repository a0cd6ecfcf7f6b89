"""`emu diagram SCENARIO --format mermaid|dot`: the cluster as built, as text.

Checked against the emulated cluster itself (its nodes, pods and devices,
read from the namespaces, not from the diagram code): every one appears,
each pod's veth pair is one line, flannel's tunnels join every pair of nodes
with a lease; the dot output is laid out by the real Graphviz.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from emu.cli import main
from emu.scenario import load_scenario
from emu.scenario.build import build_cluster

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
SVG = "{http://www.w3.org/2000/svg}"


def cluster_of(path: Path):
    emulated = build_cluster(load_scenario(path))
    cluster = emulated.cluster
    devices = [f"{ns.name}/{dev.name}" for ns in cluster.namespaces() for dev in ns.devices.values()
               if dev.kind != "loopback"]
    return emulated, cluster, devices


def diagram(path: Path, fmt: str) -> str:
    result = CliRunner().invoke(main, ["diagram", str(path), "--format", fmt])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) is not installed")
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_dot_lays_out_every_node_pod_and_device(path):
    emulated, cluster, devices = cluster_of(path)
    svg = subprocess.run(["dot", "-Tsvg"], input=diagram(path, "dot"), capture_output=True, text=True, check=True)
    root = ET.fromstring(svg.stdout)
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    assert {f"node-{n}" for n in cluster.nodes} <= ids
    assert {f"pod-{p}" for p in cluster.pods} <= ids
    assert {f"dev-{d}" for d in devices} <= ids
    edges = [g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]
    for pod in cluster.pods.values():
        assert f"{pod.name}/eth0--{pod.node.name}/{pod.host_veth}" in edges


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_mermaid_names_everything_and_draws_the_tunnels(path):
    emulated, cluster, devices = cluster_of(path)
    text = diagram(path, "mermaid")
    assert text.splitlines()[3] == "flowchart TB"
    subgraphs = re.findall(r"^\s*subgraph (\w+)\[", text, re.M)
    assert sorted(subgraphs) == sorted([f"node_{n}" for n in cluster.nodes] +
                                       [f"pod_{p}" for p in cluster.pods])
    assert text.count("\nend\n") + text.count("  end\n") >= len(subgraphs)
    for device in devices:
        assert re.search(rf"^\s*{re.escape(re.sub(r'[^A-Za-z0-9_]', '_', device))}\[", text, re.M), device
    wires = re.findall(r"^\s*(\w+) --- (\w+)$", text, re.M)
    for pod in cluster.pods.values():
        assert (f"{pod.name}_eth0", f"{pod.node.name}_{pod.host_veth}") in wires
    tunnels = re.findall(r'^\s*(\w+) -\. "([^"]*)" \.- (\w+)$', text, re.M)
    backend = emulated.scenario.net_conf.backend.type
    nodes = len(cluster.nodes)
    across = [t for t in tunnels if t[1] != "encap"]
    assert len(across) == nodes * (nodes - 1) // 2
    if backend == "vxlan" and nodes > 1:
        assert across[0][1] == f"VXLAN vni {emulated.scenario.net_conf.backend.vni} udp 8472"


def test_bad_scenario_and_format_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nnodes: []\nnet-conf: {Network: 10.244.0.0/16}\n")
    result = CliRunner().invoke(main, ["diagram", str(broken)])
    assert result.exit_code == 2 and result.output.strip() == "emu: error: nodes: at least one node is required"
    result = CliRunner().invoke(main, ["diagram", str(EXAMPLES[0]), "--format", "png"])
    assert result.exit_code == 2 and "'png' is not one of 'mermaid', 'dot'" in result.output
