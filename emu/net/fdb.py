"""The bridge forwarding database: MAC -> port, learned, aged, or static.

Aging is lazy, as in ns-3 and in effect in Linux: an entry older than the
ageing time is treated as absent when looked up, so forwarding never scans
the table. `sweep()` removes stale entries when a listing is wanted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.wire.addr import mac_to_str

if TYPE_CHECKING:
    from emu.net.device import NetDevice

DEFAULT_AGEING_NS = 300 * 1_000_000_000


@dataclass
class FdbEntry:
    """One FDB entry. `local` marks the bridge's and its ports' own MACs
    (delivered up to the bridge device); `static` entries never age."""

    mac: bytes
    port: "NetDevice | None"
    updated_ns: int
    static: bool = False
    local: bool = False


class Fdb:
    """MAC table of one bridge."""

    def __init__(self, ageing_ns: int = DEFAULT_AGEING_NS) -> None:
        self.ageing_ns = ageing_ns
        self.entries: dict[bytes, FdbEntry] = {}
        self.generation = 0  # bumped on every change: flow caches key on it

    def lookup(self, mac: bytes, now_ns: int) -> FdbEntry | None:
        entry = self.entries.get(mac)
        if entry is None:
            return None
        if not entry.static and now_ns - entry.updated_ns > self.ageing_ns:
            del self.entries[mac]
            self.generation += 1
            return None
        return entry

    def learn(self, mac: bytes, port: "NetDevice", now_ns: int) -> bool:
        """Record that `mac` was seen on `port`; False if it is a local/static
        entry that learning may not move (Linux logs "own address as source")."""
        entry = self.entries.get(mac)
        if entry is None:
            self.entries[mac] = FdbEntry(mac, port, now_ns)
            self.generation += 1
            return True
        if entry.static or entry.local:
            return entry.port is port
        if entry.port is not port:
            entry.port = port
            self.generation += 1
        entry.updated_ns = now_ns
        return True

    def add_static(self, mac: bytes, port: "NetDevice | None", local: bool = False) -> None:
        """A permanent entry (`bridge fdb add ... permanent`, or a local MAC)."""
        self.entries[mac] = FdbEntry(mac, port, 0, static=True, local=local)
        self.generation += 1

    def remove(self, mac: bytes) -> None:
        if self.entries.pop(mac, None) is not None:
            self.generation += 1

    def flush_port(self, port: "NetDevice") -> None:
        """Forget every learned entry on `port` (the port left the bridge)."""
        for mac in [m for m, e in self.entries.items() if e.port is port]:
            del self.entries[mac]
        self.generation += 1

    def sweep(self, now_ns: int) -> None:
        for mac in [m for m, e in self.entries.items()
                    if not e.static and now_ns - e.updated_ns > self.ageing_ns]:
            del self.entries[mac]
            self.generation += 1

    def show(self, bridge_name: str, now_ns: int) -> list[str]:
        """Lines in the style of `bridge fdb show br BRIDGE`."""
        self.sweep(now_ns)
        lines = []
        for entry in sorted(self.entries.values(), key=lambda e: (e.port.name if e.port else "", e.mac)):
            dev = entry.port.name if entry.port is not None else bridge_name
            if entry.static:
                flags = "permanent"
            else:
                flags = f"ageing {(now_ns - entry.updated_ns) / 1e9:.2f}s"
            master = f" master {bridge_name}" if entry.port is not None else ""
            lines.append(f"{mac_to_str(entry.mac)} dev {dev}{master} {flags}")
        return lines
