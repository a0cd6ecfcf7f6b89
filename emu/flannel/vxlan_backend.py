"""flannel's vxlan backend: the flannel.1 VTEP and its per-lease state.

On start: `ip link add flannel.1 type vxlan id VNI local PUBLIC_IP dstport
PORT nolearning`, MTU = underlay MTU - 50, address 10.244.N.0/32. For each
remote lease (flannel's handleSubnetEvents): a permanent neighbour
10.244.R.0 -> VtepMAC, an FDB entry VtepMAC -> PublicIP and the route
`10.244.R.0/24 via 10.244.R.0 dev flannel.1 onlink`; all three go away
when the lease does.
"""

from __future__ import annotations

from emu.flannel.leases import Lease
from emu.net import Namespace
from emu.net.vxlan import Vxlan
from emu.wire.addr import ip_from_str, mac_from_str, mac_to_str
from emu.wire.vxlan import OVERHEAD

DEVICE_NAME = "flannel.1"


class VxlanBackend:
    type = "vxlan"
    lease_type = "vxlan"

    def __init__(self, ns: Namespace, public_ip: str, underlay_mtu: int, vni: int, port: int,
                 vtep_mac: bytes) -> None:
        self.ns = ns
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

    def add_remote(self, lease: Lease) -> str | None:
        data = lease.backend_data or {}
        try:
            vtep_mac = mac_from_str(data.get("VtepMAC", ""))
        except ValueError:
            return f"lease {lease.subnet}: BackendData has no valid VtepMAC"
        gateway = lease.subnet.network_address
        self.ns.neighbours(self.device).add_permanent(gateway.packed, vtep_mac)
        self.device.fdb_append(vtep_mac, lease.public_ip.packed)
        self.ns.routes.remove_where(lambda r: r.network == gateway.packed
                                    and r.prefixlen == lease.subnet.prefixlen)
        self.ns.add_route(str(lease.subnet), self.device, via=str(gateway), onlink=True)
        return None

    def remove_remote(self, lease: Lease) -> None:
        gateway = lease.subnet.network_address.packed
        self.ns.routes.remove_where(lambda r: r.network == gateway
                                    and r.prefixlen == lease.subnet.prefixlen and r.dev is self.device)
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
