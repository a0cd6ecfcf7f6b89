"""Smoke tests of the benchmark suite's machinery on tiny sizes.

Never a timed test: nothing here asserts a speed. It checks what a run
produces (the JSON schema and case names the issue asks for, positive
numbers, a PNG, the ratios printed last) and that rounds interleave and
every case is closed, also when one fails.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest
from rich.console import Console

from benchmarks import topology
from benchmarks.baseline import HopByHopChain
from benchmarks.baseline_dpkt import DpktChain
from benchmarks.baseline_scapy import ScapyChain
from benchmarks.case import Case, CaseUnavailable
from benchmarks.cases_emu import BridgeCase, PodToPodCase
from benchmarks.cases_scenario import PingScenarioCase
from benchmarks.sink import FrameSink
from emu.capture import CaptureSet
from benchmarks.kernel import KernelCase
from benchmarks.suite import RATIOS, Settings, count_label, measure_cases, run
from emu.kernel.live import kernel_unavailable
from emu.net import UdpSocket
from emu.fastpath import flow_cache

TINY = Settings(rounds=2, budget_s=0.02, fdb_sizes=(10,), frame_sizes=(64,), batch=16,
                kernel=False, bridge_batches=(8,), pings=10)
ISSUE_NAMES = {
    "bridge_1k_macs", "bridge_1m_macs", "vxlan_encap_batch", "vxlan_decap_batch", "same_node",
    "cross_node_vxlan", "cross_node_hostgw", "cross_node_udp", "cross_node_vxlan_capture",
    "scapy_cross_node_vxlan", "dpkt_cross_node_vxlan", "kernel_cross_node_vxlan",
    "kernel_same_node",
    # issue 11: like work, and the counters-only replay named for what it is
    "cross_node_vxlan_slow_path", "cross_node_vxlan_replay_counters_only", "emu_run_ping_capture",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    text = io.StringIO()
    run(TINY, out / "bench.json", out / "bench.png", Console(file=text, width=120))
    return json.loads((out / "bench.json").read_text()), out / "bench.png", text.getvalue()


def test_json_has_every_case_the_issue_names(tiny_run):
    document, _, _ = tiny_run
    assert ISSUE_NAMES <= set(document["cases"])
    for name, entry in document["cases"].items():
        assert {"fps", "min", "max", "rounds"} <= set(entry), name
    assert document["peak_rss_mb"] > 0


def test_every_case_but_the_kernel_ran_with_positive_numbers(tiny_run):
    document, _, _ = tiny_run
    for name, entry in document["cases"].items():
        if name.startswith("kernel_"):
            continue
        assert entry["rounds"] == TINY.rounds, name
        assert 0 < entry["min"] <= entry["fps"] <= entry["max"], name


def test_turned_off_kernel_cases_are_null_with_a_reason(tiny_run):
    document, _, _ = tiny_run
    for name in ("kernel_cross_node_vxlan", "kernel_same_node"):
        entry = document["cases"][name]
        assert entry["fps"] is None and entry["rounds"] == 0
        assert "turned off" in entry["note"]


def test_million_mac_fdb_reports_its_memory(tiny_run):
    document, _, _ = tiny_run
    entry = document["cases"]["bridge_1m_macs"]
    assert entry["params"]["macs"] == 1_000_000
    assert entry["extra"]["fdb_mb"] > 0


def test_plot_is_a_png(tiny_run):
    _, plot, _ = tiny_run
    data = plot.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_ratios_are_printed_last(tiny_run):
    document, _, text = tiny_run
    last = text.strip().splitlines()[-len(RATIOS):]
    assert [line.split(":")[0] for line in last] == list(document["ratios"])
    for prefix in ("slow path/dpkt", "slow path/scapy"):
        line = next(line for line in last if line.startswith(prefix))
        assert line.endswith("x")  # a number: both cases ran
    assert document["ratios"]["slow path/dpkt cross-node vxlan"] > 0
    assert document["ratios"]["emulator (every frame built)/kernel cross-node vxlan"] is None


def test_ratios_divide_like_work_only(tiny_run):
    """No ratio uses a counters-only replay, and each side of the kernel
    ratios builds every frame (a sink or capture at every point)."""
    document, _, _ = tiny_run
    cases = document["cases"]
    for label, numerator, denominator in RATIOS:
        assert cases[numerator]["group"] == "end_to_end", label
        if denominator.startswith("kernel_"):
            assert cases[numerator]["params"]["taps"] in ("sink", "capture"), label
        else:
            assert cases[numerator]["params"] == {**cases[numerator]["params"], "fast": False,
                                                  "taps": "none"}, label
            assert cases[denominator]["group"] == "baseline", label
    for name, entry in cases.items():
        if entry["group"] == "end_to_end" and entry["params"]["fast"]:
            assert entry["params"]["taps"] in ("sink", "capture"), name
        if entry["group"] == "counters_only":
            assert name.endswith("_replay_counters_only"), name


def test_every_ratio_is_the_median_of_per_round_ratios(tiny_run):
    document, _, _ = tiny_run
    label = "slow path/dpkt cross-node vxlan"
    spread = document["ratio_rounds"][label]
    assert spread["min"] <= document["ratios"][label] <= spread["max"]


@pytest.mark.parametrize("count, label", [(10, "10"), (1_000, "1k"), (1_500, "1500"),
                                          (100_000, "100k"), (1_000_000, "1m")])
def test_count_label(count, label):
    assert count_label(count) == label


def test_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="rounds"):
        Settings(rounds=0, budget_s=1, fdb_sizes=(), frame_sizes=())
    with pytest.raises(ValueError, match="budget_s"):
        Settings(rounds=1, budget_s=0, fdb_sizes=(), frame_sizes=())


@pytest.mark.parametrize("batch, packed", [(4, False), (4, True), (512, True), (512, False)])
def test_bridge_case_forwards_known_unicast_to_one_port(batch, packed):
    case = BridgeCase("b", macs=16, batch=batch, packed=packed)
    case.setup()
    assert case.step() == batch
    # a flood would reach 3 ports per frame
    assert sum(port.sent for port in case.ports) == batch
    assert sum(port.stats.tx_packets for port in case.ports) == batch
    assert sum(port.stats.tx_bytes for port in case.ports) == 60 * batch
    assert case.bridge.forwarded == batch and case.bridge.flooded == 0


class _Logged(Case):
    """A fake case that logs what the suite asks of it."""

    def __init__(self, name: str, log: list, unavailable: bool = False, fails: bool = False):
        super().__init__(name, "fake")
        self.log, self.unavailable, self.fails = log, unavailable, fails

    def setup(self) -> None:
        if self.unavailable:
            raise CaseUnavailable("not here")

    def measure(self, budget_s: float) -> tuple[int, float]:
        self.log.append(("measure", self.name))
        if self.fails:
            raise RuntimeError("broken")
        return 10, 0.5

    def close(self) -> None:
        self.log.append(("close", self.name))


def _quiet() -> Console:
    return Console(file=io.StringIO())


def test_rounds_interleave_and_every_case_is_closed():
    log: list = []
    cases = [_Logged("a", log), _Logged("b", log), _Logged("gone", log, unavailable=True)]
    outcome = measure_cases(cases, Settings(2, 0.01, (), ()), _quiet())
    assert log == [("measure", "a"), ("measure", "b"), ("measure", "a"), ("measure", "b"),
                   ("close", "a"), ("close", "b"), ("close", "gone")]
    assert outcome["a"]["samples"] == [20.0, 20.0]
    assert outcome["gone"] == {"samples": [], "side": {}, "note": "not here"}


def test_cases_are_closed_when_a_round_fails():
    log: list = []
    cases = [_Logged("a", log), _Logged("bad", log, fails=True)]
    with pytest.raises(RuntimeError, match="broken"):
        measure_cases(cases, Settings(3, 0.01, (), ()), _quiet())
    assert log[-2:] == [("close", "a"), ("close", "bad")]


@pytest.mark.skipif(kernel_unavailable() is not None,
                    reason=f"kernel namespaces unavailable: {kernel_unavailable()}")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is missing (builds udpblast.c)")
def test_kernel_case_counts_packets_and_removes_its_namespaces():
    case = KernelCase("kernel_same_node", "p1b")
    try:
        case.setup()
        prefix = case.export.prefix
        frames, seconds = case.measure(0.1)
        assert frames > 0 and seconds >= 0.1
        assert case.side_rates()["sent"] * seconds >= frames  # nothing arrives unsent
    finally:
        case.close()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listing


# -- the end-to-end cases build every frame they count ----------------------------
def _sink_case(name: str, backend: str, pod: str, slow: bool) -> PodToPodCase:
    case = PodToPodCase(name, backend, pod, 8)
    case.setup()
    case.sink.kept = []  # keep every (point, frame) the sink is shown
    flow_cache(case.sim).enabled = not slow
    return case


@pytest.mark.parametrize("backend, pod", [("vxlan", "p2a"), ("vxlan", "p1b"), ("host-gw", "p2a"),
                                          ("udp", "p2a")])
def test_frames_built_cases_show_the_slow_paths_frames_at_every_point(backend, pod):
    """The flow cache's replay with a FrameSink: the sink is shown, at every
    point, the very bytes the slow path shows for the same datagrams."""
    fast = _sink_case("fast", backend, pod, slow=False)
    slow = _sink_case("slow", backend, pod, slow=True)
    try:
        for _ in range(3):  # the first step records the flows, the next ones replay them
            assert fast.step() == slow.step() == 8
        assert flow_cache(fast.sim).stats.datagrams_replayed > 0
        assert len(fast.sink.kept) == 3 * 8 * fast.points_per_datagram
        assert fast.sink.kept == slow.sink.kept
        assert len({name for name, _ in fast.sink.kept}) == fast.points_per_datagram
    finally:
        fast.close()
        slow.close()


@pytest.mark.parametrize("taps, sink", [("sink", FrameSink), ("capture", CaptureSet)])
def test_a_case_that_stops_building_frames_reports_no_number(taps, sink, monkeypatch):
    """If replays stopped reaching the taps (here: the batch sink ignores them),
    the round fails instead of reporting datagrams as frames/s."""
    case = PodToPodCase("cross_node_vxlan", "vxlan", "p2a", 8, taps=taps)
    case.setup()
    try:
        case.measure(0.001)
        monkeypatch.setattr(sink, "record_interleaved", lambda self, ts_ns, frames: None)
        with pytest.raises(RuntimeError, match="stopped building every frame"):
            case.measure(0.001)
    finally:
        case.close()


@pytest.mark.parametrize("make_chain", [DpktChain, ScapyChain])
def test_naive_chains_build_the_emulators_frames_at_every_point_and_check_them(make_chain):
    emulated = topology.build("vxlan")
    UdpSocket(emulated.cluster.pods[topology.REMOTE_POD].ns).bind(None, topology.RECEIVER_PORT)
    recorded = topology.record_traffic(emulated, topology.REMOTE_POD, 2)
    chain = make_chain(topology.vxlan_chain(emulated))
    reference = topology.frames_at_every_point(emulated, recorded.sent[0])
    assert chain.forward(recorded.sent[0]) == [frame for _, frame in reference]
    assert len(reference) == len(HopByHopChain.POINTS)
    bad_checksum = bytearray(recorded.sent[1])
    bad_checksum[14 + 10] ^= 0xFF
    assert chain.forward(bytes(bad_checksum)) is None
    bad_udp = bytearray(recorded.sent[1])
    bad_udp[-1] ^= 0xFF  # the payload, so the UDP checksum p2a verifies
    assert chain.forward(bytes(bad_udp)) is None


def test_ping_scenario_case_counts_frames_written():
    case = PingScenarioCase("emu_run_ping_capture", 5)
    case.setup()
    try:
        frames, seconds = case.measure(0.0)
    finally:
        case.close()
    # 5 requests and 5 replies at 10 points each, plus the first ARP exchanges
    assert frames >= 5 * 2 * 10 and seconds > 0
