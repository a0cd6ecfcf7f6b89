"""GSO super-packets: the skb's gso_size, which frames as bytes do not carry.

Linux's TCP hands the device one skb of up to 64 KB with `gso_size` = the
MSS; veths, bridges, routers and VXLAN keep it whole (every device here
advertises GSO), so captures show frames far above the MTU, and MTU checks
look at the size of each segment it stands for (is_skb_forwardable,
ip_exceeds_mtu, ip_finish_output_gso). Only a device without offloads
(flannel0, a TUN without a vnet header) cuts it into real segments.

Frames travel as bytes, so the sender records each super-packet's gso_size
in a per-simulation table keyed by what no hop changes (addresses, IP id,
TCP sequence number); the MTU checks and the TUN ask the table. A packet not
in the table is an ordinary packet.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import emu.wire.ipv4 as ipv4
import emu.wire.tcp as tcp
from emu.wire.ipv4 import Ipv4Repr

if TYPE_CHECKING:
    from emu.sim import Scheduler

_SERVICE = "gso"
_KEEP = 4096  # super-packets remembered (far more than are ever in flight)


def _key(packet: bytes | memoryview) -> tuple:
    """What no hop changes: addresses, IP id, and the next 4 bytes of the
    transport header after the ports (TCP: the sequence number; the outer
    UDP of an encapsulated super-packet: its length and checksum)."""
    transport = packet[ipv4.header_length(packet):]
    return (ipv4.addresses(packet), ipv4.ident(packet), bytes(transport[tcp.SEQ]))


def _table(sim: "Scheduler") -> OrderedDict:
    table = sim.services.get(_SERVICE)
    if table is None:
        table = sim.services[_SERVICE] = OrderedDict()
    return table


def mark(sim: "Scheduler", packet: bytes, seg_len: int) -> None:
    """Record that the IPv4 `packet` is a super-packet whose segments are at
    most `seg_len` bytes long (IPv4 length, headers included)."""
    table = _table(sim)
    table[_key(packet)] = seg_len
    if len(table) > _KEEP:
        table.popitem(last=False)


def segment_len(sim: "Scheduler", packet: bytes | memoryview) -> int:
    """The IPv4 length of a super-packet's largest segment (0: an ordinary packet)."""
    table = sim.services.get(_SERVICE)
    if not table or len(packet) < 28:
        return 0
    return table.get(_key(packet), 0)


def gso_size(sim: "Scheduler", packet: bytes | memoryview) -> int:
    """The data bytes per segment of a TCP super-packet (0: not one)."""
    seg_len = segment_len(sim, packet)
    if not seg_len or ipv4.protocol(packet) != ipv4.PROTO_TCP:
        return 0
    header_len = ipv4.header_length(packet)
    return seg_len - header_len - tcp.header_length(packet[header_len:])


def fits(sim: "Scheduler", packet: bytes | memoryview, mtu: int) -> bool:
    """A packet above `mtu` that is a super-packet whose segments fit."""
    seg_len = segment_len(sim, packet)
    return 0 < seg_len <= mtu


def segments(packet: bytes, size: int) -> list[bytes]:
    """Software GSO (tcp_gso_segment): the segments of a super-packet, each
    with its own IP id (+1 each), length, sequence number and checksums;
    PSH and FIN only on the last, as Linux sets them."""
    header_len = ipv4.header_length(packet)
    ip = Ipv4Repr.parse(packet)
    transport = packet[header_len:]
    tcp_len = tcp.header_length(transport)
    tcp_header = transport[:tcp_len]
    data = transport[tcp_len:]
    seq = tcp.seq(tcp_header)
    out = []
    for index, offset in enumerate(range(0, len(data), size)):
        chunk = data[offset:offset + size]
        last = offset + size >= len(data)
        segment = bytearray(tcp_header + chunk)
        tcp.set_seq(segment, seq + offset)
        if not last:
            tcp.set_flags(segment, tcp.flags(segment) & ~(tcp.PSH | tcp.FIN) & 0xFF)
        tcp.fill_checksum(segment, ip.src, ip.dst)
        piece = Ipv4Repr(src=ip.src, dst=ip.dst, protocol=ip.protocol, payload_len=len(segment),
                         ttl=ip.ttl, tos=ip.tos, ident=(ip.ident + index) & 0xFFFF,
                         df=ip.df).header()
        out.append(piece + bytes(segment))
    return out
