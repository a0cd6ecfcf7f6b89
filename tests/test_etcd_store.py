"""flannel's leases in a real etcd server (Debian's etcd-server, started on
loopback for each test module): the keys and values flannel's etcd registry
writes, byte-identical runs with the embedded store, a concurrent writer's
lease joining the run, and the three faults (unreachable at start, lost
mid-run, a malformed lease)."""

from __future__ import annotations

import json
import subprocess
from base64 import b64decode
from ipaddress import IPv4Address, IPv4Network
import sys
from pathlib import Path

import pytest

from emu.flannel.etcd_store import EtcdStore, StoreUnavailable
from emu.flannel.leases import SubnetManager
from emu.flannel.store import MemoryStore
from emu.scenario import load_scenario_text
from emu.scenario import run as run_module
from emu.scenario.run import run_scenario
from helpers_etcd import UNAVAILABLE, etcd_server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

FOREIGN_LEASE = ('{"PublicIP":"172.18.0.13","PublicIPv6":null,"BackendType":"vxlan",'
                 '"BackendData":{"VNI":1,"VtepMAC":"6e:2d:54:00:03:03"}}')


@pytest.fixture(scope="module")
def etcd():
    with etcd_server() as server:
        yield server


def etcdctl(server, *args: str) -> str:
    done = subprocess.run(["etcdctl", "--endpoints", server.url, *args], capture_output=True, text=True,
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True)
    return done.stdout


def put_with_lease(server, key: str, value: str, ttl_s: int = 3600) -> None:
    """As another flanneld writes a lease: granted TTL, then the key on it."""
    lease_id = etcdctl(server, "lease", "grant", str(ttl_s)).split()[1]
    etcdctl(server, "put", "--lease", lease_id, key, value)


def scenario_text(name: str, prefix: str, endpoint: str, extra: str = "") -> str:
    """An example with `extra` lines after its traffic list, its leases in etcd."""
    text = (ROOT / "examples" / f"{name}.yaml").read_text()
    return text + extra + f"etcd: {{endpoints: [{endpoint}], prefix: {prefix}}}\n"


def test_lease_keys_and_values_are_flannels(etcd):
    """Key layout and JSON field names of flannel's LeaseAttrs (pkg/subnet/subnet.go:
    PublicIP, PublicIPv6, BackendType, BackendData with VNI and VtepMAC), each on an
    etcd lease of flannel's 24 h subnetTTL, and the net-conf at <prefix>/config."""
    scenario = load_scenario_text(scenario_text("vxlan-cross-node", "/keys/network", etcd.url))
    run_scenario(scenario, None, capture=False)
    listing = etcdctl(etcd, "get", "--prefix", "/keys/network", "-w", "json")
    kvs = {b64decode(kv["key"]).decode(): kv for kv in json.loads(listing)["kvs"]}
    assert sorted(kvs) == ["/keys/network/config", "/keys/network/subnets/10.244.1.0-24",
                           "/keys/network/subnets/10.244.2.0-24"]
    value = b64decode(kvs["/keys/network/subnets/10.244.1.0-24"]["value"]).decode()
    assert value == ('{"PublicIP":"172.18.0.11","PublicIPv6":null,"BackendType":"vxlan",'
                     '"BackendData":{"VNI":1,"VtepMAC":"6e:2d:54:00:01:01"}}')
    config = json.loads(b64decode(kvs["/keys/network/config"]["value"]))
    assert config == {"Network": "10.244.0.0/16", "SubnetLen": 24,
                      "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}
    assert "lease" not in kvs["/keys/network/config"]
    lease_id = format(int(kvs["/keys/network/subnets/10.244.2.0-24"]["lease"]), "x")
    granted = etcdctl(etcd, "lease", "timetolive", lease_id)
    assert "granted with TTL(86400s)" in granted


UNPINNED = """
name: unpinned-{backend}
seed: 7
net-conf: {{Network: 10.244.0.0/16, Backend: {{Type: {backend}}}}}
nodes:
  - {{name: n1, pods: [{{name: p1a}}, {{name: p1b}}]}}
  - {{name: n2, pods: [{{name: p2a}}]}}
traffic:
  - {{from: p1a, run: ping -c 2 -i 0.2 -W 1 p2a}}
  - {{from: p2a, run: ping -c 1 -W 1 p3a, at: 2}}
events:
  - {{at: 1, add-node: {{name: n3, pods: [{{name: p3a}}]}}}}
"""


@pytest.mark.parametrize("backend", ["vxlan", "udp", "host-gw"])
def test_etcd_run_is_byte_identical_to_the_embedded_store(etcd, tmp_path, backend):
    """No subnet or pod address pinned: flannel's random subnet picks (seeded) and
    a node joining later must come out the same from either store."""
    text = UNPINNED.format(backend=backend)
    embedded, real = tmp_path / "embedded", tmp_path / "etcd"
    run_scenario(load_scenario_text(text), embedded)
    run_scenario(load_scenario_text(text + f"etcd: {{endpoints: [{etcd.url}], prefix: /same/{backend}}}\n"),
                 real)
    _assert_same_outputs(embedded, real)
    stats = json.loads((real / "stats.json").read_text())
    assert len(stats["flannel"]["leases"]) == 3
    assert [t["received"] for t in stats["traffic"]] == [2, 1]


def test_pinned_reference_scenario_is_byte_identical_with_etcd(etcd, tmp_path):
    embedded, real = tmp_path / "embedded", tmp_path / "etcd"
    run_scenario(load_scenario_text((ROOT / "examples" / "vxlan-cross-node.yaml").read_text()), embedded)
    run_scenario(load_scenario_text(scenario_text("vxlan-cross-node", "/pinned/network", etcd.url)), real)
    _assert_same_outputs(embedded, real)


def _assert_same_outputs(embedded: Path, real: Path) -> None:
    names = sorted(path.name for path in embedded.iterdir())
    assert names == sorted(path.name for path in real.iterdir())
    assert any(name.endswith(".pcap") for name in names)
    for name in names:
        if name == "stats.json":
            left, right = (json.loads((folder / name).read_text()) for folder in (embedded, real))
            assert "store" not in left and right.pop("store")["kind"] == "etcd"
            leases_left = left["flannel"].pop("leases")
            leases_right = right["flannel"].pop("leases")
            assert [key.rsplit("/", 1)[1] for key in leases_left] == \
                   [key.rsplit("/", 1)[1] for key in leases_right]
            assert list(leases_left.values()) == list(leases_right.values())
            assert left == right
        else:
            assert (embedded / name).read_bytes() == (real / name).read_bytes(), name


def _hook_after_build(monkeypatch, at_s: float, action) -> None:
    """Run `action(emulated)` as an event at virtual time `at_s` of the run."""
    real_build = run_module.build_cluster

    def build(scenario, **options):
        emulated = real_build(scenario, **options)
        emulated.sim.call_at(int(at_s * 1e9), action, emulated)
        return emulated

    monkeypatch.setattr(run_module, "build_cluster", build)


def test_a_concurrent_writers_lease_joins_the_run_as_a_node(etcd, tmp_path, monkeypatch):
    """Another flanneld claims 10.244.3.0/24 at t=0.5 s: every node programs a route
    and VTEP entries for it and a pod-less node answers at its flannel.1 address."""
    def another_writer(emulated):
        put_with_lease(etcd, "/join/network/subnets/10.244.3.0-24", FOREIGN_LEASE)
        assert emulated.store.wait_for_foreign(30), "the watch never delivered the other writer's lease"

    _hook_after_build(monkeypatch, 0.5, another_writer)
    extra = "  - {from: p1a, run: ping -c 1 -W 1 10.244.3.0, at: 1}\n"
    scenario = load_scenario_text(scenario_text("vxlan-cross-node", "/join/network", etcd.url, extra))
    result = run_scenario(scenario, tmp_path)
    assert result.traffic[-1].ping.received == 1, result.traffic[-1].ping.lines
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["store"]["foreign_events"] == 1
    assert "lease-10-244-3-0-24" in stats["namespaces"]
    routes = stats["namespaces"]["n1"]["routes"]
    assert any(route.startswith("10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink") for route in routes)
    assert any("joined through etcd" in note for note in result.notes)
    assert (tmp_path / "lease-10-244-3-0-24_eth0.pcap").exists()


def test_a_lease_deleted_by_another_writer_removes_its_node(etcd, tmp_path, monkeypatch):
    def delete_n2(emulated):
        etcdctl(etcd, "del", "/leave/network/subnets/10.244.2.0-24")
        assert emulated.store.wait_for_foreign(30)

    _hook_after_build(monkeypatch, 0.5, delete_n2)
    extra = "  - {from: p1a, run: ping -c 1 -W 1 10.244.2.2, at: 1}\n"
    scenario = load_scenario_text(scenario_text("vxlan-cross-node", "/leave/network", etcd.url, extra))
    result = run_scenario(scenario, None, capture=False)
    assert result.traffic[0].ping.received == 2 and result.traffic[1].ping.received == 0
    assert "n2" not in result.stats["namespaces"]
    assert not any(route.startswith("10.244.2.0/24") for route in result.stats["namespaces"]["n1"]["routes"])
    assert any("n2 left" in note for note in result.notes)


def test_etcd_unreachable_at_start_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "emu.cli", "run", "--etcd", "http://127.0.0.1:9",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip() == ("emu: error: etcd.endpoints: cannot reach etcd at "
                                   "http://127.0.0.1:9: connection refused")
    assert not out.exists()
    with pytest.raises(StoreUnavailable, match="cannot reach etcd at http://127.0.0.1:9"):
        EtcdStore(["http://127.0.0.1:9"])


def test_etcd_stopped_mid_run_keeps_its_leases_and_says_so(tmp_path, monkeypatch):
    with etcd_server() as own:  # a server of this test's own: it is stopped half way
        _hook_after_build(monkeypatch, 0.5, lambda emulated: own.stop())
        extra = ("  - {from: p1a, run: ping -c 1 -W 1 p3a, at: 2}\n"
                 "events:\n  - {at: 1, add-node: {name: n3, ip: 172.18.0.13, pods: [{name: p3a}]}}\n")
        text = scenario_text("vxlan-cross-node", "/lost/network", own.url, extra)
        result = run_scenario(load_scenario_text(text), tmp_path)
    assert [t.ping.received for t in result.traffic] == [2, 1]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["store"]["lost"].startswith(f"etcd at {own.url} stopped answering")
    leases = stats["flannel"]["leases"]
    assert len(leases) == 3  # n3's lease was made locally after etcd went away
    assert {"/lost/network/subnets/10.244.1.0-24", "/lost/network/subnets/10.244.2.0-24"} < set(leases)
    assert any(note.startswith("etcd: store lost during the run") for note in result.notes)


def test_a_malformed_lease_is_skipped_counted_and_named(etcd, tmp_path):
    put_with_lease(etcd, "/bad/network/subnets/10.244.7.0-24", "{not json")
    put_with_lease(etcd, "/bad/network/subnets/10.244.8.0-24", '{"PublicIP":"nonsense"}')
    done = subprocess.run([sys.executable, "-m", "emu.cli", "run", "examples/vxlan-cross-node.yaml",
                           "--etcd", etcd.url, "--etcd-prefix", "/bad/network", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "note: etcd: skipped malformed lease /bad/network/subnets/10.244.7.0-24" in done.stdout
    assert "note: etcd: skipped malformed lease /bad/network/subnets/10.244.8.0-24" in done.stdout
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["store"]["malformed_leases"] == ["/bad/network/subnets/10.244.7.0-24",
                                                  "/bad/network/subnets/10.244.8.0-24"]
    assert sorted(stats["flannel"]["leases"]) == ["/bad/network/subnets/10.244.1.0-24",
                                                  "/bad/network/subnets/10.244.2.0-24"]


def test_a_subnet_taken_by_another_writer_is_skipped(etcd):
    """flannel's createSubnet transaction (Version(key) == 0) loses to a writer
    that got there first; the manager then picks another free subnet."""
    network = IPv4Network("10.244.0.0/16")
    store = EtcdStore([etcd.url], "/race/network")
    manager = SubnetManager(store, network, 24, seed=3)
    manager.write_config({"Network": "10.244.0.0/16"}, 0)
    first_pick = SubnetManager(MemoryStore(), network, 24, seed=3)._pick_free_subnet(0)
    key = f"/race/network/subnets/{first_pick.network_address}-24"
    put_with_lease(etcd, key, FOREIGN_LEASE)
    lease = manager.acquire_lease(IPv4Address("172.18.0.11"), "vxlan",
                                  {"VNI": 1, "VtepMAC": "6e:2d:54:00:01:01"}, 0)
    assert lease.subnet != first_pick
    assert json.loads(etcdctl(etcd, "get", key, "--print-value-only")) == json.loads(FOREIGN_LEASE)
    store.close()


def test_a_different_config_in_etcd_is_not_overwritten(etcd):
    etcdctl(etcd, "put", "/other/network/config", '{"Network":"10.50.0.0/16"}')
    scenario = load_scenario_text(scenario_text("vxlan-cross-node", "/other/network", etcd.url))
    with pytest.raises(Exception, match="already holds another flannel config under /other/network"):
        run_scenario(scenario, None, capture=False)
