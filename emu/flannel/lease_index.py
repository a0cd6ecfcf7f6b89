"""The subnet leases of an in-process store, kept sorted as the store changes.

Why: every flanneld lists all leases when it starts and every acquire lists
the used subnets to pick a free one, so decoding and sorting the whole
listing on each call makes a cluster's start-up quadratic in its node count
(5,000 nodes: 25 million lease decodes). The index follows the store through
a prefix watch and answers those listings from sorted arrays.

It answers only while it is provably current: it knows the store revision it
reflects (each watch event must carry the next revision, else the index is
dropped and rebuilt from a full listing) and it steps aside once any entry it
holds may have expired (the callers then list the store as before). Only the
in-process MemoryStore qualifies: its watches run synchronously inside the
write, so the revision check always passes between writes.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from ipaddress import IPv4Network
from typing import Callable

from emu.flannel.store import Entry, MemoryStore, WatchEvent

SortKey = tuple[int, int, str]  # IPv4Network order (address, prefix length), then the key


class LeaseIndex:
    """Used subnets and decodable leases under one prefix, sorted by subnet."""

    def __init__(self, store: MemoryStore, prefix: str, parse: Callable[[str], IPv4Network | None],
                 decode: Callable[[Entry], object | None]) -> None:
        self.store = store
        self.prefix = prefix
        self._parse = parse
        self._decode = decode
        self._revision: int | None = None
        self._earliest: int | None = None  # the earliest expiry among the entries held
        self._used: list[SortKey] = []  # every key naming a subnet
        self._lease_keys: list[SortKey] = []  # the keys whose entry decodes to a lease
        self._leases: list = []  # the leases, parallel to _lease_keys
        self._held: dict[str, SortKey] = {}  # key -> its sort key, for keys in _used
        store.watch(prefix, self._on_event)

    def current(self, now_ns: int) -> bool:
        """Can the index answer for `now_ns` (else list the store)?"""
        if self._revision != self.store.revision:
            self._rebuild()
        return self._earliest is None or now_ns < self._earliest

    def leases(self) -> list:
        """Every lease, sorted by subnet (as `sorted(..., key=subnet)` of a listing)."""
        return list(self._leases)

    def used(self) -> list[SortKey]:
        """Every key naming a subnet, as (start address, prefix length, key), ascending."""
        return self._used

    def _rebuild(self) -> None:
        self._used, self._lease_keys, self._leases, self._held = [], [], [], {}
        self._earliest = None
        for entry in self.store.list(self.prefix, 0):
            self._add(entry)
        self._revision = self.store.revision

    def _on_event(self, event: WatchEvent) -> None:
        if self._revision is None or event.entry.revision != self._revision + 1:
            self._revision = None  # missed a change: rebuild on next use
            return
        self._revision += 1
        if event.previous is not None:
            self._remove(event.previous.key)
        if event.kind == "put":
            self._add(event.entry)

    def _add(self, entry: Entry) -> None:
        subnet = self._parse(entry.key)
        if subnet is None:
            return
        if entry.expires_ns is not None and (self._earliest is None or entry.expires_ns < self._earliest):
            self._earliest = entry.expires_ns
        key = (int(subnet.network_address), subnet.prefixlen, entry.key)
        self._held[entry.key] = key
        insort(self._used, key)
        lease = self._decode(entry)
        if lease is not None:
            at = bisect_left(self._lease_keys, key)
            self._lease_keys.insert(at, key)
            self._leases.insert(at, lease)

    def _remove(self, name: str) -> None:
        key = self._held.pop(name, None)
        if key is None:
            return
        del self._used[bisect_left(self._used, key)]
        at = bisect_left(self._lease_keys, key)
        if at < len(self._lease_keys) and self._lease_keys[at] == key:
            del self._lease_keys[at]
            del self._leases[at]
