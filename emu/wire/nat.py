"""Rewriting an IPv4 packet's addresses and ports for NAT, checksums patched.

What Linux's nf_nat_ipv4_manip_pkt and the l4proto manip functions do: the
IPv4 header checksum and the TCP/UDP checksum (its pseudo-header holds the
addresses) are patched incrementally (RFC 1624), a UDP checksum of 0 ("none")
stays 0, and an ICMP echo's identifier stands for the port. An ICMP error
carries the start of the packet it is about: `rewrite_icmp_error_inner`
rewrites that quoted packet (its header checksum, and the outer ICMP
checksum that covers it), as nf_nat_icmp_reply_translation does.

Only the first fragment carries the ports; later fragments get addresses only.
"""

from __future__ import annotations

import struct

from emu.wire.checksum import incremental_update, internet_checksum
from emu.wire.errors import Malformed, Truncated
from emu.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP

_WORD = struct.Struct("!H")
_ECHO_TYPES = (0, 8, 13, 14, 15, 16, 17, 18)  # echo, timestamp, info, address-mask: they carry an id
_L4_CHECKSUM = {PROTO_TCP: 16, PROTO_UDP: 6}


def _header_len(packet: bytes | bytearray | memoryview) -> int:
    if len(packet) < 20:
        raise Truncated("ipv4", 20, len(packet))
    ihl = (packet[0] & 0x0F) * 4
    if packet[0] >> 4 != 4 or ihl < 20:
        raise Malformed("ipv4", "ihl", packet[0])
    if len(packet) < ihl:
        raise Truncated("ipv4", ihl, len(packet))
    return ihl


def _is_first_fragment(packet: bytes | bytearray | memoryview) -> bool:
    return _WORD.unpack_from(packet, 6)[0] & 0x1FFF == 0


def l4_ports(packet: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(source, destination) port of a TCP/UDP packet, or (id, id) of an ICMP
    echo-like message; None for anything else or a later fragment."""
    ihl = _header_len(packet)
    if not _is_first_fragment(packet):
        return None
    protocol = packet[9]
    if protocol in (PROTO_TCP, PROTO_UDP) and len(packet) >= ihl + 4:
        return _WORD.unpack_from(packet, ihl)[0], _WORD.unpack_from(packet, ihl + 2)[0]
    if protocol == PROTO_ICMP and len(packet) >= ihl + 8 and packet[ihl] in _ECHO_TYPES:
        ident = _WORD.unpack_from(packet, ihl + 4)[0]
        return ident, ident
    return None


def rewrite(packet: bytearray, src: bytes | None = None, dst: bytes | None = None,
            sport: int | None = None, dport: int | None = None) -> None:
    """Set the source/destination address and port of `packet` in place
    (an ICMP echo's id is both its ports: give it as `sport` for SNAT of the
    sender's id, `dport` when rewriting a reply's id), patching checksums."""
    ihl = _header_len(packet)
    protocol = packet[9]
    first = _is_first_fragment(packet)
    l4 = _L4_CHECKSUM.get(protocol) if first and protocol in (PROTO_TCP, PROTO_UDP) else None
    l4_csum = None
    if l4 is not None and len(packet) >= ihl + l4 + 2:
        l4_csum = _WORD.unpack_from(packet, ihl + l4)[0]
        if protocol == PROTO_UDP and l4_csum == 0:
            l4_csum = None  # no checksum to keep right
    for offset, value in ((12, src), (16, dst)):
        if value is None or bytes(packet[offset:offset + 4]) == value:
            continue
        for half in (0, 2):
            old = _WORD.unpack_from(packet, offset + half)[0]
            new = _WORD.unpack_from(value, half)[0]
            _patch(packet, 10, old, new)
            if l4_csum is not None:
                l4_csum = incremental_update(l4_csum, old, new)
        packet[offset:offset + 4] = value
    if first and protocol in (PROTO_TCP, PROTO_UDP) and len(packet) >= ihl + 4:
        for offset, value in ((ihl, sport), (ihl + 2, dport)):
            if value is None:
                continue
            old = _WORD.unpack_from(packet, offset)[0]
            if old != value:
                if l4_csum is not None:
                    l4_csum = incremental_update(l4_csum, old, value)
                _WORD.pack_into(packet, offset, value)
    elif first and protocol == PROTO_ICMP and len(packet) >= ihl + 8 and packet[ihl] in _ECHO_TYPES:
        ident = sport if sport is not None else dport
        if ident is not None:
            old = _WORD.unpack_from(packet, ihl + 4)[0]
            if old != ident:
                _patch(packet, ihl + 2, old, ident)
                _WORD.pack_into(packet, ihl + 4, ident)
    if l4_csum is not None:
        if protocol == PROTO_UDP and l4_csum == 0:
            l4_csum = 0xFFFF
        _WORD.pack_into(packet, ihl + l4, l4_csum)


def icmp_error_inner(packet: bytes | bytearray | memoryview) -> int | None:
    """Offset of the packet quoted by an ICMP error (unreachable, time
    exceeded, parameter problem, source quench, redirect), None otherwise."""
    ihl = _header_len(packet)
    if packet[9] != PROTO_ICMP or not _is_first_fragment(packet) or len(packet) < ihl + 8 + 20:
        return None
    if packet[ihl] not in (3, 4, 5, 11, 12):
        return None
    return ihl + 8


def rewrite_icmp_error_inner(packet: bytearray, src: bytes | None = None, dst: bytes | None = None,
                             sport: int | None = None, dport: int | None = None) -> None:
    """Rewrite the packet an ICMP error quotes and fix the ICMP checksum over it.
    The quoted transport checksum is left as Linux leaves it when the quote is
    truncated; addresses, ports and the quoted IP checksum are rewritten."""
    inner = icmp_error_inner(packet)
    if inner is None:
        raise Malformed("icmp", "type", packet[_header_len(packet)])
    quoted = bytearray(packet[inner:])
    _header_len(quoted)
    rewrite(quoted, src, dst, sport, dport)
    packet[inner:] = quoted
    ihl = _header_len(packet)
    _WORD.pack_into(packet, ihl + 2, 0)
    _WORD.pack_into(packet, ihl + 2, internet_checksum(packet[ihl:]))


def _patch(packet: bytearray, checksum_offset: int, old: int, new: int) -> None:
    checksum = _WORD.unpack_from(packet, checksum_offset)[0]
    _WORD.pack_into(packet, checksum_offset, incremental_update(checksum, old, new))
