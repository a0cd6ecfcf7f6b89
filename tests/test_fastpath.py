"""The flow cache replays exactly what the slow path does.

Two copies of one random cluster get the same UDP datagrams: one through
`sendto_batch` (recorded once, then replayed), one through `sendto` per
datagram. Every capture point must see byte-identical frames in the same
order (the merged order too), sockets must receive the same datagrams and
every counter must agree, also when the configuration changes between
batches (a MAC moves, a route goes, a node leaves, time passes the neighbour
reachable time or the FDB ageing time). The fast path's own counters show
that replays happen, so a fast path that always fell back would fail.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Callable

from hypothesis import given
from hypothesis import strategies as st

from emu.capture import CaptureSet
from emu.net import UdpSocket
from emu.fastpath import flow_cache
from emu.scenario import load_scenario_text
from emu.scenario.build import build_cluster, remove_node_later
from emu.scenario.run import _Captures
from emu.sim import seconds

PORT = 5000
CHANGES = ("none", "advance-1ms", "advance-40s", "advance-400s", "move-mac", "delete-route",
           "remove-node")


def scenario_text(backend: str, pods_per_node: list[int], mtu: int) -> str:
    nodes = []
    for n, pods in enumerate(pods_per_node, start=1):
        pod_lines = "\n".join(f"      - {{name: p{n}{chr(96 + p)}}}" for p in range(1, pods + 1))
        nodes.append(f"  - name: n{n}\n    ip: 172.18.0.{10 + n}\n    pods:\n{pod_lines}")
    return (f"name: fastpath\n"
            f"net-conf: {{Network: 10.244.0.0/16, SubnetLen: 24, Backend: {{Type: {backend}}}}}\n"
            f"underlay: {{subnet: 172.18.0.0/24, mtu: {mtu}}}\n"
            f"nodes:\n" + "\n".join(nodes) + "\n")


@st.composite
def cases(draw):
    backend = draw(st.sampled_from(["vxlan", "host-gw", "udp"]))
    pods = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    mtu = draw(st.integers(576, 1500))
    names = [f"p{n}{chr(96 + p)}" for n, count in enumerate(pods, 1) for p in range(1, count + 1)]
    sources = names + [f"n{n}" for n in range(1, len(pods) + 1)]
    flows = draw(st.lists(st.tuples(st.sampled_from(sources), st.sampled_from(names),
                                    st.integers(0, 1600)), min_size=1, max_size=3))
    rounds = draw(st.lists(st.tuples(st.sampled_from(CHANGES), st.integers(1, 6), st.integers(0, 255)),
                           min_size=3, max_size=5))
    return scenario_text(backend, pods, mtu), flows, rounds


class Run:
    """One copy of the cluster, with a tap on every device and UDP sockets.
    `fast` False turns the flow cache off: every datagram of every burst walks
    the slow path, in the same process steps (the reference)."""

    def __init__(self, text: str, fast: bool) -> None:
        self.emulated = build_cluster(load_scenario_text(text))
        self.sim = self.emulated.sim
        flow_cache(self.sim).enabled = fast
        self.frames: list[tuple[str, int, bytes]] = []
        self.receivers: dict[str, UdpSocket] = {}
        self.senders: dict[tuple, UdpSocket] = {}
        for ns in self.emulated.cluster.namespaces():
            for dev in ns.devices.values():
                dev.taps.append(lambda ts, frame, point=f"{ns.name}/{dev.name}":
                                self.frames.append((point, ts, bytes(frame))))

    def namespace(self, name: str):
        return self.emulated.cluster.namespace(name)

    def send(self, flow: tuple, payloads: list[bytes]) -> None:
        source, target, _ = flow
        if self.namespace(source) is None or target not in self.emulated.cluster.pods:
            return
        if target not in self.receivers:
            self.receivers[target] = UdpSocket(self.namespace(target))
            self.receivers[target].bind(None, PORT)
        if flow not in self.senders:
            self.senders[flow] = UdpSocket(self.namespace(source))
        address = (IPv4Address(self.emulated.cluster.pods[target].ip).packed, PORT)
        self.senders[flow].sendto_batch(payloads, address)

    def change(self, change: str, flows: list[tuple]) -> None:
        cluster = self.emulated.cluster
        if change.startswith("advance"):
            delay = {"advance-1ms": 0.001, "advance-40s": 40, "advance-400s": 400}[change]
            self.sim.run(until_ns=self.sim.now_ns + seconds(delay))
        elif change == "move-mac" and flows[0][1] in cluster.pods:
            pod = cluster.pods[flows[0][1]]
            pod.ns.device("eth0").mac = b"\x0a\x58\xee" + pod.ns.device("eth0").mac[3:]
        elif change == "delete-route":
            node = next(iter(cluster.nodes.values()))
            node.ns.routes.remove_where(lambda r: r.prefixlen == 24 and r.gateway is not None
                                        or r.dev.name in ("flannel.1", "flannel0"))
        elif change == "remove-node" and len(cluster.nodes) > 1:
            remove_node_later(self.emulated, list(cluster.nodes)[-1])

    def outcome(self) -> dict:
        cluster = self.emulated.cluster
        return {
            "frames": self.frames,
            "received": {name: list(sock.queue) for name, sock in self.receivers.items()},
            "errors": {flow: sock.send_errors for flow, sock in self.senders.items()},
            "stats": {ns.name: ns.stats() for ns in [*cluster.namespaces(), cluster.underlay]},
            "neighbours": {ns.name: ns.show_neighbours() for ns in cluster.namespaces()},
        }


def play(text: str, flows: list[tuple], rounds: list[tuple], fast: bool,
         before_round: Callable[[Run, int], None] | None = None) -> Run:
    run = Run(text, fast)
    run.sim.run(until_ns=seconds(1))
    for number, (change, count, fill) in enumerate(rounds):
        if before_round is not None:
            before_round(run, number)
        for flow in flows:
            length = flow[2]
            payloads = [bytes([(fill + i + number) & 0xFF]) * length for i in range(count)]
            run.send(flow, payloads)
        run.sim.run(until_ns=run.sim.now_ns + seconds(0.01))
        run.change(change, flows)
    run.sim.run(until_ns=run.sim.now_ns + seconds(5))
    return run


def play_both(text: str, flows: list[tuple], rounds: list[tuple]) -> "Run":
    """The same rounds with the flow cache off (the reference) and on: the
    outcomes must be equal; returns the fast run."""
    slow = play(text, flows, rounds, fast=False)
    fast = play(text, flows, rounds, fast=True)
    assert fast.outcome() == slow.outcome()
    return fast


@given(cases())
def test_sendto_batch_is_byte_identical_to_sendto(case):
    text, flows, rounds = case
    fast = play_both(text, flows, rounds)
    stats = flow_cache(fast.sim).stats
    sent = sum(count for _, count, _ in rounds) * len(flows)
    assert stats.datagrams_replayed + stats.datagrams_slow <= sent


def test_replays_happen_for_every_backend_and_path():
    """Same node, node to pod and cross node: from the second batch on, every
    datagram is replayed (within the first burst, the first datagrams resolve
    neighbours and a later one records a clean walk)."""
    for backend in ("vxlan", "host-gw", "udp"):
        text = scenario_text(backend, [2, 1], 1500)
        flows = [("p1a", "p2a", 100), ("p1a", "p1b", 64), ("n1", "p2a", 1000), ("p1a", "p1a", 10)]
        rounds = [("none", 5, 1)] * 4
        fast = play_both(text, flows, rounds)
        stats = flow_cache(fast.sim).stats
        assert stats.flows_recorded == len(flows), (backend, stats)
        assert stats.datagrams_replayed >= 3 * 5 * len(flows), (backend, stats)


def test_changes_between_batches_force_a_new_walk():
    text = scenario_text("vxlan", [1, 1], 1500)
    flows = [("p1a", "p2a", 200)]
    rounds = [("none", 3, 0), ("none", 3, 1), ("advance-400s", 3, 2), ("move-mac", 3, 3),
              ("none", 3, 4), ("delete-route", 3, 5), ("none", 3, 6)]
    fast = play_both(text, flows, rounds)
    stats = flow_cache(fast.sim).stats
    assert stats.datagrams_replayed > 0
    assert sum(stats.fallbacks.values()) >= 2, stats


def test_fragmented_walks_are_never_cached():
    text = scenario_text("host-gw", [1, 1], 576)
    flows = [("p1a", "p2a", 1200)]
    rounds = [("none", 2, 0)] * 3
    fast = play_both(text, flows, rounds)
    stats = flow_cache(fast.sim).stats
    assert stats.datagrams_replayed == 0
    assert stats.not_recorded["ip_fragment:sent"] >= 1


def test_a_change_at_the_same_instant_runs_before_the_burst():
    """A route deleted by an event queued at the burst's instant runs first
    (the burst is a process: it waits for the softirq work), so the cached
    walk is stale and every datagram meets the missing route."""
    text = scenario_text("vxlan", [1, 1], 1500)
    outcomes = []
    for fast in (False, True):
        run = play(text, [("p1a", "p2a", 300)], [("none", 3, 0)] * 3, fast)
        node = run.namespace("n1")
        run.sim.call_soon(node.routes.remove_where, lambda r: r.dev.name == "flannel.1")
        run.send(("p1a", "p2a", 300), [b"\x07" * 300] * 4)
        run.sim.run(until_ns=run.sim.now_ns + seconds(1))
        outcomes.append(run.outcome())
        if fast:
            stats = flow_cache(run.sim).stats
            assert stats.fallbacks["namespace-changed"] == 1, stats
    assert outcomes[1] == outcomes[0]
    assert outcomes[0]["stats"]["n1"]["stack"]["drops"]["IP_INNOROUTES"] == 4


def test_each_datagram_of_a_burst_finishes_its_walk_before_the_next_is_sent():
    """Linux runs the backlog when sendto re-enables bottom halves, so the
    port-unreachable error for datagram 0 is back on the sender's eth0 before
    datagram 1 leaves (not after the whole burst)."""
    for fast in (False, True):
        run = Run(scenario_text("vxlan", [2], 1500), fast)
        run.sim.run(until_ns=seconds(1))
        sender = UdpSocket(run.namespace("p1a"))
        target = (IPv4Address(run.emulated.cluster.pods["p1b"].ip).packed, 9)  # nobody listens
        for _ in range(2):  # the first burst resolves the neighbours
            run.frames.clear()
            sender.sendto_batch([b"x" * 20] * 3, target)
            run.sim.run(until_ns=run.sim.now_ns + seconds(0.01))
        on_eth0 = [frame for point, _, frame in run.frames if point == "p1a/eth0"]
        kinds = ["udp" if frame[23] == 17 else "icmp" if frame[23] == 1 else "other"
                 for frame in on_eth0]
        assert kinds == ["udp", "icmp"] * 3, (fast, kinds)


def test_bursts_of_two_processes_at_one_instant_take_turns():
    """Two bursts started at the same instant alternate datagram by datagram
    (process steps in FIFO order); the fast path replays one datagram per
    step then, and still matches the slow path."""
    text = scenario_text("host-gw", [2, 1], 1500)
    flows = [("p1a", "p2a", 100), ("p1b", "p2a", 100)]
    rounds = [("none", 4, 1)] * 3
    fast = play_both(text, flows, rounds)
    assert flow_cache(fast.sim).stats.datagrams_replayed >= 2 * 4 * 2  # rounds 2 and 3 at least
    received = [payload[0] for payload, _ in fast.receivers["p2a"].queue]
    assert received[-8:] == [3, 3, 4, 4, 5, 5, 6, 6]  # alternating senders, same fill per step


# == capture files: the batched writer (CaptureSet.record_interleaved) ===============
def play_captured(text: str, flows: list[tuple], rounds: list[tuple], fast: bool, out_dir: Path,
                  nanosecond: bool, buffered: bool, attach_at: int) -> tuple[Run, dict[str, int]]:
    """`play` with a capture set on every device, attached as `emu run` does
    before the first round (bridges go promiscuous: a configuration change),
    but the points join the devices' taps only at round `attach_at`. Taps are
    no configuration, so flows recorded earlier replay onto points that have
    no file yet: their first frames come in a replayed level."""
    capture_set = CaptureSet(out_dir, nanosecond=nanosecond, buffered=buffered)
    held: list[tuple[list, list]] = []

    def attach(run: Run, number: int) -> None:
        if number == 0:
            if buffered:
                run.sim.on_advance.append(capture_set.flush)
            _Captures(capture_set, run.emulated).attach_all()
            for ns in run.emulated.cluster.namespaces():
                for dev in ns.devices.values():
                    held.append((dev.taps, [tap for tap in dev.taps if hasattr(tap, "batch_sink")]))
                    dev.taps[:] = [tap for tap in dev.taps if not hasattr(tap, "batch_sink")]
        if number == attach_at:
            for taps, points in held:
                taps.extend(points)

    try:
        run = play(text, flows, rounds, fast, before_round=attach)
    finally:
        capture_set.close()
    return run, capture_set.counts()


def captured_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def assert_captures_identical(text: str, flows: list[tuple], rounds: list[tuple], nanosecond: bool,
                              buffered: bool, attach_at: int) -> Run:
    """Slow and fast runs write byte-identical pcaps and all.pcapng (and see
    the same frames through the plain taps, which sit next to the points)."""
    with TemporaryDirectory() as slow_dir, TemporaryDirectory() as fast_dir:
        slow, slow_counts = play_captured(text, flows, rounds, False, Path(slow_dir), nanosecond, buffered,
                                          attach_at)
        fast, fast_counts = play_captured(text, flows, rounds, True, Path(fast_dir), nanosecond, buffered,
                                          attach_at)
        assert fast.outcome() == slow.outcome()
        assert fast_counts == slow_counts
        assert captured_files(Path(fast_dir)) == captured_files(Path(slow_dir))
    return fast


@given(cases(), st.booleans(), st.booleans(), st.integers(0, 2))
def test_capture_files_are_byte_identical_to_the_slow_path(case, nanosecond, buffered, attach_at):
    text, flows, rounds = case
    assert_captures_identical(text, flows, rounds, nanosecond, buffered, attach_at)


def test_replays_go_to_the_capture_set_whole(monkeypatch):
    """Every backend, a whole path of points per replay, captures attached
    after the flow was recorded (first frames in a replay), microsecond and
    nanosecond, buffered and not: identical files, and the capture set got
    whole bursts (a fast path that called points frame by frame would fail)."""
    replays: list[tuple[int, int]] = []
    record_interleaved = CaptureSet.record_interleaved

    def spy(self, ts_ns, frames):
        replays.append((len(frames), frames[0][1].shape[0]))
        record_interleaved(self, ts_ns, frames)

    monkeypatch.setattr(CaptureSet, "record_interleaved", spy)
    flows = [("p1a", "p2a", 100)]
    rounds = [("none", 5, 1)] * 4
    for backend, nanosecond, buffered in (("vxlan", False, True), ("host-gw", True, False),
                                          ("udp", True, True)):
        replays.clear()
        fast = assert_captures_identical(scenario_text(backend, [2, 1], 1500), flows, rounds,
                                         nanosecond, buffered, attach_at=3)
        assert flow_cache(fast.sim).stats.datagrams_replayed >= 3 * 5 * len(flows)
        assert any(points >= 6 and rows == 5 for points, rows in replays), (backend, replays)

def test_a_huge_burst_replays_in_bounded_steps(monkeypatch):
    """Replays are cut into MAX_REPLAY datagrams per process step (memory stays
    bounded); the outcome is the same as one step, and as the slow path."""
    from emu.fastpath import cache as fastpath

    monkeypatch.setattr(fastpath, "MAX_REPLAY", 3)
    replayed: list[int] = []
    original = fastpath.FlowCache._replay

    def spy(self, replay):
        replayed.append(replay.count)
        original(self, replay)

    monkeypatch.setattr(fastpath.FlowCache, "_replay", spy)
    text = scenario_text("vxlan", [1, 1], 1500)
    flows = [("p1a", "p2a", 80)]
    rounds = [("none", 10, 0)] * 2
    fast = play_both(text, flows, rounds)
    assert replayed and max(replayed) == 3 and sum(replayed) == flow_cache(fast.sim).stats.datagrams_replayed
