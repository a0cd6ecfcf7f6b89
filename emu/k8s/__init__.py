"""Kubernetes on top of emu.net: nodes, pods, the CNI bridge plugin, host-local IPAM."""

from emu.k8s.cluster import Cluster, Node, Pod
from emu.k8s.cni import BridgePlugin, derived_mac
from emu.k8s.ipam import HostLocalIpam, IpamError

__all__ = ["Cluster", "Node", "Pod", "BridgePlugin", "derived_mac", "HostLocalIpam", "IpamError"]
