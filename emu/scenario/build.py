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

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from emu.flannel.flanneld import Flanneld
from emu.flannel.host_gw import HostGwBackend
from emu.flannel.leases import LeaseError, SubnetManager
from emu.flannel.store import MemoryStore
from emu.flannel.subnet_env import parse_subnet_env
from emu.flannel.udp_backend import UdpBackend
from emu.flannel.vxlan_backend import VxlanBackend
from emu.k8s import BridgePlugin, Cluster, IpamError, Node
from emu.scenario.errors import ScenarioError
from emu.scenario.model import NodeSpec, Scenario
from emu.sim import Scheduler
from emu.wire.addr import mac_to_str


@dataclass
class EmulatedCluster:
    """Everything a run needs: the scheduler, the cluster, the flanneld's."""

    scenario: Scenario
    sim: Scheduler
    cluster: Cluster
    store: MemoryStore
    manager: SubnetManager
    flanneld: dict[str, Flanneld] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    macs: dict[bytes, str] = field(default_factory=dict)


def default_vtep_mac(seed: int, node: str) -> bytes:
    """A locally administered unicast MAC, as the kernel would pick at random,
    but drawn from the scenario seed so runs are reproducible."""
    rng = random.Random(f"{seed}/vtep/{node}")
    raw = bytearray(rng.randbytes(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return bytes(raw)


def build_cluster(scenario: Scenario) -> EmulatedCluster:
    """Build and start the cluster described by `scenario` (at virtual time 0)."""
    sim = Scheduler()
    net = scenario.net_conf
    store = MemoryStore()
    try:
        manager = SubnetManager(store, net.network, net.subnet_len, net.subnet_min, net.subnet_max,
                                seed=scenario.seed)
    except ValueError as error:
        raise ScenarioError("net-conf", str(error)) from None
    manager.write_config(net.raw, 0)
    cluster = Cluster(sim, scenario.underlay.subnet, scenario.underlay.mtu, scenario.seed)
    emulated = EmulatedCluster(scenario, sim, cluster, store, manager)
    if net.backend.defaulted:
        emulated.notes.append("net-conf has no Backend: flannel's default backend udp is used")
    ordered = sorted(scenario.nodes, key=lambda n: n.subnet is None)
    for spec in ordered:
        start_node(emulated, spec)
    for spec in scenario.nodes:
        add_pods(emulated, spec)
    return emulated


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
                        requested_subnet=spec.subnet)
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


def add_node_later(emulated: EmulatedCluster, spec: NodeSpec) -> Node:
    """The `add-node` event: a node joins a running cluster."""
    node = start_node(emulated, spec)
    add_pods(emulated, spec)
    return node


def remove_node_later(emulated: EmulatedCluster, name: str) -> None:
    """The `remove-node` event: flanneld gives its lease back, the node leaves."""
    flanneld = emulated.flanneld.pop(name, None)
    if flanneld is not None:
        flanneld.stop(revoke=True)
    emulated.cluster.remove_node(name)
