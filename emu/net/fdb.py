"""The bridge forwarding database: MAC -> port, learned, aged, or static.

Aging is lazy, as in ns-3 and in effect in Linux: an entry older than the
ageing time is treated as absent when looked up, so forwarding never scans
the table. `sweep()` removes stale entries when a listing is wanted.

Storage is compact so a bridge can hold a million MACs in well under 200 MB:
a dict MAC -> slot plus parallel per-slot columns (timestamps in an
`array('q')`, ports in a list, flags in a `bytearray`) and a free list of
slots, instead of one object per entry. `entries` is a computed view for
listings and tests; the data path uses `lookup_port` and `learn`.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.net.fastpath import config_changed
from emu.wire.addr import mac_to_str

if TYPE_CHECKING:
    from emu.net.device import NetDevice

DEFAULT_AGEING_NS = 300 * 1_000_000_000

STATIC = 1
LOCAL = 2


@dataclass
class FdbEntry:
    """One FDB entry as a value (a copy: change the table through `Fdb`).
    `local` marks the bridge's and its ports' own MACs (delivered up to the
    bridge device); `static` entries never age."""

    mac: bytes
    port: "NetDevice | None"
    updated_ns: int
    static: bool = False
    local: bool = False


class Fdb:
    """MAC table of one bridge."""

    def __init__(self, ageing_ns: int = DEFAULT_AGEING_NS) -> None:
        self.ageing_ns = ageing_ns
        self.generation = 0  # bumped on every change: flow caches key on it
        self._slot: dict[bytes, int] = {}
        self._macs: list[bytes | None] = []
        self._ports: list["NetDevice | None"] = []
        self._updated = array("q")
        self._flags = bytearray()
        self._free: list[int] = []

    # -- storage ------------------------------------------------------------
    def _changed(self) -> None:
        self.generation += 1
        config_changed()

    def _insert(self, mac: bytes, port: "NetDevice | None", now_ns: int, flags: int) -> None:
        if self._free:
            slot = self._free.pop()
            self._macs[slot] = mac
            self._ports[slot] = port
            self._updated[slot] = now_ns
            self._flags[slot] = flags
        else:
            slot = len(self._macs)
            self._macs.append(mac)
            self._ports.append(port)
            self._updated.append(now_ns)
            self._flags.append(flags)
        self._slot[mac] = slot

    def _delete(self, mac: bytes) -> None:
        slot = self._slot.pop(mac)
        self._macs[slot] = None
        self._ports[slot] = None
        self._free.append(slot)

    def _expired(self, slot: int, now_ns: int) -> bool:
        return not self._flags[slot] & STATIC and now_ns - self._updated[slot] > self.ageing_ns

    def _entry(self, slot: int) -> FdbEntry:
        flags = self._flags[slot]
        return FdbEntry(self._macs[slot], self._ports[slot], self._updated[slot],
                        static=bool(flags & STATIC), local=bool(flags & LOCAL))

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, mac: bytes) -> bool:
        return mac in self._slot

    @property
    def entries(self) -> dict[bytes, FdbEntry]:
        """Every entry (aged ones included until looked up or swept), as values."""
        return {mac: self._entry(slot) for mac, slot in self._slot.items()}

    # -- the data path ------------------------------------------------------
    def _live_slot(self, mac: bytes, now_ns: int) -> int | None:
        """The slot of `mac` if its entry is live; an aged entry is removed."""
        slot = self._slot.get(mac)
        if slot is None:
            return None
        if self._expired(slot, now_ns):
            self._delete(mac)
            self._changed()
            return None
        return slot

    def lookup(self, mac: bytes, now_ns: int) -> FdbEntry | None:
        """The live entry for `mac` (an aged one is removed), or None."""
        slot = self._live_slot(mac, now_ns)
        return None if slot is None else self._entry(slot)

    def lookup_port(self, mac: bytes, now_ns: int) -> tuple["NetDevice | None", bool] | None:
        """`lookup` without building an entry: (port, local) or None."""
        slot = self._live_slot(mac, now_ns)
        return None if slot is None else (self._ports[slot], bool(self._flags[slot] & LOCAL))

    def is_live(self, mac: bytes, now_ns: int) -> bool:
        """True when `mac` has an entry that a lookup at `now_ns` would return."""
        slot = self._slot.get(mac)
        return slot is not None and not self._expired(slot, now_ns)

    def learn(self, mac: bytes, port: "NetDevice", now_ns: int) -> bool:
        """Record that `mac` was seen on `port`; False if it is a local/static
        entry that learning may not move (Linux logs "own address as source")."""
        slot = self._slot.get(mac)
        if slot is None:
            self._insert(mac, port, now_ns, 0)
            self._changed()
            return True
        if self._flags[slot]:
            return self._ports[slot] is port
        if self._ports[slot] is not port:
            self._ports[slot] = port
            self._changed()
        self._updated[slot] = now_ns
        return True

    # -- configuration ------------------------------------------------------
    def add_static(self, mac: bytes, port: "NetDevice | None", local: bool = False) -> None:
        """A permanent entry (`bridge fdb add ... permanent`, or a local MAC)."""
        if mac in self._slot:
            self._delete(mac)
        self._insert(mac, port, 0, STATIC | (LOCAL if local else 0))
        self._changed()

    def remove(self, mac: bytes) -> None:
        if mac in self._slot:
            self._delete(mac)
            self._changed()

    def flush_port(self, port: "NetDevice") -> None:
        """Forget every learned entry on `port` (the port left the bridge)."""
        for mac in [m for m, slot in self._slot.items() if self._ports[slot] is port]:
            self._delete(mac)
        self._changed()

    def sweep(self, now_ns: int) -> None:
        """Remove every aged entry (the periodic garbage collection)."""
        stale = [m for m, slot in self._slot.items() if self._expired(slot, now_ns)]
        for mac in stale:
            self._delete(mac)
        if stale:
            self._changed()

    def show(self, bridge_name: str, now_ns: int) -> list[str]:
        """Lines as `bridge fdb show br BRIDGE` prints them: local MACs are
        "permanent", user-added ones "static", learned ones carry no flag
        (iproute2 still prints the separating space)."""
        self.sweep(now_ns)
        lines = []
        for entry in sorted(self.entries.values(), key=lambda e: (e.port.name if e.port else "", e.mac)):
            dev = entry.port.name if entry.port is not None else bridge_name
            flags = "permanent" if entry.local else "static" if entry.static else ""
            lines.append(f"{mac_to_str(entry.mac)} dev {dev} master {bridge_name} {flags}")
        return lines
