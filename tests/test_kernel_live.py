"""The kernel as the oracle: example scenarios and saved regressions run in real
namespaces and in the emulator, every capture point compared; the exported
script cleans up after itself on `down`, on error and on SIGINT.

Needs root, iproute2, iputils ping and /dev/net/tun (CI has them); skipped
with the missing piece named otherwise.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.kernel import export_netns, kernel_unavailable
from emu.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
REGRESSIONS = sorted((ROOT / "tests" / "regressions").glob("*.yaml"))
UNAVAILABLE = kernel_unavailable()
OUR_NAMESPACES = re.compile(r"^(emu[0-9a-f]{6}-|t7live-)")

pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"kernel runs: {UNAVAILABLE}")


def emu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def our_namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if OUR_NAMESPACES.match(line)]


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    assert our_namespaces() == [], "namespaces of an earlier run are still there"
    yield
    assert our_namespaces() == []


@pytest.mark.parametrize("scenario", EXAMPLES + REGRESSIONS, ids=lambda p: p.stem)
def test_emu_verify_kernel_matches(scenario, tmp_path):
    proc = emu("verify", "--kernel", str(scenario), "--keep", str(tmp_path))
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    points = re.fullmatch(r"fidelity: (\d+)/(\d+) points match", lines[-1])
    assert points and points[1] == points[2] and int(points[2]) >= 1
    assert len(lines) == int(points[2]) + 1
    captured = sorted(path.stem for path in tmp_path.glob("*.pcap"))
    assert captured and all(not name.startswith("emu") for name in captured)
    assert all(path.stat().st_size > 24 for path in tmp_path.glob("*.pcap"))


def _write_script(tmp_path: Path, example: str, prefix: str) -> Path:
    script = export_netns(load_scenario(ROOT / "examples" / f"{example}.yaml"), prefix).script
    path = tmp_path / "cluster.sh"
    path.write_text(script)
    return path


def _run(path: Path, action: str, emu_command: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EMU=emu_command)
    return subprocess.run(["bash", str(path), action], capture_output=True, text=True, env=env)


def _netns_of(prefix: str) -> list[str]:
    return [name for name in our_namespaces() if name.startswith(prefix)]


def _running(pid: str) -> bool:
    """The process exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_up_then_down_removes_everything(tmp_path):
    path = _write_script(tmp_path, "udp-cross-node", "t7live-a-")
    up = _run(path, "up", f"{sys.executable} -m emu.cli")
    try:
        assert up.returncode == 0, up.stderr
        assert sorted(_netns_of("t7live-a-")) == [f"t7live-a-{n}" for n in sorted(
            ["ul", "n1", "n2", "p1a", "p1b", "p2a"])]
        daemons = subprocess.run(["ip", "netns", "pids", "t7live-a-n1"], capture_output=True,
                                 text=True).stdout.split()
        assert len(daemons) == 1
    finally:
        down = _run(path, "down", "unused")
    assert down.returncode == 0, down.stderr
    assert _netns_of("t7live-a-") == []
    assert not _running(daemons[0])


def test_a_failing_step_removes_the_cluster(tmp_path):
    path = _write_script(tmp_path, "udp-same-node", "t7live-b-")
    up = _run(path, "up", "false")  # flanneld-udp cannot start
    leftovers = _netns_of("t7live-b-")
    if leftovers:
        _run(path, "down", "unused")  # the test fails below, but leaves nothing behind
    assert up.returncode != 0
    assert "removing the cluster" in up.stderr
    assert leftovers == []


def test_sigint_removes_the_cluster(tmp_path):
    path = _write_script(tmp_path, "udp-same-node", "t7live-c-")
    # A flanneld that starts, ignores its arguments and never becomes ready:
    # `up` waits for it, so the test can interrupt a half-built cluster.
    stub = tmp_path / "stub-emu"
    stub.write_text("#!/bin/sh\nexec sleep 60\n")
    stub.chmod(0o755)
    env = dict(os.environ, EMU=str(stub))
    proc = subprocess.Popen(["bash", str(path), "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not subprocess.run(["ip", "netns", "pids", "t7live-c-n1"], capture_output=True,
                                 text=True).stdout.strip():
            assert time.monotonic() < deadline, "the cluster never came up far enough"
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert _netns_of("t7live-c-") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _run(path, "down", "unused")  # whatever happened, leave nothing behind


def test_verify_kernel_refuses_bad_input():
    proc = emu("verify", "--kernel", "no-such-file.yaml")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


NC_SCENARIOS = [ROOT / "examples" / "udp-fragmented.yaml", ROOT / "examples" / "localhost-containers.yaml",
                ROOT / "tests" / "regressions" / "udp-frag-needed-emsgsize.yaml",
                *(ROOT / "examples" / f"tcp-{name}.yaml" for name in
                  ("host-gw", "vxlan", "udp", "syn-retransmitted", "localhost-containers",
                   "pmtu-vxlan"))]


@pytest.mark.parametrize("path", NC_SCENARIOS, ids=lambda p: p.stem)
def test_processes_print_and_exit_as_the_real_ones(path, tmp_path):
    """nc's stdout and exit status (and a stopped background listener) as the
    real netcat-openbsd's, next to the capture points."""
    from emu.kernel import run_kernel
    from emu.kernel.live import scenario_ports
    from emu.scenario.run import run_scenario
    from emu.verify import compare_dirs

    scenario = load_scenario(path)
    kernel = run_kernel(scenario, tmp_path / "kernel")
    emulated = run_scenario(scenario, tmp_path / "emu")
    assert compare_dirs(tmp_path / "kernel", tmp_path / "emu", **scenario_ports(scenario)).ok
    for real, ours in zip(kernel.commands, (item.result for item in emulated.traffic)):
        assert real.stdout == bytes(ours.stdout), real.command
        assert (real.stopped, None if real.stopped else real.returncode) == (ours.stopped, ours.exit_status)
