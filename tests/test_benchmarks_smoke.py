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

from benchmarks.case import Case, CaseUnavailable
from benchmarks.cases_emu import BridgeCase
from benchmarks.kernel import KernelCase
from benchmarks.suite import Settings, count_label, measure_cases, run
from emu.kernel.live import kernel_unavailable

TINY = Settings(rounds=2, budget_s=0.02, fdb_sizes=(10,), frame_sizes=(64,), batch=16,
                kernel=False, bridge_batches=(8,))
ISSUE_NAMES = {
    "bridge_1k_macs", "bridge_1m_macs", "vxlan_encap_batch", "vxlan_decap_batch", "same_node",
    "cross_node_vxlan", "cross_node_hostgw", "cross_node_udp", "cross_node_vxlan_capture",
    "scapy_cross_node_vxlan", "dpkt_cross_node_vxlan", "kernel_cross_node_vxlan",
    "kernel_same_node",
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
    last = text.strip().splitlines()[-4:]
    assert [line.split(":")[0] for line in last] == list(document["ratios"])
    assert any(line.startswith("emulator/kernel") for line in last)
    scapy = next(line for line in last if line.startswith("emulator/scapy"))
    assert scapy.endswith("x")  # a number: both cases ran
    assert document["ratios"]["emulator/kernel cross-node vxlan"] is None


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
    assert outcome["gone"] == {"samples": [], "note": "not here"}


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
    finally:
        case.close()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listing
