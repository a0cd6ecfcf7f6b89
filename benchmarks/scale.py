"""`python -m benchmarks.scale --nodes 10,100,1000 --pods 30 --backend vxlan`:
build and run an N-node cluster with one cross-cluster ping, per size.

Each size runs in a fresh subprocess (`emu run` of a generated scenario,
`nodes: {count: N, pods-per-node: P}`, capture on, outputs in a temporary
folder), so its peak RSS is its own. Reported per size: wall and CPU
seconds (build, traffic and outputs, total), peak RSS, what the build
created (routes, neighbours, FDB entries, namespaces), the files written and
their size, and the machine's load average (the machine is shared: CPU
seconds are the emulator's work, wall seconds also count the others').
`--json FILE` and `--plot FILE` (nodes vs seconds and MB, log-log).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.suite import machine_info

BACKENDS = ("vxlan", "host-gw", "udp")


def scenario_text(nodes: int, pods: int, backend: str) -> str:
    """The generated cluster: a /8 Network (65,534 /24 leases) on a /16
    underlay, one ping from the first node's first pod to the last node's
    last pod (or to the last node, without pods)."""
    source, target = ("n1-p1", f"n{nodes}-p{pods}") if pods else ("n1", f"n{nodes}")
    return (f"name: scale-{nodes}x{pods}-{backend}\n"
            f"net-conf: {{Network: 10.0.0.0/8, Backend: {{Type: {backend}}}}}\n"
            "underlay: {subnet: 172.16.0.0/16}\n"
            f"nodes: {{count: {nodes}, pods-per-node: {pods}}}\n"
            f"traffic:\n  - {{from: {source}, run: ping -c 1 {target}}}\n")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_one(nodes: int, pods: int, backend: str) -> dict:
    """Run one size in this process (the subprocess side): phases and counts."""
    import emu.scenario.run as run
    from emu.scenario.loader import load_scenario_text

    phases: dict[str, float] = {}
    built = {}
    start_wall, start_cpu = time.perf_counter(), _cpu()
    scenario = load_scenario_text(scenario_text(nodes, pods, backend), "yaml", "scale.yaml")
    original_build = run.build_cluster

    def timed_build(spec, **options):
        wall, cpu = time.perf_counter(), _cpu()
        emulated = original_build(spec, **options)
        phases["build_wall_s"], phases["build_cpu_s"] = time.perf_counter() - wall, _cpu() - cpu
        built["emulated"] = emulated
        return emulated

    run.build_cluster = timed_build
    try:
        with tempfile.TemporaryDirectory(prefix="emu-scale-") as out:
            result = run.run_scenario(scenario, out)
            files = list(Path(out).iterdir())
            written = {"files": len(files), "bytes": sum(path.stat().st_size for path in files),
                       "stats_json_bytes": (Path(out) / "stats.json").stat().st_size}
    finally:
        run.build_cluster = original_build
    total_wall, total_cpu = time.perf_counter() - start_wall, _cpu() - start_cpu
    ping = result.traffic[0].ping
    return {
        "nodes": nodes, "pods_per_node": pods, "backend": backend,
        "wall_s": total_wall, "cpu_s": total_cpu, **phases,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "created": _created(built["emulated"]), "written": written,
        "ping": {"transmitted": ping.transmitted, "received": ping.received},
        "load_average": os.getloadavg(),
    }


def _created(emulated) -> dict:
    """What the cluster holds: the entries whose number the build cost follows."""
    namespaces = emulated.cluster.namespaces()
    return {
        "namespaces": len(namespaces),
        "routes": sum(len(ns.routes) for ns in namespaces),
        "neighbours": sum(len(table.entries) for ns in namespaces for table in ns.neighbour_tables().values()),
        "vxlan_fdb": sum(len(dev.fdb) for ns in namespaces for dev in ns.devices.values()
                         if getattr(dev, "kind", "") == "vxlan"),
    }


def measure(nodes: int, pods: int, backend: str) -> dict:
    """One size in a fresh interpreter, for an honest peak RSS."""
    command = [sys.executable, "-m", "benchmarks.scale", "--one", str(nodes), "--pods", str(pods),
               "--backend", backend]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(points: list[dict]) -> list[str]:
    lines = [f"{'backend':8} {'nodes':>6} {'pods':>7} {'wall s':>8} {'cpu s':>8} {'build cpu s':>11} "
             f"{'peak MB':>8} {'routes':>10} {'neigh':>10} {'fdb':>10} {'files':>6} {'MB out':>7} {'ping':>5} load"]
    for p in points:
        c, w = p["created"], p["written"]
        lines.append(f"{p['backend']:8} {p['nodes']:6d} {p['nodes'] * p['pods_per_node']:7d} {p['wall_s']:8.1f} "
                     f"{p['cpu_s']:8.1f} {p['build_cpu_s']:11.1f} {p['peak_rss_mb']:8.0f} {c['routes']:10d} "
                     f"{c['neighbours']:10d} {c['vxlan_fdb']:10d} {w['files']:6d} {w['bytes'] / 1e6:7.1f} "
                     f"{p['ping']['received']}/{p['ping']['transmitted']:<3} "
                     + " ".join(f"{x:.1f}" for x in p["load_average"]))
    return lines


def write_plot(points: list[dict], path: Path) -> None:
    """Nodes vs seconds (wall and CPU) and vs peak MB, one line per backend, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (seconds, memory) = pyplot.subplots(1, 2, figsize=(12, 5))
    for number, backend in enumerate(sorted({p["backend"] for p in points})):
        mine = sorted((p for p in points if p["backend"] == backend), key=lambda p: p["nodes"])
        nodes, colour = [p["nodes"] for p in mine], f"C{number}"
        seconds.plot(nodes, [p["wall_s"] for p in mine], marker="o", color=colour, label=f"{backend} wall")
        seconds.plot(nodes, [p["cpu_s"] for p in mine], marker="x", linestyle="--", color=colour,
                     label=f"{backend} CPU")
        memory.plot(nodes, [p["peak_rss_mb"] for p in mine], marker="o", color=colour, label=backend)
    pods = points[0]["pods_per_node"] if points else 0
    seconds.set(title=f"build + one ping, {pods} pods per node", xlabel="nodes", ylabel="seconds",
                xscale="log", yscale="log")
    memory.set(title="peak RSS", xlabel="nodes", ylabel="MB", xscale="log", yscale="log")
    seconds.legend()
    memory.legend()
    machine = machine_info()
    load = max(max(p["load_average"]) for p in points) if points else 0
    figure.suptitle(f"emu scale: {machine['cpu']}, {machine['nproc']} CPUs, "
                    f"{machine['implementation']} {machine['python']} (load average up to {load:.1f})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="10,100,1000", help="comma-separated node counts")
    parser.add_argument("--pods", type=int, default=30, help="pods per node")
    parser.add_argument("--backend", default="vxlan",
                        help=f"comma-separated backends ({', '.join(BACKENDS)})")
    parser.add_argument("--json", type=Path, default=None, help="write the measurements here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the subprocess side
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args.pods, args.backend)))
        return 0
    backends = args.backend.split(",")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"--backend: {', '.join(unknown)} is not one of {', '.join(BACKENDS)}")
    try:
        sizes = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        parser.error(f"--nodes: expected comma-separated integers, got {args.nodes!r}")
    points = []
    print(render([])[0], flush=True)
    for backend in backends:
        for nodes in sizes:
            points.append(measure(nodes, args.pods, backend))
            print(render(points)[-1], flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine_info(), "points": points}, indent=2) + "\n")
    if args.plot is not None:
        write_plot(points, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
