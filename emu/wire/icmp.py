"""ICMP for IPv4 (RFC 792, RFC 1191): echo, destination unreachable
(including fragmentation-needed with the next-hop MTU) and time exceeded.

The 4 bytes after type/code/checksum ("rest of header") are kept as one
integer so unknown message types still round-trip; accessors interpret them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.wire.checksum import internet_checksum, ones_sum
from emu.wire.errors import Truncated
from emu.wire.frozen import build_frozen

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11

# Destination-unreachable codes.
NET_UNREACHABLE = 0
HOST_UNREACHABLE = 1
PROTOCOL_UNREACHABLE = 2
PORT_UNREACHABLE = 3
FRAGMENTATION_NEEDED = 4
# Time-exceeded codes.
TTL_EXCEEDED_IN_TRANSIT = 0
REASSEMBLY_TIME_EXCEEDED = 1

ERROR_TYPES = frozenset({DEST_UNREACHABLE, TIME_EXCEEDED, 4, 5, 12})
# Queries that carry an identifier: echo, timestamp, information, address mask.
QUERY_TYPES = frozenset({ECHO_REPLY, ECHO_REQUEST, 13, 14, 15, 16, 17, 18})
HEADER_LEN = 8
CHECKSUM = slice(2, 4)  # after type and code; the rest of the header follows

_HEADER = struct.Struct("!BBHI")


class IcmpMessage:
    """Zero-copy view of an ICMP message (header + body)."""

    __slots__ = ("buf",)

    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        if len(buf) < HEADER_LEN:
            raise Truncated("icmp", HEADER_LEN, len(buf))
        self.buf = buf

    @property
    def type(self) -> int:
        return self.buf[0]

    @property
    def code(self) -> int:
        return self.buf[1]

    @property
    def checksum(self) -> int:
        return (self.buf[2] << 8) | self.buf[3]

    @property
    def rest(self) -> int:
        return int.from_bytes(self.buf[4:8], "big")

    @property
    def echo_id(self) -> int:
        return (self.buf[4] << 8) | self.buf[5]

    @property
    def echo_seq(self) -> int:
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def next_hop_mtu(self) -> int:
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buf)[HEADER_LEN:]

    def is_error(self) -> bool:
        return self.type in ERROR_TYPES

    def checksum_ok(self) -> bool:
        return ones_sum(self.buf) == 0xFFFF

    def __len__(self) -> int:
        return len(self.buf)

    def to_repr(self) -> "IcmpRepr":
        type_, code, _, rest = _HEADER.unpack_from(self.buf)
        return build_frozen(IcmpRepr, type=type_, code=code, rest=rest,
                            payload=bytes(self.buf[HEADER_LEN:]))


@dataclass(frozen=True)
class IcmpRepr:
    """An ICMP message as values; `payload` is echo data or the quoted datagram."""

    type: int
    code: int
    rest: int = 0
    payload: bytes = b""

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "IcmpRepr":
        return IcmpMessage(buf).to_repr()

    @classmethod
    def echo_request(cls, ident: int, seq: int, data: bytes = b"") -> "IcmpRepr":
        return cls(ECHO_REQUEST, 0, (ident << 16) | seq, data)

    @classmethod
    def echo_reply(cls, ident: int, seq: int, data: bytes = b"") -> "IcmpRepr":
        return cls(ECHO_REPLY, 0, (ident << 16) | seq, data)

    @classmethod
    def dest_unreachable(cls, code: int, quoted: bytes, next_hop_mtu: int = 0) -> "IcmpRepr":
        return cls(DEST_UNREACHABLE, code, next_hop_mtu & 0xFFFF, quoted)

    @classmethod
    def time_exceeded(cls, code: int, quoted: bytes) -> "IcmpRepr":
        return cls(TIME_EXCEEDED, code, 0, quoted)

    @property
    def echo_id(self) -> int:
        return self.rest >> 16

    @property
    def echo_seq(self) -> int:
        return self.rest & 0xFFFF

    @property
    def next_hop_mtu(self) -> int:
        return self.rest & 0xFFFF

    def __len__(self) -> int:
        return HEADER_LEN + len(self.payload)

    def build(self) -> bytes:
        """The message with a valid checksum."""
        raw = _HEADER.pack(self.type, self.code, 0, self.rest) + self.payload
        checksum = internet_checksum(raw)
        return raw[:2] + checksum.to_bytes(2, "big") + raw[4:]

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        raw = self.build()
        buf[offset:offset + len(raw)] = raw
        return offset + len(raw)


def message_type(buf: bytes | bytearray | memoryview) -> int:
    """The type byte of the message at the start of `buf` (1+ bytes)."""
    return buf[0]


def message_code(buf: bytes | bytearray | memoryview) -> int:
    """The code byte of the message at the start of `buf` (2+ bytes)."""
    return buf[1]


ECHO_TIMEVAL_LEN = 16
_TIMEVAL = struct.Struct("<qq")


def echo_timeval(seconds: int, microseconds: int) -> bytes:
    """The send time iputils' ping writes at the start of its echo data (a
    struct timeval as x86_64 lays it out: two little-endian 64-bit words)."""
    return _TIMEVAL.pack(seconds, microseconds)
