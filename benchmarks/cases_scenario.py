"""A whole `emu run`: a ping scenario on the benchmark cluster, capture on.

What a user waits for: `run_scenario` builds the cluster, plays
`ping -c COUNT -i 0.001 -q` from p1a to p2a (cross-node, VXLAN), writes every
capture point's pcap and the merged pcapng and stats.json. A round is one
whole run (so it can take longer than the round's budget); its rate is the
frames written to the per-interface pcaps divided by the wall seconds of the
run, build and file writing included. Each round checks that every echo got
its reply and that the pcaps hold as many frames as the points saw.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import time
from pathlib import Path

from benchmarks import topology
from benchmarks.case import Case
from emu.scenario import load_scenario_text
from emu.scenario.model import Scenario
from emu.scenario.run import run_scenario

PING_INTERVAL_S = 0.001
PCAP_HEADER_LEN = 24


def ping_scenario(count: int) -> Scenario:
    """The benchmark cluster (VXLAN) with one `ping -c count -i 0.001 -q` p1a -> p2a."""
    if count < 1:
        raise ValueError(f"count: must be at least 1, got {count}")
    destination = topology.pod_ip(topology.scenario("vxlan"), topology.REMOTE_POD)
    command = f"ping -c {count} -i {PING_INTERVAL_S:g} -q {destination}"
    text = topology.scenario_text("vxlan").replace(
        "traffic: []", f"traffic:\n  - {{from: {topology.SOURCE_POD}, run: {command}}}")
    return load_scenario_text(text)


def pcap_records(path: Path) -> int:
    """How many records a pcap file holds (walks the 16-byte record headers)."""
    data = path.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    record = struct.Struct(order + "IIII")
    offset, records = PCAP_HEADER_LEN, 0
    while offset < len(data):
        offset += record.size + record.unpack_from(data, offset)[2]
        records += 1
    return records


class PingScenarioCase(Case):
    """`emu run` of the ping scenario: frames written per wall second."""

    def __init__(self, name: str, count: int) -> None:
        super().__init__(name, "scenario", backend="vxlan", pings=count, capture=True)
        self.scenario = ping_scenario(count)
        self.out_dir: Path | None = None

    def describe(self) -> str:
        return (f"emu run: ping -c {self.params['pings']:,} -i {PING_INTERVAL_S:g} -q "
                f"{topology.SOURCE_POD}->{topology.REMOTE_POD}, capture on, frames written / wall s")

    def setup(self) -> None:
        self.out_dir = Path(tempfile.mkdtemp(prefix="emu-bench-run-"))

    def measure(self, budget_s: float) -> tuple[int, float]:
        start = time.perf_counter()
        result = run_scenario(self.scenario, self.out_dir)
        elapsed = time.perf_counter() - start
        ping = result.traffic[0].ping
        if ping.received != self.params["pings"]:
            raise RuntimeError(f"{self.name}: {ping.received} of {self.params['pings']} echoes "
                               "were answered")
        written = sum(result.capture_counts.values())
        on_disk = sum(pcap_records(path) for path in self.out_dir.glob("*.pcap"))
        if written < 2 * self.params["pings"] or on_disk != written:
            raise RuntimeError(f"{self.name}: {written} frames captured, {on_disk} in the pcaps")
        return written, elapsed

    def close(self) -> None:
        if self.out_dir is not None:
            shutil.rmtree(self.out_dir, ignore_errors=True)
            self.out_dir = None
