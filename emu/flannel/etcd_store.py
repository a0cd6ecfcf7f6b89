"""A real etcd v3 behind the `KeyValueStore` surface, written as flannel writes it.

flannel's etcd subnet registry (pkg/subnet/etcd/registry.go) claims a subnet
with `Grant(ttl)` then a transaction `If(Version(key) == 0).Then(Put(key,
attrs, WithLease))`, renews by granting a fresh lease and putting the key
again, deletes the key to give a subnet back, and watches the subnets prefix.
`EtcdStore` does exactly that over etcd's HTTP/JSON gateway (the `etcd3gw`
client: plain HTTP, no grpc toolchain to build, maintained by OpenStack), so
`etcdctl get --prefix /coreos.com/network` shows what a real cluster's etcd
would hold.

Time stays virtual.  etcd's own lease TTLs run on the wall clock (24 h for
flannel's leases, so nothing expires during a run), while the expiry the
emulator reasons with is the virtual `now_ns + ttl_ns` of the write, exactly
as in `MemoryStore`; a key another writer made gets the remaining TTL of its
etcd lease, counted from the virtual time it was first seen.  Our own writes
notify watchers synchronously, in the same order as `MemoryStore`, so a
scenario gives byte-identical captures with either store.  Changes made by
other writers arrive on a background watch stream and are applied by `poll()`
(the run calls it at every virtual instant): a lease another flanneld adds
during the run reaches the emulated flanneld's as it would reach real ones.

If etcd goes away mid-run, the store keeps serving what it last read and
wrote (`lost` says why and when), so the run finishes.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import urlparse

from emu.extras import missing_extra
from emu.flannel.leases import SUBNETS_PREFIX, decode_lease
from emu.flannel.store import Entry, KeyExists, Watchers, WatchEvent, check_write, is_expired

FLANNEL_PREFIX = "/coreos.com/network"
"""The key prefix the subnet manager uses inside the emulator; `EtcdStore`
maps it to the configured etcd prefix (flanneld's `--etcd-prefix`)."""


class StoreUnavailable(Exception):
    """etcd cannot be reached or answered with an error (one line, names the endpoint)."""


def parse_endpoint(endpoint: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an etcd client URL such as http://127.0.0.1:2379."""
    if not isinstance(endpoint, str):
        raise ValueError(f"an etcd endpoint must be a URL string, got {endpoint!r}")
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"etcd endpoint {endpoint!r} is not a URL like http://127.0.0.1:2379")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ValueError(f"etcd endpoint {endpoint!r} must not have a path, query or fragment")
    try:
        port = parsed.port or 2379
    except ValueError:
        raise ValueError(f"etcd endpoint {endpoint!r} has an invalid port") from None
    return parsed.scheme, parsed.hostname, port


class EtcdStore(Watchers):
    """`KeyValueStore` over a real etcd v3 (see the module docstring).

    `endpoints` are tried in order at start; the first that answers is used.
    `prefix` replaces /coreos.com/network in every key on the server.
    """

    kind = "etcd"

    def __init__(self, endpoints: list[str], prefix: str = FLANNEL_PREFIX,
                 timeout_s: float = 5.0) -> None:
        try:
            import etcd3gw
        except ImportError as error:
            raise StoreUnavailable(str(missing_extra("etcd", "the etcd lease store", error))) from None
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"etcd prefix must start with '/' and not end with one, got {prefix!r}")
        super().__init__()
        self.prefix = prefix
        self.endpoints = list(endpoints)
        self.lost: str | None = None
        self.foreign_events = 0
        self.malformed: list[str] = []
        self._expires: dict[str, int | None] = {}
        self._cache: dict[str, Entry] = {}
        self._own_revisions: set[int] = set()
        self._incoming: queue.Queue = queue.Queue()
        self._cancel_stream = None
        errors = []
        for endpoint in self.endpoints:
            scheme, host, port = parse_endpoint(endpoint)
            client = etcd3gw.Etcd3Client(host=host, port=port, protocol=scheme, timeout=timeout_s)
            try:
                client.status()
            except Exception as error:  # etcd3gw wraps requests' errors in its own
                errors.append(f"{endpoint}: {_one_line(error)}")
                continue
            self.endpoint = endpoint
            self._client = client
            break
        else:
            raise StoreUnavailable("cannot reach etcd at " + "; ".join(errors))
        self._start_stream()

    # -- KeyValueStore -----------------------------------------------------

    def get(self, key: str, now_ns: int) -> Entry | None:
        entry = self._read(key, now_ns)
        if entry is None or is_expired(entry, now_ns):
            return None
        return entry

    def create(self, key: str, value: str, ttl_ns: int | None, now_ns: int) -> Entry:
        """flannel's createSubnet: grant a lease, then put only if the key has no version."""
        check_write(key, value, ttl_ns)
        self._collect_if_expired(key, now_ns)
        if self.lost is not None:
            if key in self._cache:
                raise KeyExists(key)
            return self._written(key, value, ttl_ns, now_ns, None, revision=0)
        remote = self.remote_key(key)
        put: dict[str, Any] = {"key": _b64(remote), "value": _b64(value)}
        lease_id = self._grant(ttl_ns)
        if lease_id:
            put["lease"] = lease_id
        txn = {"compare": [{"key": _b64(remote), "result": "EQUAL", "target": "VERSION", "version": 0}],
               "success": [{"request_put": put}], "failure": []}
        answer = self._call("/kv/txn", txn)
        if answer is None:
            return self.create(key, value, ttl_ns, now_ns)  # etcd just went away: local from now on
        if not answer.get("succeeded"):
            if lease_id:
                self._call("/kv/lease/revoke", {"ID": lease_id})
            self._read(key, now_ns, refresh=True)
            raise KeyExists(key)
        return self._written(key, value, ttl_ns, now_ns, None, _revision(answer))

    def put(self, key: str, value: str, ttl_ns: int | None, now_ns: int) -> Entry:
        """flannel's updateSubnet: a fresh lease, and the key put again with it."""
        check_write(key, value, ttl_ns)
        self._collect_if_expired(key, now_ns)
        previous = self._read(key, now_ns)
        revision = 0
        if self.lost is None:
            payload: dict[str, Any] = {"key": _b64(self.remote_key(key)), "value": _b64(value)}
            lease_id = self._grant(ttl_ns)
            if lease_id:
                payload["lease"] = lease_id
            answer = self._call("/kv/put", payload)
            revision = 0 if answer is None else _revision(answer)
        return self._written(key, value, ttl_ns, now_ns, previous, revision)

    def delete(self, key: str, now_ns: int) -> None:
        self._collect_if_expired(key, now_ns)
        previous = self._read(key, now_ns)
        revision = 0
        if self.lost is None:
            answer = self._call("/kv/deleterange", {"key": _b64(self.remote_key(key))})
            revision = 0 if answer is None else _revision(answer)
        if previous is not None:
            self._removed(key, "delete", revision)

    def list(self, prefix: str, now_ns: int) -> list[Entry]:
        if self.lost is None:
            remote = self.remote_key(prefix)
            answer = self._call("/kv/range", {"key": _b64(remote), "range_end": _b64(_prefix_end(remote))})
            if answer is not None:
                seen = set()
                for kv in answer.get("kvs", []):
                    entry = self._remember(kv, now_ns)
                    seen.add(entry.key)
                for key in [k for k in self._cache if k.startswith(prefix) and k not in seen]:
                    del self._cache[key]  # removed by another writer; its watch event follows
        return [entry for key, entry in sorted(self._cache.items())
                if key.startswith(prefix) and not is_expired(entry, now_ns)]

    def expire(self, now_ns: int) -> list[Entry]:
        """Keys whose virtual TTL has passed are deleted from etcd too (etcd's own
        lease timers run on the wall clock, far slower than a scenario's time)."""
        expired = sorted((entry for entry in self._cache.values() if is_expired(entry, now_ns)),
                         key=lambda entry: (entry.expires_ns, entry.key))
        for entry in expired:
            self._expire_key(entry.key)
        return expired

    # -- the run's side ----------------------------------------------------

    def poll(self, now_ns: int) -> int:
        """Apply the changes other writers made since the last call (watch
        events) at virtual time `now_ns`, telling watchers as a local change
        would; returns how many changed something."""
        applied = 0
        while True:
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                return applied
            if isinstance(item, str):
                self._lose(item)
                continue
            applied += self._apply_foreign(item, now_ns)

    def close(self) -> None:
        """Stop the watch stream (the keys stay in etcd, as a stopped flanneld leaves them)."""
        if self._cancel_stream is not None:
            self._cancel_stream()
            self._cancel_stream = None

    def describe(self) -> dict:
        """What stats.json says about the store."""
        return {"kind": "etcd", "endpoint": self.endpoint, "prefix": self.prefix,
                "foreign_events": self.foreign_events, "lost": self.lost,
                "malformed_leases": [self.remote_key(key) for key in self.malformed]}

    def wait_for_foreign(self, timeout_s: float) -> bool:
        """Block until another writer's change has arrived (for tests and tools
        that must be sure a concurrent write is visible before running on)."""
        try:
            item = self._incoming.get(timeout=timeout_s)
        except queue.Empty:
            return False
        self._incoming.put(item)
        return True

    # -- internals ---------------------------------------------------------

    def remote_key(self, key: str) -> str:
        """The key as etcd holds it (the configured prefix in place of /coreos.com/network)."""
        if key.startswith(FLANNEL_PREFIX):
            return self.prefix + key[len(FLANNEL_PREFIX):]
        return key

    def _local(self, remote: str) -> str:
        if remote.startswith(self.prefix):
            return FLANNEL_PREFIX + remote[len(self.prefix):]
        return remote

    def _call(self, path: str, payload: dict) -> dict | None:
        """One request; None (and the store marked lost) when etcd is gone."""
        if self.lost is not None:
            return None
        try:
            return self._client.post(self._client.get_url(path), json=payload)
        except Exception as error:
            self._lose(f"etcd at {self.endpoint} stopped answering: {_one_line(error)}")
            return None

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            self.close()

    def _grant(self, ttl_ns: int | None) -> str | None:
        """An etcd lease for a key with a TTL (whole seconds, as flannel's int64(ttl.Seconds()))."""
        if ttl_ns is None:
            return None
        answer = self._call("/lease/grant", {"TTL": max(1, ttl_ns // 1_000_000_000), "ID": 0})
        return None if answer is None else answer["ID"]

    def _read(self, key: str, now_ns: int, refresh: bool = False) -> Entry | None:
        if self.lost is None and (refresh or key not in self._cache):
            answer = self._call("/kv/range", {"key": _b64(self.remote_key(key))})
            if answer is not None:
                kvs = answer.get("kvs", [])
                if kvs:
                    return self._remember(kvs[0], now_ns)
                self._cache.pop(key, None)
                return None
        return self._cache.get(key)

    def _remember(self, kv: dict, now_ns: int) -> Entry:
        """Cache a key read from etcd; its virtual expiry is fixed when first seen."""
        key = self._local(_unb64(kv["key"]))
        value = _unb64(kv.get("value", ""))
        first_seen = key not in self._expires
        if first_seen:
            self._expires[key] = self._virtual_expiry(kv.get("lease"), now_ns)
        cached = self._cache.get(key)
        if cached is not None and cached.value == value:
            return cached
        entry = Entry(key, value, self._expires[key], int(kv.get("mod_revision", 0)))
        self._cache[key] = entry
        if key.startswith(SUBNETS_PREFIX) and decode_lease(entry) is None and key not in self.malformed:
            self.malformed.append(key)  # flannel skips it too ("Ignoring bad subnet node")
        return entry

    def _virtual_expiry(self, lease_id: str | None, now_ns: int) -> int | None:
        if not lease_id or lease_id == "0":
            return None
        answer = self._call("/kv/lease/timetolive", {"ID": lease_id})
        if answer is None or int(answer.get("TTL", -1)) < 0:
            return now_ns  # the lease is gone: the key is on its way out
        return now_ns + int(answer["TTL"]) * 1_000_000_000

    def _written(self, key: str, value: str, ttl_ns: int | None, now_ns: int,
                 previous: Entry | None, revision: int) -> Entry:
        if revision:
            self._own_revisions.add(revision)
        expires_ns = None if ttl_ns is None else now_ns + ttl_ns
        self._expires[key] = expires_ns
        entry = Entry(key, value, expires_ns, revision)
        self._cache[key] = entry
        self._notify(WatchEvent("put", entry, previous))
        return entry

    def _removed(self, key: str, kind: Literal["delete", "expire"], revision: int) -> None:
        if revision:
            self._own_revisions.add(revision)
        previous = self._cache.pop(key)
        self._expires.pop(key, None)
        tombstone = replace(previous, value="", expires_ns=None, revision=revision)
        self._notify(WatchEvent(kind, tombstone, previous))

    def _collect_if_expired(self, key: str, now_ns: int) -> None:
        entry = self._cache.get(key)
        if entry is not None and is_expired(entry, now_ns):
            self._expire_key(key)

    def _expire_key(self, key: str) -> None:
        revision = 0
        if self.lost is None:
            answer = self._call("/kv/deleterange", {"key": _b64(self.remote_key(key))})
            revision = 0 if answer is None else _revision(answer)
        self._removed(key, "expire", revision)

    def _start_stream(self) -> None:
        """A background watch of the whole prefix; events wait in a queue for `poll()`."""
        answer = self._call("/kv/range", {"key": _b64(self.prefix + "/"), "range_end":
                                          _b64(_prefix_end(self.prefix + "/")), "count_only": True})
        start = 1 + (0 if answer is None else _revision(answer))
        try:
            events, cancel = self._client.watch_prefix(self.prefix + "/", start_revision=start,
                                                       prev_kv=True)
        except Exception as error:
            self._lose(f"etcd at {self.endpoint} refused the watch: {_one_line(error)}")
            return
        self._cancel_stream = cancel

        def pump() -> None:
            try:
                for event in events:
                    self._incoming.put(event)
            except Exception as error:  # the stream broke: etcd stopped
                self._incoming.put(f"etcd at {self.endpoint} stopped answering: {_one_line(error)}")

        threading.Thread(target=pump, name="etcd-watch", daemon=True).start()

    def _apply_foreign(self, event: dict, now_ns: int) -> int:
        kv = event["kv"]
        revision = int(kv.get("mod_revision", 0))
        if revision in self._own_revisions:
            return 0
        key = self._local(kv["key"].decode() if isinstance(kv["key"], bytes) else kv["key"])
        self.foreign_events += 1
        previous = self._cache.get(key)
        if event.get("type") == "DELETE":
            if previous is None:
                return 0
            self._cache.pop(key)
            self._expires.pop(key, None)
            tombstone = replace(previous, value="", expires_ns=None, revision=revision)
            self._notify(WatchEvent("delete", tombstone, previous))
            return 1
        value = kv.get("value", b"")
        value = value.decode() if isinstance(value, bytes) else value
        if previous is not None and previous.value == value:
            return 0
        self._expires.pop(key, None)
        entry = self._remember({"key": _b64(self.remote_key(key)), "value": _b64(value),
                                "lease": kv.get("lease"), "mod_revision": revision}, now_ns)
        self._notify(WatchEvent("put", entry, previous))
        return 1


def _revision(answer: dict) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _b64(text: str) -> str:
    from etcd3gw.utils import _encode
    return _encode(text)


def _unb64(text: str) -> str:
    from etcd3gw.utils import _decode
    return _decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """etcd's range end for "every key starting with prefix"."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _one_line(error: BaseException) -> str:
    """An error as one short line: etcd3gw keeps its text in `detail_text`,
    and requests' connection errors are long: keep their last reason."""
    text = getattr(error, "detail_text", None) or str(error) or type(error).__name__
    text = " ".join(str(text).split())
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    return text[:160]
