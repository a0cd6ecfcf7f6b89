"""IPv4 routing table with longest-prefix match, as `ip route` shows it.

Connected routes appear when an address is added (scope link, with the
address as preferred source); `via` routes name a gateway that must be
reachable on-link unless `onlink` is given; `dev`-only routes send straight
to the destination. Ties on prefix length go to the lowest metric, then to
the route added first.
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


@dataclass(frozen=True)
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
        self.routes: list[Route] = []
        self._cache: dict[tuple, Route | None] = {}
        self._on_change = on_change

    def invalidate(self) -> None:
        """Forget cached lookups (routes, or the devices they use, changed)."""
        self._cache.clear()

    def _changed(self) -> None:
        self._cache.clear()
        if self._on_change is not None:
            self._on_change()

    def add(self, route: Route) -> None:
        mask = prefix_mask(route.prefixlen)
        if ip_to_int(route.network) & ~mask & 0xFFFFFFFF:
            raise ValueError(f"{ip_to_str(route.network)}/{route.prefixlen}: host bits set")
        for existing in self.routes:
            if (existing.network, existing.prefixlen, existing.metric) == (
                    route.network, route.prefixlen, route.metric):
                raise ValueError(f"route {route} exists already ({existing})")
        self.routes.append(route)
        self._changed()

    def remove_where(self, predicate) -> int:
        before = len(self.routes)
        self.routes = [r for r in self.routes if not predicate(r)]
        removed = before - len(self.routes)
        if removed:
            self._changed()
        return removed

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
        best: Route | None = None
        for route in self.routes:
            if oif is not None and route.dev is not oif:
                continue
            if not route.dev.up:
                continue
            if value & prefix_mask(route.prefixlen) != ip_to_int(route.network):
                continue
            if best is None or route.prefixlen > best.prefixlen or (
                    route.prefixlen == best.prefixlen and route.metric < best.metric):
                best = route
        return best

    def show(self) -> list[str]:
        return [str(r) for r in sorted(self.routes, key=lambda r: (-r.prefixlen == 0, ip_to_int(r.network), r.prefixlen))]


def network_of(ip: bytes, prefixlen: int) -> bytes:
    return int_to_ip(ip_to_int(ip) & prefix_mask(prefixlen))


def broadcast_of(ip: bytes, prefixlen: int) -> bytes:
    return int_to_ip(ip_to_int(ip) | (~prefix_mask(prefixlen) & 0xFFFFFFFF))
