"""Turn a validated Scenario into a running emulated cluster at time zero.

The order is the one a real cluster boots in: the lease store gets flannel's
net-conf, every node's flanneld acquires its lease (nodes that name their
subnet first, so a random pick never takes a subnet someone asked for) and
programs its backend, then the CNI plugin wires each pod with the MTU that
flannel's subnet.env gives (or the scenario's `cni.mtu`). Failures that only
show at run time (exhausted subnets or pod ranges, a pod IP outside a leased
subnet, a derived MAC that collides) become ScenarioErrors naming the field.
"""

from __future__ import annotations

import gc
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Iterator

from emu.flannel.etcd_store import EtcdStore, StoreUnavailable
from emu.flannel.flanneld import Flanneld
from emu.flannel.host_gw import HostGwBackend
from emu.flannel.leases import SUBNETS_PREFIX, Lease, LeaseError, LeaseEvent, SubnetManager, decode_lease, subnet_key
from emu.flannel.store import KeyValueStore, MemoryStore
from emu.flannel.subnet_env import parse_subnet_env
from emu.flannel.udp_backend import UdpBackend
from emu.flannel.vxlan_backend import VxlanBackend
from emu.k8s import BridgePlugin, Cluster, IpamError, Node
from emu.net.fault import DropNth
from emu.net.netfilter import RulesError
from emu.net.veth import Veth
from emu.scenario.errors import ScenarioError

from emu.scenario.model import FaultSpec, NodeSpec, Scenario
from emu.scenario.node_rules import node_rules
from emu.sim import Scheduler
from emu.wire.addr import local_unicast_mac, mac_to_str


@dataclass
class EmulatedCluster:
    """Everything a run needs: the scheduler, the cluster, the flanneld's."""

    scenario: Scenario
    sim: Scheduler
    cluster: Cluster
    store: KeyValueStore
    manager: SubnetManager
    flanneld: dict[str, Flanneld] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    macs: dict[bytes, str] = field(default_factory=dict)
    # Called with a node's name and a note when it joins or leaves outside the
    # scenario's own events (a lease another etcd writer added or deleted).
    node_listeners: list = field(default_factory=list)
    # Each node's iptables-restore text as loaded (emu.scenario.node_rules);
    # absent: the node has no rule.
    iptables: dict[str, str] = field(default_factory=dict)


def default_vtep_mac(seed: int, node: str) -> bytes:
    """A locally administered unicast MAC, as the kernel would pick at random,
    but drawn from the scenario seed so runs are reproducible."""
    rng = random.Random(f"{seed}/vtep/{node}")
    return local_unicast_mac(rng.randbytes(6))


def open_store(scenario: Scenario) -> KeyValueStore:
    """The lease store: the embedded one, or the real etcd the scenario names
    (unreachable: a ScenarioError, before anything is built or written)."""
    if scenario.etcd is None:
        return MemoryStore()
    try:
        return EtcdStore(list(scenario.etcd.endpoints), scenario.etcd.prefix)
    except StoreUnavailable as error:
        raise ScenarioError("etcd.endpoints", str(error)) from None


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a while.

    Why: a build creates millions of long-lived objects (a route, a
    neighbour and an FDB entry per pair of nodes) and no garbage cycles; the
    collector would traverse all of them again and again as they are made
    (a third of the build time of 1,000 nodes)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fast_path():
    """The flow cache's installer (emu.fastpath.flow_cache), or None.

    The fast path is an optional layer above emu.net: with EMU_FASTPATH=off
    in the environment it is not even imported (every datagram walks the
    slow path; how the suite proves the slow path stands alone), and a tree
    without emu/fastpath runs the same way."""
    if os.environ.get("EMU_FASTPATH", "on") == "off":
        return None
    try:
        from emu.fastpath import flow_cache
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.startswith("emu.fastpath"):
            return None
        raise
    return flow_cache


def build_cluster(scenario: Scenario, freeze: bool = False) -> EmulatedCluster:
    """Build and start the cluster described by `scenario` (at virtual time 0).

    `freeze`: the caller keeps the cluster for the rest of its work (a run)
    and calls `gc.unfreeze()` when done: every object alive at the end of the
    build moves to the cyclic collector's permanent generation (gc.freeze),
    so the full collections the run's own allocations trigger do not walk
    the millions of build objects again (a third of the CPU time of a
    1,000-node run was two such walks)."""
    with cyclic_gc_paused():
        emulated = _build(scenario)
        if freeze:
            gc.freeze()
        return emulated


def _build(scenario: Scenario) -> EmulatedCluster:
    sim = Scheduler(scenario.start_ns)
    install = fast_path()
    if install is not None:
        install(sim)  # bursts of repeated flows are recorded once and replayed
    net = scenario.net_conf
    store = open_store(scenario)
    try:
        manager = SubnetManager(store, net.network, net.subnet_len, net.subnet_min, net.subnet_max,
                                seed=scenario.seed)
    except ValueError as error:
        raise ScenarioError("net-conf", str(error)) from None
    _write_config(store, manager, net.raw)
    cluster = Cluster(sim, scenario.underlay.subnet, scenario.underlay.mtu, scenario.seed,
                      scenario.underlay.latency_ns)
    emulated = EmulatedCluster(scenario, sim, cluster, store, manager)
    if net.backend.defaulted:
        emulated.notes.append("net-conf has no Backend: flannel's default backend udp is used")
    foreign = _foreign_leases(emulated)
    ordered = sorted(scenario.nodes, key=lambda n: n.subnet is None)
    for spec in ordered:
        start_node(emulated, spec)
    for spec in scenario.nodes:
        add_pods(emulated, spec)
    for spec in scenario.nodes:
        install_rules(emulated, spec)
    for fault in scenario.faults:
        attach_fault(emulated, fault)
    if isinstance(store, EtcdStore):
        for lease in foreign:
            _add_lease_node(emulated, lease)
        manager.watch_leases(lambda event: _follow_foreign_lease(emulated, event))
        sim.on_advance.append(lambda: store.poll(sim.now_ns))
    return emulated


def attach_fault(emulated: EmulatedCluster, fault: FaultSpec) -> None:
    """Put a `faults:` entry on its device (a veth: see emu.scenario.faults)."""
    ns = emulated.cluster.namespace(fault.namespace)
    if ns is None:
        raise ScenarioError(f"{fault.path}.at", f"{fault.namespace} is not in the cluster at time 0")
    dev = ns.devices.get(fault.device)
    if not isinstance(dev, Veth):
        known = ", ".join(name for name, d in ns.devices.items() if isinstance(d, Veth))
        raise ScenarioError(f"{fault.path}.at", f"{fault.namespace} has no veth {fault.device!r} "
                            f"(faults go on veth devices: {known})")
    dev.faults.append(DropNth(fault.direction, fault.nth))


def _write_config(store: KeyValueStore, manager: SubnetManager, raw: dict) -> None:
    """Store flannel's net-conf as an admin would; a real etcd that already
    holds a different one belongs to another cluster: refuse to overwrite it."""
    if isinstance(store, EtcdStore):
        try:
            existing = manager.read_config(0)
        except LeaseError:
            existing = None
        if existing is not None and existing != raw:
            raise ScenarioError("etcd.prefix", f"etcd at {store.endpoint} already holds another flannel "
                                f"config under {store.prefix} (use another prefix, or `emu import --etcd`)")
    manager.write_config(raw, 0)


def _foreign_leases(emulated: EmulatedCluster) -> list[Lease]:
    """Leases already in a real etcd that belong to no node of the scenario
    (they become pod-less nodes); malformed keys are skipped and named."""
    if not isinstance(emulated.store, EtcdStore):
        return []
    own = {spec.ip for spec in emulated.scenario.nodes}
    foreign = []
    for entry in emulated.store.list(SUBNETS_PREFIX, 0):
        lease = decode_lease(entry)
        if lease is not None and lease.public_ip not in own:
            foreign.append(lease)
    return foreign


def lease_node_name(lease: Lease) -> str:
    """A node joined through etcd has no name of its own: name it after its subnet."""
    return "lease-" + str(lease.subnet).replace(".", "-").replace("/", "-")


def _lease_node_spec(emulated: EmulatedCluster, lease: Lease) -> NodeSpec | None:
    scenario = emulated.scenario
    if lease.public_ip not in scenario.underlay.subnet:
        emulated.notes.append(f"etcd: lease {lease.subnet} of {lease.public_ip} is outside the underlay "
                              f"{scenario.underlay.subnet}: not emulated")
        return None
    vtep_mac = None
    data = lease.backend_data or {}
    if scenario.net_conf.backend.type == "vxlan" and isinstance(data.get("VtepMAC"), str):
        try:
            vtep_mac = bytes.fromhex(data["VtepMAC"].replace(":", ""))
        except ValueError:
            vtep_mac = None
    name = lease_node_name(lease)
    return NodeSpec(name, lease.public_ip, b"\x02\x42" + lease.public_ip.packed, lease.subnet, None,
                    vtep_mac, (), f"etcd:{emulated.store.remote_key(subnet_key(lease.subnet))}")


def _add_lease_node(emulated: EmulatedCluster, lease: Lease) -> None:
    spec = _lease_node_spec(emulated, lease)
    if spec is None or spec.name in emulated.cluster.nodes:
        return
    if any(node.ip == lease.public_ip for node in emulated.cluster.nodes.values()):
        return
    add_node_later(emulated, spec)
    _tell(emulated, spec.name, f"node {spec.name} ({lease.public_ip}, {lease.subnet}) joined through etcd")


def _tell(emulated: EmulatedCluster, name: str, what: str) -> None:
    """A node joined or left outside the scenario's events: a note, and the listeners."""
    note = f"t={emulated.sim.now_ns / 1e9:g}s: {what}"
    if not emulated.node_listeners:
        emulated.notes.append(note)
    for listener in emulated.node_listeners:
        listener(name, note)


def _follow_foreign_lease(emulated: EmulatedCluster, event: LeaseEvent) -> None:
    """Another writer's lease: a new node joins, a removed lease's node leaves."""
    if event.kind == "added":
        _add_lease_node(emulated, event.lease)
    elif event.kind == "removed":
        for name, node in list(emulated.cluster.nodes.items()):
            flanneld = emulated.flanneld.get(name)
            if flanneld is not None and flanneld.lease is not None and flanneld.lease.subnet == event.lease.subnet:
                remove_node_later(emulated, name)
                _tell(emulated, name, f"node {name} left: its lease was deleted in etcd")


def _claim_mac(emulated: EmulatedCluster, mac: bytes, path: str) -> None:
    owner = emulated.macs.get(mac)
    if owner is not None and owner != path:
        raise ScenarioError(path, f"MAC {mac_to_str(mac)} is already used by {owner}")
    emulated.macs[mac] = path


def make_backend(emulated: EmulatedCluster, node: Node, spec: NodeSpec):
    scenario = emulated.scenario
    backend = scenario.net_conf.backend
    mtu = scenario.underlay.mtu
    if backend.type == "vxlan":
        vtep_mac = spec.vtep_mac or default_vtep_mac(scenario.seed, spec.name)
        _claim_mac(emulated, vtep_mac, f"{spec.path}.vtep-mac")
        return VxlanBackend(node.ns, str(spec.ip), mtu, backend.vni, backend.port, vtep_mac,
                            direct_routing=backend.direct_routing, external=node.ns.device("eth0"))
    if backend.type == "host-gw":
        return HostGwBackend(node.ns, node.ns.device("eth0"), mtu)
    return UdpBackend(node.ns, scenario.net_conf.network, mtu, backend.port, str(spec.ip))


def start_node(emulated: EmulatedCluster, spec: NodeSpec) -> Node:
    """Create a node, start its flanneld and set up its CNI plugin."""
    scenario = emulated.scenario
    _claim_mac(emulated, spec.mac, f"{spec.path}.mac")
    node = emulated.cluster.add_node(spec.name, spec.ip, spec.mac)
    flanneld = Flanneld(node.ns, emulated.manager, make_backend(emulated, node, spec), str(spec.ip),
                        requested_subnet=spec.subnet, ipmasq=scenario.netfilter.ip_masq)
    try:
        lease = flanneld.start()
    except (LeaseError, ValueError) as error:
        path = f"{spec.path}.subnet" if spec.subnet is not None else spec.path
        raise ScenarioError(path, f"flannel could not lease a subnet for node {spec.name}: {error}") from None
    emulated.flanneld[spec.name] = flanneld
    env = parse_subnet_env(flanneld.subnet_env)
    mtu = scenario.cni.mtu if scenario.cni.mtu is not None else int(env["FLANNEL_MTU"])
    gateway = lease.subnet.network_address + 1
    cni_mac = spec.cni_mac or b"\x0a\x58" + gateway.packed
    _claim_mac(emulated, cni_mac, f"{spec.path}.cni-mac")
    node.cni = BridgePlugin(node.ns, lease.subnet, scenario.cni.bridge, mtu,
                            scenario.cni.hairpin_mode, cni_mac)
    return node


def add_pods(emulated: EmulatedCluster, spec: NodeSpec) -> None:
    node = emulated.cluster.nodes[spec.name]
    subnet = node.cni.subnet
    for pod in spec.pods:
        if pod.ip is not None and IPv4Address(pod.ip) not in subnet:
            raise ScenarioError(f"{pod.path}.ip", f"{pod.ip} is outside node {spec.name}'s subnet "
                                f"{subnet}")
        _claim_mac(emulated, pod.host_veth_mac, f"{pod.path}.host-veth-mac")
        try:
            created = emulated.cluster.add_pod(node, pod.name, pod.host_veth, pod.host_veth_mac,
                                               pod.ip, pod.mac, pod.containers)
        except IpamError as error:
            raise ScenarioError(f"{pod.path}.ip", str(error)) from None
        _claim_mac(emulated, created.mac, f"{pod.path}.mac")


def install_rules(emulated: EmulatedCluster, spec: NodeSpec) -> None:
    """Load the node's iptables (kube-proxy's, flanneld's, the FORWARD policy,
    the node's own `iptables:`) into its namespace, as they would be once
    the node is up; a merged text that does not parse names the node."""
    scenario = emulated.scenario
    netfilter = scenario.netfilter
    if not netfilter.enabled:
        return
    node = emulated.cluster.nodes[spec.name]
    node.ns.bridge_nf_call_iptables = netfilter.bridge_nf_call_iptables
    text = node_rules(netfilter, spec, emulated.cluster, node.cni.subnet, scenario.net_conf.network)
    if not text:
        return
    try:
        node.ns.netfilter.load(text)
    except RulesError as error:
        raise ScenarioError(f"{spec.path}.iptables", f"with kube-proxy's and flannel's rules: {error}") from None
    emulated.iptables[spec.name] = text


def add_node_later(emulated: EmulatedCluster, spec: NodeSpec) -> Node:
    """The `add-node` event: a node joins a running cluster."""
    node = start_node(emulated, spec)
    add_pods(emulated, spec)
    install_rules(emulated, spec)
    return node


def remove_node_later(emulated: EmulatedCluster, name: str) -> None:
    """The `remove-node` event: flanneld gives its lease back, the node leaves."""
    flanneld = emulated.flanneld.pop(name, None)
    if flanneld is not None:
        flanneld.stop(revoke=True)
    emulated.cluster.remove_node(name)
