"""The cluster as a graph: groups (nodes, pods), devices, and links.

Why one neutral model: the same picture is written as Graphviz dot (the
report's inline SVG) and as Mermaid (docs, READMEs), and both must say the
same thing. It is read from an emulated cluster as built, so it shows what
flannel and IPAM chose (leases, pod addresses, host veth names), not only
what the file wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from emu.k8s.cluster import Node
from emu.net import Bridge
from emu.net.device import NetDevice
from emu.net.tun import Tun
from emu.net.veth import Veth
from emu.net.vxlan import Vxlan
from emu.scenario.build import EmulatedCluster

UNDERLAY_ID = "underlay"


@dataclass
class Device:
    id: str  # "<namespace>/<ifname>": the capture point's name
    label: str  # "eth0\n10.244.1.2/24"
    kind: str  # veth, bridge, vxlan, tun, switch


@dataclass
class Group:
    id: str  # the node or pod name
    kind: str  # "node" or "pod"
    label: str
    devices: list[Device] = field(default_factory=list)
    groups: list["Group"] = field(default_factory=list)


@dataclass
class Link:
    a: str
    b: str
    label: str = ""
    kind: str = "wire"  # wire (veth pair, bridge port), stack (through the node's routing), tunnel (overlay)


@dataclass
class Topology:
    title: str
    groups: list[Group]
    devices: list[Device]  # outside every group: the underlay switch
    links: list[Link]

    def all_groups(self) -> list[Group]:
        found = []
        for group in self.groups:
            found.append(group)
            found.extend(group.groups)
        return found


def _device(ns_name: str, dev: NetDevice, addresses: list[str]) -> Device:
    kind = {Bridge: "bridge", Vxlan: "vxlan", Tun: "tun"}.get(type(dev), dev.kind)
    label = "\n".join([dev.name, *addresses])
    if isinstance(dev, Vxlan):
        label += f"\nvni {dev.vni} :{dev.port}\n{dev.mac.hex(':')}"
    return Device(f"{ns_name}/{dev.name}", label, kind)


def _shown_devices(ns) -> list[NetDevice]:
    return [dev for dev in ns.devices.values() if dev.kind != "loopback"]


def _node_group(emulated: EmulatedCluster, node: Node) -> Group:
    flanneld = emulated.flanneld.get(node.name)
    subnet = flanneld.lease.subnet if flanneld is not None and flanneld.lease else None
    label = f"node {node.name}\n{node.ip}" + (f" · subnet {subnet}" if subnet else "")
    group = Group(node.name, "node", label)
    for dev in _shown_devices(node.ns):
        group.devices.append(_device(node.name, dev, [str(a) for a in node.ns.addresses_of(dev)]))
    for pod in node.pods.values():
        inner = Group(pod.name, "pod", f"pod {pod.name}\n{pod.ip}")
        for dev in _shown_devices(pod.ns):
            inner.devices.append(_device(pod.name, dev, [str(a) for a in pod.ns.addresses_of(dev)]))
        group.groups.append(inner)
    return group


def _flannel_device(node: Node) -> str | None:
    """The name of flannel's device on `node` (flannel.1, flannel0), if any."""
    for dev in node.ns.devices.values():
        if isinstance(dev, (Vxlan, Tun)):
            return dev.name
    return None


def _links(emulated: EmulatedCluster) -> list[Link]:
    cluster = emulated.cluster
    links: list[Link] = []
    for node in cluster.nodes.values():
        for pod in node.pods.values():
            for dev in _shown_devices(pod.ns):
                if isinstance(dev, Veth) and dev.peer is not None and dev.peer.namespace is node.ns:
                    links.append(Link(f"{pod.name}/{dev.name}", f"{node.name}/{dev.peer.name}", "veth"))
        for dev in _shown_devices(node.ns):
            if dev.master is not None:
                links.append(Link(f"{node.name}/{dev.name}", f"{node.name}/{dev.master.name}", "port"))
        eth0 = node.ns.devices.get("eth0")
        if eth0 is not None:
            links.append(Link(f"{node.name}/eth0", UNDERLAY_ID, ""))
            flannel = _flannel_device(node)
            if flannel is not None:  # the tunnel's packets leave through eth0
                links.append(Link(f"{node.name}/{flannel}", f"{node.name}/eth0", "encap", "stack"))
    backend = emulated.scenario.net_conf.backend
    leased = [node for node in cluster.nodes.values()
              if emulated.flanneld.get(node.name) is not None and emulated.flanneld[node.name].lease]
    for one, other in combinations(leased, 2):
        ends = [_flannel_device(node) for node in (one, other)]
        if None not in ends and backend.type in ("vxlan", "udp"):
            label = (f"VXLAN vni {backend.vni} udp {backend.port}" if backend.type == "vxlan"
                     else f"flanneld udp {backend.port}")
            links.append(Link(f"{one.name}/{ends[0]}", f"{other.name}/{ends[1]}", label, "tunnel"))
        elif backend.type == "host-gw":
            links.append(Link(f"{one.name}/eth0", f"{other.name}/eth0", "host-gw routes", "tunnel"))
    return links


def topology_of(emulated: EmulatedCluster) -> Topology:
    """The cluster as it is now (call after build_cluster, or after a run)."""
    scenario = emulated.scenario
    underlay = scenario.underlay
    latency = f"\nlatency {underlay.latency_ns // 1000}us" if underlay.latency_ns else ""
    switch = Device(UNDERLAY_ID, f"underlay switch\n{underlay.subnet} · mtu {underlay.mtu}{latency}", "switch")
    groups = [_node_group(emulated, node) for node in emulated.cluster.nodes.values()]
    title = f"{scenario.name}: flannel {scenario.net_conf.backend.type}, network {scenario.net_conf.network}"
    return Topology(title, groups, [switch], _links(emulated))
