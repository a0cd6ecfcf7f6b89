"""A narrow etcd-like key/value store: the only thing flannel's subnet manager needs.

flanneld (with the etcd subnet manager) keeps its network config and one key
per subnet lease in etcd, claims a subnet with a create-if-absent
transaction, renews it by re-putting the key with a fresh TTL, and learns
about other nodes' leases from a prefix watch.  `KeyValueStore` is exactly
that surface, so a real etcd client can back it later; `MemoryStore` is the
embedded default.

Time is virtual: every call that depends on time takes `now_ns` (integer
nanoseconds) and nothing reads a clock.  Like etcd, every change bumps a
store-wide revision, and watch events carry the previous value (etcd's
`WithPrevKV`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Protocol


class StoreError(Exception):
    """Base class of the store's errors."""


class KeyExists(StoreError):
    """`create` found the key already present (and unexpired)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key} already exists")
        self.key = key


@dataclass(frozen=True)
class Entry:
    """One stored key: `expires_ns` is None for keys without a TTL;
    `revision` is the store revision of the change that wrote it (etcd's
    mod_revision)."""

    key: str
    value: str
    expires_ns: int | None
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    """A change seen by a prefix watch.

    "put": `entry` is the new value, `previous` the value it replaced (None if
    the key was absent or expired).  "delete" / "expire": as in etcd, `entry`
    is a tombstone (empty value, the revision of the removal) and `previous`
    is the entry that was removed.
    """

    kind: Literal["put", "delete", "expire"]
    entry: Entry
    previous: Entry | None


WatchCallback = Callable[[WatchEvent], None]


class KeyValueStore(Protocol):
    """What the subnet manager needs from etcd, and nothing more."""

    def get(self, key: str, now_ns: int) -> Entry | None: ...

    def create(self, key: str, value: str, ttl_ns: int | None, now_ns: int) -> Entry: ...

    def put(self, key: str, value: str, ttl_ns: int | None, now_ns: int) -> Entry: ...

    def delete(self, key: str, now_ns: int) -> None: ...

    def list(self, prefix: str, now_ns: int) -> list[Entry]: ...

    def watch(self, prefix: str, callback: WatchCallback) -> int: ...

    def unwatch(self, handle: int) -> None: ...

    def expire(self, now_ns: int) -> list[Entry]: ...


@dataclass(frozen=True)
class _Watch:
    prefix: str
    callback: WatchCallback


class Watchers:
    """Prefix watches shared by the stores: callbacks run synchronously, in
    registration order, after the store has been updated."""

    def __init__(self) -> None:
        self._watches: dict[int, _Watch] = {}
        self._next_handle = 1

    def watch(self, prefix: str, callback: WatchCallback) -> int:
        """Call `callback` for every later change under `prefix`; returns a handle for `unwatch`."""
        handle = self._next_handle
        self._next_handle += 1
        self._watches[handle] = _Watch(prefix, callback)
        return handle

    def unwatch(self, handle: int) -> None:
        if self._watches.pop(handle, None) is None:
            raise ValueError(f"unknown watch handle {handle!r}")

    def _notify(self, event: WatchEvent) -> None:
        for watch in list(self._watches.values()):
            if event.entry.key.startswith(watch.prefix):
                watch.callback(event)


class MemoryStore(Watchers):
    """In-process `KeyValueStore`.

    An entry whose TTL has passed is invisible to `get`/`list` at once, but is
    only removed (and watchers told, kind "expire") by `expire(now_ns)` or
    when a write touches its key, the way etcd's lease expiry removes keys.
    Watch callbacks run synchronously, in registration order, after the store
    has been updated.
    """

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[str, Entry] = {}
        self._revision = 0

    @property
    def revision(self) -> int:
        """Revision of the latest change (0 before any change), like etcd's header revision."""
        return self._revision

    def get(self, key: str, now_ns: int) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None or is_expired(entry, now_ns):
            return None
        return entry

    def create(self, key: str, value: str, ttl_ns: int | None, now_ns: int) -> Entry:
        """Write `key` only if it is absent or expired (etcd's `Version(key) == 0` txn)."""
        check_write(key, value, ttl_ns)
        self._collect_if_expired(key, now_ns)
        if key in self._entries:
            raise KeyExists(key)
        return self._write(key, value, ttl_ns, now_ns, previous=None)

    def put(self, key: str, value: str, ttl_ns: int | None, now_ns: int) -> Entry:
        """Create or overwrite `key`; the TTL is replaced, not extended."""
        check_write(key, value, ttl_ns)
        self._collect_if_expired(key, now_ns)
        return self._write(key, value, ttl_ns, now_ns, previous=self._entries.get(key))

    def delete(self, key: str, now_ns: int) -> None:
        """Remove `key`; deleting an absent key is not an error (as in etcd)."""
        self._collect_if_expired(key, now_ns)
        if key in self._entries:
            self._remove(key, "delete")

    def list(self, prefix: str, now_ns: int) -> list[Entry]:
        return [
            entry
            for key, entry in sorted(self._entries.items())
            if key.startswith(prefix) and not is_expired(entry, now_ns)
        ]

    def expire(self, now_ns: int) -> list[Entry]:
        """Remove every entry whose TTL has passed, earliest expiry first;
        returns the removed entries."""
        expired = sorted(
            (entry for entry in self._entries.values() if is_expired(entry, now_ns)),
            key=lambda entry: (entry.expires_ns, entry.key),
        )
        for entry in expired:
            self._remove(entry.key, "expire")
        return expired

    def _collect_if_expired(self, key: str, now_ns: int) -> None:
        entry = self._entries.get(key)
        if entry is not None and is_expired(entry, now_ns):
            self._remove(key, "expire")

    def _write(
        self, key: str, value: str, ttl_ns: int | None, now_ns: int, previous: Entry | None
    ) -> Entry:
        self._revision += 1
        expires_ns = None if ttl_ns is None else now_ns + ttl_ns
        entry = Entry(key, value, expires_ns, self._revision)
        self._entries[key] = entry
        self._notify(WatchEvent("put", entry, previous))
        return entry

    def _remove(self, key: str, kind: Literal["delete", "expire"]) -> None:
        self._revision += 1
        previous = self._entries.pop(key)
        tombstone = replace(previous, value="", expires_ns=None, revision=self._revision)
        self._notify(WatchEvent(kind, tombstone, previous))



def is_expired(entry: Entry, now_ns: int) -> bool:
    return entry.expires_ns is not None and now_ns >= entry.expires_ns


def check_write(key: str, value: str, ttl_ns: int | None) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string, got {key!r}")
    if not isinstance(value, str):
        raise ValueError(f"value of {key} must be a string, got {type(value).__name__}")
    if ttl_ns is not None and (isinstance(ttl_ns, bool) or not isinstance(ttl_ns, int) or ttl_ns <= 0):
        raise ValueError(f"ttl_ns of {key} must be a positive integer or None, got {ttl_ns!r}")
