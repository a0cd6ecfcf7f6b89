"""Flatten a captured frame into named fields, the unit of kernel-vs-emulator comparison.

Two pcaps of the same capture point cannot be compared byte for byte: the
kernel randomises IP ids, echo ids and payloads, and hashes the VXLAN source
port. So a frame is reduced to an ordered list of (dotted name, value) pairs
that holds everything the kernel does *not* randomise, recursively through
VXLAN, flannel's UDP encapsulation and the datagram quoted in ICMP errors.
The names read like Wireshark's (``inner.ip.ttl``) so a difference explains
itself in an error message.

This module is an independent oracle: it parses with dpkt's header tables,
never with the emulator's own codecs, and it layers the headers itself
(dpkt's automatic payload decoding would hide truncation and guess at ports).
Nothing in a frame makes it raise: what cannot be decoded becomes a
``<layer>.malformed`` field, which then shows up as a difference.

The same walk also checks every checksum the emulator is responsible for
(IPv4 header, ICMP, UDP, TCP, inner packets included): ``checksum_problems``.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Collection

import dpkt

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
SUPPORTED_LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_RAW)

DEFAULT_VXLAN_PORTS = (8472,)
DEFAULT_FLANNEL_UDP_PORTS = (8285,)

Field = tuple[str, object]

_ETH_TYPE_IPV4 = 0x0800
_ETH_TYPE_ARP = 0x0806
_VLAN_ETH_TYPES = (0x8100, 0x88A8)
_IP_PROTO_ICMP = 1
_IP_PROTO_TCP = 6
_IP_PROTO_UDP = 17
_TCP_OPTION_NAMES = {0: "EOL", 1: "NOP", 2: "MSS", 3: "WS", 4: "SACK_PERM", 5: "SACK", 8: "TS"}
_ICMP_ECHO_TYPES = (0, 8)
_ICMP_DEST_UNREACH = 3
_ICMP_FRAG_NEEDED_CODE = 4
_ICMP_REDIRECT = 5
_ICMP_PARAM_PROBLEM = 12
_ICMP_ERROR_TYPES = (3, 4, 5, 11, 12)
_ICMP_HEADER_LEN = 8


class _VXLANHeader(dpkt.Packet):
    """RFC 7348 header; dpkt has none, so it is declared here the dpkt way."""

    __hdr__ = (
        ("flags", "B", 0x08),
        ("reserved1", "3s", b"\x00\x00\x00"),
        ("_vni_reserved2", "I", 0),
    )
    __bit_fields__ = {"_vni_reserved2": (("vni", 24), ("reserved2", 8))}


def _header(cls: type[dpkt.Packet], buf: bytes) -> dpkt.Packet:
    """Unpack only the fixed header of a dpkt class (caller checked the length)."""
    header = cls.__new__(cls)
    dpkt.Packet.unpack(header, buf[: cls.__hdr_len__])
    return header


def _mac(raw: bytes) -> str:
    return ":".join(f"{octet:02x}" for octet in raw)


def _ipv4(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def _checksum_message(name: str, stored: int, expected: int) -> str:
    return f"{name} bad (0x{stored:04x}, expected 0x{expected:04x})"


class _Walk:
    """One pass over a frame, collecting its fields and its checksum problems."""

    def __init__(self, vxlan_ports: Collection[int], udp_ports: Collection[int]) -> None:
        self.vxlan_ports = frozenset(vxlan_ports)
        self.udp_ports = frozenset(udp_ports)
        self.fields: list[Field] = []
        self.checksum_problems: list[str] = []

    def emit(self, name: str, value: object) -> None:
        self.fields.append((name, value))

    def frame(self, frame: bytes, linktype: int) -> None:
        self.emit("frame.len", len(frame))
        if linktype == LINKTYPE_ETHERNET:
            self.ethernet(frame, "", partial=False)
        else:
            self.raw_ip(frame, "", partial=False)

    def ethernet(self, buf: bytes, prefix: str, partial: bool) -> None:
        eth_class = dpkt.ethernet.Ethernet
        if len(buf) < eth_class.__hdr_len__:
            self.emit(prefix + "eth.malformed", f"truncated header ({len(buf)} of 14 bytes)")
            return
        eth = _header(eth_class, buf)
        self.emit(prefix + "eth.dst", _mac(eth.dst))
        self.emit(prefix + "eth.src", _mac(eth.src))
        self.emit(prefix + "eth.type", f"0x{eth.type:04x}")
        offset, eth_type = eth_class.__hdr_len__, eth.type
        tag_class = dpkt.ethernet.VLANtag8021Q
        while eth_type in _VLAN_ETH_TYPES:
            if len(buf) < offset + tag_class.__hdr_len__:
                self.emit(prefix + "eth.malformed", "truncated 802.1Q tag")
                return
            tag = _header(tag_class, buf[offset:])
            self.emit(prefix + "eth.vlan.pcp", tag.pri)
            self.emit(prefix + "eth.vlan.dei", tag.cfi)
            self.emit(prefix + "eth.vlan.id", tag.id)
            self.emit(prefix + "eth.vlan.type", f"0x{tag.type:04x}")
            offset, eth_type = offset + tag_class.__hdr_len__, tag.type
        body = buf[offset:]
        if eth_type == _ETH_TYPE_IPV4:
            used = self.ip(body, prefix, partial)
        elif eth_type == _ETH_TYPE_ARP:
            used = self.arp(body, prefix)
        else:
            self.emit(prefix + "eth.payload", body.hex())
            used = len(body)
        if used is not None:
            self.emit(prefix + "eth.padding", len(body) - used)

    def raw_ip(self, buf: bytes, prefix: str, partial: bool) -> None:
        """An IPv4 packet with nothing around it: TUN captures, flannel's UDP payload."""
        used = self.ip(buf, prefix, partial)
        if used is not None:
            self.emit(prefix + "ip.trailing", len(buf) - used)

    def arp(self, buf: bytes, prefix: str) -> int | None:
        arp_class = dpkt.arp.ARP
        if len(buf) < arp_class.__hdr_len__:
            self.emit(prefix + "arp.malformed", f"truncated ({len(buf)} of 28 bytes)")
            return None
        arp = _header(arp_class, buf)
        self.emit(prefix + "arp.htype", arp.hrd)
        self.emit(prefix + "arp.ptype", f"0x{arp.pro:04x}")
        self.emit(prefix + "arp.hlen", arp.hln)
        self.emit(prefix + "arp.plen", arp.pln)
        self.emit(prefix + "arp.op", arp.op)
        if (arp.hln, arp.pln) != (6, 4):
            self.emit(prefix + "arp.malformed", "address lengths are not Ethernet/IPv4")
            return None
        self.emit(prefix + "arp.sha", _mac(arp.sha))
        self.emit(prefix + "arp.spa", _ipv4(arp.spa))
        self.emit(prefix + "arp.tha", _mac(arp.tha))
        self.emit(prefix + "arp.tpa", _ipv4(arp.tpa))
        return arp_class.__hdr_len__

    def ip(self, buf: bytes, prefix: str, partial: bool) -> int | None:
        """Fields of an IPv4 datagram; returns the bytes it occupies, None if cut short.

        ``partial``: the datagram is (inside) an ICMP quote, so it may be
        truncated and its checksums are whatever the quoted sender wrote.
        """
        ip_class = dpkt.ip.IP
        if len(buf) < ip_class.__hdr_len__:
            self.emit(prefix + "ip.malformed", f"truncated header ({len(buf)} of 20 bytes)")
            return None
        ip = _header(ip_class, buf)
        self.emit(prefix + "ip.version", ip.v)
        self.emit(prefix + "ip.ihl", ip.hl)
        if ip.v != 4:
            self.emit(prefix + "ip.malformed", f"version {ip.v} is not IPv4")
            return None
        header_len = ip.hl * 4
        if header_len < ip_class.__hdr_len__:
            self.emit(prefix + "ip.malformed", f"header length {header_len} below 20")
            return None
        if len(buf) < header_len:
            self.emit(
                prefix + "ip.malformed", f"truncated options ({len(buf)} of {header_len} bytes)"
            )
            return None
        self.emit(prefix + "ip.tos", ip.tos)
        self.emit(prefix + "ip.len", ip.len)
        self.emit(prefix + "ip.rf", ip.rf)
        self.emit(prefix + "ip.df", ip.df)
        self.emit(prefix + "ip.mf", ip.mf)
        self.emit(prefix + "ip.frag_offset", ip.offset)
        self.emit(prefix + "ip.ttl", ip.ttl)
        self.emit(prefix + "ip.proto", ip.p)
        self.emit(prefix + "ip.src", _ipv4(ip.src))
        self.emit(prefix + "ip.dst", _ipv4(ip.dst))
        self.emit(prefix + "ip.options", buf[ip_class.__hdr_len__ : header_len].hex())
        if not partial:
            header = buf[:header_len]
            if dpkt.in_cksum(header) != 0:
                zeroed = header[:10] + b"\x00\x00" + header[12:]
                self.checksum_problems.append(
                    _checksum_message(prefix + "ip.checksum", ip.sum, dpkt.in_cksum(zeroed))
                )
        if ip.len < header_len:
            self.emit(
                prefix + "ip.malformed", f"total length {ip.len} below header length {header_len}"
            )
            return None
        truncated = len(buf) < ip.len
        if truncated and not partial:
            self.emit(
                prefix + "ip.malformed", f"truncated datagram ({len(buf)} of {ip.len} bytes)"
            )
            return None
        payload = buf[header_len : ip.len]
        if ip.offset:
            self.emit(prefix + "ip.payload_len", len(payload))
        else:
            self.transport(ip, payload, prefix, partial or bool(ip.mf))
        return None if truncated else ip.len

    def transport(self, ip: dpkt.ip.IP, payload: bytes, prefix: str, partial: bool) -> None:
        if ip.p == _IP_PROTO_ICMP:
            self.icmp(payload, prefix, partial)
        elif ip.p == _IP_PROTO_UDP:
            self.udp(payload, prefix, partial, ip.src, ip.dst)
        elif ip.p == _IP_PROTO_TCP:
            self.tcp(payload, prefix, partial, ip.src, ip.dst)
        else:
            self.emit(prefix + "ip.payload", payload.hex())

    def tcp(self, buf: bytes, prefix: str, partial: bool, src: bytes, dst: bytes) -> None:
        """TCP fields; sequence numbers raw here (emu.verify.sequences makes
        them relative per capture), timestamp values dropped (the kernel
        offsets them at random), the payload as its length and a digest."""
        if len(buf) < 4:
            self.emit(prefix + "tcp.malformed", f"truncated header ({len(buf)} of 20 bytes)")
            return
        self.emit(prefix + "tcp.sport", int.from_bytes(buf[0:2], "big"))
        self.emit(prefix + "tcp.dport", int.from_bytes(buf[2:4], "big"))
        if len(buf) < 20:
            if len(buf) >= 8:  # an ICMP quote: ports and sequence number
                self.emit(prefix + "tcp.seq", int.from_bytes(buf[4:8], "big"))
            if not partial:
                self.emit(prefix + "tcp.malformed", f"truncated header ({len(buf)} of 20 bytes)")
            return
        tcp = _header(dpkt.tcp.TCP, buf)
        header_len = tcp.off * 4
        self.emit(prefix + "tcp.flags", f"0x{tcp.flags:02x}")
        self.emit(prefix + "tcp.seq", tcp.seq)
        self.emit(prefix + "tcp.ack", tcp.ack)
        self.emit(prefix + "tcp.hdr_len", header_len)
        self.emit(prefix + "tcp.window", tcp.win)
        self.emit(prefix + "tcp.urp", tcp.urp)
        if header_len < 20 or len(buf) < header_len:
            self.emit(prefix + "tcp.malformed", f"header length {header_len} of {len(buf)} bytes")
            return
        self.emit(prefix + "tcp.options", self.tcp_options(buf[20:header_len]))
        data = buf[header_len:]
        self.emit(prefix + "tcp.payload_len", len(data))
        if data:
            self.emit(prefix + "tcp.payload", hashlib.sha1(data).hexdigest()[:16])
        if not partial:
            pseudo = src + dst + bytes((0, _IP_PROTO_TCP)) + len(buf).to_bytes(2, "big")
            if dpkt.in_cksum(pseudo + buf) != 0:
                zeroed = buf[:16] + b"\x00\x00" + buf[18:]
                self.checksum_problems.append(_checksum_message(
                    prefix + "tcp.checksum", tcp.sum, dpkt.in_cksum(pseudo + zeroed)))

    @staticmethod
    def tcp_options(raw: bytes) -> str:
        """Option kinds in order with the values Linux does not randomise
        (MSS, window scale; SACK as its block count, TS values masked)."""
        words = []
        try:
            options = dpkt.tcp.parse_opts(raw)
        except (dpkt.UnpackError, IndexError, ValueError):
            return "malformed:" + raw.hex()
        for kind, value in options:
            name = _TCP_OPTION_NAMES.get(kind, f"kind{kind}")
            if kind == 2 and len(value) == 2:
                name += f"={int.from_bytes(value, 'big')}"
            elif kind == 3 and len(value) == 1:
                name += f"={value[0]}"
            elif kind == 5:
                name += f"x{len(value) // 8}"
            words.append(name)
        return ",".join(words)

    def udp(self, buf: bytes, prefix: str, partial: bool, src: bytes, dst: bytes) -> None:
        udp_class = dpkt.udp.UDP
        if len(buf) < udp_class.__hdr_len__:
            self.emit(prefix + "udp.malformed", f"truncated header ({len(buf)} of 8 bytes)")
            return
        udp = _header(udp_class, buf)
        is_vxlan = udp.dport in self.vxlan_ports
        if not is_vxlan:  # the VXLAN source port is a hash of the inner flow
            self.emit(prefix + "udp.sport", udp.sport)
        self.emit(prefix + "udp.dport", udp.dport)
        self.emit(prefix + "udp.len", udp.ulen)
        if udp.ulen < udp_class.__hdr_len__:
            self.emit(prefix + "udp.malformed", f"length {udp.ulen} below 8")
            return
        if len(buf) < udp.ulen and not partial:
            self.emit(
                prefix + "udp.malformed", f"truncated datagram ({len(buf)} of {udp.ulen} bytes)"
            )
            return
        if not partial and udp.sum != 0:
            self.check_udp_checksum(buf[: udp.ulen], prefix, src, dst, udp.sum)
        body = buf[udp_class.__hdr_len__ : udp.ulen]
        if is_vxlan:
            self.vxlan(body, prefix, partial)
        elif udp.dport in self.udp_ports:
            self.raw_ip(body, prefix + "inner.", partial)
        else:
            self.emit(prefix + "udp.payload", body.hex())

    def check_udp_checksum(
        self, datagram: bytes, prefix: str, src: bytes, dst: bytes, stored: int
    ) -> None:
        pseudo_header = src + dst + bytes((0, _IP_PROTO_UDP)) + len(datagram).to_bytes(2, "big")
        if dpkt.in_cksum(pseudo_header + datagram) == 0:
            return
        zeroed = datagram[:6] + b"\x00\x00" + datagram[8:]
        expected = dpkt.in_cksum(pseudo_header + zeroed) or 0xFFFF
        self.checksum_problems.append(_checksum_message(prefix + "udp.checksum", stored, expected))

    def vxlan(self, buf: bytes, prefix: str, partial: bool) -> None:
        if len(buf) < _VXLANHeader.__hdr_len__:
            self.emit(prefix + "vxlan.malformed", f"truncated header ({len(buf)} of 8 bytes)")
            return
        vxlan = _header(_VXLANHeader, buf)
        self.emit(prefix + "vxlan.flags", f"0x{vxlan.flags:02x}")
        self.emit(prefix + "vxlan.vni", vxlan.vni)
        self.emit(prefix + "vxlan.reserved", f"{vxlan.reserved1.hex()}/{vxlan.reserved2:02x}")
        self.ethernet(buf[_VXLANHeader.__hdr_len__ :], prefix + "inner.", partial)

    def icmp(self, buf: bytes, prefix: str, partial: bool) -> None:
        if len(buf) < _ICMP_HEADER_LEN:
            self.emit(prefix + "icmp.malformed", f"truncated header ({len(buf)} of 8 bytes)")
            return
        icmp = _header(dpkt.icmp.ICMP, buf)
        self.emit(prefix + "icmp.type", icmp.type)
        self.emit(prefix + "icmp.code", icmp.code)
        if not partial and dpkt.in_cksum(buf) != 0:
            zeroed = buf[:2] + b"\x00\x00" + buf[4:]
            self.checksum_problems.append(
                _checksum_message(prefix + "icmp.checksum", icmp.sum, dpkt.in_cksum(zeroed))
            )
        rest = buf[dpkt.icmp.ICMP.__hdr_len__ :]
        if icmp.type in _ICMP_ECHO_TYPES:
            echo = _header(dpkt.icmp.ICMP.Echo, rest)
            self.emit(prefix + "icmp.echo.seq", echo.seq)
            self.emit(prefix + "icmp.echo.data_len", len(buf) - _ICMP_HEADER_LEN)
        elif icmp.type in _ICMP_ERROR_TYPES:
            self.icmp_error_word(icmp.type, icmp.code, rest, prefix)
            quote = buf[_ICMP_HEADER_LEN:]
            self.emit(prefix + "icmp.quote.len", len(quote))
            self.ip(quote, prefix + "icmp.quote.", partial=True)
        else:
            self.emit(prefix + "icmp.body", rest.hex())

    def icmp_error_word(self, icmp_type: int, code: int, word: bytes, prefix: str) -> None:
        """The 32 bits between the ICMP checksum and the quote, per error type."""
        if icmp_type == _ICMP_DEST_UNREACH and code == _ICMP_FRAG_NEEDED_CODE:
            unreach = _header(dpkt.icmp.ICMP.Unreach, word)
            self.emit(prefix + "icmp.unused", unreach.pad)
            self.emit(prefix + "icmp.mtu", unreach.mtu)
        elif icmp_type == _ICMP_REDIRECT:
            self.emit(prefix + "icmp.gateway", _ipv4(word[:4]))
        elif icmp_type == _ICMP_PARAM_PROBLEM:
            self.emit(prefix + "icmp.pointer", word[0])
            self.emit(prefix + "icmp.unused", int.from_bytes(word[1:4], "big"))
        else:
            self.emit(prefix + "icmp.unused", int.from_bytes(word[:4], "big"))


def _walk(
    frame: bytes, linktype: int, vxlan_ports: Collection[int], udp_ports: Collection[int]
) -> _Walk:
    if linktype not in SUPPORTED_LINKTYPES:
        raise ValueError(f"linktype {linktype} not supported (1 Ethernet, 101 raw IPv4)")
    walk = _Walk(vxlan_ports, udp_ports)
    walk.frame(bytes(frame), linktype)
    return walk


def frame_fields(
    frame: bytes,
    linktype: int,
    *,
    vxlan_ports: Collection[int] = DEFAULT_VXLAN_PORTS,
    udp_ports: Collection[int] = DEFAULT_FLANNEL_UDP_PORTS,
) -> list[Field]:
    """The frame's comparable fields, in wire order, minus those the kernel randomises.

    ``vxlan_ports``: UDP destination ports carrying VXLAN; ``udp_ports``: UDP
    destination ports carrying flannel's raw-IPv4-in-UDP. Their payloads are
    decoded under the prefix ``inner.``.
    """
    return _walk(frame, linktype, vxlan_ports, udp_ports).fields


def checksum_problems(
    frame: bytes,
    linktype: int,
    *,
    vxlan_ports: Collection[int] = DEFAULT_VXLAN_PORTS,
    udp_ports: Collection[int] = DEFAULT_FLANNEL_UDP_PORTS,
) -> list[str]:
    """Every wrong IPv4 header, ICMP or UDP checksum in the frame, inner packets included.

    A UDP checksum of 0 means "none" and is accepted. Datagrams quoted inside
    ICMP errors are not checked: Linux quotes them as they were received.
    """
    return _walk(frame, linktype, vxlan_ports, udp_ports).checksum_problems
