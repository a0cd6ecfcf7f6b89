"""host-local IPAM (emu.k8s.ipam) and how its failures reach the user.

Like the CNI host-local plugin over a node subnet: addresses in order, never
the network, gateway or broadcast address; requested addresses honoured (and
remembered as the last reservation); a full range is an error naming the
subnet, which `emu run` reports as one line naming the pod's field, exit 2.
"""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from emu.k8s import HostLocalIpam, IpamError

ROOT = Path(__file__).resolve().parent.parent
SUBNET = IPv4Network("10.244.1.0/29")


def ips(*last_octets: int) -> list[IPv4Address]:
    return [IPv4Address(f"10.244.1.{n}") for n in last_octets]


def test_allocation_is_in_order_and_skips_network_gateway_and_broadcast():
    ipam = HostLocalIpam(SUBNET)
    assert [ipam.allocate(f"pod{i}") for i in range(5)] == ips(2, 3, 4, 5, 6)


def test_exhaustion_names_the_subnet():
    ipam = HostLocalIpam(SUBNET)
    for i in range(5):
        ipam.allocate(f"pod{i}")
    with pytest.raises(IpamError) as error:
        ipam.allocate("one-too-many")
    assert str(error.value) == "no free address left in 10.244.1.0/29: all 5 usable addresses are allocated"


def test_requested_addresses_are_given_and_the_next_one_follows_them():
    ipam = HostLocalIpam(SUBNET)
    assert ipam.allocate("a", IPv4Address("10.244.1.4")) == IPv4Address("10.244.1.4")
    # host-local's store records every reservation as the last one, so
    # allocation resumes after the requested address, then wraps around.
    assert [ipam.allocate(name) for name in "bcde"] == ips(5, 6, 2, 3)


def test_requested_reserved_or_taken_addresses_are_refused():
    ipam = HostLocalIpam(SUBNET)
    for reserved in ips(0, 1, 7):
        with pytest.raises(IpamError, match="is not a usable address of 10.244.1.0/29"):
            ipam.allocate("x", reserved)
    ipam.allocate("a", IPv4Address("10.244.1.3"))
    with pytest.raises(IpamError, match="10.244.1.3 is already allocated to a"):
        ipam.allocate("b", IPv4Address("10.244.1.3"))


def test_a_released_address_is_reused_after_wrapping():
    ipam = HostLocalIpam(SUBNET)
    first = [ipam.allocate(f"p{i}") for i in range(5)]
    ipam.release(first[1])
    assert ipam.allocate("again") == first[1]


def test_too_many_pods_for_a_29_fail_with_exit_2_and_the_pod_field(tmp_path):
    pods = "\n".join(f"      - {{name: p{i}}}" for i in range(6))
    scenario = tmp_path / "small.yaml"
    scenario.write_text(f"""
name: small
net-conf: {{Network: 10.244.0.0/16, SubnetLen: 29, Backend: {{Type: host-gw}}}}
nodes:
  - name: n1
    subnet: 10.244.1.0/29
    pods:
{pods}
traffic:
  - {{from: p0, run: ping -c 1 10.244.1.3}}
""")
    proc = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(scenario), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr == ("emu: error: nodes[0].pods[5].ip: no free address left in 10.244.1.0/29: "
                           "all 5 usable addresses are allocated\n")
