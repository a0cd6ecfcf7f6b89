"""Frame templates: a recorded frame as layers, rebuilt for M datagrams at once.

A template is one frame a walk showed to a tap (or the packet it delivered):
Ethernet / IPv4 / UDP / [VXLAN / Ethernet / IPv4 / UDP | IPv4 / UDP] /
payload, where the innermost layer is UDP (payload: its data) or ICMP
(payload: everything after the type, code and checksum, so an echo request
and its reply carry the same payload). Constant bytes are kept; per
datagram the payload, each IPv4 identifier and every checksum are
recomputed, innermost layer first, with the split sums of
emu.wire.partial_checksum: `build` for M datagrams at once (numpy),
`build_one` for one (plain integers, cheaper than numpy for one row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import emu.wire.icmp as icmp
import emu.wire.ipv4 as ipv4
import emu.wire.udp as udp
from emu.fastpath.errors import Unsupported
from emu.wire.checksum import pseudo_header_sum
from emu.wire.errors import WireError
from emu.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame
from emu.wire.ipv4 import PROTO_ICMP, PROTO_UDP, Ipv4Packet
from emu.wire.partial_checksum import checksums, constant_sum, on_even_offsets, write_u16, write_u16_rows
from emu.wire.udp import UdpDatagram
from emu.wire.vxlan import FLAG_I, HEADER_LEN as VXLAN_LEN, VxlanHeader

if TYPE_CHECKING:
    import numpy as np

    from emu.fastpath.replay import Replay
    from emu.net.stack import Ipv4Stack

# Field offsets in their headers, from the codecs.
IPV4_IDENT, IPV4_CHECKSUM = ipv4.IDENT.start, ipv4.CHECKSUM.start
UDP_CHECKSUM, ICMP_CHECKSUM = udp.CHECKSUM.start, icmp.CHECKSUM.start
# What precedes the payload: the UDP header; ICMP's type, code and checksum.
UDP_HEADER, ICMP_HEADER = udp.HEADER_LEN, icmp.CHECKSUM.stop


@dataclass(frozen=True)
class IdentSource:
    """Which stack produced an identifier: the i-th of m it consumed per datagram."""

    stack: "Ipv4Stack"
    index: int
    per_datagram: int


@dataclass(frozen=True)
class Layer:
    """One IPv4 header plus the UDP (or innermost ICMP) header after it."""

    ip_offset: int
    ip_header_len: int
    ident: IdentSource
    l4_offset: int
    l4_length: int
    l4_checksum: bool  # a UDP checksum of 0 means "none": not recomputed
    pseudo: int  # the pseudo-header's sum (UDP), 0 for ICMP
    checksum_field: int  # offset of the checksum in the L4 header
    zero_means_none: bool  # UDP sends a computed 0 as 0xffff


def _fold(total: int) -> int:
    """`fold_sums` for one integer total."""
    return total % 0xFFFF or (0xFFFF if total else 0)


class FrameTemplate:
    """A recorded frame (or IP packet) as layers (see the module docstring).

    Each header's and each UDP segment's sum is split once into a constant
    part (the recorded bytes with the payload and every identifier and
    checksum field zeroed) and the per-datagram fields: a replay adds the
    payload's sum (once per replay) and the fields computed for the inner
    layers to the constant. That needs every per-datagram field on an even
    offset from the start of the sums it is in (true of IPv4, UDP, VXLAN and
    Ethernet headers); a frame where it is not is not replayed."""

    def __init__(self, frame: bytes, ethernet: bool, payload: bytes,
                 idents: dict[int, list[IdentSource]]) -> None:
        self.frame = frame
        self.layers: list[Layer] = []
        offset = 0
        while True:
            if ethernet:
                try:
                    header = EthernetFrame(memoryview(frame)[offset:])
                except WireError as error:
                    raise Unsupported(f"frame-{error.reason}") from None
                if header.ethertype != ETHERTYPE_IPV4 or header.vlan_tci is not None:
                    raise Unsupported("frame-not-ipv4")
                offset += header.header_len
            layer, inner, inner_len = self._parse_layer(frame, offset, idents)
            self.layers.append(layer)
            if inner_len == len(payload):
                if frame[inner:inner + inner_len] != payload:
                    raise Unsupported("payload-rewritten")
                self.payload_offset = inner
                self._constant_sums = self._split_sums(len(payload))
                return
            if layer.checksum_field == ICMP_CHECKSUM:
                raise Unsupported("icmp-payload-mismatch")  # nothing is encapsulated in ICMP here
            offset, ethernet = self._inner_start(frame, inner, inner_len)

    @staticmethod
    def _inner_start(frame: bytes, inner: int, inner_len: int) -> tuple[int, bool]:
        """Where the encapsulated packet starts inside a UDP payload."""
        data = memoryview(frame)[inner:inner + inner_len]
        if inner_len >= VXLAN_LEN + 14 + 28:
            try:
                if VxlanHeader(data).flags == FLAG_I:
                    return inner + VXLAN_LEN, True  # VXLAN, then an Ethernet frame
            except WireError:
                pass
        if inner_len >= 28:
            try:
                Ipv4Packet(data)
                return inner, False  # IPv4 in UDP (flannel's udp backend)
            except WireError:
                pass
        raise Unsupported("frame-unknown-encapsulation")

    @staticmethod
    def _parse_layer(frame: bytes, offset: int, idents: dict[int, list[IdentSource]]):
        try:
            ip = Ipv4Packet(memoryview(frame)[offset:])
            if ip.protocol not in (PROTO_UDP, PROTO_ICMP) or ip.is_fragment():
                raise Unsupported("frame-not-udp-or-icmp")
            l4_offset = offset + ip.header_len
            if ip.protocol == PROTO_UDP:
                udp = UdpDatagram(memoryview(frame)[l4_offset:offset + ip.total_length])
                length, checksum = udp.length, udp.checksum != 0
                pseudo = pseudo_header_sum(ip.src, ip.dst, PROTO_UDP, udp.length)
            else:
                length, checksum, pseudo = ip.total_length - ip.header_len, True, 0
                if length < ICMP_HEADER:
                    raise Unsupported("frame-icmp-truncated")
        except WireError as error:
            raise Unsupported(f"frame-{error.reason}") from None
        sources = idents.get(ip.ident, [])
        if len(sources) != 1:
            raise Unsupported("ident-ambiguous" if sources else "ident-unknown")
        udp = ip.protocol == PROTO_UDP
        header = UDP_HEADER if udp else ICMP_HEADER
        layer = Layer(offset, ip.header_len, sources[0], l4_offset, length, checksum, pseudo,
                      UDP_CHECKSUM if udp else ICMP_CHECKSUM, udp)
        return layer, l4_offset + header, length - header

    def _split_sums(self, payload_length: int) -> list[tuple[int, int]]:
        """Per layer, the one's-complement sums of the constant part of its
        IPv4 header and of its L4 segment (pseudo-header included)."""
        zeroed = [(self.payload_offset, payload_length)]
        for layer in self.layers:
            for offset in (layer.ip_offset + IPV4_IDENT, layer.ip_offset + IPV4_CHECKSUM,
                           layer.l4_offset + layer.checksum_field):
                zeroed.append((offset, 2))
        sums = []
        for layer in self.layers:
            if not on_even_offsets(layer.l4_offset, [offset for offset, _ in zeroed]):
                raise Unsupported("field-on-odd-offset")
            sums.append((constant_sum(self.frame, layer.ip_offset, layer.ip_offset + layer.ip_header_len,
                                      zeroed),
                         constant_sum(self.frame, layer.l4_offset, layer.l4_offset + layer.l4_length,
                                      zeroed, layer.pseudo)))
        return sums

    def build(self, replay: "Replay") -> "np.ndarray":
        """The frame of every datagram of `replay`: one read-only row each."""
        import numpy as np

        rows = np.empty((replay.count, len(self.frame)), np.uint8)
        rows[:] = np.frombuffer(self.frame, np.uint8)
        start = self.payload_offset
        rows[:, start:start + replay.payloads.shape[1]] = replay.payloads
        inner = replay.payload_sums  # what the layers inside add to the next segment's sum
        for layer, (ip_sum, udp_sum) in zip(reversed(self.layers), reversed(self._constant_sums)):
            idents = replay.idents(layer.ident)
            ip_checksum = checksums(ip_sum, idents)
            write_u16_rows(rows, layer.ip_offset + IPV4_IDENT, idents)
            write_u16_rows(rows, layer.ip_offset + IPV4_CHECKSUM, ip_checksum)
            if layer.l4_checksum:
                l4_checksum = checksums(udp_sum, inner, zero_means_none=layer.zero_means_none)
                inner = inner + l4_checksum
                write_u16_rows(rows, layer.l4_offset + layer.checksum_field, l4_checksum)
            inner = inner + idents + ip_checksum  # this IPv4 header is inside the next segment
        rows.flags.writeable = False  # shared by every tap and the delivery
        return rows

    def build_one(self, payload: bytes, payload_sum: int, bases: dict) -> bytes:
        """`build` for one datagram, with plain integers: `payload_sum` is the
        payload's sum, `bases` each stack's first identifier for it."""
        buf = bytearray(self.frame)
        start = self.payload_offset
        buf[start:start + len(payload)] = payload
        inner = payload_sum
        pack = write_u16
        for layer, (ip_sum, l4_sum) in zip(reversed(self.layers), reversed(self._constant_sums)):
            source = layer.ident
            ident = (bases[source.stack] + source.index) & 0xFFFF
            ip_checksum = ~_fold(ident + ip_sum) & 0xFFFF
            pack(buf, layer.ip_offset + IPV4_IDENT, ident)
            pack(buf, layer.ip_offset + IPV4_CHECKSUM, ip_checksum)
            if layer.l4_checksum:
                l4_checksum = ~_fold(inner + l4_sum) & 0xFFFF
                if layer.zero_means_none and l4_checksum == 0:
                    l4_checksum = 0xFFFF
                inner += l4_checksum
                pack(buf, layer.l4_offset + layer.checksum_field, l4_checksum)
            inner += ident + ip_checksum
        return bytes(buf)
