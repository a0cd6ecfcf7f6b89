"""A network namespace: devices, addresses, routes, neighbours, sysctls.

This is the configuration surface that the CNI plugin and flanneld use, the
equivalent of `ip link`, `ip addr`, `ip route`, `ip neigh` and
`sysctl net.ipv4.ip_forward`. The packet paths live in `emu.net.stack`.

`generation` counts configuration changes of this namespace: routes,
addresses, devices (added, removed, renamed, MAC, MTU, up/down, bridge and
VXLAN settings), sysctls (`ip_forward`, `default_ttl`,
`icmp_echo_ignore_broadcasts`), learned path MTUs, socket bindings and the
forwarding state of userspace programs in it (`changed()`). Whoever caches
a decision taken from this configuration keeps the generation it read.
The FDB, neighbour tables and sockets keep generations of their own.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from emu.net.device import NetDevice
from emu.net.loopback import Loopback
from emu.net.neighbour import NeighbourTable
from emu.net.netfilter import Netfilter, address_type_of
from emu.net.route import (SCOPE_HOST, SCOPE_LINK, SCOPE_UNIVERSE, Route, RoutingTable,
                           broadcast_of, network_of, prefix_mask)
from emu.net.stack import Ipv4Stack
from emu.net.tcp import TcpLayer
from emu.net.tcp_params import TcpSysctls
from emu.sim import Scheduler
from emu.wire.addr import LOOPBACK_FIRST, LOOPBACK_LAST, ip_from_str, ip_to_int, ip_to_str


@dataclass(frozen=True, slots=True)
class Address:
    """An address assigned to a device (`ip addr add IP/LEN dev DEV`)."""

    ip: bytes
    prefixlen: int
    dev: NetDevice
    scope: int = SCOPE_UNIVERSE

    def __str__(self) -> str:
        return f"{ip_to_str(self.ip)}/{self.prefixlen}"

    def contains(self, ip: bytes) -> bool:
        mask = prefix_mask(self.prefixlen)
        return ip_to_int(ip) & mask == ip_to_int(self.ip) & mask


NAMESPACES = "net.namespaces"  # key of a simulation's namespace list in Scheduler.services


def namespaces_of(sim: Scheduler) -> list["Namespace"]:
    """Every namespace created in simulation `sim`, in creation order."""
    return sim.services.setdefault(NAMESPACES, [])


def parse_cidr(text: str) -> tuple[bytes, int]:
    """'10.244.1.0/24' -> (network bytes, 24); a bare address is a /32."""
    ip, _, length = text.partition("/")
    return ip_from_str(ip), int(length) if length else 32


class Namespace:
    """One network namespace with its own loopback and IPv4 stack."""

    def __init__(self, sim: Scheduler, name: str, ip_forward: bool = False, seed: int = 0,
                 default_ttl: int = 64) -> None:
        self.sim = sim
        self.name = name
        self.generation = 0
        self._ip_forward = ip_forward
        self._default_ttl = default_ttl
        # net.ipv4.ip_local_port_range: where ephemeral ports come from
        self.ip_local_port_range = (32768, 60999)
        self.rng_seed = f"{seed}/{name}"
        self._rng: random.Random | None = None
        self.devices: dict[str, NetDevice] = {}
        self.addresses: list[Address] = []
        self.routes = RoutingTable(on_change=self.changed)
        self.drops: Counter = Counter()
        self.sent = self.delivered = self.forwarded = 0
        self._neighbours: dict[NetDevice, NeighbourTable] = {}
        self._local: set[bytes] = set()
        self._broadcast: dict[bytes, NetDevice] = {}
        self.stack = Ipv4Stack(self)
        # iptables + conntrack; its own seeded streams, so loading rules
        # moves none of the namespace's draws (IP ids, ports, ARP timers)
        self._bridge_nf_call_iptables = True
        self.netfilter = Netfilter(random.Random(f"{seed}/{name}/netfilter"), self._address_type,
                                   self._masquerade_source, on_change=self.changed)
        self.tcp_sysctls = TcpSysctls()
        self.stack.tcp = TcpLayer(self)
        self.lo = Loopback(sim)
        self.add_device(self.lo)
        self.add_address(self.lo, ip_from_str("127.0.0.1"), 8, scope=SCOPE_HOST)
        namespaces_of(sim).append(self)

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    def changed(self) -> None:
        """Something of this namespace's configuration changed (see the module
        docstring): bump the generation and forget cached route lookups."""
        self.generation += 1
        self.routes.invalidate()

    @property
    def ip_forward(self) -> bool:
        """`sysctl net.ipv4.ip_forward`."""
        return self._ip_forward

    @ip_forward.setter
    def ip_forward(self, value: bool) -> None:
        self._ip_forward = value
        self.changed()

    @property
    def default_ttl(self) -> int:
        """`sysctl net.ipv4.ip_default_ttl`."""
        return self._default_ttl

    @default_ttl.setter
    def default_ttl(self, value: int) -> None:
        self._default_ttl = value
        self.changed()

    @property
    def rng(self) -> random.Random:
        """The namespace's seeded stream (ping identifiers, IP ids, ports,
        reachable-time jitter), made on first use: most pods of a big
        cluster never draw, and a Mersenne Twister state is 2.5 KB. Its first
        draw is the stack's first IP identifier, as when it was made with the
        namespace, so every later draw is the same."""
        if self._rng is None:
            self._rng = random.Random(self.rng_seed)
            self.stack.seed_ident(self._rng)
        return self._rng

    @property
    def bridge_nf_call_iptables(self) -> bool:
        """`sysctl net.bridge.bridge-nf-call-iptables`: bridged IPv4 frames go
        through iptables (br_netfilter). 1 in a new namespace once the module
        is loaded, as on the reference host (Linux 6.18) and Kubernetes nodes."""
        return self._bridge_nf_call_iptables

    @bridge_nf_call_iptables.setter
    def bridge_nf_call_iptables(self, value: bool) -> None:
        self._bridge_nf_call_iptables = value
        self.changed()

    def drop(self, reason: str) -> None:
        """Count a packet the stack refused, under a named reason."""
        self.drops[reason] += 1
        observer = self.sim.observer
        if observer is not None:
            observer.drop(self, None, reason)

    # -- devices --------------------------------------------------------------
    def add_device(self, dev: NetDevice) -> NetDevice:
        if dev.name in self.devices:
            raise ValueError(f"{self.name}: device {dev.name} exists already")
        if dev.namespace is not None:
            dev.namespace.detach_device(dev)
        dev.namespace = self
        self.devices[dev.name] = dev
        self.changed()
        return dev

    def detach_device(self, dev: NetDevice) -> None:
        """Remove a device and everything that points at it (addresses,
        routes, neighbours), as deleting a link does."""
        if self.devices.get(dev.name) is not dev:
            raise ValueError(f"{self.name}: no device {dev.name}")
        del self.devices[dev.name]
        for address in [a for a in self.addresses if a.dev is dev]:
            self.remove_address(address)
        self.routes.remove_where(lambda r: r.dev is dev)
        table = self._neighbours.pop(dev, None)
        if table is not None:
            for ip in list(table.entries):
                table.remove(ip)
        dev.namespace = None
        self.changed()

    def rename_device(self, dev: NetDevice, new_name: str) -> None:
        if new_name in self.devices:
            raise ValueError(f"{self.name}: device {new_name} exists already")
        del self.devices[dev.name]
        dev.name = new_name
        self.devices[new_name] = dev
        self.changed()

    def device(self, name: str) -> NetDevice:
        try:
            return self.devices[name]
        except KeyError:
            raise ValueError(f"{self.name}: no device {name}") from None

    # -- addresses ------------------------------------------------------------
    def add_address(self, dev: NetDevice, ip: bytes, prefixlen: int, scope: int = SCOPE_UNIVERSE,
                    noprefixroute: bool = False) -> Address:
        """Assign IP/LEN to `dev`; adds the connected route like the kernel."""
        if dev.namespace is not self:
            raise ValueError(f"{dev.name} is not in namespace {self.name}")
        if ip in self._local:
            raise ValueError(f"{self.name}: address {ip_to_str(ip)} exists already")
        address = Address(ip, prefixlen, dev, scope)
        self.addresses.append(address)
        self.changed()
        self._local.add(ip)
        if prefixlen < 31:
            self._broadcast[broadcast_of(ip, prefixlen)] = dev
        if prefixlen < 32 and not noprefixroute and scope != SCOPE_HOST:
            network = network_of(ip, prefixlen)
            if not self.routes.find(network, prefixlen):
                self.routes.add(Route(network, prefixlen, dev, prefsrc=ip, scope=SCOPE_LINK,
                                      proto="kernel"))
        return address

    def remove_address(self, address: Address) -> None:
        self.addresses.remove(address)
        self._local.discard(address.ip)
        self.changed()
        self._broadcast = {broadcast_of(a.ip, a.prefixlen): a.dev for a in self.addresses
                           if a.prefixlen < 31}
        self.routes.remove_where(lambda r: r.proto == "kernel" and r.prefsrc == address.ip)

    def is_local_address(self, ip: bytes) -> bool:
        return ip in self._local or LOOPBACK_FIRST <= bytes(ip) <= LOOPBACK_LAST  # 127/8, no call

    def is_broadcast_address(self, ip: bytes, dev: NetDevice | None = None) -> bool:
        if ip == b"\xff\xff\xff\xff":
            return True
        owner = self._broadcast.get(ip)
        return owner is not None and (dev is None or owner is dev)

    def addresses_of(self, dev: NetDevice) -> list[Address]:
        return [a for a in self.addresses if a.dev is dev]

    def select_source(self, dev: NetDevice, dst: bytes | None, link_scope: bool = False,
                      scope: int = SCOPE_UNIVERSE) -> bytes | None:
        """inet_select_addr: prefer an address of `dev` on the same subnet as
        `dst`, else its first; failing that, any other device's address."""
        if link_scope:
            scope = SCOPE_LINK
        first = None
        for address in self.addresses_of(dev):
            if address.scope > scope:
                continue
            if dst is None or address.contains(dst):
                return address.ip
            if first is None:
                first = address.ip
        if first is not None:
            return first
        for address in self.addresses:
            if address.scope != SCOPE_LINK and address.scope <= scope:
                return address.ip
        return None

    def _address_type(self, ip: bytes) -> str:
        """xt_addrtype's view of an address (inet_addr_type)."""
        if self.is_broadcast_address(ip) and not self.is_local_address(ip):
            return "BROADCAST"
        return address_type_of(ip, self.is_local_address)

    def _masquerade_source(self, out_dev: str, nexthop: bytes) -> bytes | None:
        """MASQUERADE's source: inet_select_addr(out device, next hop, universe)."""
        dev = self.devices.get(out_dev)
        return None if dev is None else self.select_source(dev, nexthop)

    def source_for(self, route: Route) -> bytes | None:
        """fib_result_prefsrc: the route's `src`, else chosen on its device."""
        if route.prefsrc is not None:
            return route.prefsrc
        return self.select_source(route.dev, route.gateway, scope=route.scope)

    # -- routes ---------------------------------------------------------------
    def add_route(self, cidr: str, dev: NetDevice | str, via: str | None = None,
                  onlink: bool = False, src: str | None = None, metric: int = 0,
                  scope: int | None = None) -> Route:
        """`ip route add CIDR [via GW] dev DEV [onlink] [src SRC]`."""
        if isinstance(dev, str):
            dev = self.device(dev)
        network, prefixlen = parse_cidr(cidr)
        return self.add_route_packed(network, prefixlen, dev, ip_from_str(via) if via else None, onlink,
                                     ip_from_str(src) if src else None, metric, scope)

    def add_route_packed(self, network: bytes, prefixlen: int, dev: NetDevice, gateway: bytes | None = None,
                         onlink: bool = False, src: bytes | None = None, metric: int = 0,
                         scope: int | None = None) -> Route:
        """`add_route` with the addresses as 4-byte values (flanneld adds a
        route per remote node: no text to format and parse again)."""
        if gateway is not None and not onlink and not self.routes.has_link_route(dev, gateway):
            raise ValueError(f"{self.name}: route {ip_to_str(network)}/{prefixlen} via {ip_to_str(gateway)} "
                             f"dev {dev.name}: Nexthop has invalid gateway (not on-link; add 'onlink'?)")
        if scope is None:
            scope = SCOPE_UNIVERSE if gateway is not None else SCOPE_LINK
        route = Route(network, prefixlen, dev, gateway=gateway, prefsrc=src, onlink=onlink, scope=scope,
                      metric=metric)
        self.routes.add(route)
        return route

    def route_output(self, dst: bytes, oif: NetDevice | None) -> tuple[Route | None, bool]:
        """Output route lookup; local destinations go through `lo`."""
        if self.is_local_address(dst):
            return Route(dst, 32, self.lo, prefsrc=dst, scope=SCOPE_HOST, proto="kernel"), True
        if dst == b"\xff\xff\xff\xff" and oif is not None:
            return Route(dst, 32, oif, scope=SCOPE_LINK), False
        return self.routes.lookup(dst, oif), False

    # -- neighbours -----------------------------------------------------------
    def neighbours(self, dev: NetDevice) -> NeighbourTable:
        table = self._neighbours.get(dev)
        if table is None:
            table = self._neighbours[dev] = NeighbourTable(self, dev)
        return table

    def neighbour_tables(self) -> dict[NetDevice, NeighbourTable]:
        return dict(self._neighbours)

    # -- listings ---------------------------------------------------------------
    def show_addresses(self) -> list[str]:
        return [f"{a.dev.name}: inet {a}" for a in self.addresses]

    def show_routes(self) -> list[str]:
        return self.routes.show()

    def show_neighbours(self) -> list[str]:
        lines = []
        for table in self._neighbours.values():
            lines.extend(table.show())
        return lines

    def stats(self) -> dict:
        """Counters for stats.json: per device and for the stack."""
        return {
            "ip_forward": self.ip_forward,
            "stack": {"sent": self.sent, "delivered": self.delivered, "forwarded": self.forwarded,
                      "drops": dict(sorted(self.drops.items()))},
            "devices": {name: dev.stats.as_dict() | ({"bridge": dev.counters()}
                                                     if hasattr(dev, "counters") else {})
                        for name, dev in sorted(self.devices.items())},
        }
