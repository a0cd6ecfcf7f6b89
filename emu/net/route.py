"""IPv4 routing table with longest-prefix match, as `ip route` shows it.

Connected routes appear when an address is added (scope link, with the
address as preferred source); `via` routes name a gateway that must be
reachable on-link unless `onlink` is given; `dev`-only routes send straight
to the destination. Ties on prefix length go to the lowest metric (at most
one route per destination, prefix length and metric, as Linux refuses
another with "File exists").

The table is indexed by (prefix length, metric), each group a dict from
network address to route, so adding, finding and removing a route costs the
same with 10 routes as with 5,000 (a flannel node has one per other node),
and a lookup probes each group once, longest prefix first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from emu.wire.addr import int_to_ip, ip_to_int, ip_to_str

if TYPE_CHECKING:
    from emu.net.device import NetDevice

ROUTE_CACHE_SIZE = 65536
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
SCOPE_HOST = 254


def prefix_mask(prefixlen: int) -> int:
    return (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF if prefixlen else 0


@dataclass(frozen=True, slots=True)
class Route:
    """One route. `network` is the 4-byte network address."""

    network: bytes
    prefixlen: int
    dev: "NetDevice"
    gateway: bytes | None = None
    prefsrc: bytes | None = None
    onlink: bool = False
    scope: int = SCOPE_UNIVERSE
    metric: int = 0
    proto: str = "static"

    def contains(self, ip: bytes) -> bool:
        mask = prefix_mask(self.prefixlen)
        return ip_to_int(ip) & mask == ip_to_int(self.network)

    def __str__(self) -> str:
        dst = "default" if self.prefixlen == 0 else f"{ip_to_str(self.network)}/{self.prefixlen}"
        if self.prefixlen == 32 and dst != "default":
            dst = ip_to_str(self.network)
        text = dst
        if self.gateway is not None:
            text += f" via {ip_to_str(self.gateway)}"
        text += f" dev {self.dev.name}"
        if self.proto == "kernel":
            text += " proto kernel"
        if self.scope == SCOPE_LINK:
            text += " scope link"
        if self.prefsrc is not None:
            text += f" src {ip_to_str(self.prefsrc)}"
        if self.metric:
            text += f" metric {self.metric}"
        if self.onlink:
            text += " onlink"
        return text


class RoutingTable:
    """The main table of one namespace. `on_change` is called after every
    change (the namespace bumps its generation)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._groups: dict[tuple[int, int], dict[bytes, Route]] = {}
        # (prefixlen, metric, mask, group), longest prefix first, then lowest metric.
        self._probes: list[tuple[int, int, int, dict[bytes, Route]]] = []
        self._cache: dict[tuple, Route | None] = {}
        self._on_change = on_change

    def invalidate(self) -> None:
        """Forget cached lookups (routes, or the devices they use, changed)."""
        self._cache.clear()

    def _changed(self) -> None:
        self._cache.clear()
        if self._on_change is not None:
            self._on_change()

    @property
    def routes(self) -> list[Route]:
        """Every route, in the order `ip route` lists them."""
        return sorted((route for group in self._groups.values() for route in group.values()),
                      key=lambda r: (r.prefixlen == 0, ip_to_int(r.network), r.prefixlen, r.metric))

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def add(self, route: Route) -> None:
        mask = prefix_mask(route.prefixlen)
        if ip_to_int(route.network) & ~mask & 0xFFFFFFFF:
            raise ValueError(f"{ip_to_str(route.network)}/{route.prefixlen}: host bits set")
        key = (route.prefixlen, route.metric)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = {}
            self._probes.append((route.prefixlen, route.metric, mask, group))
            self._probes.sort(key=lambda probe: (-probe[0], probe[1]))
        existing = group.get(route.network)
        if existing is not None:
            raise ValueError(f"route {route} exists already ({existing})")
        group[route.network] = route
        self._changed()

    def find(self, network: bytes, prefixlen: int) -> list[Route]:
        """The routes to exactly `network`/`prefixlen` (one per metric)."""
        return [group[network] for length, _, _, group in self._probes
                if length == prefixlen and network in group]

    def remove(self, network: bytes, prefixlen: int, dev: "NetDevice | None" = None) -> int:
        """`ip route del NETWORK/PREFIXLEN [dev DEV]` for every metric; the number removed."""
        removed = 0
        for length, _, _, group in self._probes:
            route = group.get(network) if length == prefixlen else None
            if route is not None and (dev is None or route.dev is dev):
                del group[network]
                removed += 1
        if removed:
            self._changed()
        return removed

    def remove_where(self, predicate) -> int:
        removed = 0
        for group in self._groups.values():
            doomed = [network for network, route in group.items() if predicate(route)]
            for network in doomed:
                del group[network]
            removed += len(doomed)
        if removed:
            self._changed()
        return removed

    def has_link_route(self, dev: "NetDevice", ip: bytes) -> bool:
        """Is `ip` on-link through `dev`: a route without gateway on `dev` contains it."""
        value = ip_to_int(ip)
        for _, _, mask, group in self._probes:
            route = group.get(int_to_ip(value & mask))
            if route is not None and route.dev is dev and route.gateway is None:
                return True
        return False

    def lookup(self, dst: bytes, oif: "NetDevice | None" = None) -> Route | None:
        """Longest-prefix match (optionally only routes through `oif`).

        Results are cached per (destination, oif) until this table or its
        namespace's devices change (`invalidate`), so the forwarding path does
        not rescan the table for every packet.
        """
        key = (dst, oif)
        try:
            return self._cache[key]
        except KeyError:
            pass
        route = self._longest_match(dst, oif)
        if len(self._cache) < ROUTE_CACHE_SIZE:
            self._cache[key] = route
        return route

    def _longest_match(self, dst: bytes, oif: "NetDevice | None") -> Route | None:
        value = ip_to_int(dst)
        for _, _, mask, group in self._probes:
            route = group.get(int_to_ip(value & mask))
            if route is None or not route.dev.up or (oif is not None and route.dev is not oif):
                continue
            return route
        return None

    def show(self) -> list[str]:
        return [str(r) for r in self.routes]


def network_of(ip: bytes, prefixlen: int) -> bytes:
    return int_to_ip(ip_to_int(ip) & prefix_mask(prefixlen))


def broadcast_of(ip: bytes, prefixlen: int) -> bytes:
    return int_to_ip(ip_to_int(ip) | (~prefix_mask(prefixlen) & 0xFFFFFFFF))
