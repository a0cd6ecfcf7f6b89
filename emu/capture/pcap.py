"""Classic libpcap files, written the way the kernel captures are.

The reference captures in ``shared/kernel-captures`` were taken with tcpdump:
little-endian magic, version 2.4, snaplen 262144, linktype 1 for Ethernet
devices and 101 (raw IPv4) for TUN devices. Writing the same header makes the
emulator's files comparable with them field by field.

Timestamps are integer nanoseconds of virtual time, never the wall clock, so
the same run gives byte-identical files. Every record is flushed as soon as it
is written: a run that is interrupted still leaves a file Wireshark can open.
"""

from __future__ import annotations

import struct
from pathlib import Path
from contextlib import AbstractContextManager
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, no link header: what a TUN device carries

DEFAULT_SNAPLEN = 262144  # tcpdump's default, as in the kernel captures

MAGIC_MICROSECONDS = 0xA1B2C3D4
MAGIC_NANOSECONDS = 0xA1B23C4D
VERSION_MAJOR = 2
VERSION_MINOR = 4

GLOBAL_HEADER = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, linktype
RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_frac, caplen, origlen

NS_PER_SECOND = 1_000_000_000
NS_PER_MICROSECOND = 1_000
MAX_SECONDS = 0xFFFFFFFF  # ts_sec is an unsigned 32-bit field

Frame = bytes | bytearray | memoryview


def checked_frame(ts_ns: int, frame: Frame) -> memoryview:
    """Validate one record's timestamp and frame; return the frame as a byte view.

    Shared by both writers so that bad input is refused before anything
    reaches the file, with an error naming the field.
    """
    if isinstance(ts_ns, bool) or not isinstance(ts_ns, int):
        raise TypeError(f"ts_ns: expected int nanoseconds, got {type(ts_ns).__name__}")
    if not 0 <= ts_ns < (MAX_SECONDS + 1) * NS_PER_SECOND:
        raise ValueError(f"ts_ns: {ts_ns} is outside 0 .. {MAX_SECONDS} seconds")
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise TypeError(f"frame: expected bytes, bytearray or memoryview, got {type(frame).__name__}")
    return memoryview(frame).cast("B")


def checked_linktype(linktype: int) -> int:
    """Refuse a linktype that does not fit the files' 16-bit field."""
    if isinstance(linktype, bool) or not isinstance(linktype, int) or not 0 <= linktype <= 0xFFFF:
        raise ValueError(f"linktype: expected an int in 0..65535, got {linktype!r}")
    return linktype


class ClosingContext(AbstractContextManager):
    """`with` support for writers: leaving the block closes the file(s)."""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RecordFile:
    """An output file written in whole records.

    Unbuffered, each record is one write() system call. Buffered, whole
    records wait in memory until `flush()` writes them with one call (the
    emulator flushes at the end of every virtual instant). Either way the
    file on disk always ends on a record boundary, so an interrupted run
    leaves a file Wireshark opens.
    """

    def __init__(self, path: Path, buffered: bool = False) -> None:
        self.path = path
        self.buffered = buffered
        self._file: BinaryIO | None = open(path, "wb", buffering=0)
        self._pending: list[bytes] = []

    def write(self, record: bytes) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        if self.buffered:
            self._pending.append(record)
        else:
            self._file.write(record)

    def flush(self) -> None:
        if self._pending and self._file is not None:
            self._file.write(b"".join(self._pending))
            self._pending.clear()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


class PcapWriter(ClosingContext):
    """Write one classic pcap file, one record per frame, each on disk at once
    (or, `buffered`, at the next `flush()`)."""

    def __init__(
        self,
        path: str | Path,
        linktype: int = LINKTYPE_ETHERNET,
        nanosecond: bool = False,
        snaplen: int = DEFAULT_SNAPLEN,
        buffered: bool = False,
    ) -> None:
        if isinstance(snaplen, bool) or not isinstance(snaplen, int) or not 0 < snaplen <= 0xFFFFFFFF:
            raise ValueError(f"snaplen: expected a positive 32-bit int, got {snaplen!r}")
        self.path = Path(path)
        self.linktype = checked_linktype(linktype)
        self.nanosecond = bool(nanosecond)
        self.snaplen = snaplen
        magic = MAGIC_NANOSECONDS if self.nanosecond else MAGIC_MICROSECONDS
        self._file = RecordFile(self.path, buffered)
        self._file.write(GLOBAL_HEADER.pack(magic, VERSION_MAJOR, VERSION_MINOR, 0, 0, snaplen, self.linktype))
        self._file.flush()

    def write(self, ts_ns: int, frame: Frame) -> None:
        """Append one frame captured at virtual time ``ts_ns`` (nanoseconds)."""
        self.append_checked(ts_ns, checked_frame(ts_ns, frame))

    def append_checked(self, ts_ns: int, data: memoryview) -> None:
        """`write` for a frame `checked_frame` has already vouched for (a
        capture point checks once for its pcap and the merged pcapng)."""
        seconds, ns = divmod(ts_ns, NS_PER_SECOND)
        fraction = ns if self.nanosecond else ns // NS_PER_MICROSECOND
        caplen = min(len(data), self.snaplen)
        self._file.write(RECORD_HEADER.pack(seconds, fraction, caplen, len(data)) + data[:caplen])

    def flush(self) -> None:
        """Write buffered records to disk (nothing to do when unbuffered)."""
        self._file.flush()

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        self._file.close()

