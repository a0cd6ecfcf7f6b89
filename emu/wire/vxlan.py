"""VXLAN (RFC 7348): the 8-byte header and whole-frame encap/decap.

Header: flags (I = 0x08 says the VNI is valid), 24 reserved bits, the 24-bit
VNI, 8 reserved bits. Unknown flag and reserved values are kept, so a parse
and emit round-trip never loses data; the VTEP decides what to accept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.wire.addr import checked_int, ipv4_address, mac_address
from emu.wire.errors import Truncated, WireError
from emu.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame, ethernet_header
from emu.wire.frozen import build_frozen
from emu.wire.ipv4 import PROTO_UDP, Ipv4Packet, Ipv4Repr
from emu.wire.udp import UdpDatagram, UdpRepr

HEADER_LEN = 8
FLAG_I = 0x08
FLANNEL_PORT = 8472
IANA_PORT = 4789
MAX_VNI = 2**24 - 1
# Outer Ethernet + IPv4 + UDP + VXLAN: why flannel.1's MTU is the underlay's minus 50.
OVERHEAD = 14 + 20 + 8 + HEADER_LEN

_HEADER = struct.Struct("!I I")


class VxlanHeader:
    """Zero-copy view of a VXLAN header and the inner frame after it."""

    __slots__ = ("buf",)

    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        if len(buf) < HEADER_LEN:
            raise Truncated("vxlan", HEADER_LEN, len(buf))
        self.buf = buf

    @property
    def flags(self) -> int:
        return self.buf[0]

    @property
    def vni(self) -> int:
        return (self.buf[4] << 16) | (self.buf[5] << 8) | self.buf[6]

    @property
    def reserved1(self) -> int:
        return (self.buf[1] << 16) | (self.buf[2] << 8) | self.buf[3]

    @property
    def reserved2(self) -> int:
        return self.buf[7]

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[HEADER_LEN:]

    def to_repr(self) -> "VxlanRepr":
        flags_reserved1, vni_reserved2 = _HEADER.unpack_from(self.buf)
        return build_frozen(VxlanRepr, vni=vni_reserved2 >> 8, flags=flags_reserved1 >> 24,
                            reserved1=flags_reserved1 & 0xFFFFFF, reserved2=vni_reserved2 & 0xFF)


@dataclass(frozen=True)
class VxlanRepr:
    """A VXLAN header as values."""

    vni: int
    flags: int = FLAG_I
    reserved1: int = 0
    reserved2: int = 0

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "VxlanRepr":
        return VxlanHeader(buf).to_repr()

    @property
    def header_len(self) -> int:
        return HEADER_LEN

    def build(self) -> bytes:
        return vxlan_header(self.vni, self.flags, self.reserved1, self.reserved2)

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        _HEADER.pack_into(buf, offset, (self.flags << 24) | self.reserved1,
                          (self.vni << 8) | self.reserved2)
        return offset + HEADER_LEN


def vxlan_header(vni: int, flags: int = FLAG_I, reserved1: int = 0, reserved2: int = 0) -> bytes:
    """`VxlanRepr(vni, ...).build()` straight from the values (per encapsulated frame)."""
    return _HEADER.pack((flags << 24) | reserved1, (vni << 8) | reserved2)


@dataclass(frozen=True)
class OuterHeaders:
    """Everything a VTEP chooses for the outer headers of one encapsulation."""

    src_mac: bytes
    dst_mac: bytes
    src_ip: bytes
    dst_ip: bytes
    src_port: int
    dst_port: int = FLANNEL_PORT
    vni: int = 1
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    df: bool = False
    udp_checksum: bool = True

    def __post_init__(self) -> None:
        """Addresses may be text, ipaddress objects or bytes; every field is
        checked here, naming it, rather than failing later while building."""
        for name in ("src_mac", "dst_mac"):
            object.__setattr__(self, name, mac_address(getattr(self, name), name))
        for name in ("src_ip", "dst_ip"):
            object.__setattr__(self, name, ipv4_address(getattr(self, name), name))
        for name, high in (("src_port", 0xFFFF), ("dst_port", 0xFFFF), ("vni", MAX_VNI), ("ttl", 0xFF),
                           ("tos", 0xFF), ("ident", 0xFFFF)):
            checked_int(getattr(self, name), name, 0, high)


def encapsulate(inner_frame: bytes | bytearray | memoryview, outer: OuterHeaders) -> bytes:
    """Wrap an inner Ethernet frame in Ethernet/IPv4/UDP/VXLAN, checksums valid."""
    vxlan = VxlanRepr(outer.vni).build() + bytes(inner_frame)
    segment = UdpRepr(outer.src_port, outer.dst_port, len(vxlan)).build(
        vxlan, outer.src_ip, outer.dst_ip, with_checksum=outer.udp_checksum)
    ip = Ipv4Repr(src=outer.src_ip, dst=outer.dst_ip, protocol=PROTO_UDP,
                  payload_len=len(segment), ttl=outer.ttl, tos=outer.tos,
                  ident=outer.ident, df=outer.df)
    return ethernet_header(outer.dst_mac, outer.src_mac, ETHERTYPE_IPV4) + ip.header() + segment


@dataclass(frozen=True)
class Decapsulated:
    """The parts of a VXLAN frame a VTEP needs after decapsulation."""

    outer_ip: Ipv4Repr
    udp: UdpRepr
    vxlan: VxlanRepr
    inner_frame: bytes


def decapsulate(frame: bytes | bytearray | memoryview) -> Decapsulated:
    """Split an Ethernet/IPv4/UDP/VXLAN frame; any inconsistency is a `WireError`.

    Checks what the bytes themselves can tell: header lengths, IPv4 protocol,
    checksums. Port and VNI policy belong to the receiving device.
    """
    eth = EthernetFrame(frame)
    if eth.ethertype != ETHERTYPE_IPV4:
        raise WireError("vxlan-outer-not-ipv4", f"ethertype 0x{eth.ethertype:04x}")
    ip = Ipv4Packet(eth.payload)
    if not ip.checksum_ok():
        raise WireError("vxlan-outer-ip-checksum")
    outer_ip = ip.to_repr()
    if outer_ip.protocol != PROTO_UDP:
        raise WireError("vxlan-outer-not-udp", f"protocol {outer_ip.protocol}")
    if outer_ip.mf or outer_ip.frag_offset:
        raise WireError("vxlan-outer-fragment")
    udp = UdpDatagram(ip.payload)
    if not udp.checksum_ok(outer_ip.src, outer_ip.dst):
        raise WireError("vxlan-udp-checksum")
    vxlan = VxlanHeader(udp.payload)
    return build_frozen(Decapsulated, outer_ip=outer_ip, udp=udp.to_repr(), vxlan=vxlan.to_repr(),
                        inner_frame=bytes(vxlan.payload))


def header_fields(buf: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    """(flags, reserved1, vni, reserved2) of the 8-byte header at the start
    of `buf` in one unpack, for the receive path that only checks them."""
    flags_reserved1, vni_reserved2 = _HEADER.unpack_from(buf)
    return flags_reserved1 >> 24, flags_reserved1 & 0xFFFFFF, vni_reserved2 >> 8, vni_reserved2 & 0xFF
