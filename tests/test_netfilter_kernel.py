"""Netfilter in the data path, held against the live kernel's recordings.

tests/kernel-netfilter/record.py ran each case on Linux (a client C, a router
R with iptables-restore rules, a server S, in network namespaces) and saved
tcpdump captures of C's and S's eth0, R's `iptables-save -c` and
`conntrack -L` (bridge cases: A and P on B's bridge with br_netfilter, under
the same names). Here the same topology is built in the emulator, C sends the
very IP packets the kernel's C program sent (raw IP_HDRINCL sends at the same
relative times; R's ping for output-dnat), and every frame seen on both
links is compared byte for byte with the kernel's, with only the fields
the kernel draws at random masked (the IP id of packets R and S build, and
for R's own ping its ICMP id, payload and checksums); then R's rule and
policy counters and conntrack entries are compared with the kernel's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from emu.net import Bridge, Namespace, Ping, veth_pair
from emu.net.nc import Netcat
from emu.net.netfilter.listing import save_lines
from emu.net.raw import send_hdrinc
from emu.scenario.traffic import parse_command
from emu.sim import Scheduler
from emu.wire.addr import ip_from_str, mac_from_str, mac_to_str

from helpers_net import collect

HERE = Path(__file__).resolve().parent / "kernel-netfilter"
CASES = sorted(path.name for path in HERE.iterdir() if (path / "case.json").exists())
assert len(CASES) >= 18, "the kernel recordings are missing"
FRAMES = {case: json.loads((HERE / case / "case.json").read_text()).get("frames", True) for case in CASES}
MAC_C = "02:00:00:00:01:02"


def lab(r1_mtu: int):
    """C eth0 10.0.1.2/24 -- r0 10.0.1.1/24 [R] r1 10.0.2.1/24 -- eth0 10.0.2.2/24 S, as record.py builds it."""
    sim = Scheduler()
    c, r, s = Namespace(sim, "C"), Namespace(sim, "R", ip_forward=True), Namespace(sim, "S")
    c_eth, r0 = veth_pair(sim, "eth0", mac_from_str(MAC_C), "r0", mac_from_str("02:00:00:00:01:01"))
    s_eth, r1 = veth_pair(sim, "eth0", mac_from_str("02:00:00:00:02:02"), "r1",
                          mac_from_str("02:00:00:00:02:01"), mtu=r1_mtu)
    for ns, dev, cidr in ((c, c_eth, "10.0.1.2/24"), (r, r0, "10.0.1.1/24"), (r, r1, "10.0.2.1/24"),
                          (s, s_eth, "10.0.2.2/24")):
        ns.add_device(dev)
        address, length = cidr.split("/")
        ns.add_address(dev, ip_from_str(address), int(length))
    c.add_route("0.0.0.0/0", c_eth, via="10.0.1.1")
    s.add_route("0.0.0.0/0", s_eth, via="10.0.2.1")
    r.add_route("10.0.9.0/24", r0, via="10.0.1.2")
    return sim, {"C": c, "R": r, "S": s}, {"C": collect(c_eth), "S": collect(s_eth)}


def bridge_lab():
    """A eth0 10.0.5.2 -- vA (hairpin) [B: br0 10.0.5.1/24] vP -- eth0 10.0.5.3 P, as record.py builds it;
    returned under the router layout's names (A as C, B as R, P as S)."""
    sim = Scheduler()
    a, b, p = Namespace(sim, "A"), Namespace(sim, "B", ip_forward=True), Namespace(sim, "P")
    bridge = Bridge(sim, "br0", mac_from_str("02:00:00:00:05:01"))
    b.add_device(bridge)
    b.add_address(bridge, ip_from_str("10.0.5.1"), 24)
    taps = {}
    for pod, key, port, mac, port_mac, address in ((a, "C", "vA", "05:02", "05:0a", "10.0.5.2"),
                                                   (p, "S", "vP", "05:03", "05:0b", "10.0.5.3")):
        eth, veth = veth_pair(sim, "eth0", mac_from_str("02:00:00:00:" + mac), port,
                              mac_from_str("02:00:00:00:" + port_mac))
        pod.add_device(eth)
        pod.add_address(eth, ip_from_str(address), 24)
        pod.add_route("0.0.0.0/0", eth, via="10.0.5.1")
        b.add_device(veth)
        bridge.add_port(veth, hairpin=port == "vA")
        taps[key] = collect(eth)
    taps["B"] = collect(bridge)
    return sim, {"C": a, "R": b, "S": p}, taps


def kernel_frames(case: str, side: str) -> list[tuple[float, bytes]]:
    path = HERE / case / (f"{side}_eth0.pcap" if side != "B" else "B_br0.pcap")
    if not path.exists() or path.stat().st_size <= 24:
        return []
    return [(float(packet.time), bytes(packet)) for packet in rdpcap(str(path))]


def masked(frame: bytes, own_ping: bool) -> bytes:
    """The frame with what may differ set aside: the IP id of an ICMP packet
    other than an echo request (built by a stack: the kernel draws it; echo
    requests are C's, replayed; a TCP reset's id is 0 by rule and kept), for a ping R started itself the echo id and payload, and every
    checksum, recomputed from the content (the kernel's C left its TCP/UDP
    checksums to veth offload, CHECKSUM_PARTIAL, and ICMP errors quote them
    so; the emulator's own checksums are checked by `checksums_valid`)."""
    packet = Ether(frame)
    if IP not in packet:
        return frame
    ip = packet[IP]
    if ip.proto == 1 and (own_ping or ICMP not in packet or packet[ICMP].type != 8):
        ip.id = 0
        if own_ping and ICMP in packet and packet[ICMP].type in (0, 8):
            packet[ICMP].id = 0
            packet[ICMP].remove_payload()
    for layer in (IP, ICMP, UDP, TCP):
        if layer in packet:
            del packet[layer].chksum
    for layer in (UDPerror, TCPerror):
        if layer in packet:
            packet[layer].chksum = 0
    return bytes(packet)


def checksums_valid(frame: bytes) -> bool:
    """Every checksum of an emulated frame is right (outside ICMP quotes)."""
    packet = Ether(frame)
    if IP not in packet or packet[IP].flags.MF or packet[IP].frag:
        return True
    rebuilt = Ether(frame)
    for layer in (IP, ICMP, UDP, TCP):
        if layer in rebuilt and not (layer in (UDP, TCP) and IPerror in rebuilt):
            del rebuilt[layer].chksum
    return bytes(rebuilt) == frame


def fixed_checksums(packet: bytes) -> bytes:
    """A packet the kernel's C sent, with the TCP/UDP checksum its veth left
    to offload filled in, as the wire delivers it."""
    parsed = IP(packet)
    if parsed.frag or parsed.flags.MF:
        return packet
    for layer in (UDP, TCP):
        if layer in parsed:
            del parsed[layer].chksum
    return bytes(parsed)


def run_case(case: str):
    spec = json.loads((HERE / case / "case.json").read_text())
    if spec.get("topology") == "bridge":
        sim, namespaces, taps = bridge_lab()
        namespaces["R"].devices["br0"].promiscuous = bool(spec.get("promisc"))  # tcpdump on br0 sets it
    else:
        sim, namespaces, taps = lab(spec.get("r1_mtu", 1500))
        if "c_extra" in spec:
            address, length = spec["c_extra"].split("/")
            namespaces["C"].add_address(namespaces["C"].devices["eth0"], ip_from_str(address), int(length))
    namespaces["R"].netfilter.load(spec["rules"])
    if "emulated" in spec:
        programs = spec["emulated"]
        if "server" in spec:
            server = parse_command(spec["server"], "server")[0]
            Netcat(namespaces["S"], server.options).start(lambda result: None)
        client = parse_command(programs["client"], "client")[0]
        sim.call_process_at(1_000_000, Netcat(namespaces["C"], client.options, client.destination,
                                              programs["stdin"].encode()).start, lambda result: None)
    elif spec["from"] in ("C", "A"):
        mac = namespaces["C"].devices["eth0"].mac
        sent = [(t, frame) for t, frame in kernel_frames(case, "C") if Ether(frame).type == 0x0800
                and Ether(frame).src == mac_to_str(mac) and Ether(frame).dst != mac_to_str(mac)
                and not (ICMP in Ether(frame) and Ether(frame)[ICMP].type in (3, 11))]  # the program's, not the stack's
        start = sent[0][0]
        for t, frame in sent:
            sim.call_process_at(round((t - start) * 1e9), send_hdrinc, namespaces["C"],
                                 fixed_checksums(frame[14:]))
    else:
        Ping(namespaces["R"], "10.0.9.9", 1, timeout_s=1).start(lambda result: None)
    sim.run(until_ns=round((spec.get("wait", 1.5) + 1.5) * 1e9))
    return spec, namespaces, taps


@pytest.mark.parametrize("case", [case for case in CASES if FRAMES[case]])
def test_frames_match_the_kernel(case):
    spec, namespaces, taps = run_case(case)
    own_ping = spec["from"] == "R"
    sides = ("C", "S", "B") if (HERE / case / "B_br0.pcap").exists() else ("C", "S")
    for side in sides:
        kernel = [masked(frame, own_ping) for _, frame in kernel_frames(case, side)]
        emulated = [masked(frame, own_ping) for _, frame in taps[side].frames]
        assert len(emulated) == len(kernel), (side, [Ether(f).summary() for f in emulated])
        assert all(checksums_valid(frame) for _, frame in taps[side].frames)
        for index, (ours, theirs) in enumerate(zip(emulated, kernel)):
            assert ours == theirs, (side, index, Ether(ours).show2(dump=True), Ether(theirs).show2(dump=True))


def _counters(lines: list[str]) -> list[tuple[str, str]]:
    """(chain or rule's chain, [packets:bytes]) in iptables-save order, per table."""
    found = []
    for line in lines:
        policy = re.match(r"^:(\S+) \S+ (\[\d+:\d+\])", line)
        rule = re.match(r"^(\[\d+:\d+\]) -A (\S+)", line)
        if line.startswith("*"):
            found.append((line, ""))
        elif policy:
            found.append((policy.group(1), policy.group(2)))
        elif rule:
            found.append((rule.group(2), rule.group(1)))
    return found


@pytest.mark.parametrize("case", CASES)
def test_counters_and_conntrack_match_the_kernel(case):
    spec, namespaces, _ = run_case(case)
    netfilter = namespaces["R"].netfilter
    kernel_lines = (HERE / case / "iptables-save.txt").read_text().splitlines()
    kernel_tables = [line[1:] for line in kernel_lines if line.startswith("*")]
    ours = [line for name in kernel_tables for line in save_lines(netfilter.ruleset.tables[name])]
    assert sorted(_counters(ours)) == sorted(_counters(kernel_lines))
    def normal(line: str) -> str:
        """The seconds left are masked (the kernel's were read ~1.5 s after its
        traffic), and the echo id of a ping R sent itself (drawn at random)."""
        line = re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 T ", line)
        ports = re.findall(r"sport=(\d+) dport=(\d+)", line)
        if len(ports) == 2 and ports[1][1] != ports[0][0]:
            # SNAT had to change the source port (a clash): nf_nat_l4proto_unique_tuple draws it
            # at random in 1024..65535 for a port >= 1024
            assert 1024 <= int(ports[1][1]) <= 65535, line
            line = line.replace(f"dport={ports[1][1]} ", "dport=DRAWN ")
        return re.sub(r"id=\d+", "id=ID", line) if spec["from"] == "R" else line

    kernel_lines = [line for line in (HERE / case / "conntrack.txt").read_text().splitlines() if line.strip()]
    emulated_lines = netfilter.conntrack.listing(namespaces["R"].sim.now_ns)
    assert sorted(map(normal, emulated_lines)) == sorted(map(normal, kernel_lines))
    # the seconds left agree too (Linux's timeouts: UDP 30, ICMP 30, TCP TIME_WAIT 120), within
    # the few seconds between the kernel's last packet and its listing
    left = lambda lines: sorted((normal(line), int(line.split()[2])) for line in lines)
    for (_, ours), (_, theirs) in zip(left(emulated_lines), left(kernel_lines)):
        assert abs(ours - theirs) <= 3, (emulated_lines, kernel_lines)
