"""Addresses at the public edges: text, ipaddress objects and bytes are all
accepted and mean the same; anything else fails at once with a TypeError or
ValueError naming the argument (OuterHeaders used to take "10.0.0.1" and
fail later inside checksum.py with struct.error)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from emu.wire.arp import OP_REQUEST, ArpRepr
from emu.wire.ethernet import EthernetRepr
from emu.wire.ipv4 import PROTO_UDP, Ipv4Repr
from emu.wire.udp import UdpRepr
from emu.wire.vxlan import OuterHeaders, decapsulate, encapsulate

MACS = dict(src_mac=b"\x02" * 6, dst_mac=b"\x04" * 6)


@pytest.mark.parametrize("src", ["10.0.0.1", IPv4Address("10.0.0.1"), bytes([10, 0, 0, 1]),
                                 bytearray([10, 0, 0, 1]), memoryview(bytes([10, 0, 0, 1]))])
def test_every_form_of_an_address_means_the_same(src):
    outer = OuterHeaders(**MACS, src_ip=src, dst_ip="10.0.0.2", src_port=40000)
    reference = OuterHeaders(**MACS, src_ip=b"\x0a\x00\x00\x01", dst_ip=b"\x0a\x00\x00\x02", src_port=40000)
    assert outer == reference
    frame = encapsulate(b"\x00" * 14, outer)
    assert frame == encapsulate(b"\x00" * 14, reference) and decapsulate(frame).inner_frame == b"\x00" * 14
    assert Ipv4Repr(src=src, dst="10.0.0.2", protocol=PROTO_UDP, payload_len=0).src == b"\x0a\x00\x00\x01"


@pytest.mark.parametrize("field, value, error, message", [
    ("src_ip", 167772161, TypeError, "src_ip: expected an IPv4 address"),
    ("src_ip", IPv6Address("::1"), TypeError, "src_ip: expected an IPv4 address"),
    ("dst_ip", "10.0.0.256", ValueError, "dst_ip: '10.0.0.256' is not an IPv4 address"),
    ("dst_ip", b"\x0a\x00\x00", ValueError, "dst_ip: an IPv4 address is 4 bytes, got 3"),
    ("src_mac", "02:00:00:00:00", ValueError, "src_mac: '02:00:00:00:00' is not a MAC address"),
    ("dst_mac", None, TypeError, "dst_mac: expected a MAC address"),
    ("src_port", 65536, ValueError, "src_port: 65536 is outside 0..65535"),
    ("vni", 2**24, ValueError, "vni: 16777216 is outside 0..16777215"),
    ("ttl", "64", TypeError, "ttl: expected an integer"),
])
def test_outer_headers_refuse_bad_fields_naming_them(field, value, error, message):
    arguments = dict(**MACS, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1)
    arguments[field] = value
    with pytest.raises(error, match="^" + message):
        OuterHeaders(**arguments)


def test_header_reprs_check_their_addresses():
    assert ArpRepr(OP_REQUEST, "02:00:00:00:00:01", "10.0.0.1", b"\x00" * 6, IPv4Address("10.0.0.2")).build() \
        == ArpRepr(OP_REQUEST, b"\x02\x00\x00\x00\x00\x01", b"\x0a\x00\x00\x01", b"\x00" * 6,
                   b"\x0a\x00\x00\x02").build()
    assert EthernetRepr("ff:ff:ff:ff:ff:ff", b"\x02" * 6, 0x0806).dst == b"\xff" * 6
    with pytest.raises(TypeError, match="^tpa: "):
        ArpRepr(OP_REQUEST, b"\x02" * 6, "10.0.0.1", b"\x00" * 6, 5)
    with pytest.raises(ValueError, match="^src: "):
        EthernetRepr(b"\x02" * 6, b"\x02" * 5, 0x0800)
    with pytest.raises(ValueError, match="^dst: "):
        Ipv4Repr(src="10.0.0.1", dst="nowhere", protocol=PROTO_UDP, payload_len=0)
    udp = UdpRepr(1, 2, 8)
    assert udp.build(b"", "10.0.0.1", IPv4Address("10.0.0.2")) == udp.build(b"", b"\n\x00\x00\x01", b"\n\x00\x00\x02")
    with pytest.raises(TypeError, match="^dst_ip: "):
        udp.build(b"", "10.0.0.1", 3.5)
