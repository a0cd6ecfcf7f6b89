"""Cluster events (add-node / remove-node) on the real kernel.

The exported script holds one function per event (`event_1`, ... in time
order) doing what the emulator changed at that time, read from its state
before and after the event; `run_kernel` runs them at their times while the
traffic plays and captures the devices they create. The script tests need
no root; the live ones run in namespaces (skipped, naming what is missing,
where they cannot). tests/test_kernel_live.py replays the saved event
regressions (tests/regressions/*-node-joins-and-leaves.yaml) live too.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from emu.kernel import export_netns, kernel_unavailable, verify_kernel
from emu.kernel.live import (CommandRun, EventRun, KernelError, KernelRun, check_event_timing,
                             shifted_scenario)
from emu.scenario import load_scenario_text

UNAVAILABLE = kernel_unavailable()
N3_VTEP_MAC = "6e:2d:54:00:03:03"
BACKENDS = {"vxlan": "{Type: vxlan}", "host-gw": "{Type: host-gw}", "udp": "{Type: udp}"}


def scenario_text(backend: str) -> str:
    vtep = f', vtep-mac: "{N3_VTEP_MAC}"' if backend == "vxlan" else ""
    return f"""
name: events-{backend}
net-conf: {{Network: 10.244.0.0/16, SubnetLen: 24, Backend: {BACKENDS[backend]}}}
underlay: {{subnet: 172.18.0.0/24}}
nodes:
  - {{name: n1, ip: 172.18.0.11, subnet: 10.244.1.0/24, pods: [{{name: p1, ip: 10.244.1.2}}]}}
  - {{name: n2, ip: 172.18.0.12, subnet: 10.244.2.0/24, pods: [{{name: p2, ip: 10.244.2.2}}]}}
events:
  - {{at: 1.0, add-node: {{name: n3, ip: 172.18.0.13, subnet: 10.244.3.0/24{vtep},
                          pods: [{{name: p3, ip: 10.244.3.2}}]}}}}
  - {{at: 3.0, remove-node: n2}}
traffic:
  - {{from: p1, at: 0.2, run: ping -c 1 -W 1 p2}}
  - {{from: p1, at: 1.8, run: ping -c 2 -i 0.2 -W 1 p3}}
  - {{from: p1, at: 3.8, run: ping -c 1 -W 1 10.244.2.2}}
"""


def export_of(backend: str, prefix: str | None = "t-"):
    return export_netns(load_scenario_text(scenario_text(backend)), prefix)


def function_body(script: str, name: str) -> str:
    match = re.search(rf"^{name}\(\) {{\n(.*?)^}}$", script, re.S | re.M)
    assert match, f"no function {name} in the script"
    return match.group(1)


def test_every_event_is_a_function_of_the_script():
    export = export_of("vxlan")
    assert [(e.function, e.at) for e in export.events] == [("event_1", 1.0), ("event_2", 3.0)]
    assert "    event_1|event_2)\n" in export.script
    assert "usage: $0 up|down|event_1|event_2" in export.script
    # `down` walks NAMESPACES: the namespaces of added nodes are in it
    assert "NAMESPACES=(ul n1 p1 n2 p2 n3 p3)" in export.script
    syntax = subprocess.run(["bash", "-n"], input=export.script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_add_node_builds_the_node_and_programs_every_lease():
    export = export_of("vxlan")
    joined = export.events[0]
    body = function_body(export.script, "event_1")
    assert 'ip netns add "${P}n3"' in body and 'ip netns add "${P}p3"' in body
    assert ('ip -n "${P}n3" link add flannel.1 address ' + N3_VTEP_MAC
            + " mtu 1450 type vxlan id 1 local 172.18.0.13 dstport 8472 nolearning") in body
    assert 'peer name ul2 address 02:fe:ac:12:00:0d' in body  # a fresh switch port
    for node in ("n1", "n2"):
        assert (f'ip -n "${{P}}{node}" neigh add 10.244.3.0 lladdr {N3_VTEP_MAC} dev flannel.1 '
                "nud permanent") in body
        assert f'bridge -n "${{P}}{node}" fdb append {N3_VTEP_MAC} dev flannel.1 dst 172.18.0.13' in body
        assert (f'ip -n "${{P}}{node}" route add 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink'
                in body)
    for subnet in ("10.244.1.0/24", "10.244.2.0/24"):
        gateway = subnet.replace("/24", "")
        assert f'ip -n "${{P}}n3" route add {subnet} via {gateway} dev flannel.1 onlink' in body
    assert 'ip -n "${P}p3" addr add 10.244.3.2/24 dev eth0' in body
    assert "remove_netns" not in body
    assert joined.removed == []
    assert set(joined.added) == {"n3", "p3"} and joined.added["p3"] == ["lo", "eth0"]
    assert {"lo", "eth0", "flannel.1", "cni0"} < set(joined.added["n3"])
    assert export.hosts["p2"] == "10.244.2.2" and "p3" not in export.hosts
    assert joined.hosts["p3"] == "10.244.3.2" and joined.hosts["n3"] == "172.18.0.13"


def test_remove_node_unprograms_its_lease_and_deletes_its_namespaces():
    export = export_of("vxlan")
    left = export.events[1]
    body = function_body(export.script, "event_2")
    for node in ("n1", "n3"):
        assert f'ip -n "${{P}}{node}" route del 10.244.2.0/24 via 10.244.2.0 dev flannel.1' in body
        assert f'ip -n "${{P}}{node}" neigh del 10.244.2.0 dev flannel.1' in body
        assert f'bridge -n "${{P}}{node}" fdb del ' in body
    assert '"${P}n2"' not in body  # nothing is programmed on the node that leaves
    assert body.rstrip().endswith("remove_netns n2\n    remove_netns p2")
    assert left.removed == ["n2", "p2"] and left.added == {}
    assert "n2" not in left.hosts and "p2" not in left.hosts and left.hosts["p3"] == "10.244.3.2"


def test_host_gw_events_add_and_remove_routes():
    script = export_of("host-gw").script
    joined, left = function_body(script, "event_1"), function_body(script, "event_2")
    for node in ("n1", "n2"):
        assert f'ip -n "${{P}}{node}" route add 10.244.3.0/24 via 172.18.0.13 dev eth0' in joined
    assert 'ip -n "${P}n3" route add 10.244.1.0/24 via 172.18.0.11 dev eth0' in joined
    assert 'ip -n "${P}n3" route add 10.244.2.0/24 via 172.18.0.12 dev eth0' in joined
    for node in ("n1", "n3"):
        assert f'ip -n "${{P}}{node}" route del 10.244.2.0/24 via 172.18.0.12 dev eth0' in left


def test_udp_events_restart_the_proxies_with_the_new_routes():
    script = export_of("udp").script
    joined, left = function_body(script, "event_1"), function_body(script, "event_2")
    assert ("start_flanneld_udp n3 flannel0 8285 --route 10.244.1.0/24=172.18.0.11 "
            "--route 10.244.2.0/24=172.18.0.12") in joined
    assert "stop_processes n1 n2\n" in joined
    assert ("start_flanneld_udp n1 flannel0 8285 --route 10.244.2.0/24=172.18.0.12 "
            "--route 10.244.3.0/24=172.18.0.13") in joined
    for node in ("n1", "n2", "n3"):
        assert f"wait_flanneld_udp {node} flannel0" in joined
    assert "stop_processes n1 n3\n" in left
    assert "start_flanneld_udp n1 flannel0 8285 --route 10.244.3.0/24=172.18.0.13\n" in left
    assert "start_flanneld_udp n3 flannel0 8285 --route 10.244.1.0/24=172.18.0.11\n" in left


def test_a_command_started_during_an_event_function_is_an_error(tmp_path):
    run = KernelRun(tmp_path, "t-", [CommandRun("p1", "ping -c 1 p3", 0, "", started_s=1.5)],
                    [EventRun("event_1", 1.0, 1.0, 1.2)])
    check_event_timing(run)  # ended before the ping
    run.events[0].ended_s = 1.6
    with pytest.raises(KernelError, match=r"event_1 \(t=1s\) took until t=1.60s.*p1 at t=1.50s"):
        check_event_timing(run)


def test_the_emulator_replays_the_times_the_kernel_run_kept(tmp_path):
    scenario = load_scenario_text(scenario_text("vxlan"))
    commands = [CommandRun("p1", spec.ping.command, 0, "", started_s=at, scheduled_s=at)
                for spec, at in zip(scenario.traffic, (0.2, 2.56, 4.56))]
    events = [EventRun("event_1", 1.0, 1.0, 2.56, 1.0), EventRun("event_2", 3.0, 3.76, 3.9, 3.76)]
    shifted = shifted_scenario(scenario, KernelRun(tmp_path, "t-", commands, events))
    assert [spec.at for spec in shifted.traffic] == [0.2, 2.56, 4.56]
    assert [event.at for event in shifted.events] == [1.0, 3.76]
    assert [spec.ping for spec in shifted.traffic] == [spec.ping for spec in scenario.traffic]
    unshifted = [CommandRun("p1", "", 0, "", scheduled_s=spec.at) for spec in scenario.traffic]
    same = shifted_scenario(scenario, KernelRun(tmp_path, "t-", unshifted,
                                                [EventRun("e", e.at, 0, 0, e.at) for e in scenario.events]))
    assert same == scenario  # nothing overran: the emulator runs the scenario as written


# -- live ------------------------------------------------------------------------------------


def netns_with(prefix: str) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(prefix)]


@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"kernel runs: {UNAVAILABLE}")
def test_down_removes_the_namespaces_events_added(tmp_path):
    export = export_of("vxlan", prefix=None)  # a fresh emu<hex>- prefix
    path = tmp_path / "cluster.sh"
    path.write_text(export.script)
    try:
        for action in ("up", "event_1", "event_2"):
            done = subprocess.run(["bash", str(path), action], capture_output=True, text=True)
            assert done.returncode == 0, (action, done.stderr)
        left = sorted(name.removeprefix(export.prefix) for name in netns_with(export.prefix))
        assert left == ["n1", "n3", "p1", "p3", "ul"]
    finally:
        subprocess.run(["bash", str(path), "down"], capture_output=True)
    assert netns_with(export.prefix) == []


@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"kernel runs: {UNAVAILABLE}")
def test_host_gw_events_match_the_kernel(tmp_path):
    scenario = load_scenario_text(scenario_text("host-gw"))
    report, run = verify_kernel(scenario, tmp_path)
    assert report.ok, "\n".join(report.lines())
    assert netns_with(run.prefix) == []
    assert [event.function for event in run.events] == ["event_1", "event_2"]
    assert all(event.at <= event.started_s < event.ended_s for event in run.events)
    captured = {path.stem for path in tmp_path.glob("*.pcap")}
    # p2 was captured until it left, p3 from the moment it joined
    assert {"p2_eth0", "p3_eth0", "n3_eth0", "n3_cni0"} <= captured
    last = run.commands[-1]
    assert "Destination Net Unreachable" in last.output and "From 10.244.1.1" in last.output

