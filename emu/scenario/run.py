"""Run a scenario: build the cluster, capture every interface, play the
traffic and cluster events on the virtual clock, write the outputs.

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

from emu.capture import CaptureSet
from emu.flannel.leases import SUBNETS_PREFIX, decode_lease
from emu.net import Bridge, Namespace, Ping, PingResult
from emu.scenario.build import EmulatedCluster, add_node_later, build_cluster, remove_node_later
from emu.scenario.model import Scenario, TrafficSpec
from emu.sim import seconds

OWN_OUTPUTS = ("*.pcap", "all.pcapng", "stats.json")


@dataclass
class TrafficResult:
    spec: TrafficSpec
    ping: PingResult


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


class _Captures:
    """Attaches a capture point to every device of every node and pod."""

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
        cluster = self.emulated.cluster
        if ns.name in cluster.nodes:
            owner = f"node {ns.name}"
        else:
            owner = f"pod {ns.name} on node {cluster.pods[ns.name].node.name}"
        return f"{owner}, {dev.kind} {dev.name}"


def describe_node(emulated: EmulatedCluster, name: str) -> str:
    """One line per node for the run summary: what flannel and IPAM chose."""
    node = emulated.cluster.nodes[name]
    flanneld = emulated.flanneld.get(name)
    subnet = flanneld.lease.subnet if flanneld is not None and flanneld.lease else "-"
    pods = ", ".join(f"{pod.name} {pod.ip}" for pod in node.pods.values()) or "no pods"
    return f"{name} {node.ip} subnet {subnet}: {pods}"


def resolve_destination(emulated: EmulatedCluster, destination) -> str | None:
    """A ping destination as an address: node names give their eth0 address,
    pod names their pod address; None for a name that does not exist (now)."""
    if not isinstance(destination, str):
        return str(destination)
    cluster = emulated.cluster
    if destination in cluster.nodes:
        return str(cluster.nodes[destination].ip)
    if destination in cluster.pods:
        return str(cluster.pods[destination].ip)
    return None


def clear_outputs(out_dir: Path) -> None:
    """Remove the files a previous run wrote (and nothing else)."""
    for pattern in OWN_OUTPUTS:
        for path in out_dir.glob(pattern):
            path.unlink()


def run_scenario(scenario: Scenario, out_dir: str | Path | None, capture: bool = True) -> RunResult:
    """Run `scenario`; with `out_dir` None (or capture off) nothing is written."""
    emulated = build_cluster(scenario)
    sim = emulated.sim
    result = RunResult(scenario, Path(out_dir) if out_dir is not None else None,
                       notes=list(emulated.notes),
                       nodes=[describe_node(emulated, name) for name in emulated.cluster.nodes])
    captures = None
    capture_set = None
    if capture and result.out_dir is not None:
        result.out_dir.mkdir(parents=True, exist_ok=True)
        clear_outputs(result.out_dir)
        capture_set = CaptureSet(result.out_dir, buffered=True, epoch_ns=sim.epoch_ns)
        sim.on_advance.append(capture_set.flush)
        captures = _Captures(capture_set, emulated)
        captures.attach_all()

    def on_node_changed(name: str, note: str) -> None:
        result.notes.append(note)
        if name in emulated.cluster.nodes:
            result.nodes.append(describe_node(emulated, name))
        if captures is not None:
            captures.attach_all()

    emulated.node_listeners.append(on_node_changed)

    pending = {"traffic": len(scenario.traffic), "events": len(scenario.events)}

    def on_event(event) -> None:
        if event.add_node is not None:
            add_node_later(emulated, event.add_node)
            result.notes.append(f"t={event.at:g}s: node {event.add_node.name} added")
            result.nodes.append(describe_node(emulated, event.add_node.name))
        else:
            remove_node_later(emulated, event.remove_node)
            result.notes.append(f"t={event.at:g}s: node {event.remove_node} removed")
        if captures is not None:
            captures.attach_all()
        pending["events"] -= 1

    for event in scenario.events:
        sim.call_at(seconds(event.at), on_event, event)

    chain = scenario.traffic

    def start(index: int) -> None:
        spec = chain[index]
        ns = emulated.cluster.namespace(spec.source)
        ping = spec.ping

        def done(ping_result: PingResult) -> None:
            result.traffic.append(TrafficResult(spec, ping_result))
            pending["traffic"] -= 1
            following = index + 1
            if following < len(chain) and chain[following].at is None:
                sim.call_process(start, following)

        destination = resolve_destination(emulated, ping.destination)
        if ns is None or destination is None:
            failed = PingResult(ping.command, str(ping.destination))
            failed.fatal = (f"emu: {spec.source} does not exist at t={sim.now_ns / 1e9:g}s"
                            if ns is None else f"ping: {ping.destination}: Name or service not known")
            done(failed)
            return
        Ping(ns, destination, ping.count, ping.interval, ping.size, ping.ttl,
             ping.timeout, ping.pmtudisc, ping.interface, ping.quiet, ping.command,
             host_name=ping.destination if isinstance(ping.destination, str) else None,
             tos=ping.tos, pattern=ping.pattern, preload=ping.preload, deadline_s=ping.deadline,
             timestamps=ping.timestamps, outstanding=ping.outstanding,
             verbose=ping.verbose).start(done)

    for index, spec in enumerate(chain):
        if spec.at is not None:
            sim.call_process_at(seconds(spec.at), start, index)
        elif index == 0:
            sim.call_process_at(0, start, 0)

    def finished() -> bool:
        # Stop once the last command has ended and its instant is fully
        # processed (a sending process may still have fragments to send).
        if pending["traffic"] or pending["events"]:
            return False
        following = sim.next_time()
        return following is None or following > sim.now_ns

    try:
        sim.run(stop=finished)
        if scenario.linger:
            sim.run(until_ns=sim.now_ns + seconds(scenario.linger))
    except BaseException:
        if capture_set is not None:
            capture_set.close()  # an interrupted run still leaves readable files
        raise
    result.traffic.sort(key=lambda t: chain.index(t.spec))
    result.end_ns = sim.now_ns
    for flanneld in emulated.flanneld.values():
        result.notes.extend(line for line in flanneld.log if "cannot" in line or "no valid" in line)
    result.notes.extend(store_notes(emulated))
    result.stats = collect_stats(emulated, result)
    close_store = getattr(emulated.store, "close", None)
    if close_store is not None:
        close_store()
    if capture_set is not None:
        capture_set.close()
        result.capture_counts = {k: v for k, v in capture_set.counts().items() if v}
        (result.out_dir / "stats.json").write_text(json.dumps(result.stats, indent=2, sort_keys=True) + "\n")
    return result


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
        "traffic": [{"from": t.spec.source, "command": t.ping.command,
                     "transmitted": t.ping.transmitted, "received": t.ping.received,
                     "errors": t.ping.errors, "output": t.ping.lines} for t in result.traffic],
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
