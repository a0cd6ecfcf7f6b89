"""Round trips, checksum arithmetic and known kernel frames for emu.wire.

parse(emit(x)) == x for every Repr; VXLAN decapsulation undoes encapsulation
for any inner frame; the fast checksum code agrees with a naive RFC 1071
word-by-word sum written here; real frames from the kernel captures parse to
the fields their README states.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dpkt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from emu.testing.strategies import (arp_reprs, ethernet_frames, ethernet_reprs, icmp_reprs,
                                    ipv4_reprs, udp_reprs, vxlan_frames,
                                    vxlan_outer_headers, vxlan_reprs)
from emu.wire import WireError
from emu.wire.addr import ip_from_str, mac_from_str
from emu.wire.arp import OP_REPLY, OP_REQUEST, ArpRepr
from emu.wire.checksum import (incremental_update, internet_checksum, ones_sum, pseudo_header_sum,
                               sum_verifies)
from emu.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetFrame, EthernetRepr
from emu.wire.icmp import ECHO_REPLY, ECHO_REQUEST, IcmpMessage, IcmpRepr
from emu.wire.ipv4 import PROTO_ICMP, PROTO_UDP, Ipv4Packet, Ipv4Repr, decrement_ttl, ipv4_header
from emu.wire.udp import UdpDatagram, UdpRepr, udp_checksum
from emu.wire.vxlan import FLAG_I, FLANNEL_PORT, VxlanHeader, VxlanRepr, decapsulate, encapsulate

CAPTURES = Path(__file__).resolve().parent / "kernel-captures" / "vxlan-cross-node"
ANY_IP = st.binary(min_size=4, max_size=4)


def reference_checksum(data: bytes) -> int:
    """RFC 1071 section 4.1, literally: add 16-bit words, fold carries, complement."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def emitted_into(header, size: int, offset: int = 3) -> bytes:
    """What `emit_into` writes at a non-zero offset of a larger buffer."""
    buf = bytearray(b"\xaa" * (offset + size))
    end = header.emit_into(buf, offset)
    assert end == offset + size
    assert buf[:offset] == b"\xaa" * offset
    return bytes(buf[offset:])


# --- parse(emit(x)) == x ---

@given(ethernet_reprs(), st.binary(max_size=32))
def test_ethernet_roundtrip(eth: EthernetRepr, payload: bytes) -> None:
    frame = eth.build(payload)
    assert EthernetRepr.parse(frame) == eth
    assert bytes(EthernetFrame(frame).payload) == payload
    assert emitted_into(eth, eth.header_len) == frame[:eth.header_len]


@given(arp_reprs())
def test_arp_roundtrip(arp: ArpRepr) -> None:
    packet = arp.build()
    assert len(packet) == 28
    assert ArpRepr.parse(packet) == arp
    assert emitted_into(arp, 28) == packet


@st.composite
def ipv4_packets(draw: st.DrawFn) -> tuple[Ipv4Repr, bytes]:
    """A header of any payload length and a payload of that length (random head, zero tail)."""
    ip = draw(ipv4_reprs())
    head = draw(st.binary(min_size=min(ip.payload_len, 64), max_size=min(ip.payload_len, 64)))
    return ip, head + bytes(ip.payload_len - len(head))


@given(ipv4_packets())
def test_ipv4_roundtrip(case: tuple[Ipv4Repr, bytes]) -> None:
    ip, payload = case
    packet = ip.build(payload)
    parsed = Ipv4Packet(packet)
    assert parsed.to_repr() == ip
    assert Ipv4Repr.parse(packet) == ip
    assert parsed.checksum_ok()
    assert reference_checksum(packet[:ip.header_len]) == 0
    assert bytes(parsed.payload) == payload
    assert emitted_into(ip, ip.header_len) == packet[:ip.header_len]


@given(st.one_of(icmp_reprs(), st.builds(IcmpRepr, st.integers(0, 255), st.integers(0, 255),
                                          st.integers(0, 0xFFFFFFFF), st.binary(max_size=64))))
def test_icmp_roundtrip(msg: IcmpRepr) -> None:
    packet = msg.build()
    assert IcmpRepr.parse(packet) == msg
    assert IcmpMessage(packet).checksum_ok()
    assert reference_checksum(packet) == 0
    assert emitted_into(msg, len(msg)) == packet


@given(udp_reprs(), ANY_IP, ANY_IP, st.booleans())
def test_udp_roundtrip(udp: UdpRepr, src: bytes, dst: bytes, with_checksum: bool) -> None:
    payload = bytes(range(256)) * (udp.payload_len // 256) + bytes(range(udp.payload_len % 256))
    segment = udp.build(payload, src, dst, with_checksum=with_checksum)
    assert UdpRepr.parse(segment) == udp
    assert UdpDatagram(segment).checksum_ok(src, dst)
    buf = bytearray(3 + len(segment))
    buf[3 + 8:] = payload
    assert udp.emit_into(buf, 3, src, dst, with_checksum) == 3 + 8
    assert bytes(buf[3:]) == segment


@given(vxlan_reprs())
def test_vxlan_header_roundtrip(vx: VxlanRepr) -> None:
    assert VxlanRepr.parse(vx.build()) == vx
    assert emitted_into(vx, 8) == vx.build()


# --- VXLAN encapsulation ---

@given(vxlan_frames())
def test_decapsulate_vxlan_frames(frame: bytes) -> None:
    ip_header_len = (frame[14] & 0x0F) * 4
    inner_offset = 14 + ip_header_len + 8 + 8
    result = decapsulate(frame)
    assert result.inner_frame == frame[inner_offset:]
    assert result.vxlan == VxlanRepr.parse(frame[inner_offset - 8:])
    assert result.outer_ip == Ipv4Repr.parse(frame[14:])


@given(st.one_of(ethernet_frames(), st.binary(max_size=200)), vxlan_outer_headers())
def test_encapsulate_then_decapsulate(inner: bytes, outer) -> None:
    result = decapsulate(encapsulate(inner, outer))
    assert result.inner_frame == inner
    ip = result.outer_ip
    assert (ip.src, ip.dst, ip.protocol, ip.ttl, ip.tos, ip.ident, ip.df) == (
        outer.src_ip, outer.dst_ip, PROTO_UDP, outer.ttl, outer.tos, outer.ident, outer.df)
    assert (ip.mf, ip.frag_offset, ip.options) == (False, 0, b"")
    assert (result.udp.src_port, result.udp.dst_port) == (outer.src_port, outer.dst_port)
    assert result.udp.payload_len == 8 + len(inner)
    assert result.vxlan == VxlanRepr(outer.vni, FLAG_I)


@given(vxlan_frames(inner=st.binary(max_size=64)), st.data())
def test_decapsulate_rejects_a_flipped_bit_in_the_checked_part(frame: bytes, data) -> None:
    """A one-bit error in the outer IPv4 header, or in what a UDP checksum covers, is caught.

    The UDP length and checksum fields are left out: a flip there can turn the
    checksum into 0 ("none", RFC 768) or shorten the covered data.
    """
    udp_start = 14 + (frame[14] & 0x0F) * 4
    positions = list(range(14, udp_start))
    if frame[udp_start + 6:udp_start + 8] != b"\x00\x00":
        positions += [*range(udp_start, udp_start + 4), *range(udp_start + 8, len(frame))]
    position = data.draw(st.sampled_from(positions))
    corrupted = bytearray(frame)
    corrupted[position] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(WireError):
        decapsulate(bytes(corrupted))


# --- checksums ---

@given(st.binary(max_size=300))
def test_internet_checksum_matches_rfc1071_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)
    assert internet_checksum(memoryview(bytearray(data))) == reference_checksum(data)


@pytest.mark.parametrize("data, expected", [
    (b"", 0xFFFF),
    (b"\x00\x00\x00", 0xFFFF),
    (b"\xff\xff", 0x0000),
    (b"\x01", 0xFEFF),  # odd length: padded with a zero byte on the right
    # RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
    (bytes.fromhex("0001f203f4f5f6f7"), ~0xDDF2 & 0xFFFF),
])
def test_internet_checksum_known_values(data: bytes, expected: int) -> None:
    assert internet_checksum(data) == expected


@given(ANY_IP, ANY_IP, st.binary(max_size=200))
def test_udp_checksum_matches_reference(src: bytes, dst: bytes, payload: bytes) -> None:
    segment = (1234).to_bytes(2, "big") + (80).to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + b"\x00\x00" + payload
    pseudo = src + dst + bytes([0, PROTO_UDP]) + len(segment).to_bytes(2, "big")
    expected = reference_checksum(pseudo + segment) or 0xFFFF
    assert udp_checksum(src, dst, segment) == expected
    assert internet_checksum(segment, pseudo_header_sum(src, dst, PROTO_UDP, len(segment))) == \
        reference_checksum(pseudo + segment)


@given(ANY_IP, ANY_IP, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=200))
def test_udp_build_checksum_matches_reference(src: bytes, dst: bytes, sport: int, dport: int,
                                              payload: bytes) -> None:
    segment = UdpRepr(sport, dport, len(payload)).build(payload, src, dst)
    pseudo = src + dst + bytes([0, PROTO_UDP]) + len(segment).to_bytes(2, "big")
    zeroed = segment[:6] + b"\x00\x00" + segment[8:]
    assert segment[6:8] == (reference_checksum(pseudo + zeroed) or 0xFFFF).to_bytes(2, "big")
    assert UdpDatagram(segment).checksum_ok(src, dst)


@given(st.binary(max_size=120), st.integers(0, 0x3FFFF))
def test_sum_verifies_is_ones_sum_equal_to_ffff(data: bytes, initial: int) -> None:
    assert sum_verifies(data, initial) == (ones_sum(data, initial) == 0xFFFF)
    assert sum_verifies(memoryview(data), initial) == (ones_sum(data, initial) == 0xFFFF)


@given(ANY_IP, ANY_IP, st.integers(0, 255), st.integers(0, 0xFFFF))
def test_pseudo_header_sum_is_the_packed_headers_sum(src: bytes, dst: bytes, protocol: int,
                                                     length: int) -> None:
    packed = src + dst + bytes([0, protocol]) + length.to_bytes(2, "big")
    assert pseudo_header_sum(src, dst, protocol, length) == ones_sum(packed)


@given(ipv4_reprs(payload_len=0))
def test_ipv4_header_from_values_is_the_reprs_header(ip: Ipv4Repr) -> None:
    plain = replace(ip, options=b"", mf=False, frag_offset=0, reserved_flag=False)
    assert ipv4_header(plain.src, plain.dst, plain.protocol, plain.payload_len, plain.ttl,
                       plain.tos, plain.ident, plain.df) == plain.header()


@given(ipv4_reprs(payload_len=0))
def test_header_checksum_matches_reference(ip: Ipv4Repr) -> None:
    header = ip.header()
    assert reference_checksum(header) == 0
    assert Ipv4Packet(header).checksum_ok()


@given(ipv4_reprs(payload_len=0))
def test_decrement_ttl_equals_full_recomputation(ip: Ipv4Repr) -> None:
    assume(ip.ttl > 0)
    packet = bytearray(b"\x99" + ip.header())  # at an offset, as inside a frame
    assert decrement_ttl(packet, 1) == ip.ttl - 1
    header = bytes(packet[1:])
    assert header[8] == ip.ttl - 1
    zeroed = header[:10] + b"\x00\x00" + header[12:]
    assert int.from_bytes(header[10:12], "big") == reference_checksum(zeroed)
    assert header == replace(ip, ttl=ip.ttl - 1).header()


@given(ipv4_reprs(payload_len=0), st.data())
def test_incremental_update_equals_full_recomputation(ip: Ipv4Repr, data) -> None:
    """Rewrite any one 16-bit word but the checksum (a NAT rewriting an address)."""
    header = bytearray(ip.header())
    word_index = data.draw(st.sampled_from([i for i in range(len(header) // 2) if i != 5]))
    new_word = data.draw(st.integers(0, 0xFFFF))
    assume(word_index != 0 or new_word >> 8 == header[0])  # keep version and IHL
    old_word = int.from_bytes(header[2 * word_index:2 * word_index + 2], "big")
    old_checksum = int.from_bytes(header[10:12], "big")
    header[2 * word_index:2 * word_index + 2] = new_word.to_bytes(2, "big")
    header[10:12] = b"\x00\x00"
    assert incremental_update(old_checksum, old_word, new_word) == reference_checksum(bytes(header))


def test_incremental_update_rfc1624_example() -> None:
    """RFC 1624 section 4: checksum 0xdd2f, a word 0x5555 -> 0x3285 gives 0x0000 (not 0xffff)."""
    assert incremental_update(0xDD2F, 0x5555, 0x3285) == 0x0000


def test_incremental_update_folds_the_carry_twice() -> None:
    """Checksum 0 and a word 0 -> 1: ~HC + ~m + m' = 0x1ffff needs two end-around carries."""
    header = bytearray(Ipv4Repr(ip_from_str("10.0.0.1"), ip_from_str("10.0.0.2"), PROTO_UDP, 0).header())
    header[10:12] = b"\x00\x00"
    data_sum = ~reference_checksum(bytes(header)) & 0xFFFF
    header[4:6] = (0xFFFF - data_sum).to_bytes(2, "big")  # ident making the sum 0xffff
    assert reference_checksum(bytes(header)) == 0 and header[6:8] == b"\x00\x00"
    header[6:8] = b"\x00\x01"  # fragment offset 0 -> 1
    assert incremental_update(0x0000, 0x0000, 0x0001) == reference_checksum(bytes(header))


# --- what the parsers must refuse ---

@given(ethernet_frames(), st.data())
def test_every_strict_prefix_of_a_header_is_truncated(frame: bytes, data) -> None:
    """A buffer shorter than a header, or than the length an IPv4/UDP header declares."""
    eth = EthernetFrame(frame)
    packet = bytes(eth.payload)
    cases = [(EthernetFrame, frame, eth.header_len)]
    if eth.ethertype == ETHERTYPE_ARP:
        cases.append((ArpRepr.parse, packet, 28))
    else:
        ip = Ipv4Packet(packet)
        cases.append((Ipv4Packet, packet, ip.total_length))
        segment = bytes(ip.payload)
        cases.append((UdpDatagram, segment, len(segment)) if ip.protocol == PROTO_UDP
                     else (IcmpMessage, segment, 8))
    parse, buf, need = data.draw(st.sampled_from(cases))
    cut = data.draw(st.integers(0, need - 1))
    with pytest.raises(WireError):
        parse(buf[:cut])


@given(ipv4_reprs(payload_len=8), st.integers(0, 15), st.integers(0, 4))
def test_ipv4_bad_version_or_ihl_is_malformed(ip: Ipv4Repr, version: int, ihl: int) -> None:
    packet = bytearray(ip.build(bytes(8)))
    if version != 4:
        packet[0] = (version << 4) | (packet[0] & 0x0F)
        field = "version"
    else:
        packet[0] = 0x40 | ihl
        field = "ihl"
    with pytest.raises(WireError, match=f"ipv4-bad-{field}"):
        Ipv4Packet(bytes(packet))


# --- known frames from the kernel captures (fields as the README states) ---

def captured(name: str) -> list[bytes]:
    with open(CAPTURES / name, "rb") as f:
        return [bytes(frame) for _, frame in dpkt.pcap.Reader(f)]


N1_ETH0_MAC = mac_from_str("02:42:ac:12:00:0b")
N2_ETH0_MAC = mac_from_str("02:42:ac:12:00:0c")
N1_IP, N2_IP = ip_from_str("172.18.0.11"), ip_from_str("172.18.0.12")
N1_VTEP_MAC, N2_VTEP_MAC = mac_from_str("6e:2d:54:00:01:01"), mac_from_str("6e:2d:54:00:02:02")
P1A_IP, P2A_IP = ip_from_str("10.244.1.2"), ip_from_str("10.244.2.2")


def test_kernel_arp_request_on_n1_eth0() -> None:
    frame = captured("n1_eth0.pcap")[0]
    eth = EthernetFrame(frame)
    assert (eth.dst, eth.src, eth.ethertype, eth.vlan_tci) == (
        b"\xff" * 6, N1_ETH0_MAC, ETHERTYPE_ARP, None)
    assert ArpRepr.parse(eth.payload) == ArpRepr(OP_REQUEST, N1_ETH0_MAC, N1_IP, bytes(6), N2_IP)
    reply = EthernetFrame(captured("n1_eth0.pcap")[1])
    assert ArpRepr.parse(reply.payload) == ArpRepr(OP_REPLY, N2_ETH0_MAC, N2_IP, N1_ETH0_MAC, N1_IP)


def test_kernel_vxlan_echo_request_and_reply_on_n1_eth0() -> None:
    frames = captured("n1_eth0.pcap")
    inner_frames = captured("n1_flannel.1.pcap")
    ports = []
    for outer_frame, inner_frame, (src, dst, src_ip, dst_ip) in [
        (frames[2], inner_frames[0], (N1_ETH0_MAC, N2_ETH0_MAC, N1_IP, N2_IP)),
        (frames[3], inner_frames[1], (N2_ETH0_MAC, N1_ETH0_MAC, N2_IP, N1_IP)),
    ]:
        eth = EthernetFrame(outer_frame)
        assert (eth.src, eth.dst, eth.ethertype) == (src, dst, ETHERTYPE_IPV4)
        ip = Ipv4Packet(eth.payload)
        assert ip.checksum_ok()
        assert (ip.src, ip.dst, ip.protocol, ip.ttl, ip.df, ip.header_len) == (
            src_ip, dst_ip, PROTO_UDP, 64, False, 20)
        udp = UdpDatagram(ip.payload)
        assert udp.dst_port == FLANNEL_PORT
        # The capture holds the offload's partial checksum (README), not a valid one.
        assert not udp.checksum_ok(ip.src, ip.dst)
        with pytest.raises(WireError, match="vxlan-udp-checksum"):
            decapsulate(outer_frame)
        ports.append(udp.src_port)
        vxlan = VxlanHeader(udp.payload)
        assert (vxlan.flags, vxlan.vni, vxlan.reserved1, vxlan.reserved2) == (FLAG_I, 1, 0, 0)
        assert bytes(vxlan.payload) == inner_frame  # what flannel.1 captured

        fixed = bytearray(outer_frame)
        segment = bytearray(udp.buf)
        segment[6:8] = b"\x00\x00"
        fixed[14 + 20 + 6:14 + 20 + 8] = udp_checksum(ip.src, ip.dst, segment).to_bytes(2, "big")
        assert decapsulate(bytes(fixed)).inner_frame == inner_frame
    assert ports[0] == ports[1]  # the hashed source port is the same both ways

    request, reply = (EthernetFrame(frame) for frame in inner_frames[:2])
    assert (request.src, request.dst) == (N1_VTEP_MAC, N2_VTEP_MAC)
    request_ip, reply_ip = Ipv4Packet(request.payload), Ipv4Packet(reply.payload)
    assert (request_ip.src, request_ip.dst, request_ip.ttl, request_ip.protocol) == (
        P1A_IP, P2A_IP, 63, PROTO_ICMP)
    assert (reply_ip.src, reply_ip.dst, reply_ip.ttl) == (P2A_IP, P1A_IP, 63)
    echo, answer = IcmpMessage(request_ip.payload), IcmpMessage(reply_ip.payload)
    assert echo.checksum_ok() and answer.checksum_ok()
    assert (echo.type, echo.echo_seq, len(echo)) == (ECHO_REQUEST, 1, 64)
    assert (answer.type, answer.echo_id, answer.echo_seq) == (ECHO_REPLY, echo.echo_id, 1)
