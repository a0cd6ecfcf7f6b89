"""TCP segments (RFC 9293) with the options Linux sends (RFC 7323, 2018).

A segment is a header (20 bytes plus options, padded to 4) and data; the
checksum covers the IPv4 pseudo-header, so building and verifying need the
addresses. Options are kept as an ordered list of (kind, value) pairs, so a
segment round-trips with its options in the order they were written: Linux
writes them in a fixed order (tcp_options_write: MSS, SACK_PERM + TS packed
together, NOPs, window scale) and the oracle compares that order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from emu.wire.checksum import ones_sum, pseudo_header_sum
from emu.wire.errors import Malformed, Truncated
from emu.wire.ipv4 import PROTO_TCP

HEADER_LEN = 20

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

OPT_END, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERM, OPT_SACK, OPT_TIMESTAMP = 0, 1, 2, 3, 4, 5, 8

_HEADER = struct.Struct("!HHIIBBHHH")
SEQ = slice(4, 8)
FLAGS = 13
_PORTS = struct.Struct("!HH")

Option = tuple[int, object]


def tcp_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes | bytearray | memoryview) -> int:
    """The checksum field value for `segment` (its checksum field zero)."""
    partial = pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, len(segment))
    return ~ones_sum(segment, partial) & 0xFFFF


def encode_options(options: list[Option]) -> bytes:
    """Options as bytes, in the given order, zero-padded (END) to a multiple
    of 4 (Linux aligns its own options with NOPs, so it never needs it).

    Values: MSS int, WSCALE int, SACK_PERM None, TIMESTAMP (val, ecr),
    SACK list of (left, right), NOP/END None."""
    out = bytearray()
    for kind, value in options:
        if kind in (OPT_NOP, OPT_END):
            out.append(kind)
        elif kind == OPT_MSS:
            out += struct.pack("!BBH", kind, 4, value)
        elif kind == OPT_WSCALE:
            out += struct.pack("!BBB", kind, 3, value)
        elif kind == OPT_SACK_PERM:
            out += bytes((kind, 2))
        elif kind == OPT_TIMESTAMP:
            out += struct.pack("!BBII", kind, 10, value[0], value[1])
        elif kind == OPT_SACK:
            out += struct.pack("!BB", kind, 2 + 8 * len(value))
            for left, right in value:
                out += struct.pack("!II", left, right)
        else:
            raise ValueError(f"tcp option kind {kind} not supported")
    if len(out) % 4:
        out += bytes(4 - len(out) % 4)
    return bytes(out)


def decode_options(raw: bytes | memoryview) -> list[Option]:
    """The options area as (kind, value) pairs; unknown kinds keep their
    bytes as value. Raises Malformed for a length that runs past the end."""
    options: list[Option] = []
    raw = bytes(raw)
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == OPT_END:
            options.append((OPT_END, None))
            break
        if kind == OPT_NOP:
            options.append((OPT_NOP, None))
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            raise Malformed("tcp", "option-length", kind)
        length = raw[i + 1]
        body = raw[i + 2:i + length]
        if kind == OPT_MSS and length == 4:
            options.append((kind, struct.unpack("!H", body)[0]))
        elif kind == OPT_WSCALE and length == 3:
            options.append((kind, body[0]))
        elif kind == OPT_SACK_PERM and length == 2:
            options.append((kind, None))
        elif kind == OPT_TIMESTAMP and length == 10:
            options.append((kind, struct.unpack("!II", body)))
        elif kind == OPT_SACK and (length - 2) % 8 == 0:
            options.append((kind, [struct.unpack_from("!II", body, j) for j in range(0, length - 2, 8)]))
        else:
            options.append((kind, body))
        i += length
    return options


class TcpSegment:
    """Zero-copy view of a TCP segment; the data offset is checked here."""

    __slots__ = ("buf", "header_len")

    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        if len(buf) < HEADER_LEN:
            raise Truncated("tcp", HEADER_LEN, len(buf))
        header_len = (buf[12] >> 4) * 4
        if header_len < HEADER_LEN:
            raise Malformed("tcp", "data-offset", header_len)
        if header_len > len(buf):
            raise Truncated("tcp", header_len, len(buf))
        self.buf = buf
        self.header_len = header_len

    @property
    def src_port(self) -> int:
        return (self.buf[0] << 8) | self.buf[1]

    @property
    def dst_port(self) -> int:
        return (self.buf[2] << 8) | self.buf[3]

    @property
    def seq(self) -> int:
        return int.from_bytes(self.buf[4:8], "big")

    @property
    def ack(self) -> int:
        return int.from_bytes(self.buf[8:12], "big")

    @property
    def flags(self) -> int:
        return self.buf[13]

    @property
    def window(self) -> int:
        return (self.buf[14] << 8) | self.buf[15]

    @property
    def options(self) -> list[Option]:
        return decode_options(self.buf[HEADER_LEN:self.header_len])

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[self.header_len:]

    def checksum_ok(self, src_ip: bytes, dst_ip: bytes) -> bool:
        partial = pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, len(self.buf))
        return ones_sum(self.buf, partial) == 0xFFFF

    def to_repr(self) -> "TcpRepr":
        return TcpRepr(self.src_port, self.dst_port, self.seq, self.ack, self.flags, self.window,
                       self.options)


@dataclass(frozen=True)
class TcpRepr:
    """A TCP header as values; the checksum is computed when building."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: list[Option] = field(default_factory=list)
    urgent: int = 0

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "TcpRepr":
        return TcpSegment(buf).to_repr()

    def build(self, payload: bytes | bytearray | memoryview, src_ip: bytes, dst_ip: bytes) -> bytes:
        """Header, options and payload with a valid checksum."""
        opts = encode_options(self.options)
        header_len = HEADER_LEN + len(opts)
        segment = bytearray(_HEADER.pack(self.src_port, self.dst_port, self.seq & 0xFFFFFFFF,
                                         self.ack & 0xFFFFFFFF, (header_len // 4) << 4, self.flags,
                                         self.window, 0, self.urgent))
        segment += opts
        segment += payload
        checksum = tcp_checksum(src_ip, dst_ip, segment)
        segment[16] = checksum >> 8
        segment[17] = checksum & 0xFF
        return bytes(segment)


def reset_for(src_port: int, dst_port: int, seq: int, ack: int, flags: int, data_len: int) -> TcpRepr:
    """The RST answering a segment (RFC 9293 3.10.7.1), as tcp_v4_send_reset
    and netfilter's nf_send_reset build it: ports swapped; if the segment
    carried an ACK, seq = its ack and no ACK; otherwise seq 0 and an ACK of
    everything it occupied (data, SYN, FIN); window 0, no options."""
    if flags & ACK:
        return TcpRepr(dst_port, src_port, ack, 0, RST, 0)
    end = seq + data_len + bool(flags & SYN) + bool(flags & FIN)
    return TcpRepr(dst_port, src_port, 0, end & 0xFFFFFFFF, RST | ACK, 0)


# -- field accessors (the header at the start of `buf`, length checked by the caller) --

def ports(buf: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(source, destination) port."""
    return _PORTS.unpack_from(buf)


def header_length(buf: bytes | bytearray | memoryview) -> int:
    """The data offset in bytes."""
    return (buf[12] >> 4) * 4


def seq(buf: bytes | bytearray | memoryview) -> int:
    return int.from_bytes(buf[SEQ], "big")


def flags(buf: bytes | bytearray | memoryview) -> int:
    return buf[FLAGS]


def set_seq(buf: bytearray, value: int) -> None:
    buf[SEQ] = (value & 0xFFFFFFFF).to_bytes(4, "big")


def set_flags(buf: bytearray, value: int) -> None:
    buf[FLAGS] = value


def fill_checksum(buf: bytearray, src_ip: bytes, dst_ip: bytes) -> None:
    """Recompute the checksum of the whole segment in `buf` in place."""
    buf[16:18] = b"\0\0"
    buf[16:18] = tcp_checksum(src_ip, dst_ip, buf).to_bytes(2, "big")
