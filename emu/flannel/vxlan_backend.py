"""flannel's vxlan backend: the flannel.1 VTEP and its per-lease state.

On start: `ip link add flannel.1 type vxlan id VNI local PUBLIC_IP dstport
PORT nolearning`, MTU = underlay MTU - 50, address 10.244.N.0/32. For each
remote lease (flannel's handleSubnetEvents): a permanent neighbour
10.244.R.0 -> VtepMAC, an FDB entry VtepMAC -> PublicIP and the route
`10.244.R.0/24 via 10.244.R.0 dev flannel.1 onlink`; all three go away
when the lease does.

With DirectRouting, a remote node this host reaches without a gateway
(flannel's ip.DirectRouting: the route to its public IP has no gateway)
gets `10.244.R.0/24 via PUBLIC_IP dev eth0` instead, as host-gw would, and
no neighbour or FDB entry; the others still go through flannel.1. The pod
MTU stays the vxlan one.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network

from emu.flannel.leases import Lease
from emu.net import Namespace
from emu.net.device import NetDevice
from emu.net.vxlan import Vxlan
from emu.wire.addr import ip_from_str, mac_from_str, mac_to_str
from emu.wire.vxlan import OVERHEAD

DEVICE_NAME = "flannel.1"


@lru_cache(maxsize=1 << 17)
def _parse_vtep_mac(text: str) -> bytes | None:
    """A lease's VtepMAC as 6 bytes (None: not a MAC), parsed once per
    lease for all the nodes that program it, and shared by their entries."""
    try:
        return mac_from_str(text)
    except ValueError:
        return None


class VxlanBackend:
    type = "vxlan"
    lease_type = "vxlan"

    def __init__(self, ns: Namespace, public_ip: str, underlay_mtu: int, vni: int, port: int,
                 vtep_mac: bytes, direct_routing: bool = False,
                 external: NetDevice | None = None) -> None:
        if direct_routing and external is None:
            raise ValueError("direct_routing needs the external device (eth0)")
        self.ns = ns
        self.direct_routing = direct_routing
        self.external = external
        self.direct: set[IPv4Network] = set()  # remote subnets routed directly, not tunnelled
        self.public_ip = public_ip
        self.mtu = underlay_mtu - OVERHEAD
        self.vni = vni
        self.port = port
        self.vtep_mac = vtep_mac
        self.device: Vxlan | None = None

    def backend_data(self) -> dict:
        return {"VNI": self.vni, "VtepMAC": mac_to_str(self.vtep_mac)}

    def setup(self, lease: Lease) -> None:
        dev = Vxlan(self.ns.sim, DEVICE_NAME, self.vtep_mac, self.vni, self.port,
                    ip_from_str(self.public_ip), self.mtu)
        self.ns.add_device(dev)
        dev.attach()
        self.ns.add_address(dev, lease.subnet.network_address.packed, 32)
        self.device = dev

    def _reaches_directly(self, address: IPv4Address) -> bool:
        """flannel's ip.DirectRouting: the route to `address` has no gateway."""
        route, local = self.ns.route_output(address.packed, None)
        return route is not None and not local and route.gateway is None

    def add_remote(self, lease: Lease) -> str | None:
        if self.direct_routing and self._reaches_directly(lease.public_ip):
            self._remove_route(lease)
            self.ns.add_route_packed(*lease.subnet_id, self.external,
                                     lease.public_ip_packed)
            self.direct.add(lease.subnet)
            return None
        if self.direct:
            self.direct.discard(lease.subnet)
        text = (lease.backend_data or {}).get("VtepMAC", "")
        vtep_mac = _parse_vtep_mac(text) if isinstance(text, str) else None
        if vtep_mac is None:
            return f"lease {lease.subnet}: BackendData has no valid VtepMAC"
        gateway = lease.network_packed
        self.ns.neighbours(self.device).add_permanent(gateway, vtep_mac)
        self.device.fdb_append(vtep_mac, lease.public_ip_packed)
        self._remove_route(lease)
        self.ns.add_route_packed(*lease.subnet_id, self.device, gateway, onlink=True)
        return None

    def _remove_route(self, lease: Lease) -> None:
        self.ns.routes.remove(*lease.subnet_id)

    def remove_remote(self, lease: Lease) -> None:
        if lease.subnet in self.direct:
            self.direct.discard(lease.subnet)
            self.ns.routes.remove(*lease.subnet_id, self.external)
            return
        gateway = lease.network_packed
        self.ns.routes.remove(*lease.subnet_id, self.device)
        table = self.ns.neighbours(self.device)
        entry = table.lookup(gateway)
        table.remove(gateway)
        if entry is not None and entry.mac is not None:
            self.device.fdb_delete(entry.mac)

    def teardown(self) -> None:
        if self.device is not None:
            self.device.detach()
            self.ns.detach_device(self.device)
            self.device = None
