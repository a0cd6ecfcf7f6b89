"""The CNI bridge plugin as flannel's CNI config runs it.

flannel's CNI plugin delegates to `bridge` with isDefaultGateway and
hairpinMode (from its config), the MTU from subnet.env (FLANNEL_MTU) unless
overridden, and host-local IPAM over FLANNEL_SUBNET. For each pod: create the
bridge on first use (gateway address = first host of the node subnet, MAC
0a:58 + gateway bytes unless given), a veth pair with the host end enslaved
(hairpin as configured) and the pod end renamed eth0 in the pod's namespace,
the pod address, and a default route via the gateway.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from emu.k8s.ipam import HostLocalIpam
from emu.net import Bridge, Namespace, veth_pair


def derived_mac(ip: IPv4Address) -> bytes:
    """0a:58 + the IPv4 bytes: how the CNI plugins derive MACs from IPs."""
    return b"\x0a\x58" + ip.packed


class BridgePlugin:
    """One node's CNI bridge plugin state: the bridge and its IPAM."""

    def __init__(self, node_ns: Namespace, subnet: IPv4Network, bridge_name: str, mtu: int,
                 hairpin: bool, bridge_mac: bytes | None = None) -> None:
        self.ns = node_ns
        self.subnet = subnet
        self.bridge_name = bridge_name
        self.mtu = mtu
        self.hairpin = hairpin
        self.gateway = subnet.network_address + 1
        self.bridge_mac = bridge_mac or derived_mac(self.gateway)
        self.ipam = HostLocalIpam(subnet)
        self.bridge: Bridge | None = None

    def _ensure_bridge(self) -> Bridge:
        if self.bridge is None:
            bridge = Bridge(self.ns.sim, self.bridge_name, self.bridge_mac, self.mtu)
            self.ns.add_device(bridge)
            self.ns.add_address(bridge, self.gateway.packed, self.subnet.prefixlen)
            self.bridge = bridge
        return self.bridge

    def add(self, pod_ns: Namespace, host_veth: str, host_veth_mac: bytes,
            ip: IPv4Address | None = None, mac: bytes | None = None) -> tuple[IPv4Address, bytes]:
        """CNI ADD: wire `pod_ns` to the bridge; returns (ip, mac) of eth0."""
        address = self.ipam.allocate(pod_ns.name, ip)
        pod_mac = mac or derived_mac(address)
        bridge = self._ensure_bridge()
        pod_end, host_end = veth_pair(self.ns.sim, "eth0", pod_mac, host_veth, host_veth_mac,
                                      self.mtu)
        pod_ns.add_device(pod_end)
        self.ns.add_device(host_end)
        bridge.add_port(host_end, hairpin=self.hairpin)
        pod_ns.add_address(pod_end, address.packed, self.subnet.prefixlen)
        pod_ns.add_route("0.0.0.0/0", pod_end, via=str(self.gateway))
        return address, pod_mac

    def delete(self, pod_ns: Namespace, host_veth: str, ip: IPv4Address) -> None:
        """CNI DEL: remove the veth pair and release the address."""
        host_end = self.ns.devices.get(host_veth)
        if host_end is not None:
            if self.bridge is not None and host_end.master is self.bridge:
                self.bridge.remove_port(host_end)
            self.ns.detach_device(host_end)
        pod_end = pod_ns.devices.get("eth0")
        if pod_end is not None:
            pod_ns.detach_device(pod_end)
        self.ipam.release(ip)
