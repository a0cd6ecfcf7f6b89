"""An open-addressing hash table from 48-bit MAC keys to slot numbers, in flat arrays.

Why: the bridge's batched path looks up thousands of MACs per call. A Python
dict costs a hash and a key comparison per MAC in the interpreter (and, with
a million entries, two cache misses on scattered objects); this table keeps
keys and values in two flat arrays, so `get_many` looks up a whole batch with
a few numpy operations (a gather per probe round, ~15 ns per MAC with a
million entries). Single-MAC operations (`get`, `insert`, `remove`) are plain
Python over the same arrays, for the rare changes (a new MAC, an aged one).

Layout: linear probing in a power-of-two table kept at most half full
(deleted entries leave tombstones, counted as used until the next rebuild),
Fibonacci hashing of the key's 64-bit product. Keys are stored as
`mac | 1 << 48`, so 0 marks an empty slot and 1 a tombstone.
"""

from __future__ import annotations

from array import array

import numpy as np

EMPTY = 0
TOMBSTONE = 1
PRESENT = 1 << 48  # set in every stored key: a stored key is never EMPTY or TOMBSTONE
MAC_MASK = (1 << 48) - 1
_MULTIPLIER = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: Fibonacci hashing
_U64 = (1 << 64) - 1
MIN_BITS = 6
REBUILD_CHUNK = 1 << 16  # keys re-inserted per vectorised step when the table grows


def mac_key(mac: bytes) -> int:
    """The integer key of a 6-byte MAC (what `get_many` takes, as uint64)."""
    return int.from_bytes(mac, "big")


class MacIndex:
    """MAC key -> non-negative int (below 2**31), with batched lookups."""

    def __init__(self, bits: int = MIN_BITS) -> None:
        self._allocate(bits)
        self._live = 0

    def _allocate(self, bits: int) -> None:
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._shift = 64 - bits
        self._keys = array("Q", bytes(8 << bits))
        self._values = array("i", bytes(4 << bits))
        self._used = 0  # live entries plus tombstones

    def __len__(self) -> int:
        return self._live

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def _home(self, stored: int) -> int:
        return ((stored * _MULTIPLIER) & _U64) >> self._shift

    def _find(self, stored: int) -> int:
        """The position holding `stored`, or -1."""
        keys, mask = self._keys, self._mask
        position = self._home(stored)
        while True:
            key = keys[position]
            if key == stored:
                return position
            if key == EMPTY:
                return -1
            position = (position + 1) & mask

    # -- single keys ----------------------------------------------------------------
    def get(self, key: int) -> int:
        """The value stored for `key`, or -1."""
        position = self._find(key | PRESENT)
        return -1 if position < 0 else self._values[position]

    def insert(self, key: int, value: int) -> None:
        """Store `value` for `key` (replacing an existing value)."""
        stored = key | PRESENT
        position = self._find(stored)
        if position >= 0:
            self._values[position] = value
            return
        if 2 * (self._used + 1) > self.capacity:
            self._rebuild(self._bits + 1 if 4 * self._live >= self.capacity else self._bits)
        keys, mask = self._keys, self._mask
        position = self._home(stored)
        while keys[position] > TOMBSTONE:
            position = (position + 1) & mask
        if keys[position] == EMPTY:
            self._used += 1
        keys[position] = stored
        self._values[position] = value
        self._live += 1

    def remove(self, key: int) -> None:
        """Forget `key` (no error if absent)."""
        position = self._find(key | PRESENT)
        if position >= 0:
            self._keys[position] = TOMBSTONE
            self._live -= 1

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (key, value) pair, as two arrays in table order."""
        keys = np.frombuffer(self._keys, np.uint64)
        live = keys > TOMBSTONE
        return keys[live] & np.uint64(MAC_MASK), np.frombuffer(self._values, np.int32)[live].astype(np.int64)

    # -- batches ----------------------------------------------------------------------
    def _homes(self, stored: np.ndarray) -> np.ndarray:
        return ((stored * np.uint64(_MULTIPLIER)) >> np.uint64(self._shift)).astype(np.int64)

    def get_many(self, keys: np.ndarray) -> np.ndarray:
        """The value of every key of a uint64 array (-1 where absent), as int64."""
        stored = keys | np.uint64(PRESENT)
        table_keys = np.frombuffer(self._keys, np.uint64)
        table_values = np.frombuffer(self._values, np.int32)
        result = np.full(len(stored), -1, np.int64)
        index = np.arange(len(stored))
        position = self._homes(stored)
        while index.size:
            found = table_keys[position]
            hit = found == stored
            result[index[hit]] = table_values[position[hit]]
            going_on = ~hit & (found != EMPTY)
            index, stored = index[going_on], stored[going_on]
            position = (position[going_on] + 1) & self._mask
        return result

    def _rebuild(self, bits: int) -> None:
        """Re-insert every live entry into a fresh table of 2**bits positions
        (drops tombstones). Vectorised, in chunks so the temporary arrays stay
        small next to the table: each round places the keys whose probe
        position is free, one key per position."""
        old_keys, old_values = self._keys, self._values
        self._allocate(max(bits, MIN_BITS))
        keys_view = np.frombuffer(old_keys, np.uint64)
        table_keys = np.frombuffer(self._keys, np.uint64)
        table_values = np.frombuffer(self._values, np.int32)
        for start in range(0, len(keys_view), REBUILD_CHUNK):
            chunk = keys_view[start:start + REBUILD_CHUNK]
            live = np.flatnonzero(chunk > TOMBSTONE)
            stored = chunk[live]
            values = np.frombuffer(old_values, np.int32)[start:start + REBUILD_CHUNK][live]
            position = self._homes(stored)
            while stored.size:
                free = table_keys[position] == EMPTY
                _, first = np.unique(position[free], return_index=True)
                placed = np.flatnonzero(free)[first]
                table_keys[position[placed]] = stored[placed]
                table_values[position[placed]] = values[placed]
                waiting = np.ones(stored.size, bool)
                waiting[placed] = False
                stored, values, position = stored[waiting], values[waiting], position[waiting]
                occupied = table_keys[position] != EMPTY
                position[occupied] = (position[occupied] + 1) & self._mask
            self._used += len(live)
        self._live = self._used
