"""IPv4 headers (RFC 791): options, flags, fragment offset, header checksum.

`Ipv4Packet` is the zero-copy parse side; `Ipv4Repr` the value that emits.
`decrement_ttl` is the forwarding hot path: one byte changed and the checksum
patched incrementally (RFC 1624), exactly what a Linux router does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from emu.wire.addr import ipv4_address
from emu.wire.checksum import incremental_update, internet_checksum, sum_verifies
from emu.wire.errors import Malformed, Truncated
from emu.wire.frozen import build_frozen

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

MIN_HEADER_LEN = 20
MAX_HEADER_LEN = 60
FLAG_RESERVED = 0x8000
FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

TOS = 1
TTL = 8
PROTOCOL = 9
IDENT = slice(4, 6)
FLAGS_OFFSET = slice(6, 8)
CHECKSUM = slice(10, 12)
SRC = slice(12, 16)
DST = slice(16, 20)

# The flags/offset field of a packet that is no fragment (MF clear, offset 0;
# DF and the reserved bit either way): a hot path tests `buf[FLAGS_OFFSET] in
# UNFRAGMENTED` without a call.
UNFRAGMENTED = frozenset({b"\x00\x00", b"\x40\x00", b"\x80\x00", b"\xc0\x00"})

_FIXED = struct.Struct("!BBHHHBBH4s4s")
_LENGTHS = struct.Struct("!BxH")  # version/IHL, total length: all the constructor checks


class Ipv4Packet:
    """Zero-copy view of an IPv4 packet; all lengths are checked here.

    With `allow_truncated` the buffer may end before `total_length` (the
    datagram quoted inside an ICMP error is cut short); `payload` is then what
    is present.
    """

    __slots__ = ("buf", "header_len", "total_length")

    def __init__(self, buf: bytes | bytearray | memoryview, allow_truncated: bool = False) -> None:
        have = len(buf)
        if have < MIN_HEADER_LEN:
            raise Truncated("ipv4", MIN_HEADER_LEN, have)
        version_ihl, total_length = _LENGTHS.unpack_from(buf)
        if version_ihl >> 4 != 4:
            raise Malformed("ipv4", "version", version_ihl >> 4)
        header_len = (version_ihl & 0x0F) * 4
        if header_len < MIN_HEADER_LEN:
            raise Malformed("ipv4", "ihl", header_len // 4)
        if have < header_len:
            raise Truncated("ipv4", header_len, have)
        if total_length < header_len:
            raise Malformed("ipv4", "total_length", total_length)
        if have < total_length and not allow_truncated:
            raise Truncated("ipv4", total_length, have)
        self.buf = buf
        self.header_len = header_len
        self.total_length = total_length

    @property
    def tos(self) -> int:
        return self.buf[1]

    @property
    def ident(self) -> int:
        return (self.buf[4] << 8) | self.buf[5]

    @property
    def flags_offset(self) -> int:
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def df(self) -> bool:
        return bool(self.flags_offset & FLAG_DF)

    @property
    def mf(self) -> bool:
        return bool(self.flags_offset & FLAG_MF)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in 8-byte units, as on the wire."""
        return self.flags_offset & OFFSET_MASK

    @property
    def ttl(self) -> int:
        return self.buf[TTL]

    @property
    def protocol(self) -> int:
        return self.buf[PROTOCOL]

    @property
    def checksum(self) -> int:
        return (self.buf[10] << 8) | self.buf[11]

    @property
    def src(self) -> bytes:
        return bytes(self.buf[SRC])

    @property
    def dst(self) -> bytes:
        return bytes(self.buf[DST])

    @property
    def options(self) -> bytes:
        return bytes(self.buf[MIN_HEADER_LEN:self.header_len])

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[self.header_len:self.total_length]

    def is_fragment(self) -> bool:
        return bool(self.flags_offset & (FLAG_MF | OFFSET_MASK))

    def checksum_ok(self) -> bool:
        return sum_verifies(self.buf[:self.header_len])

    def __len__(self) -> int:
        return self.total_length

    def to_repr(self) -> "Ipv4Repr":
        """Every field from one unpack of the fixed header; `__init__` checked the lengths."""
        _, tos, _, ident, flags, ttl, protocol, _, src, dst = _FIXED.unpack_from(self.buf)
        header_len = self.header_len
        return build_frozen(
            Ipv4Repr, src=src, dst=dst, protocol=protocol,
            payload_len=self.total_length - header_len, ttl=ttl, tos=tos, ident=ident,
            df=flags & FLAG_DF != 0, mf=flags & FLAG_MF != 0, frag_offset=flags & OFFSET_MASK,
            reserved_flag=flags & FLAG_RESERVED != 0,
            options=bytes(self.buf[MIN_HEADER_LEN:header_len]),
        )


@dataclass(frozen=True)
class Ipv4Repr:
    """An IPv4 header as values. `frag_offset` is in 8-byte units."""

    src: bytes
    dst: bytes
    protocol: int
    payload_len: int
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    df: bool = False
    mf: bool = False
    frag_offset: int = 0
    reserved_flag: bool = False
    options: bytes = b""

    def __post_init__(self) -> None:
        """Addresses may be text, ipaddress objects or 4 bytes (checked here,
        naming the field; parsers bypass this with build_frozen)."""
        if type(self.src) is not bytes or len(self.src) != 4:
            object.__setattr__(self, "src", ipv4_address(self.src, "src"))
        if type(self.dst) is not bytes or len(self.dst) != 4:
            object.__setattr__(self, "dst", ipv4_address(self.dst, "dst"))

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "Ipv4Repr":
        return Ipv4Packet(buf).to_repr()

    @property
    def header_len(self) -> int:
        return MIN_HEADER_LEN + len(self.options)

    def _fixed_fields(self, checksum: int) -> tuple:
        if len(self.options) % 4 or len(self.options) > MAX_HEADER_LEN - MIN_HEADER_LEN:
            raise ValueError(f"IPv4 options must be a multiple of 4 bytes up to 40, got {len(self.options)}")
        flags = ((FLAG_DF if self.df else 0) | (FLAG_MF if self.mf else 0)
                 | (FLAG_RESERVED if self.reserved_flag else 0) | self.frag_offset)
        return (0x40 | (self.header_len // 4), self.tos, self.header_len + self.payload_len,
                self.ident, flags, self.ttl, self.protocol, checksum, self.src, self.dst)

    def header(self) -> bytes:
        """The header bytes, options and a valid checksum included."""
        return _packed_header(self._fixed_fields(0), self.options)

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the header at `offset`; return the offset of the payload."""
        header = self.header()
        buf[offset:offset + len(header)] = header
        return offset + len(header)

    def build(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Header (with `payload_len` taken from `payload`) plus payload."""
        if len(payload) != self.payload_len:
            return replace(self, payload_len=len(payload)).build(payload)
        return self.header() + bytes(payload)


def _packed_header(fields: tuple, options: bytes) -> bytes:
    """The header of `_FIXED` fields (checksum 0) plus options, its checksum filled in."""
    if not options:
        checksum = internet_checksum(_FIXED.pack(*fields))
        return _FIXED.pack(*fields[:7], checksum, *fields[8:])
    raw = _FIXED.pack(*fields) + options
    checksum = internet_checksum(raw)
    return raw[:10] + checksum.to_bytes(2, "big") + raw[12:]


def ipv4_header(src: bytes, dst: bytes, protocol: int, payload_len: int, ttl: int = 64,
                 tos: int = 0, ident: int = 0, df: bool = False) -> bytes:
    """`Ipv4Repr(...).header()` of an unfragmented header without options,
    straight from the values: a stack sending a packet builds no Repr (a
    frozen dataclass of 12 fields costs more than packing the header)."""
    return _packed_header((0x45, tos, MIN_HEADER_LEN + payload_len, ident, FLAG_DF if df else 0,
                           ttl, protocol, 0, src, dst), b"")


def decrement_ttl(packet: bytearray, offset: int = 0) -> int:
    """Decrement the TTL of the IPv4 header at `offset` in place.

    The checksum is patched with RFC 1624 instead of being recomputed; returns
    the new TTL. The caller checks for TTL expiry before calling.
    """
    ttl = packet[offset + TTL]
    word_old = (ttl << 8) | packet[offset + PROTOCOL]
    word_new = word_old - 0x100
    old = (packet[offset + 10] << 8) | packet[offset + 11]
    new = incremental_update(old, word_old, word_new)
    packet[offset + TTL] = ttl - 1
    packet[offset + 10] = new >> 8
    packet[offset + 11] = new & 0xFF
    return ttl - 1


# -- field accessors ------------------------------------------------------------
# One field of the (already length-checked) header at the start of `buf`, read or
# written in place without building a view: the data path's per-hop reads and the
# few rewrites the kernel does (raw sockets, fragmentation, reassembly). Field
# offsets live here and nowhere else.

def fixed_fields(buf: bytes | bytearray | memoryview) -> tuple:
    """All ten fields of the fixed header in one unpack: (version_ihl, tos,
    total_length, ident, flags_offset, ttl, protocol, checksum, src, dst)."""
    return _FIXED.unpack_from(buf)


def version(buf: bytes | bytearray | memoryview) -> int:
    return buf[0] >> 4


def header_length(buf: bytes | bytearray | memoryview) -> int:
    """IHL in bytes."""
    return (buf[0] & 0x0F) * 4


def tos(buf: bytes | bytearray | memoryview) -> int:
    return buf[TOS]


def total_length(buf: bytes | bytearray | memoryview) -> int:
    return (buf[2] << 8) | buf[3]


def ident(buf: bytes | bytearray | memoryview) -> int:
    return (buf[4] << 8) | buf[5]


def flags_offset(buf: bytes | bytearray | memoryview) -> int:
    """The flags and fragment offset word (FLAG_* | offset in 8-byte units)."""
    return (buf[6] << 8) | buf[7]


def dont_fragment(buf: bytes | bytearray | memoryview) -> bool:
    return bool(buf[6] & (FLAG_DF >> 8))


def is_fragment(buf: bytes | bytearray | memoryview) -> bool:
    """MF set or a non-zero offset: any piece of a fragmented datagram."""
    return bool(((buf[6] << 8) | buf[7]) & (FLAG_MF | OFFSET_MASK))


def ttl(buf: bytes | bytearray | memoryview) -> int:
    return buf[TTL]


def protocol(buf: bytes | bytearray | memoryview) -> int:
    return buf[PROTOCOL]


def src(buf: bytes | bytearray | memoryview) -> bytes:
    return bytes(buf[SRC])


def dst(buf: bytes | bytearray | memoryview) -> bytes:
    return bytes(buf[DST])


def addresses(buf: bytes | bytearray | memoryview) -> bytes:
    """Source and destination, 8 bytes (a key no hop changes)."""
    return bytes(buf[12:20])


def header(buf: bytes | bytearray | memoryview) -> bytes:
    """The header bytes, options included."""
    return bytes(buf[:header_length(buf)])


def options(buf: bytes | bytearray | memoryview) -> bytes:
    return bytes(buf[MIN_HEADER_LEN:header_length(buf)])


def payload(buf: bytes | bytearray | memoryview) -> memoryview:
    """What follows the header, up to the total length."""
    return memoryview(buf)[header_length(buf):total_length(buf)]


def set_total_length(buf: bytearray, value: int) -> None:
    buf[2:4] = value.to_bytes(2, "big")


def set_ident(buf: bytearray, value: int) -> None:
    buf[4:6] = value.to_bytes(2, "big")


def set_flags_offset(buf: bytearray, value: int) -> None:
    buf[6:8] = value.to_bytes(2, "big")


def set_src(buf: bytearray, address: bytes) -> None:
    buf[SRC] = address


def set_options(buf: bytearray, value: bytes) -> None:
    """Replace the options area (same length) of the header in `buf`."""
    buf[MIN_HEADER_LEN:header_length(buf)] = value


def fill_checksum(buf: bytearray) -> None:
    """Recompute the header checksum in place (over the IHL bytes)."""
    buf[CHECKSUM] = b"\x00\x00"
    buf[CHECKSUM] = internet_checksum(bytes(buf[:header_length(buf)])).to_bytes(2, "big")
