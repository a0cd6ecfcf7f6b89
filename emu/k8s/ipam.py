"""host-local IPAM: pod addresses handed out in order from the node subnet.

Like the CNI host-local plugin with a `subnet` range: the network address,
the gateway (first host, cni0's address) and the broadcast address are never
handed out; allocation continues after the last address given, requested
ones included (the disk store writes last_reserved_ip on every Reserve),
wrapping around, and a full range is an error naming the subnet.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network


class IpamError(Exception):
    """The range cannot satisfy the request."""


class HostLocalIpam:
    """Address allocation for one node's pod subnet."""

    def __init__(self, subnet: IPv4Network) -> None:
        self.subnet = subnet
        self.gateway = subnet.network_address + 1
        self.allocated: dict[IPv4Address, str] = {}
        self._last: IPv4Address | None = None

    def _usable(self, ip: IPv4Address) -> bool:
        return (ip in self.subnet and ip not in (self.subnet.network_address, self.gateway,
                                                 self.subnet.broadcast_address))

    def allocate(self, owner: str, requested: IPv4Address | None = None) -> IPv4Address:
        """Give `owner` an address: `requested` if free, else the next one."""
        if requested is not None:
            if not self._usable(requested):
                raise IpamError(f"{requested} is not a usable address of {self.subnet} "
                                f"(network, gateway {self.gateway} and broadcast are reserved)")
            if requested in self.allocated:
                raise IpamError(f"{requested} is already allocated to {self.allocated[requested]}")
            self.allocated[requested] = owner
            self._last = requested  # host-local's store records every reservation as the last one
            return requested
        first, count = self._range()
        if count <= 0:
            raise IpamError(f"{self.subnet} has no usable addresses")
        start = 0
        if self._last is not None:
            start = int(self._last) - first + 1  # _last is always usable
        for offset in range(count):
            ip = IPv4Address(first + (start + offset) % count)
            if ip not in self.allocated:
                self.allocated[ip] = owner
                self._last = ip
                return ip
        raise IpamError(f"no free address left in {self.subnet}: all {count} usable "
                        "addresses are allocated")

    def _range(self) -> tuple[int, int]:
        """The usable addresses as (first, count): after the gateway, before
        the broadcast (none in a /31 or /32), computed rather than listed,
        so a pod's allocation does not enumerate the subnet."""
        first = int(self.subnet.network_address) + 2
        return first, int(self.subnet.broadcast_address) - first

    def release(self, ip: IPv4Address) -> None:
        self.allocated.pop(ip, None)
