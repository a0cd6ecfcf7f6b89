"""Scenario traffic through the flow cache: `emu run` with the cache on writes
exactly the files it writes with the cache off (issue 11 item 7).

Ping's echoes and UDP sends are replayed from process context, one datagram
per instant, and their frames reach the capture files in deferred batches
spanning many instants (emu.fastpath.deferred, CaptureSet.defer). Every
output file of a fast run (each pcap, all.pcapng, stats.json) must equal the
slow run's byte for byte, and the fast run must actually have replayed (and
deferred across instants), or the comparison proves nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import topology
from emu.fastpath import deferred, flow_cache
from emu.scenario import load_scenario_text
from emu.scenario.run import run_scenario

def cluster(backend: str, mtu: int, traffic: str) -> str:
    """The benchmark cluster (p1a, p1b on n1; p2a on n2) with `traffic`."""
    return (topology.scenario_text(backend).replace("mtu: 1500", f"mtu: {mtu}")
            .replace("traffic: []", "traffic:\n" + traffic))


# Two pings at once (their replays interleave: batches of one flow each), then
# one alone (long batches).
PINGS = """\
  - {from: p1b, run: "ping -c 120 -i 0.0015 -s 100 10.244.1.2 &"}
  - {from: p1a, run: "ping -c 400 -i 0.001 -q 10.244.2.2"}
"""


def run_both(tmp_path: Path, text: str, monkeypatch) -> tuple[dict, list[list[int]]]:
    """Run `text` with the flow cache on and off; return the fast run's cache
    stats and the instants of every deferred batch it wrote."""
    batches: list[list[int]] = []
    write = deferred.DeferredFrames.write

    def spy(self) -> None:
        batches.append(list(self.times))
        write(self)

    monkeypatch.setattr(deferred.DeferredFrames, "write", spy)
    caches = {}
    outputs = {}
    for fast in (True, False):
        def setup(emulated, capture_set, fast=fast) -> None:
            caches[fast] = flow_cache(emulated.sim)
            caches[fast].enabled = fast

        out = tmp_path / ("fast" if fast else "slow")
        result = run_scenario(load_scenario_text(text), out, setup=setup)
        outputs[fast] = ({path.name: path.read_bytes() for path in sorted(out.iterdir())},
                         [repr(traffic.result) for traffic in result.traffic])
    assert outputs[True][0].keys() == outputs[False][0].keys()
    for name, data in outputs[False][0].items():
        assert outputs[True][0][name] == data, name
    assert outputs[True][1] == outputs[False][1]
    assert caches[False].stats.datagrams_replayed == 0
    return caches[True].stats, batches


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "udp"])
def test_pings_replayed_write_the_slow_paths_files(tmp_path, monkeypatch, backend):
    text = cluster(backend, 1500, PINGS)
    stats, batches = run_both(tmp_path, text, monkeypatch)
    assert stats.datagrams_replayed >= 500  # of 520 echoes, the first of each flow is recorded
    assert max(len(set(times)) for times in batches) > 100  # one batch spans many instants


# UDP nc through a jumbo underlay, so nc's 16384-byte writes go unfragmented
# (a fragmented walk is never replayed): listeners answering their first
# sender with their own stdin, clients in both directions, one client still
# receiving (-q 1) while the listener answers. nc polls its socket: a replayed
# delivery wakes it after the sending step, as the slow path's walk does.
NC = """\
  - {from: p2a, run: "nc -u -l 5000 &", stdin: {bytes: 100000}}
  - {from: p1b, run: "nc -u -l 6000 &"}
  - {from: p1a, run: "nc -u -q 1 10.244.2.2 5000", stdin: {bytes: 300000}}
  - {from: p2a, run: "nc -u -q 0 10.244.1.3 6000", stdin: {bytes: 200000}}
  - {from: p1a, run: "ping -c 60 -i 0.001 -s 8000 10.244.2.2"}
"""


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_udp_nc_replayed_writes_the_slow_paths_files(tmp_path, monkeypatch, backend):
    text = cluster(backend, 20000, NC)
    stats, batches = run_both(tmp_path, text, monkeypatch)
    # nc: 18 + 6 + 12 datagrams of 16384 bytes, the first of each flow (and
    # the listener's second, after it connected) walked; ping: 59 of 60
    assert stats.datagrams_replayed >= 80
    assert "process-socket" not in stats.not_recorded


def wake_order(fast: bool, sends_per_step: int = 1) -> tuple[list, int]:
    """A sender that, in each process step, sends datagrams (to p2a, then to
    p1b) and queues its next step; receivers whose program is woken (poll)
    by each arrival; a tap on every device. Returns the order of the steps,
    wakeups and frames, and the datagrams replayed."""
    from emu.net import UdpSocket

    emulated = topology.build("vxlan")
    sim = emulated.sim
    flow_cache(sim).enabled = fast
    receiver = UdpSocket(emulated.cluster.pods["p2a"].ns)
    receiver.bind(None, 7000)
    other = UdpSocket(emulated.cluster.pods["p1b"].ns)
    other.bind(None, 7000)
    sender = UdpSocket(emulated.cluster.pods["p1a"].ns)
    log: list = []
    for ns in emulated.cluster.namespaces():
        for dev in ns.devices.values():
            dev.taps.append(lambda ts_ns, frame, name=f"{ns.name}/{dev.name}": log.append((name, bytes(frame))))

    def woken() -> None:
        log.append(("woken", [data for data, _ in receiver.queue]))
        receiver.queue.clear()

    receiver.on_wake = woken
    address = (emulated.cluster.pods["p2a"].ip.packed, 7000)

    def step(index: int) -> None:
        sender.sendto(index.to_bytes(2, "big") * 20, address)
        if sends_per_step == 2:
            sender.sendto(index.to_bytes(2, "big") * 20, (emulated.cluster.pods["p1b"].ip.packed, 7000))
        sim.call_process(log.append, ("after step", index))

    start = sim.now_ns + 10**6
    for index in range(6):
        sim.call_process_at(start + index * 10**6, step, index)
    sim.run()
    return log, flow_cache(sim).stats.datagrams_replayed


def test_a_replayed_delivery_wakes_the_reader_after_the_sending_step():
    """On the slow path the walk (and so the reader's wakeup) runs once the
    sending step is over, after what that step queued; a replay must not
    wake the reader from inside the send."""
    slow, _ = wake_order(False)
    fast, replayed = wake_order(True)
    assert replayed >= 4
    assert fast == slow
    events = [entry for entry in slow if entry[0] in ("after step", "woken")]
    assert events[:2] == [("after step", 0), ("woken", [b"\0\0" * 20])]


def test_a_step_that_sends_twice_walks_both_on_the_slow_path():
    """Two sends in one step: their walks interleave hop by hop on the slow
    path, so neither may be replayed whole (the first is taken back)."""
    slow, _ = wake_order(False, sends_per_step=2)
    fast, replayed = wake_order(True, sends_per_step=2)
    assert fast == slow
    assert replayed == 0
