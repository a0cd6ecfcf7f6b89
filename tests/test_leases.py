"""flannel lease store and subnet manager: key layout, allocation, TTLs, watches, subnet.env.

Expected values are written out by hand from flannel's sources (config.go,
local_manager.go, registry.go, subnet.go), not produced by the code under test.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.flannel.lease_index import LeaseIndex, Spans
from emu.flannel.leases import (SUBNETS_PREFIX, Lease, LeaseError, LeaseEvent, SubnetManager, _free_subnets,
                                decode_lease, parse_subnet_key, subnet_key)
from emu.flannel.store import KeyExists, MemoryStore, WatchEvent
from emu.flannel.subnet_env import backend_mtu, parse_subnet_env, render_subnet_env

HOUR = 3600 * 10**9
DAY = 24 * HOUR
NET16 = IPv4Network("10.244.0.0/16")
VXLAN_DATA = {"VNI": 1, "VtepMAC": "6e:2d:54:00:01:01"}


def node_ip(n: int) -> IPv4Address:
    return IPv4Address(f"172.18.0.{10 + n}")


def manager(network: str = "10.244.0.0/16", **kwargs) -> SubnetManager:
    return SubnetManager(MemoryStore(), IPv4Network(network), **kwargs)


def acquire(sm: SubnetManager, n: int, now_ns: int = 0, **kwargs) -> Lease:
    return sm.acquire_lease(node_ip(n), "vxlan", VXLAN_DATA, now_ns, **kwargs)


# --- store -------------------------------------------------------------------


def test_store_create_refuses_existing_key_but_not_expired_one():
    store = MemoryStore()
    store.create("/k", "a", 10, now_ns=0)
    with pytest.raises(KeyExists, match="key /k already exists"):
        store.create("/k", "b", 10, now_ns=9)
    assert store.create("/k", "c", 10, now_ns=10).value == "c"


def test_store_expired_entries_are_invisible_before_collection():
    store = MemoryStore()
    store.put("/a/1", "x", 100, now_ns=0)
    store.put("/a/2", "y", None, now_ns=0)
    assert store.get("/a/1", 99).value == "x"
    assert store.get("/a/1", 100) is None
    assert [entry.key for entry in store.list("/a/", 100)] == ["/a/2"]
    removed = store.expire(100)
    assert [(entry.key, entry.value) for entry in removed] == [("/a/1", "x")]
    assert store.expire(10**18) == []


def test_store_revisions_increase_and_list_is_sorted_by_key():
    store = MemoryStore()
    first = store.put("/p/b", "1", None, 0)
    second = store.put("/p/a", "2", None, 0)
    third = store.put("/p/b", "3", None, 0)
    store.delete("/p/a", 0)
    assert (first.revision, second.revision, third.revision, store.revision) == (1, 2, 3, 4)
    assert [(e.key, e.value) for e in store.list("/p/", 0)] == [("/p/b", "3")]
    store.put("/p/c", "4", None, 0)
    store.put("/q/a", "5", None, 0)
    assert [e.key for e in store.list("/p/", 0)] == ["/p/b", "/p/c"]


def test_store_watch_events_carry_previous_and_run_after_update():
    store = MemoryStore()
    seen: list[tuple[str, str, str | None, str | None]] = []

    def record(event: WatchEvent) -> None:
        now_visible = store.get(event.entry.key, 5)
        seen.append((
            event.kind,
            event.entry.key,
            None if event.previous is None else event.previous.value,
            None if now_visible is None else now_visible.value,
        ))

    handle = store.watch("/w/", record)
    store.put("/w/x", "1", None, 0)
    store.put("/w/x", "2", None, 0)
    store.put("/other", "ignored", None, 0)
    store.delete("/w/x", 0)
    store.delete("/w/x", 0)  # absent: no event
    store.unwatch(handle)
    store.put("/w/y", "after unwatch", None, 0)
    assert seen == [
        ("put", "/w/x", None, "1"),
        ("put", "/w/x", "1", "2"),
        ("delete", "/w/x", "2", None),
    ]
    with pytest.raises(ValueError, match="unknown watch handle"):
        store.unwatch(handle)


def test_store_put_over_expired_key_reports_expire_then_fresh_put():
    store = MemoryStore()
    events: list[WatchEvent] = []
    store.watch("/", events.append)
    store.put("/k", "old", 10, 0)
    store.put("/k", "new", 10, 20)
    assert [(e.kind, e.previous and e.previous.value) for e in events] == [
        ("put", None), ("expire", "old"), ("put", None)]


def test_store_rejects_bad_ttl_and_value():
    store = MemoryStore()
    with pytest.raises(ValueError, match="ttl_ns"):
        store.put("/k", "v", 0, 0)
    with pytest.raises(ValueError, match="value of /k"):
        store.put("/k", b"bytes", None, 0)


# --- key layout and JSON -----------------------------------------------------


def test_lease_key_and_exact_json_like_flannel():
    sm = manager()
    lease = sm.acquire_lease(IPv4Address("172.18.0.11"), "vxlan", VXLAN_DATA, 5,
                             requested=IPv4Network("10.244.1.0/24"))
    entry = sm.store.get("/coreos.com/network/subnets/10.244.1.0-24", 5)
    assert entry.value == (
        '{"PublicIP":"172.18.0.11","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"6e:2d:54:00:01:01"}}'
    )
    assert entry.expires_ns == 5 + 86_400 * 10**9
    assert lease == Lease(IPv4Network("10.244.1.0/24"), IPv4Address("172.18.0.11"), "vxlan",
                          VXLAN_DATA, 5 + 86_400 * 10**9)


def test_lease_json_without_backend_data_omits_the_field_like_go_omitempty():
    sm = manager()
    sm.acquire_lease(IPv4Address("172.18.0.12"), "host-gw", None, 0,
                     requested=IPv4Network("10.244.12.0/24"))
    entry = sm.store.get("/coreos.com/network/subnets/10.244.12.0-24", 0)
    assert entry.value == '{"PublicIP":"172.18.0.12","PublicIPv6":null,"BackendType":"host-gw"}'


def test_backend_data_key_order_is_kept():
    sm = manager()
    sm.acquire_lease(node_ip(1), "vxlan", {"VtepMAC": "6e:2d:54:00:01:01", "VNI": 1}, 0,
                     requested=IPv4Network("10.244.3.0/24"))
    value = sm.store.get("/coreos.com/network/subnets/10.244.3.0-24", 0).value
    assert value.endswith('"BackendData":{"VtepMAC":"6e:2d:54:00:01:01","VNI":1}}')


def test_config_round_trip_and_from_config_defaults():
    store = MemoryStore()
    sm = SubnetManager(store, NET16)
    sm.write_config({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}, 0)
    assert store.get("/coreos.com/network/config", 0).value == \
        '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
    assert sm.read_config(0) == {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
    from_config = SubnetManager.from_config(store, 0)
    assert (from_config.network, from_config.subnet_len) == (NET16, 24)
    store.put("/coreos.com/network/config", '{"Network":"10.5.0.0/26","SubnetMin":"10.5.0.32"}', None, 0)
    small = SubnetManager.from_config(store, 0)
    assert (small.subnet_len, small.subnet_min, small.subnet_max) == (
        28, IPv4Network("10.5.0.32/28"), IPv4Network("10.5.0.48/28"))


def test_missing_config_is_a_lease_error():
    with pytest.raises(LeaseError, match="flannel config not found"):
        manager().read_config(0)


# --- allocation --------------------------------------------------------------


def test_default_subnet_min_and_max_follow_flannel():
    sm = manager()
    assert sm.subnet_min == IPv4Network("10.244.1.0/24")
    assert sm.subnet_max == IPv4Network("10.244.255.0/24")
    sm26 = manager("10.1.0.0/24", subnet_len=26)
    assert (sm26.subnet_min, sm26.subnet_max) == (IPv4Network("10.1.0.64/26"), IPv4Network("10.1.0.192/26"))


def test_small_network_uses_every_subnet_but_the_first_then_is_exhausted():
    sm = manager("10.244.0.0/22")
    got = {acquire(sm, n).subnet for n in range(3)}
    assert got == {IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24"), IPv4Network("10.244.3.0/24")}
    with pytest.raises(LeaseError) as error:
        acquire(sm, 3)
    assert str(error.value) == (
        "no free subnet left in 10.244.0.0/22 (SubnetLen 24, SubnetMin 10.244.1.0/24, "
        "SubnetMax 10.244.3.0/24): 3 leases in use"
    )


def test_allocation_stays_within_custom_subnet_min_and_max():
    sm = manager(subnet_min=IPv4Network("10.244.5.0/24"), subnet_max=IPv4Address("10.244.7.0"))
    got = {acquire(sm, n).subnet for n in range(3)}
    assert got == {IPv4Network(f"10.244.{i}.0/24") for i in (5, 6, 7)}
    with pytest.raises(LeaseError, match="no free subnet left"):
        acquire(sm, 9)


def test_random_pick_is_among_the_first_100_free_subnets_and_never_the_first():
    picks = {acquire(manager(seed=seed), 1).subnet for seed in range(60)}
    assert all(IPv4Network("10.244.1.0/24") <= s <= IPv4Network("10.244.100.0/24") for s in picks)
    assert IPv4Network("10.244.0.0/24") not in picks
    assert len(picks) > 20  # really random, not first-fit


def test_same_seed_same_sequence_and_different_seeds_differ():
    def sequence(seed: int) -> list[IPv4Network]:
        sm = manager(seed=seed)
        return [acquire(sm, n).subnet for n in range(20)]

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)
    assert len(set(sequence(7))) == 20


def test_freed_subnet_can_be_allocated_again():
    sm = manager("10.244.0.0/22")
    leases = [acquire(sm, n) for n in range(3)]
    sm.revoke_lease(leases[1], 0)
    assert acquire(sm, 5).subnet == leases[1].subnet


# --- requested subnet --------------------------------------------------------


def test_requested_subnet_is_claimed_exactly():
    sm = manager()
    assert acquire(sm, 1, requested=IPv4Network("10.244.42.0/24")).subnet == IPv4Network("10.244.42.0/24")


def test_requested_subnet_taken_by_another_node_fails():
    sm = manager()
    acquire(sm, 1, requested=IPv4Network("10.244.42.0/24"))
    with pytest.raises(LeaseError, match=r"requested subnet 10.244.42.0/24 is already leased to 172.18.0.11"):
        acquire(sm, 2, requested=IPv4Network("10.244.42.0/24"))


@pytest.mark.parametrize("requested, message", [
    ("10.245.1.0/24", "outside Network 10.244.0.0/16"),
    ("10.244.1.0/25", "does not have SubnetLen /24"),
    ("10.244.0.0/24", "outside SubnetMin 10.244.1.0/24"),
])
def test_requested_subnet_must_fit_the_config(requested, message):
    with pytest.raises(ValueError, match=message):
        acquire(manager(), 1, requested=IPv4Network(requested))


# --- reuse by PublicIP -------------------------------------------------------


def test_restarted_node_keeps_its_lease_and_attr_change_is_reported():
    sm = manager()
    first = acquire(sm, 1, now_ns=0)
    events: list[LeaseEvent] = []
    sm.watch_leases(events.append)
    again = acquire(sm, 1, now_ns=HOUR)
    assert again.subnet == first.subnet
    assert again.expires_ns == HOUR + DAY
    assert events == []  # same attrs, only the TTL moved
    new_data = {"VNI": 1, "VtepMAC": "6e:2d:54:00:01:02"}
    changed = sm.acquire_lease(node_ip(1), "vxlan", new_data, 2 * HOUR)
    assert changed.subnet == first.subnet
    assert events == [LeaseEvent("changed", Lease(first.subnet, node_ip(1), "vxlan", new_data, 2 * HOUR + DAY))]
    assert len(sm.leases(2 * HOUR)) == 1


def test_reuse_wins_over_a_requested_subnet_like_flannel():
    sm = manager()
    first = acquire(sm, 1, requested=IPv4Network("10.244.9.0/24"))
    assert acquire(sm, 1, requested=IPv4Network("10.244.10.0/24")).subnet == first.subnet


def test_lease_incompatible_with_config_is_replaced():
    store = MemoryStore()
    old = SubnetManager(store, NET16, subnet_len=25).acquire_lease(
        node_ip(1), "vxlan", VXLAN_DATA, 0, requested=IPv4Network("10.244.3.128/25"))
    new = SubnetManager(store, NET16, subnet_len=24).acquire_lease(node_ip(1), "vxlan", VXLAN_DATA, 0)
    assert new.subnet.prefixlen == 24
    assert store.get(f"/coreos.com/network/subnets/{old.subnet.network_address}-25", 0) is None
    assert [l.subnet for l in SubnetManager(store, NET16).leases(0)] == [new.subnet]


# --- renewal, expiry, revoke -------------------------------------------------


def test_renewal_is_due_one_hour_before_expiry_and_outlives_the_original():
    sm = manager()
    lease = acquire(sm, 1, now_ns=1000)
    assert lease.expires_ns == 1000 + DAY
    assert sm.renew_due_ns(lease) == 1000 + 23 * HOUR
    renewed = sm.renew_lease(lease, sm.renew_due_ns(lease))
    assert renewed.expires_ns == 1000 + 23 * HOUR + DAY
    assert sm.expire(1000 + DAY + 1) == []
    assert [l.subnet for l in sm.leases(1000 + DAY + 1)] == [lease.subnet]


def test_expiry_removes_the_lease_and_notifies_watchers():
    sm = manager()
    lease = acquire(sm, 1, now_ns=0)
    events: list[LeaseEvent] = []
    sm.watch_leases(events.append)
    assert sm.leases(DAY - 1) == [lease]
    assert sm.leases(DAY) == []  # invisible at once, before collection
    assert sm.expire(DAY) == [lease]
    assert events == [LeaseEvent("removed", lease)]


def test_renewing_a_subnet_taken_by_another_node_fails():
    sm = manager("10.244.0.0/22")
    lease = acquire(sm, 1, now_ns=0, requested=IPv4Network("10.244.2.0/24"))
    sm.expire(DAY)
    acquire(sm, 2, now_ns=DAY, requested=IPv4Network("10.244.2.0/24"))
    with pytest.raises(LeaseError, match="now leased to 172.18.0.12"):
        sm.renew_lease(lease, DAY)


def test_revoke_by_lease_or_subnet():
    sm = manager()
    first = acquire(sm, 1)
    second = acquire(sm, 2)
    events: list[LeaseEvent] = []
    sm.watch_leases(events.append)
    sm.revoke_lease(first, 0)
    sm.revoke_lease(second.subnet, 0)
    assert sm.leases(0) == []
    assert events == [LeaseEvent("removed", first), LeaseEvent("removed", second)]


# --- watches -----------------------------------------------------------------


def test_lease_watchers_see_events_in_order_and_in_registration_order():
    sm = manager()
    log: list[tuple[str, str, str]] = []
    handle_a = sm.watch_leases(lambda e: log.append(("a", e.kind, str(e.lease.subnet))))
    sm.watch_leases(lambda e: log.append(("b", e.kind, str(e.lease.subnet))))
    acquire(sm, 1, requested=IPv4Network("10.244.1.0/24"))
    acquire(sm, 2, requested=IPv4Network("10.244.2.0/24"))
    sm.acquire_lease(node_ip(2), "vxlan", {"VNI": 2, "VtepMAC": "6e:2d:54:00:01:01"}, 0)
    sm.unwatch(handle_a)
    sm.revoke_lease(IPv4Network("10.244.1.0/24"), 0)
    sm.write_config({"Network": "10.244.0.0/16"}, 0)  # not a lease: no event
    assert log == [
        ("a", "added", "10.244.1.0/24"), ("b", "added", "10.244.1.0/24"),
        ("a", "added", "10.244.2.0/24"), ("b", "added", "10.244.2.0/24"),
        ("a", "changed", "10.244.2.0/24"), ("b", "changed", "10.244.2.0/24"),
        ("b", "removed", "10.244.1.0/24"),
    ]


def test_leases_are_sorted_by_subnet_not_by_key_text():
    sm = manager()
    for n, third in enumerate((10, 2, 100)):
        acquire(sm, n, requested=IPv4Network(f"10.244.{third}.0/24"))
    assert [str(l.subnet) for l in sm.leases(0)] == ["10.244.2.0/24", "10.244.10.0/24", "10.244.100.0/24"]


def test_bad_subnet_nodes_are_skipped_but_never_allocated_over():
    sm = manager("10.244.0.0/22")
    sm.store.put("/coreos.com/network/subnets/10.244.1.0-24", "not json", DAY, 0)
    assert sm.leases(0) == []
    got = {acquire(sm, n).subnet for n in range(2)}
    assert got == {IPv4Network("10.244.2.0/24"), IPv4Network("10.244.3.0/24")}


# --- configuration errors ----------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"subnet_min": IPv4Network("10.245.1.0/24")}, "SubnetMin 10.245.1.0/24 is not in the range of the Network"),
    ({"subnet_max": IPv4Network("10.244.9.0/25")}, "SubnetMax 10.244.9.0/25 does not have SubnetLen /24"),
    ({"subnet_min": IPv4Address("10.244.1.5")}, "SubnetMin 10.244.1.5 is not on a SubnetLen boundary"),
    ({"subnet_min": IPv4Network("10.244.9.0/24"), "subnet_max": IPv4Network("10.244.8.0/24")},
     "SubnetMin 10.244.9.0/24 is above SubnetMax 10.244.8.0/24"),
    ({"subnet_len": 31}, "SubnetLen /31 must be at most /30"),
    ({"subnet_len": 17}, "SubnetLen /17 is too short for Network 10.244.0.0/16"),
    ({"subnet_len": "24"}, "SubnetLen must be an integer"),
])
def test_invalid_subnet_config_is_a_one_line_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        manager(**kwargs)
    assert "\n" not in str(error.value)


def test_bad_acquire_arguments_name_the_field():
    sm = manager()
    with pytest.raises(ValueError, match="public_ip"):
        sm.acquire_lease("not-an-ip", "vxlan", None, 0)
    with pytest.raises(ValueError, match="backend_type"):
        sm.acquire_lease(node_ip(1), 5, None, 0)
    with pytest.raises(ValueError, match="BackendData cannot be encoded"):
        sm.acquire_lease(node_ip(1), "vxlan", {"VNI": object()}, 0)


# --- subnet.env --------------------------------------------------------------


def test_subnet_env_text_matches_flannel():
    text = render_subnet_env(NET16, IPv4Network("10.244.1.0/24"), 1450, False)
    assert text == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=false\n"
    )
    assert render_subnet_env(NET16, IPv4Network("10.244.7.0/24"), 1500, True).endswith(
        "FLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n")


def test_parse_subnet_env():
    assert parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\n\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n"
                            "FLANNEL_IPMASQ=true\n") == {
        "FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.1.1/24",
        "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}
    with pytest.raises(ValueError, match="line 2 is not KEY=VALUE"):
        parse_subnet_env("FLANNEL_MTU=1450\ngarbage\n")


@pytest.mark.parametrize("backend, expected", [("vxlan", 1450), ("udp", 1472), ("host-gw", 1500)])
def test_backend_mtu(backend, expected):
    assert backend_mtu(backend, 1500) == expected


def test_backend_mtu_rejects_unknown_backend_and_tiny_underlay():
    with pytest.raises(ValueError, match="backend_type 'ipip'"):
        backend_mtu("ipip", 1500)
    with pytest.raises(ValueError, match="underlay_mtu 40 is too small for vxlan"):
        backend_mtu("vxlan", 40)


def test_wider_lease_from_an_older_config_blocks_every_subnet_it_covers():
    sm = manager("10.244.0.0/22")
    sm.store.put("/coreos.com/network/subnets/10.244.2.0-23",
                 '{"PublicIP":"172.18.0.99","PublicIPv6":null,"BackendType":"vxlan"}', DAY, 0)
    assert acquire(sm, 1).subnet == IPv4Network("10.244.1.0/24")
    with pytest.raises(LeaseError, match="2 leases in use"):
        acquire(sm, 2)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 31), st.sampled_from([22, 24, 24, 24, 26])),
                min_size=1, max_size=40))
def test_used_address_runs_follow_puts_and_deletes(steps):
    """The lease index's runs of used addresses (kept as keys come and go)
    equal the runs of the keys held, and the free candidates found by
    skipping runs equal a check of every candidate against every used subnet."""
    store = MemoryStore()
    index = LeaseIndex(store, SUBNETS_PREFIX, parse_subnet_key, decode_lease)
    held: set[IPv4Network] = set()
    assert index.current(0)  # from here on it follows the watch events (no rebuild)
    for put, number, length in steps:
        subnet = IPv4Network((int(IPv4Address("10.0.0.0")) + number * 256, 24)).supernet(new_prefix=length) \
            if length < 24 else IPv4Network((int(IPv4Address("10.0.0.0")) + number * 256, length))
        if put or not held:
            store.put(subnet_key(subnet), "{}", None, 0)
            held.add(subnet)
        else:  # one of the keys held
            gone = sorted(held)[number % len(held)]
            store.delete(subnet_key(gone), 0)
            held.discard(gone)
    assert index._revision == store.revision  # followed, not rebuilt
    blocks = sorted((int(s.network_address), s.prefixlen) for s in held)
    reference = Spans.of(blocks)
    assert (index.spans().starts, index.spans().ends) == (reference.starts, reference.ends)
    low, high = IPv4Network("10.0.0.0/24"), IPv4Network("10.0.70.0/24")
    every = [IPv4Network((start, 24)) for start in range(int(low.network_address), int(high.network_address) + 1, 256)]
    brute = [c for c in every if not any(c.overlaps(s) for s in held)][:30]
    assert _free_subnets(low, high, index.spans(), 30) == brute
