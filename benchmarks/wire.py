"""Parse and emit rates of emu.wire next to scapy and dpkt, on the same frames.

Run: `python -m benchmarks.wire`. Why: the forwarding path does nothing but
parse and emit headers, so these rates bound the emulator's frames/s, and
they show what the zero-copy codecs buy over the libraries used as reference.

Method: every benchmark is a closure doing one parse or one emit of a fixed
frame. Batches are sized to ~60 ms, all benchmarks run in turn in each round
(interleaved, so a slow moment of the machine hits all of them alike), and
the table shows the median rate over the rounds. Each header's payload is
opaque to the libraries (experimental EtherType/protocol, unassigned ports)
so they parse exactly one header; the whole-frame row goes down to the inner
frame. scapy and dpkt compute the UDP checksum only under an IP layer, so
their UDP emit builds IPv4+UDP (ours needs just the two addresses).
"""

from __future__ import annotations

import statistics
import struct
import time
from typing import Callable

import dpkt
from rich.console import Console
from rich.table import Table
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from emu.wire.addr import ip_from_str, mac_from_str
from emu.wire.arp import OP_REQUEST, ArpRepr
from emu.wire.ethernet import EthernetRepr
from emu.wire.icmp import IcmpRepr
from emu.wire.ipv4 import PROTO_UDP, Ipv4Repr
from emu.wire.udp import UdpRepr
from emu.wire.vxlan import FLAG_I, OuterHeaders, VxlanRepr, decapsulate, encapsulate

ROUNDS = 5
BATCH_SECONDS = 0.06

SRC_MAC, DST_MAC = "02:42:ac:12:00:0b", "02:42:ac:12:00:0c"
SRC_IP, DST_IP = "172.18.0.11", "172.18.0.12"
SRC, DST = ip_from_str(SRC_IP), ip_from_str(DST_IP)
EXPERIMENTAL_ETHERTYPE = 0x88B5  # IEEE 802 local experimental
EXPERIMENTAL_PROTOCOL = 253      # RFC 3692
SPORT, DPORT = 40000, 40001      # nothing registered: payload stays raw
PAYLOAD = bytes(range(64))

Bench = Callable[[], object]


def inner_frame() -> bytes:
    """A 100-byte Ethernet/IPv4/ICMP echo request, the inner frame of the VXLAN row."""
    echo = IcmpRepr.echo_request(0x3C15, 1, bytes(100 - 14 - 20 - 8)).build()
    ip = Ipv4Repr(ip_from_str("10.244.1.2"), ip_from_str("10.244.2.2"), 1, len(echo), ttl=63, df=True)
    return EthernetRepr(mac_from_str("6e:2d:54:00:02:02"), mac_from_str("6e:2d:54:00:01:01"),
                        0x0800).build(ip.build(echo))


def dpkt_vxlan_frame(inner: bytes) -> bytes:
    vxlan = struct.pack("!II", FLAG_I << 24, 1 << 8) + inner
    udp = dpkt.udp.UDP(sport=SPORT, dport=8472, data=vxlan)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=SRC, dst=DST, p=PROTO_UDP, ttl=64, data=udp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=mac_from_str(SRC_MAC), dst=mac_from_str(DST_MAC),
                                        type=0x0800, data=ip))


def dpkt_vxlan_parse(frame: bytes) -> object:
    udp = dpkt.ethernet.Ethernet(frame).data.data
    return dpkt.ethernet.Ethernet(udp.data[8:])


def benchmarks() -> dict[tuple[str, str], dict[str, Bench]]:
    """(header, "parse"|"emit") -> {implementation: one-operation closure}."""
    src_mac, dst_mac = mac_from_str(SRC_MAC), mac_from_str(DST_MAC)

    eth = EthernetRepr(dst_mac, src_mac, EXPERIMENTAL_ETHERTYPE)
    eth_frame = eth.build(PAYLOAD)
    arp = ArpRepr(OP_REQUEST, src_mac, SRC, bytes(6), DST)
    arp_packet = arp.build()
    ip = Ipv4Repr(SRC, DST, EXPERIMENTAL_PROTOCOL, len(PAYLOAD), ident=1)
    ip_packet = ip.build(PAYLOAD)
    icmp = IcmpRepr.echo_request(0x3C15, 1, PAYLOAD)
    icmp_message = icmp.build()
    udp = UdpRepr(SPORT, DPORT, len(PAYLOAD))
    udp_segment = udp.build(PAYLOAD, SRC, DST)
    vxlan = VxlanRepr(1)
    vxlan_header = vxlan.build()
    inner = inner_frame()
    outer = OuterHeaders(src_mac, dst_mac, SRC, DST, SPORT)
    vxlan_frame = encapsulate(inner, outer)

    def dpkt_ip(data: bytes | dpkt.Packet, protocol: int) -> dpkt.ip.IP:
        packet = dpkt.ip.IP(src=SRC, dst=DST, p=protocol, ttl=64, id=1, data=data)
        packet.len = len(packet)
        return packet

    def dpkt_udp() -> bytes:
        segment = dpkt.udp.UDP(sport=SPORT, dport=DPORT, data=PAYLOAD)
        segment.ulen = len(segment)
        return bytes(dpkt_ip(segment, PROTO_UDP))[20:]

    return {
        ("Ethernet", "parse"): {
            "emu.wire": lambda: EthernetRepr.parse(eth_frame),
            "scapy": lambda: Ether(eth_frame),
            "dpkt": lambda: dpkt.ethernet.Ethernet(eth_frame),
        },
        ("Ethernet", "emit"): {
            "emu.wire": lambda: eth.build(PAYLOAD),
            "scapy": lambda: bytes(Ether(dst=DST_MAC, src=SRC_MAC, type=EXPERIMENTAL_ETHERTYPE)
                                   / Raw(PAYLOAD)),
            "dpkt": lambda: bytes(dpkt.ethernet.Ethernet(dst=dst_mac, src=src_mac,
                                                         type=EXPERIMENTAL_ETHERTYPE, data=PAYLOAD)),
        },
        ("ARP", "parse"): {
            "emu.wire": lambda: ArpRepr.parse(arp_packet),
            "scapy": lambda: ARP(arp_packet),
            "dpkt": lambda: dpkt.arp.ARP(arp_packet),
        },
        ("ARP", "emit"): {
            "emu.wire": arp.build,
            "scapy": lambda: bytes(ARP(op=1, hwsrc=SRC_MAC, psrc=SRC_IP, hwdst="00:00:00:00:00:00",
                                       pdst=DST_IP)),
            "dpkt": lambda: bytes(dpkt.arp.ARP(op=1, sha=src_mac, spa=SRC, tha=bytes(6), tpa=DST)),
        },
        ("IPv4", "parse"): {
            "emu.wire": lambda: Ipv4Repr.parse(ip_packet),
            "scapy": lambda: IP(ip_packet),
            "dpkt": lambda: dpkt.ip.IP(ip_packet),
        },
        ("IPv4", "emit"): {
            "emu.wire": lambda: ip.build(PAYLOAD),
            "scapy": lambda: bytes(IP(src=SRC_IP, dst=DST_IP, proto=EXPERIMENTAL_PROTOCOL, id=1)
                                   / Raw(PAYLOAD)),
            "dpkt": lambda: bytes(dpkt_ip(PAYLOAD, EXPERIMENTAL_PROTOCOL)),
        },
        ("ICMP", "parse"): {
            "emu.wire": lambda: IcmpRepr.parse(icmp_message),
            "scapy": lambda: ICMP(icmp_message),
            "dpkt": lambda: dpkt.icmp.ICMP(icmp_message),
        },
        ("ICMP", "emit"): {
            "emu.wire": icmp.build,
            "scapy": lambda: bytes(ICMP(type=8, id=0x3C15, seq=1) / Raw(PAYLOAD)),
            "dpkt": lambda: bytes(dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(
                id=0x3C15, seq=1, data=PAYLOAD))),
        },
        ("UDP", "parse"): {
            "emu.wire": lambda: UdpRepr.parse(udp_segment),
            "scapy": lambda: UDP(udp_segment),
            "dpkt": lambda: dpkt.udp.UDP(udp_segment),
        },
        ("UDP", "emit"): {
            "emu.wire": lambda: udp.build(PAYLOAD, SRC, DST),
            "scapy": lambda: bytes(IP(src=SRC_IP, dst=DST_IP) / UDP(sport=SPORT, dport=DPORT)
                                   / Raw(PAYLOAD))[20:],
            "dpkt": dpkt_udp,
        },
        ("VXLAN", "parse"): {
            "emu.wire": lambda: VxlanRepr.parse(vxlan_header),
            "scapy": lambda: VXLAN(vxlan_header),
        },
        ("VXLAN", "emit"): {
            "emu.wire": vxlan.build,
            "scapy": lambda: bytes(VXLAN(vni=1)),
        },
        ("VXLAN frame", "parse"): {
            "emu.wire": lambda: decapsulate(vxlan_frame),
            "scapy": lambda: Ether(vxlan_frame),
            "dpkt": lambda: dpkt_vxlan_parse(vxlan_frame),
        },
        ("VXLAN frame", "emit"): {
            "emu.wire": lambda: encapsulate(inner, outer),
            "scapy": lambda: bytes(Ether(dst=DST_MAC, src=SRC_MAC) / IP(src=SRC_IP, dst=DST_IP, id=0)
                                   / UDP(sport=SPORT, dport=8472) / VXLAN(vni=1) / Raw(inner)),
            "dpkt": lambda: dpkt_vxlan_frame(inner),
        },
    }


def batch_size(bench: Bench) -> int:
    """Calls per timed batch so that one batch takes about BATCH_SECONDS."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            bench()
        elapsed = time.perf_counter() - start
        if elapsed > BATCH_SECONDS / 10:
            return max(1, int(calls * BATCH_SECONDS / elapsed))
        calls *= 4


def measure(benches: dict[tuple[str, str, str], Bench]) -> dict[tuple[str, str, str], float]:
    """Median operations/s of each benchmark over ROUNDS interleaved rounds."""
    sizes = {key: batch_size(bench) for key, bench in benches.items()}
    rates: dict[tuple[str, str, str], list[float]] = {key: [] for key in benches}
    for _ in range(ROUNDS):
        for key, bench in benches.items():
            calls = sizes[key]
            start = time.perf_counter()
            for _ in range(calls):
                bench()
            rates[key].append(calls / (time.perf_counter() - start))
    return {key: statistics.median(values) for key, values in rates.items()}


def check_same_bytes(table: dict[tuple[str, str], dict[str, Bench]]) -> None:
    """Every library must emit the very frame we emit, or the comparison is void."""
    for (header, op), impls in table.items():
        if op != "emit":
            continue
        ours = impls["emu.wire"]()
        for name, bench in impls.items():
            if bench() != ours:
                raise SystemExit(f"{header} emit: {name} builds different bytes than emu.wire")


def main() -> None:
    table = benchmarks()
    check_same_bytes(table)
    flat = {(header, op, impl): bench for (header, op), impls in table.items()
            for impl, bench in impls.items()}
    start = time.perf_counter()
    rates = measure(flat)

    out = Table(title=f"emu.wire vs scapy vs dpkt (operations/s, median of {ROUNDS} rounds)",
                caption="VXLAN frame: Ethernet/IPv4/UDP/VXLAN around a 100-byte inner frame")
    for column in ("header", "op", "emu.wire", "scapy", "dpkt", "vs scapy", "vs dpkt"):
        out.add_column(column, justify="left" if column in ("header", "op") else "right")
    for header, op in table:
        ours = rates[(header, op, "emu.wire")]
        row = [header, op]
        ratios = []
        for impl in ("emu.wire", "scapy", "dpkt"):
            rate = rates.get((header, op, impl))
            row.append("n/a" if rate is None else f"{rate:,.0f}")
            if impl != "emu.wire":
                ratios.append("n/a" if rate is None else f"{ours / rate:.1f}x")
        out.add_row(*row, *ratios)
    console = Console()
    console.print(out)
    console.print(f"measured in {time.perf_counter() - start:.1f} s; dpkt has no VXLAN layer (n/a)")


if __name__ == "__main__":
    main()
