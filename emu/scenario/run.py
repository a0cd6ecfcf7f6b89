"""Run a scenario: build the cluster, capture every interface, play the
traffic and cluster events on the virtual clock (play.py), write the outputs.

Outputs (directly in `out_dir`): `<ns>_<ifname>.pcap` for every interface
that saw traffic, `all.pcapng` with every capture point named, and
`stats.json` with per-device counters, drop reasons and the final tables
(routes, neighbours, bridge FDBs, flannel leases, subnet.env). Captures
behave like tcpdump: capturing a bridge puts it in promiscuous mode, so a
cni0 capture shows every frame the bridge forwards, as in the kernel's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from emu.capture import CaptureSet
from emu.flannel.leases import SUBNETS_PREFIX, decode_lease
from emu.net import Bridge, Namespace, PingResult
from emu.scenario.build import EmulatedCluster, build_cluster
from emu.scenario.describe import describe_interface
from emu.scenario.model import Scenario
from emu.scenario.play import Player, TrafficResult
from emu.sim import seconds

OWN_OUTPUTS = ("*.pcap", "all.pcapng", "stats.json")


@dataclass
class RunResult:
    scenario: Scenario
    out_dir: Path | None
    traffic: list[TrafficResult] = field(default_factory=list)
    capture_counts: dict[str, int] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    end_ns: int = 0


class Captures:
    """Attaches a capture point to every device of every node and pod.

    `capture_set` is a CaptureSet or anything with its `point(namespace,
    ifname, linktype, description)` method returning a tap (the Python API
    keeps frames in memory that way)."""

    def __init__(self, capture_set: CaptureSet, emulated: EmulatedCluster) -> None:
        self.set = capture_set
        self.emulated = emulated
        self.tapped: set[int] = set()

    def attach_all(self) -> None:
        for ns in self.emulated.cluster.namespaces():
            for dev in list(ns.devices.values()):
                self._attach(ns, dev)

    def _attach(self, ns: Namespace, dev) -> None:
        if id(dev) in self.tapped:
            return
        self.tapped.add(id(dev))
        point = self.set.point(ns.name, dev.name, dev.linktype, self._describe(ns, dev))
        dev.taps.append(point)  # a tap; the flow cache hands it whole levels
        if isinstance(dev, Bridge):
            dev.promiscuous = True

    def _describe(self, ns: Namespace, dev) -> str:
        return describe_interface(self.emulated.cluster, ns, dev)


_Captures = Captures  # the name tests know


def clear_outputs(out_dir: Path) -> None:
    """Remove the files a previous run wrote (and nothing else)."""
    for pattern in OWN_OUTPUTS:
        for path in out_dir.glob(pattern):
            path.unlink()


def run_scenario(scenario: Scenario, out_dir: str | Path | None, capture: bool = True,
                 setup: Callable[[EmulatedCluster, CaptureSet | None], None] | None = None) -> RunResult:
    """Run `scenario`; with `out_dir` None (or capture off) nothing is written.

    `setup(emulated, capture_set)` runs once the cluster is built and
    captured, before any traffic: where an upper layer attaches an observer
    (emu.explain's tracer) and annotates the merged pcapng."""
    emulated = build_cluster(scenario)
    sim = emulated.sim
    result = RunResult(scenario, Path(out_dir) if out_dir is not None else None)
    captures = None
    capture_set = None
    if capture and result.out_dir is not None:
        result.out_dir.mkdir(parents=True, exist_ok=True)
        clear_outputs(result.out_dir)
        capture_set = CaptureSet(result.out_dir, buffered=True, epoch_ns=sim.epoch_ns)
        sim.on_advance.append(capture_set.flush)
        captures = Captures(capture_set, emulated)
        captures.attach_all()

    if setup is not None:
        setup(emulated, capture_set)
    player = Player(emulated)
    if captures is not None:
        player.on_nodes_changed.append(captures.attach_all)
    player.play(scenario)

    try:
        sim.run(stop=player.finished)
        player.stop_all()
        if scenario.linger:
            sim.run(until_ns=sim.now_ns + seconds(scenario.linger))
    except BaseException:
        if capture_set is not None:
            capture_set.close()  # an interrupted run still leaves readable files
        raise
    finish_result(emulated, player, result)
    close_store = getattr(emulated.store, "close", None)
    if close_store is not None:
        close_store()
    if capture_set is not None:
        capture_set.close()
        result.capture_counts = {k: v for k, v in capture_set.counts().items() if v}
        (result.out_dir / "stats.json").write_text(json.dumps(result.stats, indent=2, sort_keys=True) + "\n")
    return result


def finish_result(emulated: EmulatedCluster, player: Player, result: RunResult) -> None:
    """Fill `result` from the player and the cluster as they are now: the
    commands' results in the order given, the summary's notes (with flanneld's
    complaints and the store's), the stats.json document."""
    result.traffic = player.ordered_results()
    result.nodes = list(player.nodes)
    result.end_ns = emulated.sim.now_ns
    result.notes = [*player.notes,
                    *(line for flanneld in emulated.flanneld.values() for line in flanneld.log
                      if "cannot" in line or "no valid" in line),
                    *store_notes(emulated)]
    result.stats = collect_stats(emulated, result)


def traffic_entry(item: TrafficResult) -> dict:
    """One process in stats.json: what it printed and how it ended."""
    process = item.result
    who = item.spec.source + (f"/{item.spec.container}" if item.spec.container else "")
    entry = {"from": who, "command": item.spec.command,
             "exit_status": process.exit_status, "stopped": process.stopped}
    if isinstance(process, PingResult):
        entry.update(transmitted=process.transmitted, received=process.received,
                     errors=process.errors, output=process.lines)
    else:
        entry.update(output=process.lines,
                     stdout=bytes(process.stdout).decode("utf-8", errors="backslashreplace"),
                     stdout_bytes=len(process.stdout), stderr=process.stderr)
    return entry


def collect_stats(emulated: EmulatedCluster, result: RunResult) -> dict:
    """The stats.json document: counters, drops and final tables per namespace."""
    namespaces = {}
    for ns in [*emulated.cluster.namespaces(), emulated.cluster.underlay]:
        entry = ns.stats()
        entry["addresses"] = ns.show_addresses()
        entry["routes"] = ns.show_routes()
        entry["neighbours"] = ns.show_neighbours()
        bridges = {dev.name: dev.fdb.show(dev.name, ns.sim.now_ns)
                   for dev in ns.devices.values() if isinstance(dev, Bridge)}
        if bridges:
            entry["fdb"] = bridges
        vxlan_fdb = [line for dev in ns.devices.values() if hasattr(dev, "fdb_show")
                     for line in dev.fdb_show()]
        if vxlan_fdb:
            entry["vxlan_fdb"] = vxlan_fdb
        namespaces[ns.name] = entry
    now = emulated.sim.now_ns
    return {
        "scenario": emulated.scenario.name,
        "virtual_time_s": now / 1e9,
        "notes": result.notes,
        "traffic": [traffic_entry(t) for t in result.traffic],
        "flannel": {
            "leases": lease_table(emulated, now),
            "subnet_env": {name: f.subnet_env for name, f in emulated.flanneld.items()},
            "log": [line for f in emulated.flanneld.values() for line in f.log],
        },
        "namespaces": namespaces,
        **({"store": emulated.store.describe()} if hasattr(emulated.store, "describe") else {}),
    }


def lease_table(emulated: EmulatedCluster, now: int) -> dict:
    """Every readable lease by its key as the store holds it (etcd: with its prefix)."""
    remote = getattr(emulated.store, "remote_key", lambda key: key)
    table = {}
    for entry in emulated.store.list(SUBNETS_PREFIX, now):
        if decode_lease(entry) is not None:  # a malformed one is named in the notes
            table[remote(entry.key)] = json.loads(entry.value)
    return table


def store_notes(emulated: EmulatedCluster) -> list[str]:
    """What the run summary says about a real etcd: skipped keys, a lost server."""
    describe = getattr(emulated.store, "describe", None)
    if describe is None:
        return []
    store = describe()
    notes = [f"etcd: skipped malformed lease {key}" for key in store["malformed_leases"]]
    if store["lost"]:
        notes.append(f"etcd: store lost during the run ({store['lost']}); leases already read were kept")
    return notes
