"""emu.wire against two independent implementations: scapy and dpkt.

For every header: the bytes we emit equal the bytes scapy builds from the same
fields (scapy computes its own checksums), scapy and dpkt read our bytes back
as the same field values, and our parsers read scapy's bytes as the same Repr.

Known differences, settled against the RFCs and kept out of the comparisons
on purpose (each one is asserted where it matters):
- VXLAN: scapy reads flag 0x04 as VXLAN-GPE "next protocol" and 0x80 as
  VXLAN-GBP "group policy", re-labelling the 24 reserved bits; with both set
  its header grows to 11 bytes. RFC 7348 fixes 8 bytes, so such flags are
  compared through scapy's field split and the 0x84 combination not at all.
- dpkt has no VXLAN layer: VXLAN is checked against scapy only.
"""

from __future__ import annotations

import dpkt
from hypothesis import assume, given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from emu.testing.strategies import (arp_reprs, ethernet_reprs, icmp_reprs, ipv4_reprs,
                                    udp_reprs, vxlan_outer_headers, vxlan_reprs)
from emu.wire.addr import ip_to_str, mac_from_str, mac_to_str
from emu.wire.arp import HTYPE_ETHERNET, PTYPE_IPV4, ArpRepr
from emu.wire.ethernet import ETHERTYPE_IPV4, EthernetRepr
from emu.wire.icmp import DEST_UNREACHABLE, ECHO_REPLY, ECHO_REQUEST, TIME_EXCEEDED, IcmpRepr
from emu.wire.ipv4 import PROTO_UDP, Ipv4Repr
from emu.wire.udp import UdpDatagram, UdpRepr
from emu.wire.vxlan import FLAG_I, VxlanRepr, decapsulate, encapsulate

payloads = st.binary(max_size=64)
VXLAN_GPE_NEXT_PROTOCOL = 0x04
VXLAN_GBP = 0x80


def ip_str(ip: bytes) -> str:
    return ip_to_str(ip)


# --- scapy builders: the same fields, scapy's own encoding and checksums ---

def scapy_ipv4(ip: Ipv4Repr) -> IP:
    flags = (4 if ip.reserved_flag else 0) | (2 if ip.df else 0) | (1 if ip.mf else 0)
    return IP(src=ip_str(ip.src), dst=ip_str(ip.dst), proto=ip.protocol, ttl=ip.ttl,
              tos=ip.tos, id=ip.ident, flags=flags, frag=ip.frag_offset, options=ip.options)


def scapy_icmp(msg: IcmpRepr) -> ICMP:
    if msg.type in (ECHO_REQUEST, ECHO_REPLY):
        header = ICMP(type=msg.type, code=msg.code, id=msg.echo_id, seq=msg.echo_seq)
    elif msg.type == DEST_UNREACHABLE:
        header = ICMP(type=msg.type, code=msg.code, nexthopmtu=msg.next_hop_mtu)
    else:
        header = ICMP(type=msg.type, code=msg.code)
    return header / Raw(msg.payload)


def scapy_vxlan(vx: VxlanRepr) -> VXLAN:
    """scapy splits the 24 reserved bits by flag (GPE, GBP); give it the same bits."""
    if vx.flags & VXLAN_GPE_NEXT_PROTOCOL:
        split = {"reserved0": vx.reserved1 >> 8, "NextProtocol": vx.reserved1 & 0xFF}
    elif vx.flags & VXLAN_GBP:
        split = {"gpflags": vx.reserved1 >> 16, "gpid": vx.reserved1 & 0xFFFF}
    else:
        split = {"reserved1": vx.reserved1}
    return VXLAN(flags=vx.flags, vni=vx.vni, reserved2=vx.reserved2, **split)


def scapy_vxlan_reserved1(layer: VXLAN) -> int:
    if layer.flags.value & VXLAN_GPE_NEXT_PROTOCOL:
        return (layer.reserved0 << 8) | layer.NextProtocol
    if layer.flags.value & VXLAN_GBP:
        return (layer.gpflags.value << 16) | layer.gpid
    return layer.reserved1


# --- ARP ---

def scapy_arp_addresses(arp: ArpRepr) -> dict:
    """scapy types the address fields by htype/ptype (RFC 826 leaves their
    format to the pair): text for Ethernet/IPv4, raw bytes otherwise."""
    ethernet, ipv4 = arp.htype == HTYPE_ETHERNET, arp.ptype == PTYPE_IPV4
    return {
        "hwsrc": mac_to_str(arp.sha) if ethernet else arp.sha,
        "hwdst": mac_to_str(arp.tha) if ethernet else arp.tha,
        "psrc": ip_str(arp.spa) if ipv4 else arp.spa,
        "pdst": ip_str(arp.tpa) if ipv4 else arp.tpa,
    }


@given(arp_reprs())
def test_arp_matches_scapy_and_dpkt(arp: ArpRepr) -> None:
    ours = arp.build()
    addresses = scapy_arp_addresses(arp)
    theirs = bytes(ARP(hwtype=arp.htype, ptype=arp.ptype, hwlen=6, plen=4, op=arp.op,
                       **addresses))
    assert ours == theirs
    assert ArpRepr.parse(theirs) == arp

    parsed = ARP(ours)
    assert (parsed.hwtype, parsed.ptype, parsed.hwlen, parsed.plen, parsed.op) == (
        arp.htype, arp.ptype, 6, 4, arp.op)
    assert {name: getattr(parsed, name) for name in addresses} == addresses

    d = dpkt.arp.ARP(ours)
    assert (d.hrd, d.pro, d.hln, d.pln, d.op) == (arp.htype, arp.ptype, 6, 4, arp.op)
    assert (d.sha, d.spa, d.tha, d.tpa) == (arp.sha, arp.spa, arp.tha, arp.tpa)


# --- Ethernet, untagged and 802.1Q ---

@given(ethernet_reprs(), payloads)
def test_ethernet_matches_scapy_and_dpkt(eth: EthernetRepr, payload: bytes) -> None:
    ours = eth.build(payload)
    header = Ether(dst=mac_to_str(eth.dst), src=mac_to_str(eth.src))
    if eth.vlan_tci is None:
        theirs = header / Raw(payload)
        theirs.type = eth.ethertype
    else:
        theirs = header / Dot1Q(prio=eth.vlan_tci >> 13, dei=(eth.vlan_tci >> 12) & 1,
                                vlan=eth.vlan_tci & 0xFFF, type=eth.ethertype) / Raw(payload)
    assert ours == bytes(theirs)
    assert EthernetRepr.parse(bytes(theirs)) == eth

    parsed = Ether(ours)
    assert (mac_from_str(parsed.dst), mac_from_str(parsed.src)) == (eth.dst, eth.src)
    if eth.vlan_tci is None:
        assert parsed.type == eth.ethertype
    else:
        tag = parsed[Dot1Q]
        assert (tag.prio << 13) | (tag.dei << 12) | tag.vlan == eth.vlan_tci
        assert tag.type == eth.ethertype

    d = dpkt.ethernet.Ethernet(ours)
    assert (d.dst, d.src) == (eth.dst, eth.src)
    if eth.vlan_tci is None:
        assert d.type == eth.ethertype
    else:
        tag = d.vlan_tags[0]  # dpkt keeps d.type == 0x8100 and puts the real type in the tag
        assert (tag.pri << 13) | (tag.cfi << 12) | tag.id == eth.vlan_tci
        assert tag.type == eth.ethertype


# --- IPv4, options and fragments included ---

@st.composite
def ipv4_with_payload(draw: st.DrawFn) -> tuple[Ipv4Repr, bytes]:
    payload = draw(payloads)
    return draw(ipv4_reprs(payload_len=len(payload))), payload


@given(ipv4_with_payload())
def test_ipv4_matches_scapy_and_dpkt(case: tuple[Ipv4Repr, bytes]) -> None:
    ip, payload = case
    ours = ip.build(payload)
    theirs = bytes(scapy_ipv4(ip) / Raw(payload))
    assert ours == theirs
    assert Ipv4Repr.parse(theirs) == ip

    parsed = IP(ours)
    assert (parsed.version, parsed.ihl * 4, parsed.len) == (4, ip.header_len, len(ours))
    assert (parsed.tos, parsed.id, parsed.ttl, parsed.proto) == (ip.tos, ip.ident, ip.ttl, ip.protocol)
    assert (parsed.src, parsed.dst) == (ip_str(ip.src), ip_str(ip.dst))
    assert parsed.flags.value == (ip.reserved_flag << 2) | (ip.df << 1) | ip.mf
    assert parsed.frag == ip.frag_offset
    assert b"".join(bytes(option) for option in parsed.options) == ip.options
    assert IP(bytes(parsed)).chksum == parsed.chksum == int.from_bytes(ours[10:12], "big")

    d = dpkt.ip.IP(ours)
    assert (d.v, d.hl * 4, d.len, d.tos, d.id, d.ttl, d.p) == (
        4, ip.header_len, len(ours), ip.tos, ip.ident, ip.ttl, ip.protocol)
    assert (d.src, d.dst, d.opts) == (ip.src, ip.dst, ip.options)
    assert (d.rf, d.df, d.mf, d.offset) == (ip.reserved_flag, ip.df, ip.mf, ip.frag_offset)
    assert d.sum == int.from_bytes(ours[10:12], "big")
    assert dpkt.in_cksum(ours[:ip.header_len]) == 0


# --- ICMP, each kind ---

@given(icmp_reprs())
def test_icmp_matches_scapy_and_dpkt(msg: IcmpRepr) -> None:
    ours = msg.build()
    theirs = bytes(scapy_icmp(msg))
    assert ours == theirs
    assert IcmpRepr.parse(theirs) == msg

    parsed = ICMP(ours)
    assert (parsed.type, parsed.code) == (msg.type, msg.code)
    assert parsed.chksum == int.from_bytes(ours[2:4], "big")
    if msg.type in (ECHO_REQUEST, ECHO_REPLY):
        assert (parsed.id, parsed.seq) == (msg.echo_id, msg.echo_seq)
        assert bytes(parsed.payload) == msg.payload
    elif msg.type == DEST_UNREACHABLE:
        assert (parsed.reserved, parsed.length, parsed.nexthopmtu) == (0, 0, msg.next_hop_mtu)
    else:
        assert msg.type == TIME_EXCEEDED
        assert (parsed.reserved, parsed.length, parsed.unused) == (0, 0, 0)
    if msg.type in (DEST_UNREACHABLE, TIME_EXCEEDED):
        quoted = parsed.payload  # scapy's IPerror view of the quoted datagram
        assert (quoted.src, quoted.dst) == (ip_str(msg.payload[12:16]), ip_str(msg.payload[16:20]))
        assert quoted.len == int.from_bytes(msg.payload[2:4], "big")

    d = dpkt.icmp.ICMP(ours)
    assert (d.type, d.code, d.sum) == (msg.type, msg.code, int.from_bytes(ours[2:4], "big"))
    if msg.type in (ECHO_REQUEST, ECHO_REPLY):
        assert (d.data.id, d.data.seq, d.data.data) == (msg.echo_id, msg.echo_seq, msg.payload)
    elif msg.type == DEST_UNREACHABLE:
        assert (d.data.pad, d.data.mtu) == (0, msg.next_hop_mtu)
    else:
        assert d.data.pad == 0
    assert dpkt.in_cksum(ours) == 0


# --- UDP, checksum over the pseudo-header ---

@st.composite
def udp_cases(draw: st.DrawFn) -> tuple[UdpRepr, bytes, Ipv4Repr, bool]:
    payload = draw(payloads)
    udp = draw(udp_reprs(payload_len=len(payload)))
    ip = draw(ipv4_reprs(protocol=PROTO_UDP, payload_len=8 + len(payload), fragments=False))
    return udp, payload, ip, draw(st.booleans())


@given(udp_cases())
def test_udp_matches_scapy_and_dpkt(case: tuple[UdpRepr, bytes, Ipv4Repr, bool]) -> None:
    udp, payload, ip, with_checksum = case
    ours = udp.build(payload, ip.src, ip.dst, with_checksum=with_checksum)
    header = UDP(sport=udp.src_port, dport=udp.dst_port)
    if not with_checksum:
        header.chksum = 0
    theirs = bytes(scapy_ipv4(ip) / header / Raw(payload))[ip.header_len:]
    assert ours == theirs
    assert UdpRepr.parse(theirs) == udp
    checksum = int.from_bytes(ours[6:8], "big")
    assert checksum != 0 if with_checksum else checksum == 0  # RFC 768: 0 means none
    assert UdpDatagram(ours).checksum_ok(ip.src, ip.dst)

    packet = ip.build(ours)
    parsed = IP(packet)[UDP]
    assert (parsed.sport, parsed.dport, parsed.len, parsed.chksum) == (
        udp.src_port, udp.dst_port, 8 + len(payload), checksum)
    assert parsed.payload.original == payload

    d = dpkt.ip.IP(packet)
    segment = d.data if isinstance(d.data, dpkt.udp.UDP) else dpkt.udp.UDP(d.data)
    assert (segment.sport, segment.dport, segment.ulen, segment.sum) == (
        udp.src_port, udp.dst_port, 8 + len(payload), checksum)
    if with_checksum:
        pseudo = ip.src + ip.dst + bytes([0, PROTO_UDP]) + len(ours).to_bytes(2, "big")
        assert dpkt.in_cksum(pseudo + ours) == 0


def test_udp_computed_zero_checksum_is_sent_as_ffff() -> None:
    """RFC 768: a computed 0 is sent as all ones; scapy maps it the same way."""
    src, dst = bytes(4), bytes(4)
    # Pseudo-header protocol 0x0011 + length 0x000a, twice counted (pseudo-header
    # and UDP header) = 0x0025; a payload word of 0xffda makes the one's-complement
    # sum 0xffff, whose complement is 0.
    payload = b"\xff\xda"
    ours = UdpRepr(0, 0, 2).build(payload, src, dst)
    assert ours[6:8] == b"\xff\xff"
    assert bytes(IP(src="0.0.0.0", dst="0.0.0.0") / UDP(sport=0, dport=0) / Raw(payload))[20:] == ours


# --- VXLAN ---

@given(vxlan_reprs())
def test_vxlan_header_matches_scapy(vx: VxlanRepr) -> None:
    assume(vx.flags & (VXLAN_GPE_NEXT_PROTOCOL | VXLAN_GBP)
           != VXLAN_GPE_NEXT_PROTOCOL | VXLAN_GBP)
    ours = vx.build()
    theirs = bytes(scapy_vxlan(vx))
    assert ours == theirs
    assert VxlanRepr.parse(theirs) == vx
    parsed = VXLAN(ours)
    assert (parsed.flags.value, parsed.vni, parsed.reserved2) == (vx.flags, vx.vni, vx.reserved2)
    assert scapy_vxlan_reserved1(parsed) == vx.reserved1


def test_scapy_vxlan_with_gpe_and_gbp_flags_is_not_rfc7348() -> None:
    """The one flag combination we do not compare: scapy emits 11 bytes, RFC 7348 says 8."""
    vx = VxlanRepr(vni=1, flags=FLAG_I | VXLAN_GPE_NEXT_PROTOCOL | VXLAN_GBP)
    assert len(vx.build()) == 8
    assert len(bytes(scapy_vxlan(vx))) == 11


@given(vxlan_outer_headers(), st.binary(min_size=14, max_size=100))
def test_encapsulate_matches_scapy_and_dpkt(outer, inner: bytes) -> None:
    ours = encapsulate(inner, outer)
    udp = UDP(sport=outer.src_port, dport=outer.dst_port)
    if not outer.udp_checksum:
        udp.chksum = 0
    theirs = bytes(
        Ether(dst=mac_to_str(outer.dst_mac), src=mac_to_str(outer.src_mac), type=ETHERTYPE_IPV4)
        / IP(src=ip_str(outer.src_ip), dst=ip_str(outer.dst_ip), ttl=outer.ttl, tos=outer.tos,
             id=outer.ident, flags=2 if outer.df else 0)
        / udp / VXLAN(flags=FLAG_I, vni=outer.vni) / Raw(inner))
    assert ours == theirs

    result = decapsulate(theirs)
    assert result.inner_frame == inner
    assert (result.vxlan.vni, result.udp.src_port, result.udp.dst_port) == (
        outer.vni, outer.src_port, outer.dst_port)

    parsed = Ether(ours)
    assert parsed[IP].ttl == outer.ttl and parsed[IP].flags.DF == outer.df
    assert IP(bytes(parsed[IP])).chksum == parsed[IP].chksum  # scapy agrees it is valid
    header = VXLAN(parsed[UDP].payload.original)
    assert (header.flags.value, header.vni) == (FLAG_I, outer.vni)
    assert header.payload.original == inner

    d = dpkt.ethernet.Ethernet(ours)
    ip = d.data
    segment = ip.data if isinstance(ip.data, dpkt.udp.UDP) else dpkt.udp.UDP(ip.data)
    assert (ip.src, ip.dst, ip.ttl, ip.df, ip.id) == (
        outer.src_ip, outer.dst_ip, outer.ttl, outer.df, outer.ident)
    assert (segment.sport, segment.dport, segment.ulen) == (
        outer.src_port, outer.dst_port, 8 + 8 + len(inner))
    assert segment.data[8:] == inner
