"""A pcapng writer: one merged file where every frame names its interface.

Classic pcap has one linktype per file and no interface names, so a whole
cluster's traffic in one file needs pcapng: an Interface Description Block
per capture point (``n1/cni0``, with the node or pod in its description) and
an Enhanced Packet Block per frame. Interfaces can be added at any time, so a
point that never sees traffic never appears.

The Section Header Block carries no host, OS or time options: the same run
must give byte-identical files on every machine. Every block is flushed as
soon as it is written, so an interrupted run leaves a readable file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from emu.capture.pcap import (
    ClosingContext,
    RecordFile,
    DEFAULT_SNAPLEN,
    NS_PER_MICROSECOND,
    Frame,
    checked_frame,
    checked_linktype,
    checked_rows,
    checked_timestamps,
    header_rows,
    interleaved_records,
)

if TYPE_CHECKING:
    import numpy as np

BLOCK_SECTION_HEADER = 0x0A0D0D0A
BLOCK_INTERFACE_DESCRIPTION = 0x00000001
BLOCK_ENHANCED_PACKET = 0x00000006

BYTE_ORDER_MAGIC = 0x1A2B3C4D
VERSION_MAJOR = 1
VERSION_MINOR = 0
SECTION_LENGTH_UNKNOWN = -1

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
EPB_FLAGS = 2
EPB_PACKETID = 5
# epb_flags bits 0-1: the direction the packet went through the interface.
DIRECTION_INBOUND = 1
DIRECTION_OUTBOUND = 2
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9

TSRESOL_NANOSECONDS = 9  # 10^-9 s per tick
TSRESOL_MICROSECONDS = 6  # 10^-6 s per tick, the pcapng default

USER_APPLICATION = "emu"

BLOCK_HEADER = struct.Struct("<II")  # block type, block total length
BLOCK_TRAILER = struct.Struct("<I")  # block total length, again
SECTION_HEADER_BODY = struct.Struct("<IHHq")  # byte-order magic, major, minor, section length
INTERFACE_BODY = struct.Struct("<HHI")  # linktype, reserved, snaplen
# Block header and packet body together: one pack per Enhanced Packet Block.
ENHANCED_PACKET_HEAD = struct.Struct("<IIIIIII")
ZERO_PADDING = b"\0\0\0"
OPTION_HEADER = struct.Struct("<HH")  # option code, option length


def _pad32(data: bytes) -> bytes:
    """Pad to the 32-bit boundary every pcapng field must end on."""
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return OPTION_HEADER.pack(code, len(value)) + _pad32(value)


def _options(*options: bytes) -> bytes:
    return b"".join(options) + OPTION_HEADER.pack(OPT_ENDOFOPT, 0)


def packet_options(outbound: bool | None = None, packet_id: int | None = None,
                   comment: str | None = None) -> bytes:
    """An Enhanced Packet Block's options: epb_flags with the direction
    (None: unknown, no flags), epb_packetid (the same id on every interface
    one packet crosses, so Wireshark can follow it), opt_comment; b"" for
    none at all (the block then ends at its data, as before options)."""
    options = []
    if comment is not None:
        if not isinstance(comment, str):
            raise ValueError(f"comment: expected a string, got {comment!r:.40}")
        options.append(_option(OPT_COMMENT, comment.encode()))
    if outbound is not None:
        options.append(_option(EPB_FLAGS, struct.pack("<I", DIRECTION_OUTBOUND if outbound else DIRECTION_INBOUND)))
    if packet_id is not None:
        if isinstance(packet_id, bool) or not isinstance(packet_id, int) or not 0 <= packet_id < 1 << 64:
            raise ValueError(f"packet_id: expected an int in 0..2^64-1, got {packet_id!r}")
        options.append(_option(EPB_PACKETID, struct.pack("<Q", packet_id)))
    return _options(*options) if options else b""


def _block(block_type: int, body: bytes) -> bytes:
    total = BLOCK_HEADER.size + len(body) + BLOCK_TRAILER.size
    return BLOCK_HEADER.pack(block_type, total) + body + BLOCK_TRAILER.pack(total)


@dataclass(frozen=True)
class _Interface:
    name: str
    linktype: int
    nanosecond: bool


class PcapngWriter(ClosingContext):
    """Write one pcapng section; interfaces are declared as they appear."""

    def __init__(self, path: str | Path, buffered: bool = False) -> None:
        self.path = Path(path)
        self._interfaces: list[_Interface] = []
        self._file = RecordFile(self.path, buffered)
        body = SECTION_HEADER_BODY.pack(BYTE_ORDER_MAGIC, VERSION_MAJOR, VERSION_MINOR, SECTION_LENGTH_UNKNOWN)
        body += _options(_option(SHB_USERAPPL, USER_APPLICATION.encode()))
        self._write_block(BLOCK_SECTION_HEADER, body)

    def add_interface(self, name: str, description: str, linktype: int, nanosecond: bool = True) -> int:
        """Declare an interface; return the id its frames are written under."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        if not isinstance(description, str):
            raise ValueError(f"description: expected a string, got {description!r}")
        interface = _Interface(name, checked_linktype(linktype), bool(nanosecond))
        tsresol = TSRESOL_NANOSECONDS if interface.nanosecond else TSRESOL_MICROSECONDS
        body = INTERFACE_BODY.pack(interface.linktype, 0, DEFAULT_SNAPLEN)
        body += _options(
            _option(IF_NAME, name.encode()),
            _option(IF_DESCRIPTION, description.encode()),
            _option(IF_TSRESOL, bytes([tsresol])),
        )
        self._write_block(BLOCK_INTERFACE_DESCRIPTION, body)
        self._interfaces.append(interface)
        return len(self._interfaces) - 1

    def write(self, interface_id: int, ts_ns: int, frame: Frame, options: bytes = b"") -> None:
        """Append one frame seen on ``interface_id`` at virtual time ``ts_ns``
        (``options``: `packet_options`)."""
        data = checked_frame(ts_ns, frame)
        self._check_interface(interface_id)
        self.append_checked(interface_id, ts_ns, data, options)

    def append_checked(self, interface_id: int, ts_ns: int, data: memoryview, options: bytes = b"") -> None:
        """`write` for an interface id this writer returned and a frame
        `checked_frame` has already vouched for: one Enhanced Packet Block
        (header, frame, padding to 32 bits, options, trailer) built in one go."""
        head, caplen, tail = self._packet_block_frame(interface_id, ts_ns, len(data), options)
        self._file.write(head + data[:caplen] + tail)

    def write_rows(self, ts_ns: int, frames: Sequence[tuple[int, "np.ndarray"] | tuple[int, "np.ndarray", bytes]]
                   ) -> None:
        """For each row j, one Enhanced Packet Block of row j of each
        (interface id, matrix) in `frames`, in order, all seen at ``ts_ns``:
        the same bytes as that many `write` calls, written at once (whole
        blocks, also when unbuffered); a third element is the pair's options."""
        count = checked_rows(frames[0][1]).shape[0] if frames else 0
        ts_ns = checked_timestamps(ts_ns, count)
        ticks = {nanosecond: ts_ns if nanosecond else ts_ns // NS_PER_MICROSECOND
                 for nanosecond in {self._interfaces[frame[0]].nanosecond for frame in frames
                                    if self._is_interface(frame[0])}}
        parts = []
        for interface_id, rows, *options in frames:
            self._check_interface(interface_id)
            length = checked_rows(rows, count).shape[1]
            interface_ticks = ticks[self._interfaces[interface_id].nanosecond]
            words, caplen, tail = self._packet_block_words(interface_id, interface_ticks, length, *options)
            parts.append((header_rows(words, count), rows[:, :caplen], tail))
        if count:
            self._file.write(interleaved_records(parts))

    def _is_interface(self, interface_id: int) -> bool:
        return not isinstance(interface_id, bool) and isinstance(interface_id, int) and (
            0 <= interface_id < len(self._interfaces))

    def _check_interface(self, interface_id: int) -> None:
        if not self._is_interface(interface_id):
            raise ValueError(
                f"interface_id: {interface_id!r} is not a declared interface "
                f"({len(self._interfaces)} declared; call add_interface first)"
            )

    def _packet_block_frame(self, interface_id: int, ts_ns: int, length: int,
                            options: bytes = b"") -> tuple[bytes, int, bytes]:
        """What surrounds a ``length``-byte frame in its Enhanced Packet Block:
        the header, how much of the frame is kept, padding to 32 bits plus
        options plus trailer."""
        ticks = ts_ns if self._interfaces[interface_id].nanosecond else ts_ns // NS_PER_MICROSECOND
        words, caplen, tail = self._packet_block_words(interface_id, ticks, length, options)
        return ENHANCED_PACKET_HEAD.pack(*words), caplen, tail

    @staticmethod
    def _packet_block_words(interface_id: int, ticks, length: int, options: bytes = b""):
        """The header's seven 32-bit words (the timestamp ones are arrays when
        `ticks` is: one per row), the kept length, and what follows the frame."""
        caplen = min(length, DEFAULT_SNAPLEN)
        padding = -caplen % 4
        total = ENHANCED_PACKET_HEAD.size + caplen + padding + len(options) + BLOCK_TRAILER.size
        words = (BLOCK_ENHANCED_PACKET, total, interface_id, ticks >> 32, ticks & 0xFFFFFFFF, caplen, length)
        return words, caplen, ZERO_PADDING[:padding] + options + BLOCK_TRAILER.pack(total)

    def _write_block(self, block_type: int, body: bytes) -> None:
        self._file.write(_block(block_type, body))

    def flush(self) -> None:
        """Write buffered blocks to disk (nothing to do when unbuffered)."""
        self._file.flush()

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        self._file.close()

