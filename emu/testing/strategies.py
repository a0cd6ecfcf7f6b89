"""Hypothesis strategies for headers and whole frames (public API).

Property tests of encap/decap need realistic inputs that still reach every
corner a parser has: options, fragments, VLAN tags, odd VXLAN flags, quoted
datagrams inside ICMP errors. These strategies produce `emu.wire` Repr values
and ready-to-send frames (`bytes`, valid checksums) built from them, so a
test can say `@given(vxlan_frames())` instead of hand-building packets.

Every strategy is made of `st.builds`/`st.composite` over small pieces, so a
failing example shrinks towards short payloads, no options, no tag and the
usual flag values.

Example::

    from hypothesis import given
    from emu.testing.strategies import ethernet_frames, vxlan_outer_headers
    from emu.wire.vxlan import decapsulate, encapsulate

    @given(ethernet_frames(), vxlan_outer_headers())
    def test_decap_inverts_encap(inner, outer):
        assert decapsulate(encapsulate(inner, outer)).inner_frame == inner
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from emu.wire.addr import BROADCAST_MAC, ZERO_MAC
from emu.wire.arp import HTYPE_ETHERNET, OP_REPLY, OP_REQUEST, PTYPE_IPV4, ArpRepr
from emu.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_VLAN, EthernetRepr
from emu.wire.icmp import (FRAGMENTATION_NEEDED, IcmpRepr)
from emu.wire.ipv4 import MAX_HEADER_LEN, MIN_HEADER_LEN, PROTO_ICMP, PROTO_UDP, Ipv4Repr
from emu.wire.udp import HEADER_LEN as UDP_HEADER_LEN
from emu.wire.udp import UdpRepr
from emu.wire.vxlan import FLAG_I, FLANNEL_PORT, IANA_PORT, OuterHeaders, VxlanRepr

__all__ = [
    "macs", "unicast_macs", "ipv4_addresses", "ethernet_reprs", "arp_reprs",
    "ipv4_options", "ipv4_reprs", "icmp_reprs", "udp_reprs", "vxlan_reprs",
    "vxlan_outer_headers", "arp_frames", "ipv4_icmp_frames", "ipv4_udp_frames",
    "ethernet_frames", "vxlan_frames", "scenarios", "clusters", "scenario_yaml",
]

MAX_IPV4_TOTAL_LEN = 0xFFFF
MAX_OPTIONS_LEN = MAX_HEADER_LEN - MIN_HEADER_LEN
# Largest payload the frame strategies draw: keeps examples fast, and still
# larger than any header we parse, so every length path is exercised.
_MAX_FRAME_PAYLOAD = 256

_u8 = st.integers(0, 0xFF)
_u16 = st.integers(0, 0xFFFF)
_u24 = st.integers(0, 0xFFFFFF)


def _usually(value: int, anything: SearchStrategy[int]) -> SearchStrategy[int]:
    """`value` first (what failing examples shrink to), else any of `anything`."""
    return st.one_of(st.just(value), anything)


def macs() -> SearchStrategy[bytes]:
    """Any 6-byte MAC address, group addresses (broadcast too) included.

    Example::

        @given(macs())
        def test_mac_text(mac): assert mac_from_str(mac_to_str(mac)) == mac
    """
    return st.one_of(st.binary(min_size=6, max_size=6), st.just(BROADCAST_MAC))


def unicast_macs() -> SearchStrategy[bytes]:
    """6-byte MAC addresses with the I/G bit clear: valid frame sources.

    Example::

        @given(unicast_macs())
        def test_unicast(mac): assert not is_multicast_mac(mac)
    """
    return st.binary(min_size=6, max_size=6).map(lambda mac: bytes([mac[0] & 0xFE]) + mac[1:])


def ipv4_addresses() -> SearchStrategy[bytes]:
    """Any 4-byte IPv4 address (0.0.0.0 and 255.255.255.255 included).

    Example::

        @given(ipv4_addresses())
        def test_ip_text(ip): assert ip_from_str(ip_to_str(ip)) == ip
    """
    return st.binary(min_size=4, max_size=4)


# Tag types: 802.1Q, 802.1ad (QinQ) and the pre-standard QinQ types. Other
# tools (scapy, dpkt, Wireshark) parse every one of them as a VLAN tag, so a
# payload type among them would make the frame mean something else.
TAG_ETHERTYPES = frozenset({ETHERTYPE_VLAN, 0x88A8, 0x9100, 0x9200})


def _ethertypes() -> SearchStrategy[int]:
    """Ethernet II types (>= 0x0600), except the VLAN tag types."""
    return st.one_of(st.sampled_from([ETHERTYPE_IPV4, ETHERTYPE_ARP]),
                     st.integers(0x0600, 0xFFFF).filter(lambda t: t not in TAG_ETHERTYPES))


def _vlan_tcis() -> SearchStrategy[int | None]:
    """None (untagged) or any 16-bit TCI: priority, DEI and VLAN id."""
    return st.one_of(st.none(), _u16)


def ethernet_reprs(ethertype: int | None = None) -> SearchStrategy[EthernetRepr]:
    """Ethernet II headers, untagged or with one 802.1Q tag.

    `ethertype` fixes the type; by default any Ethernet II type but the VLAN
    tag types (0x8100, 0x88a8, 0x9100, 0x9200).

    Example::

        @given(ethernet_reprs())
        def test_eth(h): assert EthernetRepr.parse(h.build()) == h
    """
    types = _ethertypes() if ethertype is None else st.just(ethertype)
    return st.builds(EthernetRepr, dst=macs(), src=unicast_macs(), ethertype=types,
                     vlan_tci=_vlan_tcis())


def arp_reprs() -> SearchStrategy[ArpRepr]:
    """Ethernet/IPv4 ARP packets: mostly requests and replies, any opcode too.

    Hardware and protocol types are usually Ethernet/IPv4 but may be anything
    (their lengths stay 6 and 4, the only ones `ArpRepr` represents).

    Example::

        @given(arp_reprs())
        def test_arp(a): assert ArpRepr.parse(a.build()) == a
    """
    return st.builds(
        ArpRepr,
        op=st.one_of(st.sampled_from([OP_REQUEST, OP_REPLY]), _u16),
        sha=unicast_macs(), spa=ipv4_addresses(),
        tha=st.one_of(st.just(ZERO_MAC), macs()), tpa=ipv4_addresses(),
        htype=_usually(HTYPE_ETHERNET, _u16), ptype=_usually(PTYPE_IPV4, _u16),
    )


# Options with a fixed layout (RFC 791, RFC 2113) plus the RFC 4727
# experimental types, whose body is free-form.
_EXPERIMENTAL_OPTION_TYPES = (0x1E, 0x5E, 0x9E, 0xDE)
_ROUTE_OPTION_TYPES = (0x07, 0x83, 0x89)  # record route, loose and strict source route


@st.composite
def _route_option(draw: st.DrawFn) -> bytes:
    hops = draw(st.integers(1, 9))
    pointer = 4 + 4 * draw(st.integers(0, hops))
    routes = draw(st.binary(min_size=4 * hops, max_size=4 * hops))
    return bytes([draw(st.sampled_from(_ROUTE_OPTION_TYPES)), 3 + 4 * hops, pointer]) + routes


@st.composite
def _experimental_option(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=MAX_OPTIONS_LEN - 2))
    return bytes([draw(st.sampled_from(_EXPERIMENTAL_OPTION_TYPES)), 2 + len(body)]) + body


def _one_option() -> SearchStrategy[bytes]:
    return st.one_of(
        st.just(b"\x01"),                                              # NOP
        _u16.map(lambda value: b"\x94\x04" + value.to_bytes(2, "big")),  # router alert
        _route_option(),
        _experimental_option(),
    )


@st.composite
def ipv4_options(draw: st.DrawFn, max_len: int = MAX_OPTIONS_LEN) -> bytes:
    """Well-formed IPv4 option bytes, 0..`max_len` long in 4-byte steps.

    A list of NOP, router-alert, record/source-route and experimental
    options, then end-of-list (0) padding up to the next 4-byte boundary,
    exactly the layout a sender puts on the wire.

    Example::

        @given(ipv4_options())
        def test_opts(o): assert len(o) % 4 == 0 and len(o) <= 40
    """
    options = b""
    for option in draw(st.lists(_one_option(), max_size=8)):
        if len(options) + len(option) > max_len:
            break
        options += option
    return options + b"\x00" * (-len(options) % 4)


@st.composite
def ipv4_reprs(draw: st.DrawFn, protocol: int | None = None, payload_len: int | None = None,
               fragments: bool = True) -> Ipv4Repr:
    """IPv4 headers: any TOS, ident, TTL (0..255), flags, options (0..40 bytes).

    `protocol` and `payload_len` fix those fields (default: any protocol, any
    length the 16-bit total length allows). With `fragments=False` the MF flag
    and fragment offset are 0, as for a whole datagram whose payload can be
    parsed as the next header.

    Example::

        @given(ipv4_reprs(protocol=17, payload_len=8))
        def test_ip(h): assert Ipv4Repr.parse(h.build(bytes(8))) == h
    """
    room = MAX_OPTIONS_LEN if payload_len is None else min(
        MAX_OPTIONS_LEN, MAX_IPV4_TOTAL_LEN - MIN_HEADER_LEN - payload_len)
    if room < 0:
        raise ValueError(f"payload_len={payload_len} does not fit in an IPv4 datagram")
    options = draw(ipv4_options(max_len=room - room % 4))
    if payload_len is None:
        payload_len = draw(st.integers(0, MAX_IPV4_TOTAL_LEN - MIN_HEADER_LEN - len(options)))
    mf, frag_offset = False, 0
    if fragments:
        mf = draw(st.booleans())
        frag_offset = draw(st.integers(0, 0x1FFF))
    return Ipv4Repr(
        src=draw(ipv4_addresses()), dst=draw(ipv4_addresses()),
        protocol=draw(_u8) if protocol is None else protocol,
        payload_len=payload_len,
        ttl=draw(_usually(64, _u8)), tos=draw(_usually(0, _u8)), ident=draw(_u16),
        df=draw(st.booleans()), mf=mf, frag_offset=frag_offset,
        reserved_flag=draw(st.booleans()), options=options,
    )


@st.composite
def _quoted_datagrams(draw: st.DrawFn) -> bytes:
    """The start of an offending datagram, as an ICMP error quotes it.

    Its header claims the original length; at least the header and the
    8 bytes RFC 792 asks for are quoted, up to the whole datagram.
    """
    payload = draw(st.binary(min_size=8, max_size=_MAX_FRAME_PAYLOAD))
    header = draw(ipv4_reprs(payload_len=len(payload), fragments=False))
    quoted_len = draw(st.integers(8, len(payload)))
    return header.header() + payload[:quoted_len]


def icmp_reprs() -> SearchStrategy[IcmpRepr]:
    """ICMP echo request/reply, destination unreachable and time exceeded.

    Unreachables cover codes 0..15; fragmentation-needed (code 4) carries a
    next-hop MTU (RFC 1191). Errors quote an IPv4 datagram.

    Example::

        @given(icmp_reprs())
        def test_icmp(m): assert IcmpRepr.parse(m.build()) == m
    """
    data = st.binary(max_size=_MAX_FRAME_PAYLOAD)
    return st.one_of(
        st.builds(IcmpRepr.echo_request, _u16, _u16, data),
        st.builds(IcmpRepr.echo_reply, _u16, _u16, data),
        st.builds(IcmpRepr.dest_unreachable, st.just(FRAGMENTATION_NEEDED),
                  _quoted_datagrams(), st.integers(68, 0xFFFF)),
        st.builds(IcmpRepr.dest_unreachable, st.integers(0, 15).filter(
            lambda code: code != FRAGMENTATION_NEEDED), _quoted_datagrams()),
        st.builds(IcmpRepr.time_exceeded, st.integers(0, 1), _quoted_datagrams()),
    )


def udp_reprs(payload_len: int | None = None) -> SearchStrategy[UdpRepr]:
    """UDP headers: any ports, any payload length a datagram can carry.

    Example::

        @given(udp_reprs(payload_len=4))
        def test_udp(u): assert UdpRepr.parse(u.build(b"abcd", IP1, IP2)) == u
    """
    lengths = (st.integers(0, MAX_IPV4_TOTAL_LEN - MIN_HEADER_LEN - UDP_HEADER_LEN)
               if payload_len is None else st.just(payload_len))
    return st.builds(UdpRepr, src_port=_u16, dst_port=_u16, payload_len=lengths)


def vxlan_reprs() -> SearchStrategy[VxlanRepr]:
    """VXLAN headers: any 24-bit VNI; flags and reserved bits usually as RFC 7348 says.

    Example::

        @given(vxlan_reprs())
        def test_vxlan(v): assert VxlanRepr.parse(v.build()) == v
    """
    return st.builds(VxlanRepr, vni=_u24, flags=_usually(FLAG_I, _u8),
                     reserved1=_usually(0, _u24), reserved2=_usually(0, _u8))


def _vxlan_ports() -> SearchStrategy[int]:
    return st.one_of(st.sampled_from([FLANNEL_PORT, IANA_PORT]), _u16)


def vxlan_outer_headers() -> SearchStrategy[OuterHeaders]:
    """What a VTEP may choose for `emu.wire.vxlan.encapsulate`'s outer headers.

    Example::

        @given(ethernet_frames(), vxlan_outer_headers())
        def test(inner, outer):
            assert decapsulate(encapsulate(inner, outer)).inner_frame == inner
    """
    return st.builds(
        OuterHeaders, src_mac=unicast_macs(), dst_mac=unicast_macs(),
        src_ip=ipv4_addresses(), dst_ip=ipv4_addresses(), src_port=_u16,
        dst_port=_vxlan_ports(), vni=_u24, ttl=_usually(64, _u8), tos=_usually(0, _u8),
        ident=_u16, df=st.booleans(), udp_checksum=st.booleans().map(lambda off: not off),
    )


@st.composite
def arp_frames(draw: st.DrawFn) -> bytes:
    """Untagged Ethernet frames carrying an ARP packet (source MAC = sender MAC).

    Example::

        @given(arp_frames())
        def test(f): assert EthernetFrame(f).ethertype == ETHERTYPE_ARP
    """
    arp = draw(arp_reprs())
    return EthernetRepr(draw(macs()), arp.sha, ETHERTYPE_ARP).build(arp.build())


def _ipv4_frame(draw: st.DrawFn, protocol: int, segment: bytes) -> bytes:
    ip = draw(ipv4_reprs(protocol=protocol, payload_len=len(segment), fragments=False))
    return EthernetRepr(draw(macs()), draw(unicast_macs()), ETHERTYPE_IPV4).build(
        ip.build(segment))


@st.composite
def ipv4_icmp_frames(draw: st.DrawFn) -> bytes:
    """Untagged Ethernet/IPv4/ICMP frames, checksums valid.

    Example::

        @given(ipv4_icmp_frames())
        def test(f): assert IcmpMessage(Ipv4Packet(f[14:]).payload).checksum_ok()
    """
    return _ipv4_frame(draw, PROTO_ICMP, draw(icmp_reprs()).build())


def _udp_in_ipv4(draw: st.DrawFn, payload: bytes, dst_ports: SearchStrategy[int]) -> bytes:
    """A whole IPv4/UDP datagram; its UDP checksum is valid or 0 (none)."""
    ip = draw(ipv4_reprs(protocol=PROTO_UDP, payload_len=UDP_HEADER_LEN + len(payload),
                         fragments=False))
    udp = UdpRepr(draw(_u16), draw(dst_ports), len(payload))
    return ip.build(udp.build(payload, ip.src, ip.dst, with_checksum=not draw(st.booleans())))


@st.composite
def ipv4_udp_frames(draw: st.DrawFn) -> bytes:
    """Untagged Ethernet/IPv4/UDP frames; the UDP checksum is valid or 0 (none).

    Example::

        @given(ipv4_udp_frames())
        def test(f): assert UdpDatagram(Ipv4Packet(f[14:]).payload)
    """
    payload = draw(st.binary(max_size=_MAX_FRAME_PAYLOAD))
    return EthernetRepr(draw(macs()), draw(unicast_macs()), ETHERTYPE_IPV4).build(
        _udp_in_ipv4(draw, payload, _u16))


@st.composite
def ethernet_frames(draw: st.DrawFn) -> bytes:
    """An ARP, IPv4/ICMP or IPv4/UDP frame, optionally with one 802.1Q tag.

    Example::

        @given(ethernet_frames())
        def test(f): assert EthernetFrame(f).ethertype in (0x0800, 0x0806)
    """
    frame = draw(st.one_of(arp_frames(), ipv4_icmp_frames(), ipv4_udp_frames()))
    tci = draw(_vlan_tcis())
    if tci is None:
        return frame
    return frame[:12] + ETHERTYPE_VLAN.to_bytes(2, "big") + tci.to_bytes(2, "big") + frame[12:]


@st.composite
def vxlan_frames(draw: st.DrawFn, inner: SearchStrategy[bytes] | None = None) -> bytes:
    """Ethernet/IPv4/UDP/VXLAN frames around an inner frame drawn from `inner`.

    `inner` defaults to `ethernet_frames()`. The outer IPv4 header may carry
    options, the UDP checksum is valid or 0, the VXLAN header any of
    `vxlan_reprs()`: all frames `emu.wire.vxlan.decapsulate` must accept.

    Example::

        @given(vxlan_frames(inner=st.binary(min_size=14)))
        def test(f): assert decapsulate(f).inner_frame
    """
    inner_frame = draw(ethernet_frames() if inner is None else inner)
    vxlan = draw(vxlan_reprs()).build() + inner_frame
    outer = EthernetRepr(draw(unicast_macs()), draw(unicast_macs()), ETHERTYPE_IPV4)
    return outer.build(_udp_in_ipv4(draw, vxlan, _vxlan_ports()))


# Whole scenarios (random topologies) live in their own module; they are
# part of this public namespace.
from emu.testing.topologies import clusters, scenario_yaml, scenarios  # noqa: E402
