"""flannel's host-gw backend: plain routes via the other nodes' addresses.

Per remote lease: `ip route replace 10.244.R.0/24 via PUBLIC_IP dev eth0`.
The gateway must be directly reachable on eth0's segment; when it is not,
flannel refuses the route (and logs it), and so do we.
"""

from __future__ import annotations

from emu.flannel.leases import Lease
from emu.net import Namespace
from emu.net.device import NetDevice


class HostGwBackend:
    type = "host-gw"
    lease_type = "host-gw"

    def __init__(self, ns: Namespace, external: NetDevice, underlay_mtu: int) -> None:
        self.ns = ns
        self.external = external
        self.mtu = underlay_mtu
        self.device = None

    def backend_data(self) -> None:
        return None

    def setup(self, lease: Lease) -> None:
        """host-gw creates no device."""

    def add_remote(self, lease: Lease) -> str | None:
        self.remove_remote(lease)
        try:
            self.ns.add_route_packed(*lease.subnet_id, self.external,
                                     lease.public_ip_packed)
        except ValueError:
            return (f"host-gw: cannot add route {lease.subnet} via {lease.public_ip}: the node "
                    f"is not on {self.external.name}'s L2 segment (host-gw needs direct "
                    "reachability between nodes)")
        return None

    def remove_remote(self, lease: Lease) -> None:
        self.ns.routes.remove(*lease.subnet_id, self.external)

    def teardown(self) -> None:
        """Routes of remote leases are removed by the lease events."""
