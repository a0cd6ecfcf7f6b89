"""What each captured interface connects, in words, for the merged pcapng.

Why: `n1/veth1a` alone does not say which pod it serves; Wireshark shows an
interface's description next to its name (Statistics -> Capture File
Properties, `frame.interface_description`), so each description names the
other end and the bridge: ``host end of p1a's eth0, port of cni0``. Written
from the devices as they are when the capture point is created (the run
attaches points after the cluster is built and after each event).
"""

from __future__ import annotations

from emu.k8s.cluster import UNDERLAY_NAMESPACE, Cluster
from emu.net import Bridge, Namespace
from emu.net.device import NetDevice
from emu.net.tun import Tun
from emu.net.veth import Veth
from emu.net.vxlan import Vxlan
from emu.wire.addr import ip_to_str


def owner_of(cluster: Cluster, ns: Namespace) -> str:
    """``node n1`` or ``pod p1a on node n1``."""
    if ns.name in cluster.nodes:
        return f"node {ns.name}"
    pod = cluster.pods.get(ns.name)
    return f"pod {ns.name} on node {pod.node.name}" if pod is not None else f"namespace {ns.name}"


def _addresses(ns: Namespace, dev: NetDevice) -> str:
    shown = [str(address) for address in ns.addresses_of(dev)]
    return f" {', '.join(shown)}" if shown else ""


def describe_interface(cluster: Cluster, ns: Namespace, dev: NetDevice) -> str:
    """One line: what `dev` of `ns` is and what it connects."""
    own = _addresses(ns, dev)
    if isinstance(dev, Veth) and dev.peer is not None and dev.peer.namespace is not None:
        peer, peer_ns = dev.peer, dev.peer.namespace
        if peer_ns.name == UNDERLAY_NAMESPACE:
            delay = f", {peer.delay_ns // 1000}us away" if peer.delay_ns else ""
            return f"node {ns.name}'s {dev.name}{own}, on the underlay switch{delay}"
        if ns.name in cluster.pods:
            bridge = f" on {peer.master.name}" if peer.master is not None else ""
            return f"pod {ns.name}'s {dev.name}{own}, peer {peer_ns.name}/{peer.name}{bridge}"
        if peer_ns.name in cluster.pods:
            bridge = f", port of {dev.master.name}" if dev.master is not None else ""
            return f"host end of {peer_ns.name}'s {peer.name}{bridge}"
        return f"{owner_of(cluster, ns)}, veth {dev.name}{own}, peer {peer_ns.name}/{peer.name}"
    if isinstance(dev, Bridge):
        ports = ", ".join(port.name for port in reversed(dev.ports)) or "none yet"  # in the order added
        return f"{owner_of(cluster, ns)}, bridge {dev.name}{own} (ports {ports})"
    if isinstance(dev, Vxlan):
        return (f"{owner_of(cluster, ns)}, VXLAN {dev.name}{own} vni {dev.vni} local "
                f"{ip_to_str(dev.local_ip)} dstport {dev.port}")
    if isinstance(dev, Tun):
        return f"{owner_of(cluster, ns)}, TUN {dev.name}{own}, read and written by flanneld"
    return f"{owner_of(cluster, ns)}, {dev.kind} {dev.name}{own}"
