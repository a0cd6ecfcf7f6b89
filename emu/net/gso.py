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

if TYPE_CHECKING:
    from emu.sim import Scheduler

_SERVICE = "gso"
_KEEP = 4096  # super-packets remembered (far more than are ever in flight)


def _key(packet: bytes | memoryview) -> tuple:
    """What no hop changes: addresses, IP id, and the next 4 bytes of the
    transport header after the ports (TCP: the sequence number; the outer
    UDP of an encapsulated super-packet: its length and checksum)."""
    header_len = (packet[0] & 0x0F) * 4
    return (bytes(packet[12:20]), bytes(packet[4:6]),
            bytes(packet[header_len + 4:header_len + 8]))


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
    if not seg_len or packet[9] != 6:
        return 0
    header_len = (packet[0] & 0x0F) * 4
    return seg_len - header_len - (packet[header_len + 12] >> 4) * 4


def fits(sim: "Scheduler", packet: bytes | memoryview, mtu: int) -> bool:
    """A packet above `mtu` that is a super-packet whose segments fit."""
    seg_len = segment_len(sim, packet)
    return 0 < seg_len <= mtu


def segments(packet: bytes, size: int) -> list[bytes]:
    """Software GSO (tcp_gso_segment): the segments of a super-packet, each
    with its own IP id (+1 each), length, sequence number and checksums;
    PSH and FIN only on the last, as Linux sets them."""
    from emu.wire.ipv4 import Ipv4Repr
    from emu.wire.tcp import FIN, PSH, tcp_checksum

    header_len = (packet[0] & 0x0F) * 4
    tcp_len = (packet[header_len + 12] >> 4) * 4
    ip = Ipv4Repr.parse(packet)
    tcp_header = packet[header_len:header_len + tcp_len]
    data = packet[header_len + tcp_len:]
    seq = int.from_bytes(tcp_header[4:8], "big")
    out = []
    for index, offset in enumerate(range(0, len(data), size)):
        chunk = data[offset:offset + size]
        last = offset + size >= len(data)
        header = bytearray(tcp_header)
        header[4:8] = ((seq + offset) & 0xFFFFFFFF).to_bytes(4, "big")
        if not last:
            header[13] &= ~(PSH | FIN) & 0xFF
        header[16:18] = b"\0\0"
        segment = bytearray(header + chunk)
        segment[16:18] = tcp_checksum(ip.src, ip.dst, segment).to_bytes(2, "big")
        piece = Ipv4Repr(src=ip.src, dst=ip.dst, protocol=ip.protocol, payload_len=len(segment),
                         ttl=ip.ttl, tos=ip.tos, ident=(ip.ident + index) & 0xFFFF,
                         df=ip.df).header()
        out.append(piece + bytes(segment))
    return out
