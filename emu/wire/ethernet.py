"""Ethernet II frames, with an optional single 802.1Q tag read and skipped.

The header is 14 bytes: destination MAC, source MAC, EtherType. A frame whose
EtherType is 0x8100 carries a 4-byte tag (TCI, then the real EtherType).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.wire.addr import mac_address
from emu.wire.errors import Truncated
from emu.wire.frozen import build_frozen

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100

HEADER_LEN = 14
VLAN_TAG_LEN = 4

# The EtherType field as it appears in a frame (compared without a parse).
TYPE_IPV4 = ETHERTYPE_IPV4.to_bytes(2, "big")
TYPE_ARP = ETHERTYPE_ARP.to_bytes(2, "big")
TYPE_VLAN = ETHERTYPE_VLAN.to_bytes(2, "big")

DST = slice(0, 6)
SRC = slice(6, 12)
TYPE = slice(12, 14)

_HEADER = struct.Struct("!6s6sH")
_TAGGED = struct.Struct("!6s6sHHH")
_ADDRESSES = struct.Struct("!6s6s")


class EthernetFrame:
    """Zero-copy view of an Ethernet II frame (length checked once, here)."""

    __slots__ = ("buf", "header_len", "ethertype", "vlan_tci")

    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        if len(buf) < HEADER_LEN:
            raise Truncated("eth", HEADER_LEN, len(buf))
        ethertype = (buf[12] << 8) | buf[13]
        tci = None
        header_len = HEADER_LEN
        if ethertype == ETHERTYPE_VLAN:
            header_len += VLAN_TAG_LEN
            if len(buf) < header_len:
                raise Truncated("eth-vlan", header_len, len(buf))
            tci = (buf[14] << 8) | buf[15]
            ethertype = (buf[16] << 8) | buf[17]
        self.buf = buf
        self.header_len = header_len
        self.ethertype = ethertype
        self.vlan_tci = tci

    @property
    def dst(self) -> bytes:
        return bytes(self.buf[DST])

    @property
    def src(self) -> bytes:
        return bytes(self.buf[SRC])

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[self.header_len:]

    def __len__(self) -> int:
        return len(self.buf)

    def to_repr(self) -> "EthernetRepr":
        dst, src = _ADDRESSES.unpack_from(self.buf)
        return build_frozen(EthernetRepr, dst=dst, src=src, ethertype=self.ethertype,
                            vlan_tci=self.vlan_tci)


@dataclass(frozen=True)
class EthernetRepr:
    """An Ethernet II header as values; `vlan_tci` None means untagged."""

    dst: bytes
    src: bytes
    ethertype: int
    vlan_tci: int | None = None

    def __post_init__(self) -> None:
        """MACs may be text as well as 6 bytes, checked here naming the field."""
        if type(self.dst) is not bytes or len(self.dst) != 6:
            object.__setattr__(self, "dst", mac_address(self.dst, "dst"))
        if type(self.src) is not bytes or len(self.src) != 6:
            object.__setattr__(self, "src", mac_address(self.src, "src"))

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "EthernetRepr":
        return EthernetFrame(buf).to_repr()

    @property
    def header_len(self) -> int:
        return HEADER_LEN + (VLAN_TAG_LEN if self.vlan_tci is not None else 0)

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the header at `offset`; return the offset just after it."""
        if self.vlan_tci is None:
            _HEADER.pack_into(buf, offset, self.dst, self.src, self.ethertype)
        else:
            _TAGGED.pack_into(buf, offset, self.dst, self.src, ETHERTYPE_VLAN,
                              self.vlan_tci, self.ethertype)
        return offset + self.header_len

    def build(self, payload: bytes | bytearray | memoryview = b"") -> bytes:
        """The whole frame: this header followed by `payload`."""
        if self.vlan_tci is None:
            return _HEADER.pack(self.dst, self.src, self.ethertype) + bytes(payload)
        return _TAGGED.pack(self.dst, self.src, ETHERTYPE_VLAN, self.vlan_tci,
                            self.ethertype) + bytes(payload)


def ethernet_header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """The 14-byte untagged header, for the hot path that glues bytes together."""
    return _HEADER.pack(dst, src, ethertype)


# -- field accessors (the header at the start of `buf`, at least 14 bytes) -----

def dst(buf: bytes | bytearray | memoryview) -> bytes:
    return bytes(buf[DST])


def src(buf: bytes | bytearray | memoryview) -> bytes:
    return bytes(buf[SRC])


def ethertype(buf: bytes | bytearray | memoryview) -> int:
    """The EtherType field as written (0x8100 for a tagged frame: no tag skipped)."""
    return (buf[12] << 8) | buf[13]


def addresses(buf: bytes | bytearray | memoryview) -> bytes:
    """Destination and source MAC, 12 bytes."""
    return bytes(buf[:12])


def payload(buf: bytes | bytearray | memoryview) -> memoryview:
    """What follows an untagged header."""
    return memoryview(buf)[HEADER_LEN:]


def is_ipv4(buf: bytes | bytearray | memoryview) -> bool:
    """An untagged frame long enough for its EtherType, carrying IPv4."""
    return len(buf) >= HEADER_LEN and buf[TYPE] == TYPE_IPV4
