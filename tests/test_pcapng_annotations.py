"""The merged pcapng says what each interface connects, and in which
direction each packet went (epb_flags), read back with tshark, scapy and dpkt.

Expected descriptions are written from the scenario file (names, addresses)
in the words of issue 16; directions from what a device does: a pod's eth0
sends the echo request (outbound) and receives the reply (inbound).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dpkt
import pytest
from scapy.utils import PcapNgReader

from emu.capture.pcapng import packet_options, PcapngWriter
from emu.scenario import load_scenario
from emu.scenario.run import run_scenario

EXAMPLES = Path(__file__).parent.parent / "examples"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def tshark(path: Path, *fields: str) -> list[list[str]]:
    command = ["tshark", "-r", str(path), "-d", "udp.port==8472,vxlan", "-T", "fields", "-E", "separator=|"]
    for name in fields:
        command += ["-e", name]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return [line.split("|") for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def vxlan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vxlan")
    run_scenario(load_scenario(EXAMPLES / "vxlan-cross-node.yaml"), out)
    return out


@needs_tshark
def test_interface_descriptions_name_what_they_connect(vxlan_run):
    shown = dict(tuple(row) for row in tshark(vxlan_run / "all.pcapng", "frame.interface_name",
                                              "frame.interface_description"))
    assert shown["n1/veth1a"] == "host end of p1a's eth0, port of cni0"
    assert shown["n2/veth2a"] == "host end of p2a's eth0, port of cni0"
    assert shown["p1a/eth0"] == "pod p1a's eth0 10.244.1.2/24, peer n1/veth1a on cni0"
    assert shown["n1/eth0"] == "node n1's eth0 172.18.0.11/24, on the underlay switch"
    assert shown["n1/cni0"] == "node n1, bridge cni0 10.244.1.1/24 (ports veth1a, veth1b)"
    assert shown["n2/flannel.1"] == "node n2, VXLAN flannel.1 10.244.2.0/32 vni 1 local 172.18.0.12 dstport 8472"


def test_epb_options_read_back_with_scapy_and_dpkt(tmp_path):
    frame = bytes(range(60))
    path = tmp_path / "o.pcapng"
    with PcapngWriter(path) as writer:
        interface = writer.add_interface("n1/eth0", "node n1's eth0", 1)
        writer.write(interface, 1_000, frame, packet_options(True, 7, "bridge: flood: broadcast"))
        writer.write(interface, 2_000, frame, packet_options(False))
        writer.write(interface, 3_000, frame)
    packets = list(PcapNgReader(str(path)))
    assert [(p.direction, p.comments, bytes(p)) for p in packets] == [
        (2, [b"bridge: flood: broadcast"], frame), (1, None, frame), (None, None, frame)]
    with open(path, "rb") as handle:
        assert [bytes(buf) for _, buf in dpkt.pcapng.Reader(handle)] == [frame] * 3
    with pytest.raises(ValueError, match="packet_id: expected an int in 0..2\\^64-1, got -1"):
        packet_options(packet_id=-1)


@needs_tshark
def test_epb_options_read_back_with_tshark(tmp_path):
    path = tmp_path / "o.pcapng"
    with PcapngWriter(path) as writer:
        interface = writer.add_interface("n1/eth0", "d", 1)
        writer.write(interface, 1_000, bytes(60), packet_options(True, 7, "fdb 6e:2d:54:00:02:02 dst 172.18.0.12"))
        writer.write(interface, 2_000, bytes(60), packet_options(False, 2**40))
    assert tshark(path, "frame.packet_flags_direction", "frame.packet_id", "frame.comment") == [
        ["0x00000002", "7", "fdb 6e:2d:54:00:02:02 dst 172.18.0.12"], ["0x00000001", "1099511627776", ""]]


@needs_tshark
def test_every_packet_has_its_direction(vxlan_run):
    rows = tshark(vxlan_run / "all.pcapng", "frame.interface_name", "frame.packet_flags_direction", "icmp.type",
                  "arp.opcode")
    assert rows and all(direction in ("0x00000001", "0x00000002") for _, direction, _, _ in rows)
    shown = {(name, icmp, arp): direction for name, direction, icmp, arp in rows}
    outbound, inbound = "0x00000002", "0x00000001"
    # the pod sends its echo request and its ARP request, and receives the reply
    assert shown[("p1a/eth0", "8", "")] == outbound
    assert shown[("p1a/eth0", "0", "")] == inbound
    # the host end receives what the pod sent; the bridge hands the request up (cni0 receives it)
    assert shown[("n1/veth1a", "8", "")] == inbound
    assert shown[("n1/cni0", "8", "")] == inbound
    # n1's flannel.1 and eth0 send it; n2's receive it; p2a receives it and answers
    assert shown[("n1/flannel.1", "8", "")] == outbound and shown[("n1/eth0", "8", "")] == outbound
    assert shown[("n2/eth0", "8", "")] == inbound and shown[("n2/flannel.1", "8", "")] == inbound
    assert shown[("p2a/eth0", "8", "")] == inbound and shown[("p2a/eth0", "0", "")] == outbound
    # its ARP request for the gateway goes out, and comes back: cni0 floods it out of the
    # hairpin port it came in by (hairpinMode: true), as the kernel capture shows
    assert [d for name, d, icmp, arp in rows if (name, icmp, arp) == ("p1a/eth0", "", "1")] == [outbound, inbound]


def test_direction_leaves_the_classic_pcaps_alone(vxlan_run):
    # the per-interface pcaps carry no flags; their frames are the merged file's, point by point
    with open(vxlan_run / "all.pcapng", "rb") as handle:
        merged = [bytes(buf) for _, buf in dpkt.pcapng.Reader(handle)]
    singles = []
    for pcap in vxlan_run.glob("*.pcap"):
        with open(pcap, "rb") as handle:
            singles += [bytes(buf) for _, buf in dpkt.pcap.Reader(handle)]
    assert sorted(merged) == sorted(singles)
