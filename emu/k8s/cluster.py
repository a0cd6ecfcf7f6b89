"""Kubernetes objects as network namespaces: Cluster, Node, Pod.

A Node is a root namespace with `eth0` on the underlay segment and
ip_forward on. A Pod is its pause container's namespace: every container
of the pod joins it, so they share eth0, its IP and the loopback (127.0.0.1
reaches the pod's own containers and nothing else). The underlay segment is
a plain bridge in its own namespace (`ul`), like the switch of the kernel
reference cluster; it is infrastructure, not a capture point.
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from emu.k8s.cni import BridgePlugin
from emu.net import Bridge, Namespace, veth_pair
from emu.sim import Scheduler

UNDERLAY_NAMESPACE = "ul"


@dataclass
class Pod:
    name: str
    node: "Node"
    ns: Namespace
    ip: IPv4Address
    mac: bytes
    host_veth: str
    containers: tuple[str, ...] = ()

    def namespace_of(self, container: str | None) -> Namespace:
        """The namespace a container runs in: always the pause container's."""
        if container is not None and container not in self.containers:
            raise ValueError(f"pod {self.name} has no container {container}")
        return self.ns


@dataclass
class Node:
    name: str
    ns: Namespace
    ip: IPv4Address
    mac: bytes
    cni: BridgePlugin | None = None
    pods: dict[str, Pod] = field(default_factory=dict)


class Cluster:
    """Nodes on one underlay L2 segment, with their pods."""

    def __init__(self, sim: Scheduler, underlay_subnet: IPv4Network, underlay_mtu: int = 1500,
                 seed: int = 0, underlay_latency_ns: int = 0) -> None:
        self.sim = sim
        self.underlay_latency_ns = underlay_latency_ns
        self.seed = seed
        self.underlay_subnet = underlay_subnet
        self.underlay_mtu = underlay_mtu
        self.underlay = Namespace(sim, UNDERLAY_NAMESPACE, seed=seed)
        self.switch = Bridge(sim, "br0", b"\x02\xff\x00\x00\x00\x01", underlay_mtu)
        self.underlay.add_device(self.switch)
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, Pod] = {}

    def add_node(self, name: str, ip: IPv4Address, mac: bytes) -> Node:
        """A node namespace with eth0 plugged into the underlay switch."""
        if name in self.nodes or name in self.pods or name == UNDERLAY_NAMESPACE:
            raise ValueError(f"name {name} is taken")
        ns = Namespace(self.sim, name, ip_forward=True, seed=self.seed)
        eth0, port = veth_pair(self.sim, "eth0", mac, underlay_port_name(name), b"\x02\xfe" + ip.packed,
                               self.underlay_mtu)
        ns.add_device(eth0)
        port.delay_ns = self.underlay_latency_ns  # the wire from the switch to this node
        self.underlay.add_device(port)
        self.switch.add_port(port)
        ns.add_address(eth0, ip.packed, self.underlay_subnet.prefixlen)
        node = Node(name, ns, ip, mac)
        self.nodes[name] = node
        return node

    def remove_node(self, name: str) -> Node:
        """Unplug a node and forget it and its pods."""
        node = self.nodes.pop(name)
        for pod_name in list(node.pods):
            self.pods.pop(pod_name, None)
        port = node.ns.devices["eth0"].peer
        if port is not None and port.master is self.switch:
            self.switch.remove_port(port)
            self.underlay.detach_device(port)
        for dev in list(node.ns.devices.values()):
            dev.up = False
        for pod in node.pods.values():
            for dev in pod.ns.devices.values():
                dev.up = False
        return node

    def add_pod(self, node: Node, name: str, host_veth: str, host_veth_mac: bytes,
                ip: IPv4Address | None = None, mac: bytes | None = None,
                containers: tuple[str, ...] = ()) -> Pod:
        """Create the pause namespace and run CNI ADD on the node's plugin."""
        if node.cni is None:
            raise ValueError(f"node {node.name} has no CNI configuration yet")
        if name in self.nodes or name in self.pods:
            raise ValueError(f"name {name} is taken")
        ns = Namespace(self.sim, name, ip_forward=False, seed=self.seed)
        address, pod_mac = node.cni.add(ns, host_veth, host_veth_mac, ip, mac)
        pod = Pod(name, node, ns, address, pod_mac, host_veth, containers)
        node.pods[name] = pod
        self.pods[name] = pod
        return pod

    def namespace(self, name: str) -> Namespace | None:
        """The namespace of a node or pod by name."""
        if name in self.nodes:
            return self.nodes[name].ns
        if name in self.pods:
            return self.pods[name].ns
        return None

    def namespaces(self) -> list[Namespace]:
        """Every node and pod namespace, nodes first, in creation order."""
        result = []
        for node in self.nodes.values():
            result.append(node.ns)
            result.extend(pod.ns for pod in node.pods.values())
        return result


def underlay_port_name(node: str) -> str:
    """The underlay switch's port for a node: `<node>-ul`, within IFNAMSIZ.
    A name too long for that keeps 6 characters and adds 5 hex digits of its
    hash, so nodes sharing a long prefix (worker-node-1, worker-node-2) still
    get ports of their own."""
    if len(node) <= 11:
        return f"{node}-ul"
    return f"{node[:6]}-{hashlib.sha256(node.encode()).hexdigest()[:5]}-ul"
