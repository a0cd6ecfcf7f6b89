"""The bridge forwarding database: MAC -> port, learned, aged, or static.

Aging is lazy, as in ns-3 and in effect in Linux: an entry older than the
ageing time is treated as absent when looked up, so forwarding never scans
the table. `sweep()` removes stale entries when a listing is wanted.

Storage is compact so a bridge can hold a million MACs in well under 200 MB:
a dict MAC -> slot (the MAC bytes are kept only as its keys) plus parallel per-slot columns (timestamps in an
`array('q')`, port numbers in an `array('i')`, flags in a `bytearray`) and a
free list of slots, instead of one object per entry. `entries` is a computed
view for listings and tests; the per-frame data path uses `lookup_port` and
`learn`.

The batched data path (`lookup_batch`, `learn_batch`) answers a whole batch
of frames with numpy: a second index (`MacIndex`, MAC key -> slot in flat
arrays) finds every slot at once, and the columns are read and written as
array views. The dict stays for single MACs, where it is fastest.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emu.net.mac_index import MacIndex, mac_key
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
        self._ageing_ns = ageing_ns
        self.generation = 0  # bumped on every change (entries, ports' flags, ageing time)
        self.layout = 0  # bumped when a MAC gets or loses its slot (slots read earlier go stale)
        self._slot: dict[bytes, int] = {}
        self._index = MacIndex()
        self._port_no = array("i")  # a number from `port_number`: 0 is "no port"
        self._updated = array("q")
        self._flags = bytearray()
        self._mark = bytearray()  # scratch column for `lookup_batch`, all zero between calls
        self._free: list[int] = []
        self._numbers: dict["NetDevice | None", int] = {None: 0}
        self.ports_by_number: list["NetDevice | None"] = [None]

    @property
    def ageing_ns(self) -> int:
        """`ip link set BRIDGE type bridge ageing_time T` (in nanoseconds)."""
        return self._ageing_ns

    @ageing_ns.setter
    def ageing_ns(self, value: int) -> None:
        self._ageing_ns = value
        self._changed()

    # -- storage ------------------------------------------------------------
    def _changed(self) -> None:
        self.generation += 1

    def port_number(self, port: "NetDevice | None") -> int:
        """The small number this table stores for `port` (0 for no port):
        `ports_by_number[port_number(p)] is p`."""
        number = self._numbers.get(port)
        if number is None:
            number = self._numbers[port] = len(self.ports_by_number)
            self.ports_by_number.append(port)
        return number

    def _insert(self, mac: bytes, port: "NetDevice | None", now_ns: int, flags: int) -> None:
        number = self.port_number(port)
        if self._free:
            slot = self._free.pop()
            self._port_no[slot] = number
            self._updated[slot] = now_ns
            self._flags[slot] = flags
        else:
            slot = len(self._updated)
            self._port_no.append(number)
            self._updated.append(now_ns)
            self._flags.append(flags)
            self._mark.append(0)
        self._slot[mac] = slot
        self._index.insert(mac_key(mac), slot)
        self.layout += 1

    def _delete(self, mac: bytes) -> None:
        slot = self._slot.pop(mac)
        self._index.remove(mac_key(mac))
        self._port_no[slot] = 0
        self._free.append(slot)
        self.layout += 1

    def _port(self, slot: int) -> "NetDevice | None":
        return self.ports_by_number[self._port_no[slot]]

    def _expired(self, slot: int, now_ns: int) -> bool:
        return not self._flags[slot] & STATIC and now_ns - self._updated[slot] > self._ageing_ns

    def _entry(self, mac: bytes, slot: int) -> FdbEntry:
        flags = self._flags[slot]
        return FdbEntry(mac, self._port(slot), self._updated[slot],
                        static=bool(flags & STATIC), local=bool(flags & LOCAL))

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def slots(self) -> int:
        """Storage slots in use or free for reuse (the columns' length)."""
        return len(self._updated)

    def __contains__(self, mac: bytes) -> bool:
        return mac in self._slot

    @property
    def entries(self) -> dict[bytes, FdbEntry]:
        """Every entry (aged ones included until looked up or swept), as values."""
        return {mac: self._entry(mac, slot) for mac, slot in self._slot.items()}

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
        return None if slot is None else self._entry(mac, slot)

    def lookup_port(self, mac: bytes, now_ns: int) -> tuple["NetDevice | None", bool] | None:
        """`lookup` without building an entry: (port, local) or None."""
        slot = self._live_slot(mac, now_ns)
        return None if slot is None else (self._port(slot), bool(self._flags[slot] & LOCAL))

    def is_live(self, mac: bytes, now_ns: int) -> bool:
        """True when `mac` has an entry that a lookup at `now_ns` would return."""
        slot = self._slot.get(mac)
        return slot is not None and not self._expired(slot, now_ns)

    def learn(self, mac: bytes, port: "NetDevice", now_ns: int) -> bool:
        """Record that `mac` was seen on `port`; False if it is a local entry,
        which learning may not move (Linux's br_fdb_update logs "own address
        as source address" and leaves it). Any other entry, static ones
        included, is refreshed and moves to `port`, as br_fdb_update does."""
        slot = self._slot.get(mac)
        if slot is None:
            self._insert(mac, port, now_ns, 0)
            self._changed()
            return True
        if self._flags[slot] & LOCAL:
            return self._port(slot) is port
        number = self.port_number(port)
        if self._port_no[slot] != number:
            self._port_no[slot] = number
            self._changed()
        self._updated[slot] = now_ns
        return True

    # -- the batched data path ------------------------------------------------
    def lookup_batch(self, dst_keys: np.ndarray, src_keys: np.ndarray, learns: np.ndarray,
                     port: "NetDevice", now_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What a bridge's per-frame walk would find, for a batch on `port`.

        Frame i first learns `src_keys[i]` on `port` (where `learns[i]`), then
        looks up `dst_keys[i]`; this returns, for every i, the port number
        (`ports_by_number`) that lookup would return, -1 where it would find
        no live entry, and whether the entry is local; and the slot of every
        source (-1 if new), which `learn_batch` may reuse while `layout` is
        unchanged. Nothing changes here: `learn_batch` applies the learning
        of the frames the caller commits. Keys are uint64 MACs (`mac_key`).
        """
        count = len(dst_keys)
        result = np.full(count, -1, np.int64)
        local = np.zeros(count, bool)
        if not self._slot:
            return result, local, np.full(count, -1, np.int64)
        dst_slots = self._index.get_many(dst_keys)
        src_slots = self._index.get_many(src_keys)
        port_no = np.frombuffer(self._port_no, np.int32)
        updated = np.frombuffer(self._updated, np.int64)
        flags = np.frombuffer(self._flags, np.uint8)
        mark = np.frombuffer(self._mark, np.uint8)
        known = dst_slots >= 0
        slots = np.where(known, dst_slots, 0)
        entry_flags = flags[slots]
        live = known & (((entry_flags & STATIC) != 0) | (now_ns - updated[slots] <= self._ageing_ns))
        result[live] = port_no[slots[live]]
        local[live] = (entry_flags[live] & LOCAL) != 0
        # A destination this batch learns (as a source, at or before its frame) is on `port` by then.
        learned = src_slots[learns & (src_slots >= 0)]
        mark[learned] = 1
        taught = known & (mark[slots] != 0) & ((entry_flags & LOCAL) == 0)
        mark[learned] = 0
        new_sources = learns & (src_slots < 0)
        del port_no, updated, flags, mark
        if taught.any() or new_sources.any():
            self._apply_taught(result, local, taught, dst_keys, src_keys, src_slots, dst_slots,
                               learns, new_sources, self.port_number(port))
        return result, local, src_slots

    @staticmethod
    def _apply_taught(result: np.ndarray, local: np.ndarray, taught: np.ndarray, dst_keys: np.ndarray,
                      src_keys: np.ndarray, src_slots: np.ndarray, dst_slots: np.ndarray,
                      learns: np.ndarray, new_sources: np.ndarray, number: int) -> None:
        """`lookup_batch` for destinations learned earlier in the same batch
        (rare: traffic back to a host on the ingress port): exact, in Python."""
        first_seen: dict[tuple[bool, int], int] = {}
        keys = src_keys.tolist()
        slots = src_slots.tolist()
        for j in np.flatnonzero(learns).tolist():
            name = (True, keys[j]) if slots[j] < 0 else (False, slots[j])
            first_seen.setdefault(name, j)
        dst_key_list = dst_keys.tolist()
        dst_slot_list = dst_slots.tolist()
        candidates = np.flatnonzero(taught | (dst_slots < 0)).tolist() if new_sources.any() else \
            np.flatnonzero(taught).tolist()
        for i in candidates:
            name = (True, dst_key_list[i]) if dst_slot_list[i] < 0 else (False, dst_slot_list[i])
            j = first_seen.get(name)
            if j is not None and j <= i:
                result[i] = number
                local[i] = False

    def learn_batch(self, src_keys: np.ndarray, port: "NetDevice", now_ns: int,
                    slots: np.ndarray | None = None) -> None:
        """`learn(mac, port, now_ns)` for every key, in order. `slots`: the
        keys' slots from `lookup_batch`, valid only if `layout` has not moved."""
        if slots is None:
            slots = self._index.get_many(src_keys)
        known = slots[slots >= 0]
        number = self.port_number(port)
        if known.size:
            port_no = np.frombuffer(self._port_no, np.int32)
            flags = np.frombuffer(self._flags, np.uint8)
            movable = known[(flags[known] & LOCAL) == 0]
            moved = port_no[movable] != number
            np.frombuffer(self._updated, np.int64)[movable] = now_ns
            if moved.any():
                port_no[movable] = number
                self._changed()
            del port_no, flags
        if known.size < slots.size:
            for key in src_keys[slots < 0].tolist():
                self.learn(key.to_bytes(6, "big"), port, now_ns)

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
        number = self._numbers.get(port)
        for mac in [m for m, slot in self._slot.items() if self._port_no[slot] == number]:
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
