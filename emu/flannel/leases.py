"""flannel's subnet manager (the etcd side of flanneld), over a `KeyValueStore`.

Every flanneld claims one subnet of the cluster Network for its node, keeps it
alive by renewing a 24 h TTL, and watches everybody else's leases to program
routes / VXLAN FDB entries.  This module reproduces flannel's
`pkg/subnet/etcd` (`local_manager.go`, `registry.go`) and `pkg/subnet/config.go`
with its etcd key layout and exact lease JSON, so the stored keys read like a
real cluster's:

    /coreos.com/network/config                 net-conf JSON
    /coreos.com/network/subnets/10.244.1.0-24  {"PublicIP":"172.18.0.11","PublicIPv6":null,
                                                "BackendType":"vxlan","BackendData":{...}}

Time is virtual (`now_ns`) and the random subnet choice comes from a
`random.Random(seed)` owned by the manager, so runs are reproducible.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cached_property, lru_cache
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Callable, Literal

from emu.flannel.lease_index import LeaseIndex, Spans
from emu.flannel.store import Entry, KeyExists, KeyValueStore, MemoryStore, WatchEvent

NETWORK_PREFIX = "/coreos.com/network"
CONFIG_KEY = f"{NETWORK_PREFIX}/config"
SUBNETS_PREFIX = f"{NETWORK_PREFIX}/subnets/"

NS_PER_HOUR = 3600 * 1_000_000_000
SUBNET_TTL_NS = 24 * NS_PER_HOUR
"""flannel's `subnetTTL` (pkg/subnet/etcd/local_manager.go)."""
RENEW_MARGIN_NS = 1 * NS_PER_HOUR
"""flanneld's default `--subnet-lease-renew-margin` of 60 minutes."""
MAX_CANDIDATES = 100
"""flannel's allocateSubnet picks at random among the first 100 free subnets."""
RACE_RETRIES = 10
"""flannel's `raceRetries`: attempts when another node claims the picked subnet first."""


class LeaseError(Exception):
    """A lease cannot be acquired, renewed or read (network full, subnet taken, no config)."""


@dataclass(frozen=True)
class Lease:
    """One node's claim on a subnet: flannel's `lease.Lease` (IPv4 only)."""

    subnet: IPv4Network
    public_ip: IPv4Address
    backend_type: str
    backend_data: dict | None
    expires_ns: int

    # Computed once per lease: every node programs every lease, and sharing
    # one bytes object keeps N nodes' routes, neighbours and FDB entries from
    # holding N copies.
    @cached_property
    def network_packed(self) -> bytes:
        """The subnet's network address, 4 bytes."""
        return self.subnet.network_address.packed

    @cached_property
    def subnet_id(self) -> tuple[bytes, int]:
        """(network_packed, prefix length): the subnet, compared without ipaddress."""
        return self.network_packed, self.subnet.prefixlen

    @cached_property
    def public_ip_packed(self) -> bytes:
        """The node's public address, 4 bytes."""
        return self.public_ip.packed


@dataclass(frozen=True)
class LeaseEvent:
    """What a flanneld's lease watch reports about another node's subnet."""

    kind: Literal["added", "changed", "removed"]
    lease: Lease


LeaseCallback = Callable[[LeaseEvent], None]


def subnet_key(subnet: IPv4Network) -> str:
    """The etcd key of a subnet lease: flannel's `MakeSubnetKey` (dots kept, '/' -> '-')."""
    return f"{SUBNETS_PREFIX}{subnet.network_address}-{subnet.prefixlen}"


@lru_cache(maxsize=65536)
def parse_subnet_key(key: str) -> IPv4Network | None:
    """The subnet named by a lease key, or None if the key is not a subnet lease
    (cached: every acquire re-reads all keys, and parsing dominates)."""
    if not key.startswith(SUBNETS_PREFIX):
        return None
    address, _, prefix_len = key[len(SUBNETS_PREFIX):].rpartition("-")
    try:
        return IPv4Network(f"{address}/{prefix_len}")
    except ValueError:
        return None


def encode_lease_attrs(public_ip: IPv4Address, backend_type: str, backend_data: dict | None) -> str:
    """flannel's `LeaseAttrs` as Go's json.Marshal writes it: compact, field
    order PublicIP, PublicIPv6, BackendType, BackendData.  BackendType and
    BackendData carry `omitempty`, so a lease without backend data (host-gw)
    has no "BackendData" key at all."""
    attrs: dict[str, Any] = {"PublicIP": str(public_ip), "PublicIPv6": None}
    if backend_type:
        attrs["BackendType"] = backend_type
    if backend_data is not None:
        attrs["BackendData"] = backend_data
    return _go_json(attrs, "BackendData")


@lru_cache(maxsize=1 << 17)
def decode_lease(entry: Entry) -> Lease | None:
    """The lease stored in `entry`, or None for a key flannel would skip as a
    bad subnet node (also a key without TTL: flannel's reservations are not
    modelled). Cached: every flanneld's watch decodes every lease event, and
    one shared Lease per entry keeps N nodes x N leases from costing N^2
    objects."""
    subnet = parse_subnet_key(entry.key)
    if subnet is None or entry.expires_ns is None:
        return None
    try:
        attrs = json.loads(entry.value)
    except ValueError:
        return None
    if not isinstance(attrs, dict) or not isinstance(attrs.get("PublicIP"), str):
        return None
    try:
        public_ip = IPv4Address(attrs["PublicIP"])
    except ValueError:
        return None
    backend_type = attrs.get("BackendType", "")
    backend_data = attrs.get("BackendData")
    if not isinstance(backend_type, str) or not isinstance(backend_data, (dict, type(None))):
        return None
    return Lease(subnet, public_ip, backend_type, backend_data, entry.expires_ns)


class SubnetManager:
    """flannel's etcd `LocalManager`: hands out subnets of `network`, renews and watches them.

    Defaults follow flannel's `CheckNetworkConfig` (pkg/subnet/config.go):
    SubnetMin = Network + one subnet ("skip over the first subnet otherwise it
    causes problems", e.g. 10.244.1.0/24 in 10.244.0.0/16) and
    SubnetMax = `Network.Next().IP - subnetSize`, the last subnet of Network
    (10.244.255.0/24).  SubnetLen must be at most 30 and at least
    Network's prefix + 2 ("network must be able to accommodate at least four
    subnets").
    """

    def __init__(
        self,
        store: KeyValueStore,
        network: IPv4Network,
        subnet_len: int = 24,
        subnet_min: IPv4Network | IPv4Address | None = None,
        subnet_max: IPv4Network | IPv4Address | None = None,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.network = _as_network(network, "Network")
        self.subnet_len = _check_subnet_len(subnet_len, self.network)
        size = 1 << (32 - self.subnet_len)
        first = IPv4Network((int(self.network.network_address) + size, self.subnet_len))
        last = IPv4Network((int(self.network.broadcast_address) + 1 - size, self.subnet_len))
        self.subnet_min = first if subnet_min is None else self._bound(subnet_min, "SubnetMin")
        self.subnet_max = last if subnet_max is None else self._bound(subnet_max, "SubnetMax")
        if self.subnet_min.network_address > self.subnet_max.network_address:
            raise ValueError(f"SubnetMin {self.subnet_min} is above SubnetMax {self.subnet_max}")
        self._random = random.Random(seed)
        self._last_event: tuple[WatchEvent, LeaseEvent | None] | None = None
        self._index = (LeaseIndex(store, SUBNETS_PREFIX, parse_subnet_key, decode_lease)
                       if isinstance(store, MemoryStore) else None)

    @classmethod
    def from_config(cls, store: KeyValueStore, now_ns: int, seed: int = 0) -> SubnetManager:
        """A manager for the net-conf stored at /coreos.com/network/config, as
        flanneld's `GetNetworkConfig` reads it (SubnetLen defaults to 24 when
        Network is /22 or larger, else Network's prefix + 2)."""
        config = read_config(store, now_ns)
        network = _as_network(config.get("Network"), "Network")
        default_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
        return cls(
            store,
            network,
            subnet_len=config.get("SubnetLen") or default_len,
            subnet_min=_optional_address(config.get("SubnetMin"), "SubnetMin"),
            subnet_max=_optional_address(config.get("SubnetMax"), "SubnetMax"),
            seed=seed,
        )

    def write_config(self, raw: dict, now_ns: int) -> None:
        """Store the net-conf JSON, as an admin does with `etcdctl put`."""
        write_config(self.store, raw, now_ns)

    def read_config(self, now_ns: int) -> dict:
        return read_config(self.store, now_ns)

    def acquire_lease(
        self,
        public_ip: IPv4Address,
        backend_type: str,
        backend_data: dict | None,
        now_ns: int,
        requested: IPv4Network | None = None,
    ) -> Lease:
        """Claim a subnet for the node at `public_ip`, like flannel's `tryAcquireLease`.

        An unexpired lease already held by `public_ip` and still inside
        SubnetMin..SubnetMax/SubnetLen is reused (a restarted node keeps its
        subnet, even if `requested` names another) with the new attrs and a
        fresh TTL; an incompatible one is deleted.  Otherwise `requested` is
        claimed exactly, or else a random subnet among the first 100 free ones
        from SubnetMin up.
        """
        public_ip = _as_address(public_ip, "public_ip")
        if not isinstance(backend_type, str):
            raise ValueError(f"backend_type must be a string, got {backend_type!r}")
        if backend_data is not None and not isinstance(backend_data, dict):
            raise ValueError(f"backend_data must be a dict or None, got {type(backend_data).__name__}")
        if requested is not None:
            requested = self._check_requested(requested)
        value = encode_lease_attrs(public_ip, backend_type, backend_data)
        for _ in range(RACE_RETRIES):
            lease = self._try_acquire(public_ip, value, now_ns, requested)
            if lease is not None:
                return lease
        raise LeaseError(f"max retries reached trying to acquire a subnet for {public_ip}")

    def renew_lease(self, lease: Lease, now_ns: int) -> Lease:
        """Re-put the lease with a fresh 24 h TTL (flannel's `RenewLease`); a
        lease that expired meanwhile is re-created unless another node took
        its subnet."""
        current = self._lease_at(lease.subnet, now_ns)
        if current is not None and current.public_ip != lease.public_ip:
            raise LeaseError(f"cannot renew {lease.subnet} for {lease.public_ip}: now leased to {current.public_ip}")
        value = encode_lease_attrs(lease.public_ip, lease.backend_type, lease.backend_data)
        entry = self.store.put(subnet_key(lease.subnet), value, SUBNET_TTL_NS, now_ns)
        return _lease_from(entry, lease)

    @staticmethod
    def renew_due_ns(lease: Lease) -> int:
        """When flanneld renews: `subnet-lease-renew-margin` (1 h) before expiry."""
        return lease.expires_ns - RENEW_MARGIN_NS

    def revoke_lease(self, lease_or_subnet: Lease | IPv4Network, now_ns: int) -> None:
        """Delete a lease (its owner's flanneld shuts down when it sees this)."""
        subnet = lease_or_subnet.subnet if isinstance(lease_or_subnet, Lease) else lease_or_subnet
        self.store.delete(subnet_key(_as_network(subnet, "subnet")), now_ns)

    def leases(self, now_ns: int) -> list[Lease]:
        """Every unexpired lease, sorted by subnet."""
        if self._index is not None and self._index.current(now_ns):
            return self._index.leases()
        decoded = (decode_lease(entry) for entry in self.store.list(SUBNETS_PREFIX, now_ns))
        return sorted((lease for lease in decoded if lease is not None), key=lambda lease: lease.subnet)

    def expire(self, now_ns: int) -> list[Lease]:
        """Let the store drop expired keys; returns the leases that expired
        (watchers get "removed" for each)."""
        decoded = (decode_lease(entry) for entry in self.store.expire(now_ns))
        return [lease for lease in decoded if lease is not None]

    def watch_leases(self, callback: LeaseCallback) -> int:
        """Report lease changes to `callback`, derived from a store prefix
        watch: "added" for a new subnet key, "changed" when its attrs change
        (a TTL-only renewal reports nothing), "removed" on delete or expiry."""

        def on_store_event(event: WatchEvent) -> None:
            lease_event = self._translated(event)
            if lease_event is not None:
                callback(lease_event)

        return self.store.watch(SUBNETS_PREFIX, on_store_event)

    def unwatch(self, handle: int) -> None:
        self.store.unwatch(handle)

    def _translated(self, event: WatchEvent) -> LeaseEvent | None:
        """`_lease_event`, once per store event for all the watchers it reaches
        (every flanneld watches: N translations of each of N leases otherwise)."""
        last = self._last_event
        if last is not None and last[0] is event:
            return last[1]
        lease_event = _lease_event(event)
        self._last_event = (event, lease_event)
        return lease_event

    def _try_acquire(
        self, public_ip: IPv4Address, value: str, now_ns: int, requested: IPv4Network | None
    ) -> Lease | None:
        """One attempt; None when another writer claimed the chosen subnet first."""
        leases = self.leases(now_ns)
        own = next((lease for lease in leases if lease.public_ip == public_ip), None)
        if own is not None:
            if self._is_compatible(own.subnet):
                entry = self.store.put(subnet_key(own.subnet), value, SUBNET_TTL_NS, now_ns)
                return decode_lease(entry)
            self.store.delete(subnet_key(own.subnet), now_ns)
        if requested is not None:
            taken = self.store.get(subnet_key(requested), now_ns)
            if taken is not None:
                holder = decode_lease(taken)
                owner = "an unreadable lease" if holder is None else holder.public_ip
                raise LeaseError(f"requested subnet {requested} is already leased to {owner}")
            subnet = requested
        else:
            subnet = self._pick_free_subnet(now_ns)
        try:
            entry = self.store.create(subnet_key(subnet), value, SUBNET_TTL_NS, now_ns)
        except KeyExists:
            return None
        return decode_lease(entry)

    def _pick_free_subnet(self, now_ns: int) -> IPv4Network:
        if self._index is not None and self._index.current(now_ns):
            spans, in_use = self._index.spans(), len(self._index.used())
        else:
            subnets = (parse_subnet_key(entry.key) for entry in self.store.list(SUBNETS_PREFIX, now_ns))
            used = sorted((int(subnet.network_address), subnet.prefixlen) for subnet in subnets
                          if subnet is not None)
            spans, in_use = Spans.of(used), len(used)
        candidates = _free_subnets(self.subnet_min, self.subnet_max, spans, MAX_CANDIDATES)
        if not candidates:
            raise LeaseError(
                f"no free subnet left in {self.network} (SubnetLen {self.subnet_len}, "
                f"SubnetMin {self.subnet_min}, SubnetMax {self.subnet_max}): {in_use} leases in use"
            )
        return candidates[self._random.randrange(len(candidates))]

    def _lease_at(self, subnet: IPv4Network, now_ns: int) -> Lease | None:
        entry = self.store.get(subnet_key(subnet), now_ns)
        return None if entry is None else decode_lease(entry)

    def _is_compatible(self, subnet: IPv4Network) -> bool:
        """flannel's `isSubnetConfigCompat`: inside SubnetMin..SubnetMax with SubnetLen."""
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min.network_address <= subnet.network_address <= self.subnet_max.network_address
        )

    def _check_requested(self, requested: IPv4Network) -> IPv4Network:
        subnet = _as_network(requested, "requested")
        if subnet.prefixlen != self.subnet_len:
            raise ValueError(f"requested subnet {subnet} does not have SubnetLen /{self.subnet_len}")
        if not subnet.subnet_of(self.network):
            raise ValueError(f"requested subnet {subnet} is outside Network {self.network}")
        if not self._is_compatible(subnet):
            raise ValueError(
                f"requested subnet {subnet} is outside SubnetMin {self.subnet_min} .. SubnetMax {self.subnet_max}"
            )
        return subnet

    def _bound(self, value: IPv4Network | IPv4Address, field: str) -> IPv4Network:
        """SubnetMin/SubnetMax as a subnet of SubnetLen inside Network; a bare
        address (as in net-conf.json) must sit on a SubnetLen boundary."""
        if isinstance(value, IPv4Address):
            try:
                subnet = IPv4Network((value, self.subnet_len))
            except ValueError:
                raise ValueError(f"{field} {value} is not on a SubnetLen boundary (/{self.subnet_len})") from None
        else:
            subnet = _as_network(value, field)
        if subnet.prefixlen != self.subnet_len:
            raise ValueError(f"{field} {subnet} does not have SubnetLen /{self.subnet_len}")
        if not subnet.subnet_of(self.network):
            raise ValueError(f"{field} {subnet} is not in the range of the Network {self.network}")
        return subnet


def write_config(store: KeyValueStore, raw: dict, now_ns: int) -> None:
    """Store the net-conf JSON at /coreos.com/network/config (no TTL)."""
    if not isinstance(raw, dict):
        raise ValueError(f"net-conf must be a JSON object (dict), got {type(raw).__name__}")
    store.put(CONFIG_KEY, _go_json(raw, "net-conf"), None, now_ns)


def read_config(store: KeyValueStore, now_ns: int) -> dict:
    """The net-conf JSON stored at /coreos.com/network/config."""
    entry = store.get(CONFIG_KEY, now_ns)
    if entry is None:
        raise LeaseError(f"flannel config not found in the store at {CONFIG_KEY}")
    try:
        config = json.loads(entry.value)
    except ValueError as error:
        raise LeaseError(f"net-conf at {CONFIG_KEY} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise LeaseError(f"net-conf at {CONFIG_KEY} is not a JSON object")
    return config


def _lease_event(event: WatchEvent) -> LeaseEvent | None:
    if event.kind == "put":
        lease = decode_lease(event.entry)
        if lease is None:
            return None
        previous = None if event.previous is None else decode_lease(event.previous)
        if previous is None:
            return LeaseEvent("added", lease)
        if _attrs(previous) != _attrs(lease):
            return LeaseEvent("changed", lease)
        return None
    removed = None if event.previous is None else decode_lease(event.previous)
    return None if removed is None else LeaseEvent("removed", removed)


def _attrs(lease: Lease) -> tuple:
    return (lease.public_ip, lease.backend_type, lease.backend_data)


def _lease_from(entry: Entry, lease: Lease) -> Lease:
    return Lease(lease.subnet, lease.public_ip, lease.backend_type, lease.backend_data, entry.expires_ns)


def _free_subnets(subnet_min: IPv4Network, subnet_max: IPv4Network, spans: Spans,
                  limit: int) -> list[IPv4Network]:
    """Up to `limit` subnets from subnet_min to subnet_max (ascending) that
    overlap no used subnet, as flannel's allocateSubnet collects them; `spans`
    holds the addresses the used subnets cover. A candidate inside a run is
    skipped to the first candidate after the run, in one step."""
    size = subnet_min.num_addresses
    first, last = int(subnet_min.network_address), int(subnet_max.network_address)
    free: list[IPv4Network] = []
    start = first
    while start <= last and len(free) < limit:
        used_end = spans.next_end_after(start, start + size)
        if used_end is None:
            free.append(IPv4Network((start, subnet_min.prefixlen)))
            start += size
        else:
            start = first + -(-(used_end - first) // size) * size  # the first candidate after the run
    return free


def _go_json(value: Any, field: str) -> str:
    """JSON as Go's encoding/json writes it: compact, UTF-8, with <, >, &,
    U+2028 and U+2029 escaped."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{field} cannot be encoded as JSON: {error}") from None
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _check_subnet_len(subnet_len: int, network: IPv4Network) -> int:
    if isinstance(subnet_len, bool) or not isinstance(subnet_len, int):
        raise ValueError(f"SubnetLen must be an integer, got {subnet_len!r}")
    if subnet_len > 30:
        raise ValueError(f"SubnetLen /{subnet_len} must be at most /30")
    if subnet_len < network.prefixlen + 2:
        raise ValueError(
            f"SubnetLen /{subnet_len} is too short for Network {network}: "
            f"it must fit at least four subnets (SubnetLen >= /{network.prefixlen + 2})"
        )
    return subnet_len


def _as_network(value: Any, field: str) -> IPv4Network:
    if isinstance(value, IPv4Network):
        return value
    try:
        return IPv4Network(value)
    except (ValueError, TypeError):
        raise ValueError(f"{field} must be an IPv4 CIDR like 10.244.0.0/16, got {value!r}") from None


def _as_address(value: Any, field: str) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    try:
        return IPv4Address(value)
    except (ValueError, TypeError):
        raise ValueError(f"{field} must be an IPv4 address, got {value!r}") from None


def _optional_address(value: Any, field: str) -> IPv4Address | None:
    return None if value is None else _as_address(value, field)
