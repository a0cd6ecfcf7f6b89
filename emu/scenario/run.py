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

import gc
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
from emu.scenario.outputs import OutputFolder
from emu.scenario.play import Player, TrafficResult
from emu.sim import seconds

LARGE_CLUSTER_NODES = 20
"""Above this many nodes a cluster is large: the run summary shows counts and
the first few nodes and capture points, and stats.json holds the full lists
("nodes", "captures") but the counters only of namespaces where something
happened and the tables (routes, neighbours, FDBs) only of those that sent,
with the per-lease "added lease" lines of flannel's log counted, not listed:
every node holds a route, a neighbour, an FDB entry and a log line per
other node, 25 million of each at 5,000 nodes."""


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
    interrupted: str | None = None  # the signal that stopped the run early
    written: list[str] = field(default_factory=list)  # the files in out_dir, as written


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


def run_scenario(scenario: Scenario, out_dir: str | Path | None, capture: bool = True,
                 setup: Callable[[EmulatedCluster, CaptureSet | None], None] | None = None,
                 interrupted: Callable[[], str | None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Run `scenario`; with `out_dir` None (or capture off) nothing is written.

    `setup(emulated, capture_set)` runs once the cluster is built and
    captured, before any traffic: where an upper layer attaches an observer
    (emu.explain's tracer) and annotates the merged pcapng.

    `interrupted()` names a signal once the run should stop (SIGINT): the
    run ends with the virtual instant it is in, stops what still runs, and
    writes everything, marked interrupted. `progress(now_ns, frames)` is
    called now and then (every PROGRESS_INSTANTS instants) with the virtual
    time reached and the frames captured so far.

    Output files are staged and moved into place at the end, touching only
    files emu wrote before (emu/scenario/outputs.py)."""
    emulated = build_cluster(scenario, freeze=True)
    try:
        return _run_built(emulated, scenario, out_dir, capture, setup, interrupted, progress)
    finally:
        gc.unfreeze()  # the cluster's objects are the collector's again


def _run_built(emulated: EmulatedCluster, scenario: Scenario, out_dir: str | Path | None, capture: bool,
               setup: Callable[[EmulatedCluster, CaptureSet | None], None] | None,
               interrupted: Callable[[], str | None] | None,
               progress: Callable[[int, int], None] | None) -> RunResult:
    sim = emulated.sim
    result = RunResult(scenario, Path(out_dir) if out_dir is not None else None)
    captures = None
    capture_set = None
    folder = None
    if capture and result.out_dir is not None:
        folder = OutputFolder(result.out_dir)
        staging = folder.open([f"{ns.name}_{dev.name}.pcap" for ns in emulated.cluster.namespaces()
                               for dev in ns.devices.values()])
        # Buffered, and not flushed per instant: the files are staged and only
        # move into place once closed (an interrupted run closes them too), so
        # nobody reads them half written; a file writes itself out past
        # RecordFile.MAX_PENDING bytes, and replays may be deferred into
        # batches (CaptureSet.defer).
        capture_set = CaptureSet(staging, buffered=True, epoch_ns=sim.epoch_ns)
        captures = Captures(capture_set, emulated)
        captures.attach_all()
    if progress is not None:
        sim.on_advance.append(_progress_hook(sim, capture_set, progress))

    if setup is not None:
        setup(emulated, capture_set)
    player = Player(emulated)
    if captures is not None:
        player.on_nodes_changed.append(captures.attach_all)
    player.play(scenario)

    def instant_done() -> bool:
        following = sim.next_time()
        return following is None or following > sim.now_ns

    def stop() -> bool:
        if interrupted is not None and interrupted() and instant_done():
            return True
        return player.finished()

    try:
        sim.run(stop=stop)
        signal_name = interrupted() if interrupted is not None else None
        if signal_name:
            result.interrupted = signal_name
            player.notes.append(f"t={sim.now_ns / 1e9:g}s: interrupted ({signal_name}); "
                                "what still ran was stopped")
        player.stop_all(interrupted=bool(signal_name))
        if scenario.linger and not signal_name:
            sim.run(until_ns=sim.now_ns + seconds(scenario.linger))
    except BaseException:
        if capture_set is not None:
            capture_set.close()
            folder.discard()  # the previous run's files stay as they were
        raise
    if capture_set is not None:
        capture_set.close()
        result.capture_counts = {k: v for k, v in capture_set.counts().items() if v}
    finish_result(emulated, player, result)
    close_store = getattr(emulated.store, "close", None)
    if close_store is not None:
        close_store()
    if capture_set is not None:
        (folder.staging / "stats.json").write_text(json.dumps(result.stats, indent=2, sort_keys=True) + "\n")
        result.written = folder.commit()
    return result


PROGRESS_INSTANTS = 512


def _progress_hook(sim, capture_set: CaptureSet | None, progress: Callable[[int, int], None]):
    """An on_advance hook calling `progress` every PROGRESS_INSTANTS instants."""
    instants = [0]

    def hook() -> None:
        instants[0] += 1
        if instants[0] % PROGRESS_INSTANTS == 0:
            frames = sum(capture_set.counts().values()) if capture_set is not None else 0
            progress(sim.now_ns, frames)

    return hook


def finish_result(emulated: EmulatedCluster, player: Player, result: RunResult) -> None:
    """Fill `result` from the player and the cluster as they are now: the
    commands' results in the order given, the summary's notes (with flanneld's
    complaints and the store's), the stats.json document."""
    result.traffic = player.ordered_results()
    result.nodes = list(player.nodes)
    result.end_ns = emulated.sim.now_ns
    result.notes = [*player.notes,
                    *(line for flanneld in emulated.flanneld.values() for line in flanneld.log.texts()
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
                     errors=process.errors, output=process.lines,
                     stderr=[process.fatal] if process.fatal else [])
    else:
        entry.update(output=process.lines,
                     stdout=bytes(process.stdout).decode("utf-8", errors="backslashreplace"),
                     stdout_bytes=len(process.stdout), stderr=process.stderr)
    return entry


def is_large(emulated: EmulatedCluster) -> bool:
    """A cluster of more than LARGE_CLUSTER_NODES nodes (see there)."""
    return len(emulated.cluster.nodes) > LARGE_CLUSTER_NODES


def _sent(entry: dict) -> bool:
    stack = entry["stack"]
    return bool(stack["sent"] or stack["forwarded"]
                or any(dev["tx_packets"] for dev in entry["devices"].values()))


def _quiet(entry: dict) -> bool:
    stack = entry["stack"]
    return not (stack["sent"] or stack["forwarded"] or stack["delivered"] or stack["drops"]
                or any(dev["rx_packets"] or dev["tx_packets"] or dev["drops"]
                       for dev in entry["devices"].values()))


def collect_stats(emulated: EmulatedCluster, result: RunResult) -> dict:
    """The stats.json document: counters, drops and final tables per namespace
    (of a large cluster: see LARGE_CLUSTER_NODES)."""
    large = is_large(emulated)
    namespaces = {}
    quiet = 0
    for ns in [*emulated.cluster.namespaces(), emulated.cluster.underlay]:
        entry = ns.stats()
        if large and _quiet(entry):
            quiet += 1
            continue
        if large and not _sent(entry):
            namespaces[ns.name] = entry
            continue
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
        if ns.name in emulated.iptables:
            entry.update(ns.netfilter.show(ns.sim.now_ns))  # iptables -L -v -n -x, conntrack -L
        namespaces[ns.name] = entry
    now = emulated.sim.now_ns
    stats = {
        "scenario": emulated.scenario.name,
        "virtual_time_s": now / 1e9,
        "interrupted": result.interrupted,
        "notes": result.notes,
        "traffic": [traffic_entry(t) for t in result.traffic],
        "flannel": {
            "leases": lease_table(emulated, now),
            "subnet_env": {name: f.subnet_env for name, f in emulated.flanneld.items()},
            "log": [line for f in emulated.flanneld.values()
                    for line in (f.log.texts() if large else f.log)],
        },
        "namespaces": namespaces,
        **({"store": emulated.store.describe()} if hasattr(emulated.store, "describe") else {}),
    }
    if large:
        stats["flannel"]["added_leases"] = {name: f.log.leases_added for name, f in emulated.flanneld.items()}
        stats["nodes"] = result.nodes
        stats["captures"] = result.capture_counts
        stats["quiet_namespaces"] = quiet
    return stats


def netfilter_summary(stats: dict) -> list[str]:
    """One line per node with rules for the run summary: how many rules
    matched how many packets, and the connections conntrack still lists."""
    lines = []
    for name, entry in stats["namespaces"].items():
        if "iptables" not in entry:
            continue
        rules = [rule for table in entry["iptables"].values() for chain in table.values() for rule in chain["rules"]]
        matched = sum(1 for rule in rules if rule["packets"])
        lines.append(f"{name}: {len(rules)} rules ({matched} matched), {len(entry['conntrack'])} conntrack "
                     f"entr{'y' if len(entry['conntrack']) == 1 else 'ies'}")
    return lines


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
