"""The nine kernel reference captures, reproduced through `emu run` and
checked with `emu verify`, plus tshark's opinion of every file we write."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emu.capture.lint import tshark_findings

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "tests" / "kernel-captures"
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))
REFERENCE = sorted(p.name for p in KERNEL.iterdir() if p.is_dir())


def emu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_every_reference_folder_has_an_example():
    assert REFERENCE and set(REFERENCE) <= set(EXAMPLES)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    result = {}
    for name in REFERENCE:
        target = out / name
        proc = emu("run", str(ROOT / "examples" / f"{name}.yaml"), "--out", str(target))
        assert proc.returncode == 0, proc.stderr
        result[name] = target
    return result


@pytest.mark.parametrize("name", REFERENCE)
def test_emu_verify_matches_kernel(runs, name):
    proc = emu("verify", str(KERNEL / name), str(runs[name]))
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout
    points = len(list((KERNEL / name).glob("*.pcap")))
    assert last == f"fidelity: {points}/{points} points match"


@pytest.mark.parametrize("name", REFERENCE)
def test_outputs_are_complete(runs, name):
    folder = runs[name]
    assert (folder / "all.pcapng").stat().st_size > 0
    assert (folder / "stats.json").is_file()
    assert {p.name for p in folder.glob("*.pcap")} == {p.name for p in (KERNEL / name).glob("*.pcap")}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (CI installs it)")
@pytest.mark.parametrize("name", REFERENCE)
def test_tshark_finds_nothing_wrong(runs, name):
    files = sorted(runs[name].glob("*.pcap")) + [runs[name] / "all.pcapng"]
    decode = ["udp.port==8472,vxlan"]
    findings = {f.name: tshark_findings(f, decode) for f in files}
    assert {k: v for k, v in findings.items() if v} == {}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (CI installs it)")
def test_tshark_shows_inner_icmp_of_vxlan(runs):
    proc = subprocess.run(["tshark", "-r", str(runs["vxlan-cross-node"] / "n1_eth0.pcap"),
                           "-d", "udp.port==8472,vxlan", "-Y", "vxlan && icmp", "-T", "fields",
                           "-e", "vxlan.vni", "-e", "icmp.type"], capture_output=True, text=True)
    rows = [line.split("\t") for line in proc.stdout.split()]
    assert proc.stdout.split("\n")[:4] == ["1\t8", "1\t0", "1\t8", "1\t0"], rows


def test_two_runs_are_byte_identical(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for target in (first, second):
        assert emu("run", "--out", str(target)).returncode == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and "all.pcapng" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_bad_scenario_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnet-conf: {Network: 10.244.0.0/16}\nnodes: [{name: n1, colour: red}]\n")
    proc = emu("run", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "nodes[0].colour" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_reports_mismatch_with_exit_1(runs):
    proc = emu("verify", str(KERNEL / "vxlan-cross-node"), str(runs["vxlan-same-node"]))
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1].startswith("fidelity: ")
