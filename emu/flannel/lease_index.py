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

from bisect import bisect_left, bisect_right, insort
from ipaddress import IPv4Network
from typing import Callable

from emu.flannel.store import Entry, MemoryStore, WatchEvent

SortKey = tuple[int, int, str]  # IPv4Network order (address, prefix length), then the key


def block_end(start: int, prefixlen: int) -> int:
    """The first address after the CIDR block `start`/`prefixlen`."""
    return start + (1 << (32 - prefixlen))


class Spans:
    """The addresses some used subnet covers, as disjoint sorted runs
    [start, end) (touching blocks merged): whether a candidate overlaps a
    used subnet, and where the next free address is, cost a bisection, not a
    walk over every used subnet below it (flannel's allocateSubnet walks its
    candidates from SubnetMin up; after N leases that was N steps per acquire)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    @classmethod
    def of(cls, blocks: list[tuple[int, int]]) -> "Spans":
        """The runs of `blocks` ((start, prefix length), ascending by start)."""
        spans = cls()
        for start, length in blocks:
            end = block_end(start, length)
            if spans.ends and start <= spans.ends[-1]:
                spans.ends[-1] = max(spans.ends[-1], end)
            else:
                spans.starts.append(start)
                spans.ends.append(end)
        return spans

    def cover(self, start: int, end: int) -> None:
        """Add [start, end), merging the runs it touches."""
        first = bisect_right(self.starts, start) - 1
        if first < 0 or self.ends[first] < start:
            first += 1
        last = bisect_right(self.starts, end)  # runs first..last-1 touch or overlap [start, end)
        if first < last:
            start, end = min(start, self.starts[first]), max(end, self.ends[last - 1])
        self.starts[first:last] = [start]
        self.ends[first:last] = [end]

    def replace_run(self, at: int, blocks: list[tuple[int, int]]) -> None:
        """Run `at` is now covered by `blocks` only (ascending): split it."""
        rebuilt = Spans.of(blocks)
        self.starts[at:at + 1] = rebuilt.starts
        self.ends[at:at + 1] = rebuilt.ends

    def run_at(self, address: int) -> int:
        """The index of the run holding `address`, or -1."""
        at = bisect_right(self.starts, address) - 1
        return at if at >= 0 and address < self.ends[at] else -1

    def next_end_after(self, start: int, end: int) -> int | None:
        """If [start, end) overlaps a run, the end of the first such run; else None."""
        at = bisect_right(self.starts, start) - 1
        if at >= 0 and self.ends[at] > start:
            return self.ends[at]
        at += 1
        if at < len(self.starts) and self.starts[at] < end:
            return self.ends[at]
        return None


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
        self._spans = Spans()  # the addresses the used subnets cover
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

    def spans(self) -> Spans:
        """The addresses the used subnets cover (do not change it)."""
        return self._spans

    def _rebuild(self) -> None:
        self._used, self._lease_keys, self._leases, self._held = [], [], [], {}
        self._spans = Spans()
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
        self._spans.cover(key[0], block_end(key[0], key[1]))
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
        run = self._spans.run_at(key[0])
        if run >= 0:  # the blocks still inside that run make it again
            start, end = self._spans.starts[run], self._spans.ends[run]
            inside = self._used[bisect_left(self._used, (start,)):bisect_left(self._used, (end,))]
            self._spans.replace_run(run, [(first, length) for first, length, _ in inside])
        at = bisect_left(self._lease_keys, key)
        if at < len(self._lease_keys) and self._lease_keys[at] == key:
            del self._lease_keys[at]
            del self._leases[at]
