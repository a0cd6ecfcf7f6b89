"""The faults: key: the nth frame in or out of a veth is dropped, counted,
shown by the capture only when it was received, and exported as nftables
netdev rules (the live match is tests/test_kernel_live.py's example
fault-dropped-frames)."""

from __future__ import annotations

import pytest

from emu.kernel import export_netns
from emu.scenario import ScenarioError, load_scenario_text
from emu.scenario.run import run_scenario

CLUSTER = """\
name: f
net-conf: {Network: 10.244.0.0/16, Backend: {Type: host-gw}}
nodes:
  - {name: n1, pods: [{name: p1a}]}
  - {name: n2, pods: [{name: p2a}]}
traffic:
  - {from: p1a, run: ping -c 3 -i 0.2 -W 1 p2a}
"""


def with_faults(text: str):
    return load_scenario_text(CLUSTER + "faults:\n" + text)


def frames(result, point):
    return result.capture_counts.get(point, 0)


def test_nth_frame_in_is_captured_then_dropped_and_out_is_dropped_before_the_capture(tmp_path):
    plain = run_scenario(load_scenario_text(CLUSTER), tmp_path / "plain")
    lossy = run_scenario(with_faults("  - {at: n2/eth0, drop: {direction: in, nth: 3}}\n"
                                     "  - {at: p1a/eth0, drop: {direction: out, nth: 4}}\n"), tmp_path / "lossy")
    assert plain.traffic[0].result.received == 3 and lossy.traffic[0].result.received == 1
    devices = lossy.stats["namespaces"]
    assert devices["n2"]["devices"]["eth0"]["drops"] == {"FAULT_INJECTED": 1}
    assert devices["p1a"]["devices"]["eth0"]["drops"] == {"FAULT_INJECTED": 1}
    # p1a's 4th frame out (echo request 3) never shows; n2 shows request 2, which goes no further
    assert frames(lossy, "p1a_eth0") == frames(plain, "p1a_eth0") - 3  # request 3, replies 2 and 3
    assert frames(lossy, "n2_eth0") == frames(plain, "n2_eth0") - 3  # reply 2, request and reply 3
    assert frames(lossy, "p2a_eth0") == frames(plain, "p2a_eth0") - 4


def test_faults_export_as_nftables_netdev_rules():
    script = export_netns(with_faults("  - {at: n2/eth0, drop: {direction: in, nth: 3}}\n"), "t-").script
    assert ('nft add chain netdev emu_faults fault0 \'{ type filter hook ingress device "eth0" priority 0; }\''
            in script)
    assert "nft add rule netdev emu_faults fault0 numgen inc mod 2147483647 == 2 counter drop" in script


@pytest.mark.parametrize("fault, path, problem", [
    ("{at: n3/eth0, drop: {direction: in, nth: 1}}", "faults[0].at", "no node or pod named 'n3'"),
    ("{at: n2, drop: {direction: in, nth: 1}}", "faults[0].at", "expected NODE_OR_POD/IFNAME"),
    ("{at: n2/eth0, drop: {direction: up, nth: 1}}", "faults[0].drop.direction", "expected in or out"),
    ("{at: n2/eth0, drop: {direction: in, nth: 0}}", "faults[0].drop.nth", "expected an integer"),
    ("{at: n2/eth0, drop: {nth: 1}}", "faults[0].drop", "expected {direction"),
    ("{at: n2/eth0}", "faults[0]", "expected {at"),
])
def test_bad_faults_name_the_field(fault, path, problem):
    with pytest.raises(ScenarioError) as caught:
        with_faults(f"  - {fault}\n")
    assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value)


def test_a_fault_needs_a_veth_and_one_per_direction(tmp_path):
    with pytest.raises(ScenarioError, match=r"^faults\[0\]\.at: n2 has no veth 'cni0'"):
        run_scenario(with_faults("  - {at: n2/cni0, drop: {direction: in, nth: 1}}\n"), None)
    with pytest.raises(ScenarioError, match=r"^faults\[1\]: n2/eth0 already drops a frame going in"):
        with_faults("  - {at: n2/eth0, drop: {direction: in, nth: 1}}\n"
                    "  - {at: n2/eth0, drop: {direction: in, nth: 2}}\n")
