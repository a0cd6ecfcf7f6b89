"""Big clusters: the routing table's index, build cost linear in what it
creates, the generated `nodes: {count, pods-per-node}` form, the condensed
summary and stats.json of a large cluster, bounded open capture files.

Costs are counted in executed lines of Python (sys.settrace), never in
seconds: the count is the same on any machine, and a quadratic step (a scan
of every route per added route) makes the lines each created entry costs
grow with the cluster."""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from emu.capture import pcap
from emu.cli import main
from emu.net.device import NetDevice
from emu.net.namespace import Namespace
from emu.net.route import Route
from emu.scenario.build import build_cluster, fast_path
from emu.scenario.loader import load_scenario_text
from emu.scenario.play import Player
from emu.sim import Scheduler
from emu.wire.addr import ip_from_str


def _generated(nodes: int, pods: int, backend: str = "vxlan", name: str = "big") -> str:
    return (f"name: {name}\nnet-conf: {{Network: 10.0.0.0/8, Backend: {{Type: {backend}}}}}\n"
            f"underlay: {{subnet: 172.16.0.0/16}}\nnodes: {{count: {nodes}, pods-per-node: {pods}}}\n"
            f"traffic:\n  - {{from: n1-p1, run: ping -c 1 n{nodes}-p{pods}}}\n")


def _route(dev, cidr: str, via: str | None = None, metric: int = 0) -> Route:
    network, _, length = cidr.partition("/")
    return Route(ip_from_str(network), int(length), dev, ip_from_str(via) if via else None, metric=metric)


def test_routing_table_longest_prefix_metric_and_listing_order():
    sim = Scheduler()
    ns = Namespace(sim, "n1")
    eth0, eth1 = (ns.add_device(NetDevice(sim, name, mac)) for name, mac in (("eth0", b"\x02" * 6),
                                                                               ("eth1", b"\x04" * 6)))
    table = ns.routes
    generation = ns.generation
    table.add(_route(eth0, "0.0.0.0/0", "10.0.0.1"))
    assert ns.generation > generation  # the fast path's flows through this namespace are stale
    table.add(_route(eth0, "10.1.0.0/16"))
    table.add(_route(eth1, "10.1.2.0/24", metric=20))
    table.add(_route(eth0, "10.1.2.0/24", metric=10))
    with pytest.raises(ValueError, match="exists already"):
        table.add(_route(eth1, "10.1.2.0/24", metric=10))
    with pytest.raises(ValueError, match="host bits set"):
        table.add(_route(eth1, "10.1.2.1/24"))
    dst = ip_from_str("10.1.2.7")
    assert table.lookup(dst).metric == 10  # equal prefixes: the lowest metric
    assert table.lookup(dst, eth1).dev is eth1  # the oif filter passes the metric-10 route over
    eth0.up = False  # the namespace forgets cached lookups
    assert table.lookup(dst).dev is eth1  # a route through a down device is skipped
    assert table.lookup(ip_from_str("10.1.9.9")) is None  # the /16 and the default are on eth0
    eth0.up = True
    assert table.lookup(ip_from_str("10.1.9.9")).prefixlen == 16
    assert table.lookup(ip_from_str("192.0.2.1")).prefixlen == 0
    # As `ip route` lists them: by destination, the default last, one destination's metrics ascending.
    assert table.show() == ["10.1.0.0/16 dev eth0", "10.1.2.0/24 dev eth0 metric 10",
                            "10.1.2.0/24 dev eth1 metric 20", "default via 10.0.0.1 dev eth0"]
    assert table.has_link_route(eth0, ip_from_str("10.1.200.1"))
    assert not table.has_link_route(eth1, ip_from_str("10.1.200.1"))
    generation = ns.generation
    assert table.remove(ip_from_str("10.1.2.0"), 24, eth1) == 1
    assert ns.generation > generation and table.lookup(dst).dev is eth0
    assert table.find(ip_from_str("10.1.2.0"), 24) == [_route(eth0, "10.1.2.0/24", metric=10)]
    assert table.remove(ip_from_str("10.1.2.0"), 24) == 1 and len(table) == 2


def _lines_executed(function) -> int:
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        function()
    finally:
        sys.settrace(None)
    return count


def _created(emulated) -> int:
    """Routes, neighbours and VXLAN FDB entries of every namespace, and the
    udp backend's lease table (its proxy's routes)."""
    total = sum(len(getattr(f.backend, "routes", ())) for f in emulated.flanneld.values())
    for ns in emulated.cluster.namespaces():
        total += len(ns.routes) + sum(len(t.entries) for t in ns.neighbour_tables().values())
        total += sum(len(dev.fdb) for dev in ns.devices.values() if dev.kind == "vxlan")
    return total


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "udp"])
def test_build_cost_is_linear_in_the_entries_it_creates(backend):
    """The lines each extra entry costs stay flat from 20 to 40 to 60 nodes
    (a scan of the routing table per added route makes them grow 16 %)."""
    points = []
    for nodes in (20, 40, 60):
        text = _generated(nodes, 0, backend).replace("n1-p1", "n1").replace(f"n{nodes}-p0", f"n{nodes}")
        scenario = load_scenario_text(text)
        built = {}
        lines = _lines_executed(lambda: built.setdefault("cluster", build_cluster(scenario)))
        points.append((lines, _created(built["cluster"])))
    marginal = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(points, points[1:])]
    assert marginal[1] <= marginal[0] * 1.05, (points, marginal)


def test_traffic_cost_is_linear_in_the_nodes():
    """Three pings across a cluster (the first recorded by the flow cache, the
    others replayed): the lines each extra node costs stay flat from 20 to 40
    to 60 nodes. The underlay ARP floods one event per node; a recorder that
    compared every namespace's counters around each event made it nodes^2."""
    points = []
    for nodes in (20, 40, 60):
        scenario = load_scenario_text(_generated(nodes, 2).replace("ping -c 1", "ping -c 3 -i 0.2"))
        emulated = build_cluster(scenario)
        player = Player(emulated)
        player.play(scenario)
        points.append(_lines_executed(lambda: emulated.sim.run(stop=player.finished)))
        flow_cache = fast_path()  # None with EMU_FASTPATH=off: the slow path alone must be linear too
        assert flow_cache is None or flow_cache(emulated.sim).stats.datagrams_replayed >= 1
    marginal = [b - a for a, b in zip(points, points[1:])]
    assert marginal[1] <= marginal[0] * 1.05, (points, marginal)


def test_generated_nodes_are_the_list_form_by_name():
    generated = load_scenario_text(_generated(3, 2))
    listed = load_scenario_text(_generated(3, 2).replace(
        "nodes: {count: 3, pods-per-node: 2}",
        "nodes:\n" + "".join(f"  - {{name: n{i}, pods: [{{name: n{i}-p1}}, {{name: n{i}-p2}}]}}\n"
                             for i in range(1, 4))))
    assert [n.name for n in generated.nodes] == ["n1", "n2", "n3"]
    assert [[p.name for p in n.pods] for n in generated.nodes] == [["n1-p1", "n1-p2"], ["n2-p1", "n2-p2"],
                                                                   ["n3-p1", "n3-p2"]]
    strip = lambda node: (node.name, node.ip, node.mac, [(p.name, p.host_veth, p.host_veth_mac) for p in node.pods])
    assert [strip(n) for n in generated.nodes] == [strip(n) for n in listed.nodes]
    assert generated.nodes[1].path == "nodes(n2)" and generated.nodes[1].pods[0].path == "nodes(n2).pods[0]"


def test_generated_nodes_check_the_flannel_network():
    text = _generated(300, 1).replace("10.0.0.0/8", "10.244.0.0/16")
    with pytest.raises(Exception, match=r"^nodes.count: 300 nodes need 300 flannel subnets; net-conf.Network "
                                        r"10.244.0.0/16 has 255 /24 leases \(SubnetMin..SubnetMax\)$"):
        load_scenario_text(text)


def test_large_cluster_summary_and_stats(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(_generated(25, 2))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "... and 20 more nodes (25 in all, listed in stats.json)" in result.output
    assert sum(line.startswith("  n") and " subnet " in line for line in result.output.splitlines()) == 5
    assert "1 packets transmitted, 1 received" in result.output
    stats = json.loads((out / "stats.json").read_text())
    assert [line.split()[0] for line in stats["nodes"]] == [f"n{i}" for i in range(1, 26)]
    pcaps = {p.stem for p in out.glob("*.pcap")}
    assert set(stats["captures"]) == pcaps and len(pcaps) > 5
    assert f"... and {len(pcaps) - 5} more capture points ({len(pcaps)} in all" in result.output
    assert stats["flannel"]["added_leases"] == {f"n{i}": 24 for i in range(1, 26)}
    assert not any("added lease" in line for line in stats["flannel"]["log"])
    namespaces = stats["namespaces"]
    senders = {name for name, entry in namespaces.items() if "routes" in entry}
    assert {"n1", "n1-p1", "n25", "n25-p2"} <= senders  # the ping's path has its tables
    assert all(entry["stack"]["sent"] or entry["stack"]["forwarded"]
               or any(dev["tx_packets"] for dev in entry["devices"].values())
               for name, entry in namespaces.items() if name in senders)
    assert "n12-p1" not in namespaces  # a pod that saw nothing
    assert stats["quiet_namespaces"] == 25 * 3 + 1 - len(namespaces)


def test_capture_files_stay_within_the_open_file_limit(tmp_path, monkeypatch):
    """A broadcast reaching every node's eth0 opens a file per node; with
    room for 4 open files the outputs are the same bytes."""
    scenario = load_scenario_text(_generated(25, 1))
    from emu.scenario.run import run_scenario

    run_scenario(scenario, tmp_path / "wide")
    monkeypatch.setattr(pcap.OPEN_FILES, "limit", 4)
    opened = []
    real_open = open

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith((".pcap", ".pcapng")):
            opened.append(handle)
            assert sum(not h.closed for h in opened) <= 4
        return handle

    monkeypatch.setattr("builtins.open", counting_open)
    run_scenario(scenario, tmp_path / "narrow")
    monkeypatch.undo()
    wide = {p.name: p.read_bytes() for p in Path(tmp_path / "wide").iterdir() if p.suffix != ".json"}
    narrow = {p.name: p.read_bytes() for p in Path(tmp_path / "narrow").iterdir() if p.suffix != ".json"}
    assert len(wide) > 25 and wide == narrow


def test_scale_benchmark_measures_each_size_in_a_subprocess(tmp_path):
    from benchmarks import scale

    document, plot = tmp_path / "scale.json", tmp_path / "scale.png"
    assert scale.main(["--nodes", "2,4", "--pods", "2", "--backend", "vxlan,udp",
                       "--json", str(document), "--plot", str(plot)]) == 0
    points = json.loads(document.read_text())["points"]
    assert [(p["backend"], p["nodes"]) for p in points] == [("vxlan", 2), ("vxlan", 4), ("udp", 2), ("udp", 4)]
    vxlan4 = points[1]
    assert vxlan4["created"]["vxlan_fdb"] == 4 * 3 and vxlan4["created"]["neighbours"] >= 4 * 3
    assert vxlan4["ping"] == {"transmitted": 1, "received": 1}
    assert all(p["peak_rss_mb"] > 0 and p["cpu_s"] > 0 for p in points)
    assert plot.stat().st_size > 0
