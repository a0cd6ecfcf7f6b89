"""UDP (RFC 768) with the IPv4 pseudo-header checksum; 0 means "no checksum".

The checksum covers the pseudo-header, so building and verifying need the
IPv4 source and destination; a computed checksum of 0 is sent as 0xffff.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.wire.addr import ipv4_address
from emu.wire.checksum import ones_sum, pseudo_header_sum, sum_verifies, udp_checksum_field
from emu.wire.errors import Malformed, Truncated
from emu.wire.frozen import build_frozen
from emu.wire.ipv4 import PROTO_UDP

HEADER_LEN = 8
CHECKSUM = slice(6, 8)  # after the ports and the length: what a flow keeps constant

_HEADER = struct.Struct("!HHHH")
_PORTS = struct.Struct("!HH")


def udp_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes | bytearray | memoryview) -> int:
    """The checksum field value for `segment` (header with checksum 0 + payload)."""
    partial = pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, len(segment))
    return udp_checksum_field(~ones_sum(segment, partial) & 0xFFFF)


class UdpDatagram:
    """Zero-copy view of a UDP datagram; the length field is checked here."""

    __slots__ = ("buf", "length")

    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        have = len(buf)
        if have < HEADER_LEN:
            raise Truncated("udp", HEADER_LEN, have)
        length = (buf[4] << 8) | buf[5]
        if length < HEADER_LEN:
            raise Malformed("udp", "length", length)
        if length > have:
            raise Truncated("udp", length, have)
        self.buf = buf
        self.length = length

    @property
    def src_port(self) -> int:
        return (self.buf[0] << 8) | self.buf[1]

    @property
    def dst_port(self) -> int:
        return (self.buf[2] << 8) | self.buf[3]

    @property
    def checksum(self) -> int:
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[HEADER_LEN:self.length]

    def checksum_ok(self, src_ip: bytes, dst_ip: bytes) -> bool:
        """True when the checksum is absent (0) or verifies."""
        buf = self.buf
        if not (buf[6] or buf[7]):
            return True
        partial = pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, self.length)
        return sum_verifies(buf[:self.length], partial)

    def __len__(self) -> int:
        return self.length

    def to_repr(self) -> "UdpRepr":
        src_port, dst_port = _PORTS.unpack_from(self.buf)
        return build_frozen(UdpRepr, src_port=src_port, dst_port=dst_port,
                            payload_len=self.length - HEADER_LEN)


@dataclass(frozen=True)
class UdpRepr:
    """A UDP header as values; the checksum is computed when emitting."""

    src_port: int
    dst_port: int
    payload_len: int

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "UdpRepr":
        return UdpDatagram(buf).to_repr()

    @property
    def header_len(self) -> int:
        return HEADER_LEN

    def emit_into(self, buf: bytearray | memoryview, offset: int, src_ip: bytes,
                  dst_ip: bytes, with_checksum: bool = True) -> int:
        """Write the header at `offset`; the payload must already follow it.

        Returns the offset of the payload.
        """
        length = HEADER_LEN + self.payload_len
        _HEADER.pack_into(buf, offset, self.src_port, self.dst_port, length, 0)
        if with_checksum:
            checksum = udp_checksum(src_ip, dst_ip, memoryview(buf)[offset:offset + length])
            buf[offset + 6] = checksum >> 8
            buf[offset + 7] = checksum & 0xFF
        return offset + HEADER_LEN

    def build(self, payload: bytes | bytearray | memoryview, src_ip: bytes, dst_ip: bytes,
              with_checksum: bool = True) -> bytes:
        """Header plus payload (`payload_len` is taken from `payload`); the
        addresses (for the checksum) as text, ipaddress objects or 4 bytes."""
        src_ip, dst_ip = ipv4_address(src_ip, "src_ip"), ipv4_address(dst_ip, "dst_ip")
        return udp_segment(self.src_port, self.dst_port, payload, src_ip, dst_ip, with_checksum)


def udp_segment(src_port: int, dst_port: int, payload: bytes | bytearray | memoryview,
                  src_ip: bytes, dst_ip: bytes, with_checksum: bool = True) -> bytes:
    """`UdpRepr(src_port, dst_port, len(payload)).build(...)` straight from the
    values (a socket sending a datagram builds no Repr)."""
    length = HEADER_LEN + len(payload)
    checksum = 0
    if with_checksum:
        # The header's words (checksum 0) summed from the fields, the payload's
        # as one integer: no segment is built just to be summed.
        partial = pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length) + src_port + dst_port + length
        checksum = udp_checksum_field(~ones_sum(payload, partial) & 0xFFFF)
    return _HEADER.pack(src_port, dst_port, length, checksum) + bytes(payload)


def ports(buf: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(source, destination) port of the header at the start of `buf` (4+ bytes)."""
    return _PORTS.unpack_from(buf)
