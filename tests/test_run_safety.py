"""emu run never loses a user's file, survives interruption, and `emu check`
makes every check `emu run` makes (issue 15).

The interruption tests run `emu run` as a real process and send it a real
signal once its first capture file exists (a marker, not a sleep).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner

from emu.cli import main

ROOT = Path(__file__).resolve().parent.parent
TWO_NODES = """
name: {name}
net-conf: {{Network: 10.244.0.0/16, SubnetLen: 24, Backend: {{Type: vxlan}}}}
nodes:
  - {{name: n1, subnet: 10.244.1.0/24, pods: [{{name: p1a}}]}}
  - {{name: n2, subnet: 10.244.2.0/24, pods: [{{name: p2a}}]}}
traffic:
  - {{from: p1a, run: "{command}"}}
"""


def scenario(tmp_path: Path, command: str = "ping -c 1 p2a", name: str = "safety") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TWO_NODES.format(name=name, command=command))
    return str(path)


def emu(*args: str):
    return CliRunner().invoke(main, list(args))


# -- output safety -----------------------------------------------------------------


def test_a_users_files_survive_and_a_rerun_replaces_only_emus_own(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.pcap").write_bytes(b"my capture")
    (out / "notes.txt").write_text("keep me")
    first = emu("run", scenario(tmp_path), "--out", str(out))
    assert first.exit_code == 0, first.output
    assert (out / "p1a_eth0.pcap").is_file() and (out / "all.pcapng").is_file()
    # a run whose traffic stays on n1: n2's pcaps of the first run go, the user's stay
    second = emu("run", scenario(tmp_path, "ping -c 1 10.244.1.1", "local"), "--out", str(out))
    assert second.exit_code == 0, second.output
    assert (out / "mine.pcap").read_bytes() == b"my capture"
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / "p2a_eth0.pcap").exists() and (out / "p1a_eth0.pcap").is_file()
    manifest = json.loads((out / ".emu-manifest.json").read_text())["files"]
    assert "mine.pcap" not in manifest and "p1a_eth0.pcap" in manifest
    assert not (out / ".emu-staging").exists()


def test_a_name_collision_with_a_users_file_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "n1_eth0.pcap").write_bytes(b"not emu's")
    result = emu("run", scenario(tmp_path), "--out", str(out))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"emu: error: --out: {out}/n1_eth0.pcap exists and was not written by emu; move it or "
        "choose another folder (nothing was written)"]
    assert sorted(p.name for p in out.iterdir()) == ["n1_eth0.pcap"]
    assert (out / "n1_eth0.pcap").read_bytes() == b"not emu's"


# -- interruption ------------------------------------------------------------------


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_and_everything_is_written(tmp_path, sig, status):
    out = tmp_path / "out"
    path = scenario(tmp_path, "ping -c 1000000 -i 0.01 p2a")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "emu.cli", "run", path, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    marker = out / ".emu-staging" / "p2a_eth0.pcap"  # the run is past its first round trip
    while not marker.exists():
        try:
            process.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"the run ended before the signal: {process.communicate()}")
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    assert f"interrupted by {sig.name} at virtual time" in stdout
    stats = json.loads((out / "stats.json").read_text())
    assert stats["interrupted"] == sig.name
    ping = stats["traffic"][0]
    assert ping["stopped"] and ping["transmitted"] >= 1
    assert ping["output"][0].startswith("PING p2a (10.244.2.2) 56(84) bytes of data.")
    assert ping["output"][-1].startswith("64 bytes from 10.244.2.2: icmp_seq=")
    with open(out / "p1a_eth0.pcap", "rb") as capture:
        frames = list(dpkt.pcap.Reader(capture))  # whole records only
    counts = {line.split()[0]: int(line.split()[-1]) for line in stdout.splitlines()
              if line.strip().startswith("p1a_eth0")}
    assert len(frames) == counts["p1a_eth0"] >= 2


# -- one validation ------------------------------------------------------------------


IPAM_EXHAUSTED = """
name: ipam
net-conf: {Network: 10.244.0.0/16, SubnetLen: 30, Backend: {Type: vxlan}}
nodes:
  - {name: n1, subnet: 10.244.0.200/30, pods: [{name: a}, {name: b}]}
"""
NO_SUBNET_LEFT = """
name: lease
net-conf: {Network: 10.244.0.0/22, SubnetLen: 24, SubnetMin: 10.244.1.0, SubnetMax: 10.244.2.0,
           Backend: {Type: vxlan}}
nodes: [{name: n1}, {name: n2}]
events:
  - {at: 1, add-node: {name: n3}}
"""


@pytest.mark.parametrize("text, error", [
    (IPAM_EXHAUSTED, "nodes[0].pods[1].ip: no free address left in 10.244.0.200/30"),
    (NO_SUBNET_LEFT, "events[0].add-node: flannel could not lease a subnet for node n3: no free subnet left"),
])
def test_check_fails_on_what_only_building_shows_with_the_error_of_run(tmp_path, text, error):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    checked = emu("check", str(path))
    ran = emu("run", str(path), "--out", str(tmp_path / "out"))
    assert checked.exit_code == ran.exit_code == 2
    assert checked.output == ran.output
    assert checked.output.startswith(f"emu: error: {error}") and checked.output.count("\n") == 1


def test_check_names_a_command_that_will_fail_as_the_tool_does(tmp_path):
    result = emu("check", scenario(tmp_path, "ping -c 1 -I eth1 p2a"))
    assert result.exit_code == 1
    assert result.output == "emu: warning: traffic[0]: ping: SO_BINDTODEVICE eth1: No such device\n"
    assert emu("check", scenario(tmp_path, "ping -c 1 -I eth0 p2a")).exit_code == 0


# -- commands fail like the real tool ---------------------------------------------------


def test_ping_on_a_missing_device_fails_as_iputils_and_the_summary_lists_only_real_files(tmp_path):
    # iputils 20221126 in a namespace: stderr "ping: SO_BINDTODEVICE eth1: No such device", exit 2
    out = tmp_path / "out"
    result = emu("run", scenario(tmp_path, "ping -c 1 -I eth1 p2a"), "--out", str(out))
    assert result.exit_code == 0
    assert "  ping: SO_BINDTODEVICE eth1: No such device\n  [exit status 2]\n" in result.output
    assert result.output.strip().endswith(f"wrote 0 pcaps, stats.json to {out}")
    assert not (out / "all.pcapng").exists()
    entry = json.loads((out / "stats.json").read_text())["traffic"][0]
    assert entry["exit_status"] == 2 and entry["transmitted"] == 0
    assert entry["stderr"] == ["ping: SO_BINDTODEVICE eth1: No such device"] and entry["output"] == []


def test_run_report_never_overwrites_a_users_report_html(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("my notes")
    result = emu("run", scenario(tmp_path), "--out", str(out), "--report")
    assert result.exit_code == 2 and "report.html exists and was not written by emu" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    assert (out / "report.html").read_text() == "my notes"
    (out / "report.html").unlink()
    assert emu("run", scenario(tmp_path), "--out", str(out), "--report").exit_code == 0
    assert "report.html" in json.loads((out / ".emu-manifest.json").read_text())["files"]
    assert emu("run", scenario(tmp_path), "--out", str(out)).exit_code == 0
    assert not (out / "report.html").exists()  # emu's own, from the run before: replaced
