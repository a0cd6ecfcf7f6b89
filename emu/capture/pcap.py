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
from collections import OrderedDict
from pathlib import Path
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, BinaryIO, Sequence

if TYPE_CHECKING:
    import numpy as np

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
INTERLEAVE_BLOCK_BYTES = 1 << 17  # rows of records built together (interleaved_records): fits in L2


def checked_timestamp(ts_ns: int) -> int:
    """Refuse a timestamp that is not int nanoseconds the files can hold."""
    if isinstance(ts_ns, bool) or not isinstance(ts_ns, int):
        raise TypeError(f"ts_ns: expected int nanoseconds, got {type(ts_ns).__name__}")
    if not 0 <= ts_ns < (MAX_SECONDS + 1) * NS_PER_SECOND:
        raise ValueError(f"ts_ns: {ts_ns} is outside 0 .. {MAX_SECONDS} seconds")
    return ts_ns


def checked_frame(ts_ns: int, frame: Frame) -> memoryview:
    """Validate one record's timestamp and frame; return the frame as a byte view.

    Shared by both writers so that bad input is refused before anything
    reaches the file, with an error naming the field.
    """
    checked_timestamp(ts_ns)
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise TypeError(f"frame: expected bytes, bytearray or memoryview, got {type(frame).__name__}")
    return memoryview(frame).cast("B")


def checked_timestamps(ts_ns: "int | np.ndarray", count: int) -> "int | np.ndarray":
    """`checked_timestamp` for a batch: one int for every row, or a 1-D
    integer array with one timestamp per row (`count` rows)."""
    import numpy as np

    if not isinstance(ts_ns, np.ndarray):
        return checked_timestamp(ts_ns)
    if ts_ns.ndim != 1 or ts_ns.shape[0] != count or ts_ns.dtype.kind not in "iu":
        raise TypeError(f"ts_ns: expected {count} integer nanoseconds, got {ts_ns!r:.60}")
    if count and not (int(ts_ns.min()) >= 0 and int(ts_ns.max()) < (MAX_SECONDS + 1) * NS_PER_SECOND):
        raise ValueError(f"ts_ns: a timestamp is outside 0 .. {MAX_SECONDS} seconds")
    return ts_ns.astype(np.uint64, copy=False)


def header_rows(words: Sequence["int | np.ndarray"], count: int) -> "bytes | np.ndarray":
    """Little-endian 32-bit words of a record header: packed bytes when every
    word is an int (the same header for every row), else a (count, 4 x words)
    uint8 matrix with one header per row (words given as arrays vary)."""
    import numpy as np

    if not any(isinstance(word, np.ndarray) for word in words):
        return struct.pack(f"<{len(words)}I", *words)
    out = np.empty((count, len(words)), "<u4")
    for column, word in enumerate(words):
        out[:, column] = word
    return out.view(np.uint8)


def checked_linktype(linktype: int) -> int:
    """Refuse a linktype that does not fit the files' 16-bit field."""
    if isinstance(linktype, bool) or not isinstance(linktype, int) or not 0 <= linktype <= 0xFFFF:
        raise ValueError(f"linktype: expected an int in 0..65535, got {linktype!r}")
    return linktype


def checked_rows(rows: "np.ndarray", count: int | None = None) -> "np.ndarray":
    """Refuse a frame matrix that is not uint8 (frames, length), or whose
    number of frames differs from `count` (the other matrices of one call)."""
    import numpy as np

    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
        raise TypeError(f"rows: expected a 2-dimensional uint8 numpy array, got {rows!r:.60}")
    if count is not None and rows.shape[0] != count:
        raise ValueError(f"rows: expected {count} frames like the other matrices, got {rows.shape[0]}")
    return rows


def interleaved_records(parts: Sequence[tuple[bytes, "np.ndarray", bytes]]) -> memoryview:
    """Records built with numpy: for each row j, for each part in order,
    ``head + rows[j] + tail``, all concatenated.

    Why: a replayed batch shows many equal-length frames with the same
    timestamp to each capture point, so a record's header and trailer are
    the same bytes for the whole batch; one matrix with those constant
    columns around the frame columns holds every record of the batch, in
    the order frame-by-frame writes would have produced them.
    """
    import numpy as np

    segments: list[bytes | np.ndarray] = []  # bytes: the same in every row
    for head, rows, tail in parts:
        for segment in (head, rows, tail):
            if isinstance(segment, bytes) and segments and isinstance(segments[-1], bytes):
                segments[-1] += segment
            elif not isinstance(segment, bytes) or segment:
                segments.append(segment)
    count = parts[0][1].shape[0] if parts else 0
    width = sum(len(s) if isinstance(s, bytes) else s.shape[1] for s in segments)
    out = np.empty((count, width), np.uint8)
    constants = [np.frombuffer(segment, np.uint8) if isinstance(segment, bytes) else None
                 for segment in segments]
    # Filled a block of rows at a time, column by column: a block stays in
    # the CPU cache while every segment is copied into it (a whole matrix
    # filled column by column would stream through memory once per segment).
    block = max(1, INTERLEAVE_BLOCK_BYTES // max(width, 1))
    for first in range(0, count, block):
        last = min(first + block, count)
        column = 0
        for segment, constant in zip(segments, constants):
            if constant is not None:
                out[first:last, column:column + len(constant)] = constant
                column += len(constant)
            else:
                out[first:last, column:column + segment.shape[1]] = segment[first:last]
                column += segment.shape[1]
    return memoryview(out).cast("B")  # the bytes, without copying them again


class ClosingContext(AbstractContextManager):
    """`with` support for writers: leaving the block closes the file(s)."""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _OpenFiles:
    """The files kept open, at most `limit`, least recently written closed first.

    Why: a run captures every interface, and one broadcast on the underlay of
    a 5,000-node cluster reaches 5,000 eth0s; keeping every capture file
    open would run into the process's file limit (1,024 by default). A file
    closed here is reopened to append at its next write."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._files: OrderedDict[RecordFile, BinaryIO] = OrderedDict()

    def handle(self, owner: "RecordFile", mode: str = "ab") -> BinaryIO:
        handle = self._files.get(owner)
        if handle is not None:
            self._files.move_to_end(owner)
            return handle
        while len(self._files) >= self.limit:
            self._files.popitem(last=False)[1].close()
        handle = self._files[owner] = open(owner.path, mode, buffering=0)
        return handle

    def close(self, owner: "RecordFile") -> None:
        handle = self._files.pop(owner, None)
        if handle is not None:
            handle.close()


OPEN_FILES = _OpenFiles(256)


class RecordFile:
    """An output file written in whole records.

    Unbuffered, each write (a record, or a block of whole records) is one
    write() system call. Buffered, they wait in memory until `flush()`
    writes them (`emu run` at the end, its files are staged until then;
    and a file writes out once MAX_PENDING bytes wait, so a long run or a
    huge burst does not hold the whole capture in memory):
    small records joined into one call, large blocks as they are, since
    copying them into a join costs as much as writing them. Either way the
    file on disk always ends on a record boundary, so an interrupted run
    leaves a file Wireshark opens. At most OPEN_FILES.limit files are open
    at once (see _OpenFiles).
    """

    LARGE_WRITE = 1 << 16  # bytes: a block at least this big is written without a join
    MAX_PENDING = 4 << 20  # bytes: a buffered file writes out past this (a long run, a huge burst)

    def __init__(self, path: Path, buffered: bool = False) -> None:
        self.path = path
        self.buffered = buffered
        self._closed = False
        OPEN_FILES.handle(self, "wb")  # created (or emptied) now
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0

    def write(self, record: bytes | memoryview) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        if self.buffered:
            self._pending.append(record)
            self._pending_bytes += len(record)
            if self._pending_bytes >= self.MAX_PENDING:
                self.flush()  # still whole records: memory stays bounded
        else:
            OPEN_FILES.handle(self).write(record)

    def flush(self) -> None:
        if not self._pending or self._closed:
            return
        file = OPEN_FILES.handle(self)
        small: list[bytes | memoryview] = []
        for record in self._pending:
            if len(record) < self.LARGE_WRITE:
                small.append(record)
                continue
            if small:
                file.write(b"".join(small))
                small.clear()
            file.write(record)
        if small:
            file.write(b"".join(small))
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        if not self._closed:
            self.flush()
            OPEN_FILES.close(self)
            self._closed = True


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
        head, caplen = self._record_header(ts_ns, len(data))
        self._file.write(head + data[:caplen])

    def write_rows(self, ts_ns: int, frames: Sequence["np.ndarray"]) -> None:
        """For each row j, one record of row j of each matrix in `frames`, in
        order, all seen at ``ts_ns`` (or at ``ts_ns[j]``, an array with one
        timestamp per row): the same bytes as that many `write` calls,
        written at once (whole records, also when unbuffered)."""
        count = checked_rows(frames[0]).shape[0] if frames else 0
        ts_ns = checked_timestamps(ts_ns, count)
        seconds, ns = divmod(ts_ns, NS_PER_SECOND)
        fraction = ns if self.nanosecond else ns // NS_PER_MICROSECOND
        parts = []
        for rows in frames:
            length = checked_rows(rows, count).shape[1]
            caplen = min(length, self.snaplen)
            parts.append((header_rows((seconds, fraction, caplen, length), count), rows[:, :caplen], b""))
        if count:
            self._file.write(interleaved_records(parts))

    def _record_header(self, ts_ns: int, length: int) -> tuple[bytes, int]:
        """The record header of a ``length``-byte frame, and how much of it is kept."""
        seconds, ns = divmod(ts_ns, NS_PER_SECOND)
        fraction = ns if self.nanosecond else ns // NS_PER_MICROSECOND
        caplen = min(length, self.snaplen)
        return RECORD_HEADER.pack(seconds, fraction, caplen, length), caplen

    def flush(self) -> None:
        """Write buffered records to disk (nothing to do when unbuffered)."""
        self._file.flush()

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        self._file.close()

