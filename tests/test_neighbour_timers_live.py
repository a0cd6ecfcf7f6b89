"""The neighbour timers of long runs (reachable time, DELAY, PROBE), as Linux runs them.

Two rules of net/core/neighbour.c that only show once an entry's reachable
time runs out (15-45 s after its confirmation), checked against a live
kernel in tests/regressions/reachable-expiry-after-traffic:
- sending through a REACHABLE entry does not mark it used (neigh_output's
  cached-header path skips neigh_event_send_probe), so recent traffic does
  not turn the timeout into DELAY;
- an ARP update that leaves the entry as it is (a request from the
  neighbour) does not restart the reachable timer (__neigh_update touches
  the timer only when the state changes).
And the exported cluster carries the emulator's ARP parameters on every
device, whatever the host's defaults (live part: needs root).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP

from emu.kernel import export_netns, kernel_unavailable
from emu.scenario import load_scenario
from emu.sim import NS_PER_SECOND
from emu.wire.addr import ip_from_str, mac_from_str
from helpers_net import advance, collect, run_ping, two_nodes

ROOT = Path(__file__).resolve().parent.parent
P1A, P1B = "10.244.1.2", "10.244.1.3"
P1A_MAC = "0a:58:0a:f4:01:02"
REACHABLE_S = 15  # the shortest reachable time Linux draws (base 30 s / 2)
UNAVAILABLE = kernel_unavailable()


def p1b_after_its_first_probe():
    """p1a pings p1b 5 times; p1b learned p1a from the ARP request, so its
    replies start DELAY and at 5 s a unicast probe makes the entry
    REACHABLE. Returns p1a, p1b, p1b's eth0 frames and p1b's entry for p1a."""
    cluster = two_nodes().cluster
    p1a, p1b = cluster.pods["p1a"].ns, cluster.pods["p1b"].ns
    table = p1b.neighbours(p1b.devices["eth0"])
    table.reachable_ns = REACHABLE_S * NS_PER_SECOND
    wire = collect(p1b.devices["eth0"])
    assert run_ping(p1a, P1B, 5).received == 5
    advance(p1a.sim, 6 - p1a.sim.now_ns / NS_PER_SECOND)
    entry = table.lookup(ip_from_str(P1A))
    assert p1b.show_neighbours() == [f"{P1A} dev eth0 lladdr {P1A_MAC} REACHABLE"]
    # confirmed by the probe's reply: 5 s after DELAY began, plus the timer wheel's
    # rounding (a 5 s timer sits in 64-jiffy buckets: 4 to 256 ms late at HZ 250)
    assert 5.004 * NS_PER_SECOND <= entry.confirmed_ns <= 5.256 * NS_PER_SECOND
    return p1a, p1b, wire, entry


def requests_from_p1b_after(wire, after_s: float) -> list[float]:
    """Times of the ARP requests p1b sent after `after_s`."""
    return [ts / NS_PER_SECOND for (ts, _), frame in zip(wire.frames, wire.ether())
            if ts > after_s * NS_PER_SECOND and ARP in frame and frame[ARP].op == 1
            and frame[ARP].psrc == P1B]


def test_replies_through_a_reachable_entry_do_not_turn_its_timeout_into_delay():
    p1a, p1b, wire, _ = p1b_after_its_first_probe()
    # p1b replies through the REACHABLE entry every second until 19 s; the
    # entry times out at about 5 + 15 = 20 s, 1 s after the last reply
    assert run_ping(p1a, P1B, 14).received == 14
    advance(p1a.sim, 21 - p1a.sim.now_ns / NS_PER_SECOND)
    assert p1b.show_neighbours() == [f"{P1A} dev eth0 lladdr {P1A_MAC} STALE"]
    advance(p1a.sim, 10)
    assert requests_from_p1b_after(wire, 6) == []  # (marking those replies as uses: a probe at 25 s)


def test_a_request_from_a_reachable_neighbour_does_not_restart_its_reachable_time():
    p1a, p1b, wire, entry = p1b_after_its_first_probe()
    advance(p1a.sim, 4)
    table = p1b.neighbours(p1b.devices["eth0"])
    updated = entry.updated_ns
    # what a request from p1a for p1b's address does (arp_process: STALE, override)
    table.learn(ip_from_str(P1A), mac_from_str(P1A_MAC), reachable=False, create=True, override=True)
    assert entry.updated_ns == updated == entry.confirmed_ns
    advance(p1a.sim, 20.5 - p1a.sim.now_ns / NS_PER_SECOND)
    assert p1b.show_neighbours() == [f"{P1A} dev eth0 lladdr {P1A_MAC} STALE"]  # at 5 + 15 s, not 10 + 15


def test_the_exported_cluster_pins_every_devices_arp_parameters():
    script = export_netns(load_scenario(ROOT / "examples" / "vxlan-cross-node.yaml"), "x-").script
    n1 = [line for line in script.splitlines() if 'exec "${P}n1" sysctl' in line and "neigh" in line]
    assert len(n1) == 1
    for dev in ("lo", "eth0", "flannel.1", "cni0", "veth1a", "veth1b"):
        for setting in ("base_reachable_time_ms=30000", "retrans_time_ms=1000",
                        "delay_first_probe_time=5", "mcast_solicit=3", "ucast_solicit=3",
                        "mcast_resolicit=0", "app_solicit=0", "locktime=100",
                        "unres_qlen_bytes=212992"):
            assert f"net/ipv4/neigh/{dev}/{setting}" in n1[0].split()


@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"kernel runs: {UNAVAILABLE}")
def test_the_kernel_devices_carry_the_emulators_arp_parameters(tmp_path):
    script = tmp_path / "cluster.sh"
    script.write_text(export_netns(load_scenario(ROOT / "examples" / "host-gw-same-node.yaml"),
                                   "h14live-").script)
    env = {"EMU": f"{sys.executable} -m emu.cli", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        up = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, env=env)
        assert up.returncode == 0, up.stderr
        shown = subprocess.run(["ip", "-n", "h14live-n1", "ntable", "show", "name", "arp_cache",
                                "dev", "cni0"], capture_output=True, text=True).stdout.split()
    finally:
        subprocess.run(["bash", str(script), "down"], capture_output=True, env=env)
    values = dict(zip(shown, shown[1:]))  # "name value" pairs
    assert values["base_reachable"] == "30000" and values["retrans"] == "1000"
    assert values["delay_probe"] == "5000" and values["locktime"] == "1000"
    assert values["ucast_probes"] == "3" and values["mcast_probes"] == "3"
    assert 15000 <= int(values["reachable"]) < 45000
