"""Time that looks like time: `start:` is the wall clock of virtual time 0
(capture timestamps, ping's timevals and -D), and `underlay: {latency: D}`
delays every frame the underlay switch hands to a node by D (netem on the
switch port, in the kernel export).

Expected values come from the scenario (the start written in the file, the
latency): a cross-node echo crosses the underlay twice, so its round trip is
2 x D and the frame shows on n2/eth0 D after n1/eth0; a same-node ping never
touches the underlay.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import dpkt
import pytest
import yaml

from emu.capture.pcap import MAX_SECONDS
from emu.kernel import export_netns, kernel_unavailable, verify_kernel
from emu.scenario import ScenarioError, load_scenario_text
from emu.scenario.run import run_scenario

EXAMPLE = Path(__file__).parent.parent / "examples" / "vxlan-cross-node.yaml"


def scenario(**changes):
    document = yaml.safe_load(EXAMPLE.read_text())
    for key, value in changes.items():
        if key == "latency":
            document["underlay"]["latency"] = value
        else:
            document[key] = value
    return load_scenario_text(yaml.safe_dump(document), "yaml", "vxlan-cross-node.yaml")


def frames(path: Path) -> list[tuple[float, bytes]]:
    with open(path, "rb") as handle:
        return [(ts, bytes(frame)) for ts, frame in dpkt.pcap.Reader(handle)]


def pcapng_times(path: Path) -> list[float]:
    with open(path, "rb") as handle:
        return [ts for ts, _ in dpkt.pcapng.Reader(handle)]


def echo_requests(path: Path) -> list[tuple[float, bytes]]:
    found = []
    for ts, frame in frames(path):
        ip = dpkt.ethernet.Ethernet(frame).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.icmp.ICMP) and ip.data.type == 8:
            found.append((ts, bytes(ip.data.data.data)))
        elif isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):  # VXLAN: the inner echo
            inner = dpkt.ethernet.Ethernet(bytes(ip.data.data)[8:]).data
            if isinstance(inner, dpkt.ip.IP) and isinstance(inner.data, dpkt.icmp.ICMP) and inner.data.type == 8:
                found.append((ts, bytes(inner.data.data.data)))
    return found


def test_start_is_the_epoch_of_every_capture_and_of_ping(tmp_path):
    start = datetime.datetime(2025, 6, 30, 23, 59, 58, 250000, tzinfo=datetime.timezone.utc)
    loaded = scenario(start="2025-07-01T01:59:58.25+02:00")
    result = run_scenario(loaded, tmp_path)
    epoch = start.timestamp()
    first, *_ = frames(tmp_path / "p1a_eth0.pcap")
    assert first[0] == pytest.approx(epoch, abs=1e-6)  # p1a's first frame (the ARP request) at t=0
    merged = pcapng_times(tmp_path / "all.pcapng")
    assert min(merged) == pytest.approx(epoch, abs=1e-6) and max(merged) < epoch + 2
    # ping's timeval (struct timeval, little-endian seconds and microseconds) is the wall clock too
    (sent, payload), _ = echo_requests(tmp_path / "p1a_eth0.pcap")
    seconds = int.from_bytes(payload[:8], "little")
    micros = int.from_bytes(payload[8:16], "little")
    assert seconds + micros / 1e6 == pytest.approx(sent, abs=1e-6)
    assert result.traffic[0].ping.received == 2


def test_start_shows_in_ping_timestamps(tmp_path):
    loaded = scenario(start="2030-01-02T03:04:05Z")
    document = yaml.safe_load(EXAMPLE.read_text())
    document["start"] = "2030-01-02T03:04:05Z"
    document["traffic"] = [{"from": "p1a", "run": "ping -c 1 -D 10.244.1.3"}]
    loaded = load_scenario_text(yaml.safe_dump(document), "yaml", "x.yaml")
    line = run_scenario(loaded, None).traffic[0].ping.lines[1]
    expected = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc).timestamp()
    assert line.startswith(f"[{expected:.6f}] 64 bytes from 10.244.1.3")


def test_default_start_is_a_fixed_date_and_runs_stay_identical(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_scenario(scenario(), one)
    run_scenario(scenario(), two)
    assert (one / "all.pcapng").read_bytes() == (two / "all.pcapng").read_bytes()
    first = frames(one / "p1a_eth0.pcap")[0][0]
    assert datetime.datetime.fromtimestamp(first, datetime.timezone.utc).year > 1970


@pytest.mark.parametrize("latency, one_way_s", [("200us", 200e-6), ("1.5ms", 1.5e-3), (0.002, 2e-3)])
def test_latency_delays_the_underlay_and_shows_in_the_rtt(tmp_path, latency, one_way_s):
    result = run_scenario(scenario(latency=latency), tmp_path)
    ping = result.traffic[0].ping
    assert ping.received == 2
    def shown(rtt_s: float) -> str:  # iputils: 3 decimals under 1 ms, then 2
        return f"{rtt_s * 1000:.3f} ms" if rtt_s < 1e-3 else f"{rtt_s * 1000:.2f} ms"
    # The first echo waits for n1's ARP of n2's underlay address (one more round trip).
    assert [line.split("time=")[1] for line in ping.lines if "time=" in line] == [
        shown(4 * one_way_s), shown(2 * one_way_s)]
    sent = echo_requests(tmp_path / "n1_eth0.pcap")
    arrived = echo_requests(tmp_path / "n2_eth0.pcap")
    assert [b - a for (a, _), (b, _) in zip(sent, arrived)] == [pytest.approx(one_way_s, abs=1e-6)] * 2


def test_latency_leaves_the_frames_as_they_were(tmp_path):
    run_scenario(scenario(), tmp_path / "flat")
    run_scenario(scenario(latency="200us"), tmp_path / "slow")
    for pcap in sorted((tmp_path / "flat").glob("*.pcap")):
        flat = [frame for _, frame in frames(pcap)]
        slow = [frame for _, frame in frames(tmp_path / "slow" / pcap.name)]
        # ping's timeval differs (it is the send time); every other byte is the same
        assert [len(f) for f in flat] == [len(f) for f in slow], pcap.name
        assert [f[:34] for f in flat] == [f[:34] for f in slow], pcap.name


def test_same_node_traffic_does_not_cross_the_underlay():
    document = yaml.safe_load(EXAMPLE.read_text())
    document["underlay"]["latency"] = "5ms"
    document["traffic"] = [{"from": "p1a", "run": "ping -c 1 10.244.1.3"}]
    ping = run_scenario(load_scenario_text(yaml.safe_dump(document)), None).traffic[0].ping
    assert "time=0.000 ms" in ping.lines[1]


def test_export_puts_the_delay_on_each_switch_port():
    script = export_netns(scenario(latency="200us"), "emut-").script
    lines = [line.strip() for line in script.splitlines()]
    for n in (0, 1):
        # frames from the node go onto the wire towards the switch in the kernel ...
        assert (f'tc -n "${{P}}ul" filter add dev ul{n} parent ffff: protocol all u32 match u32 0 0 '
                f"action mirred egress redirect dev ul{n}w") in lines
        assert f"ip -n \"${{P}}ul\" link set ul{n}s master br0 up" in lines
        # ... and frames towards the node are relayed 200 us later
        assert f"start_underlay_wire ul{n} ul{n}w 200000" in lines
        assert f"ip -n \"${{P}}ul\" link set ul{n} master br0 up" not in lines
    flat = export_netns(scenario(), "emut-").script
    assert "start_underlay_wire ul" not in flat and "mirred" not in flat


@pytest.mark.skipif(kernel_unavailable() is not None, reason=f"kernel runs: {kernel_unavailable()}")
def test_latency_matches_the_kernel_live(tmp_path):
    """The vxlan example with 200 us on the underlay: every capture point
    matches the kernel's, and the real ping's round trips are no shorter than
    the emulator's (the relay's delay is a floor; above it the machine's
    load decides, so nothing is asserted there)."""
    loaded = scenario(latency="200us")
    report, kernel = verify_kernel(loaded, tmp_path / "kernel")
    assert report.ok, "\n".join(report.lines())

    def rtts(lines) -> list[float]:
        return [float(line.split("time=")[1].split()[0]) for line in lines if "time=" in line]
    emulated = rtts(run_scenario(loaded, None).traffic[0].ping.lines)
    measured = rtts(kernel.commands[0].output.splitlines())  # the real ping's own numbers
    print(f"round trips (ms): emulator {emulated}, kernel {measured}")
    assert emulated == [0.8, 0.4]  # first: the underlay ARP too (two round trips)
    assert len(measured) == 2 and all(k >= e for k, e in zip(measured, emulated))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(start="yesterday"), "start: yesterday is not an ISO 8601 time (such as 2026-01-01T00:00:00Z)"),
        (dict(start=5), "start: expected an ISO 8601 time such as 2026-01-01T00:00:00Z, got integer 5"),
        (dict(start="1969-12-31T23:59:59Z"),
         "start: 1969-12-31T23:59:59Z is outside 1970-01-01 .. 2105-12-31 (pcap timestamps)"),
        (dict(latency="200"),
         "underlay.latency: expected a duration such as 200us, 1.5ms or 0 (ns, us, ms, s), got string '200'"),
        (dict(latency="11s"), "underlay.latency: 11s is longer than 10s"),
        (dict(latency="1500ns"), "underlay.latency: 1500ns is not a whole number of microseconds"),
        (dict(latency=-1), "underlay.latency: -1 is not a time (expected a number of seconds >= 0)"),
    ],
)
def test_bad_start_and_latency_name_the_field(changes, message):
    with pytest.raises(ScenarioError) as caught:
        scenario(**changes)
    assert str(caught.value) == message


def test_the_last_start_still_fits_pcap_timestamps():
    loaded = scenario(start="2105-12-31T23:59:59Z")
    assert loaded.start_ns // 10**9 < MAX_SECONDS
