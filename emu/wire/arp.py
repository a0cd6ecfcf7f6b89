"""ARP for Ethernet/IPv4 (RFC 826): the only hardware/protocol pair we carry.

A packet for any other pair (hlen != 6 or plen != 4, e.g. ARP over another
link type) is `Malformed`: the neighbour code counts it as a drop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.wire.addr import ipv4_address, mac_address
from emu.wire.errors import Malformed, Truncated
from emu.wire.frozen import build_frozen

OP_REQUEST = 1
OP_REPLY = 2
HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800
PACKET_LEN = 28

_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True)
class ArpRepr:
    """An Ethernet/IPv4 ARP packet as values."""

    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes
    htype: int = HTYPE_ETHERNET
    ptype: int = PTYPE_IPV4

    def __post_init__(self) -> None:
        """Addresses may be text (or ipaddress objects) as well as bytes,
        checked here naming the field."""
        for name in ("sha", "tha"):
            object.__setattr__(self, name, mac_address(getattr(self, name), name))
        for name in ("spa", "tpa"):
            object.__setattr__(self, name, ipv4_address(getattr(self, name), name))

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "ArpRepr":
        if len(buf) < PACKET_LEN:
            raise Truncated("arp", PACKET_LEN, len(buf))
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, 0)
        if hlen != 6:
            raise Malformed("arp", "hlen", hlen)
        if plen != 4:
            raise Malformed("arp", "plen", plen)
        return build_frozen(cls, op=op, sha=sha, spa=spa, tha=tha, tpa=tpa, htype=htype, ptype=ptype)

    @property
    def header_len(self) -> int:
        return PACKET_LEN

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        _ARP.pack_into(buf, offset, self.htype, self.ptype, 6, 4, self.op,
                       self.sha, self.spa, self.tha, self.tpa)
        return offset + PACKET_LEN

    def build(self) -> bytes:
        return _ARP.pack(self.htype, self.ptype, 6, 4, self.op,
                         self.sha, self.spa, self.tha, self.tpa)
