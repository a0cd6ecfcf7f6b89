"""The set of capture points of one run: a pcap per interface plus one merged pcapng.

The emulator captures every interface, like running tcpdump on each device of
the real cluster. Each capture point writes ``<namespace>_<ifname>.pcap``,
the name the kernel reference captures use, and the same frames go into one
merged pcapng where the interface is named ``<namespace>/<ifname>``.

Files are opened on a point's first frame, never before: the kernel captures
have no file for an interface that saw no traffic, and neither do we. The
order of interfaces in the pcapng is the order of their first frames, so the
same sequence of calls always gives byte-identical files.

A point is itself a tap (callable like ``record``) whose ``batch_sink`` is
its capture set: the flow cache (emu/fastpath/) hands a whole replayed
burst to ``CaptureSet.record_interleaved`` as frame matrices instead of calling
every point once per frame, or leaves the set a batch to write later
(``CaptureSet.defer``: replays of many instants in one go), and the files
come out byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from emu.capture.pcap import (
    ClosingContext,
    Frame,
    PcapWriter,
    checked_frame,
    checked_linktype,
    checked_rows,
    checked_timestamp,
    checked_timestamps,
)
from emu.capture.pcapng import PcapngWriter, packet_options



class DeferredBatch(Protocol):
    """Frames someone built the description of and the set writes later (`CaptureSet.defer`)."""

    def write(self) -> None:
        """Hand every frame to `CaptureSet.record_interleaved`, in order."""
_DIRECTION_OPTIONS = {None: b"", True: packet_options(outbound=True), False: packet_options(outbound=False)}


class _MergedCapture:
    """The merged pcapng, created when the first interface is declared.

    With an `annotator` (a traced run), blocks wait in order until `flush`
    (the end of the virtual instant): a packet's comment is the decisions
    taken about it after its frame was shown to the taps. The annotator is
    called at record time and returns an object with ``packet`` (the id
    shared by every sighting of one emulated packet) and ``comment()``.
    """

    def __init__(self, path: Path, nanosecond: bool, buffered: bool = False) -> None:
        self.path = path
        self.nanosecond = nanosecond
        self.buffered = buffered
        self.annotator = None
        self._writer: PcapngWriter | None = None
        self._interfaces = 0
        self._queued: list[tuple] = []

    def add_interface(self, name: str, description: str, linktype: int) -> int:
        if self._writer is None:
            self._writer = PcapngWriter(self.path, self.buffered)
        if self.annotator is not None:
            self._queued.append((name, description, linktype))
            self._interfaces += 1
            return self._interfaces - 1
        self._interfaces += 1
        return self._writer.add_interface(name, description, linktype, self.nanosecond)

    def write(self, interface_id: int, ts_ns: int, frame: Frame, outbound: bool | None = None) -> None:
        assert self._writer is not None, "write before add_interface"
        if self.annotator is not None:
            self._queued.append((interface_id, ts_ns, bytes(frame), outbound, self.annotator()))
            return
        self._writer.append_checked(interface_id, ts_ns, frame, _DIRECTION_OPTIONS[outbound])

    def write_rows(self, ts_ns: int, frames: list[tuple]) -> None:
        assert self._writer is not None, "write before add_interface"
        self.flush_queue()
        self._writer.write_rows(ts_ns, [(interface_id, rows, _DIRECTION_OPTIONS[outbound])
                                        for interface_id, rows, outbound in frames])

    def flush_queue(self) -> None:
        """Write the blocks an annotated run held back, with their options."""
        queued, self._queued = self._queued, []
        for entry in queued:
            if len(entry) == 3:
                self._writer.add_interface(*entry, self.nanosecond)
                continue
            interface_id, ts_ns, frame, outbound, annotation = entry
            options = packet_options(outbound, annotation.packet, annotation.comment() or None) \
                if annotation is not None else _DIRECTION_OPTIONS[outbound]
            self._writer.append_checked(interface_id, ts_ns, memoryview(frame), options)

    def flush(self) -> None:
        if self._writer is not None:
            self.flush_queue()
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self.flush_queue()
            self._writer.close()


class CapturePoint:
    """One captured interface; ``record`` every frame it sends or receives
    (or call the point itself: it is a device tap)."""

    def __init__(
        self,
        namespace: str,
        ifname: str,
        linktype: int,
        description: str,
        pcap_path: Path,
        merged: _MergedCapture | None,
        nanosecond: bool,
        buffered: bool = False,
        batch_sink: "CaptureSet | None" = None,
        epoch_ns: int = 0,
        opened: "list[CapturePoint] | None" = None,
    ) -> None:
        self.namespace = namespace
        self.ifname = ifname
        self.linktype = linktype
        self.description = description
        self.pcap_path = pcap_path
        self.frames = 0
        self.batch_sink = batch_sink
        self._opened = opened  # where this point goes once its file exists
        self._merged = merged
        self._nanosecond = nanosecond
        self._buffered = buffered
        self._pcap: PcapWriter | None = None
        self._interface_id: int | None = None
        self._closed = False
        self.epoch_ns = epoch_ns

    @property
    def key(self) -> str:
        """``<namespace>_<ifname>``: the pcap file's stem and the key in counts()."""
        return f"{self.namespace}_{self.ifname}"

    with_direction = True  # devices call ``record(ts_ns, frame, outgoing)`` (emu.net.device)

    def record(self, ts_ns: int, frame: Frame, outbound: bool | None = None) -> None:
        """Write ``frame``, seen at virtual time ``ts_ns``, to this point's files
        (stamped ``epoch_ns + ts_ns``); ``outbound`` (True: the device sent
        it, False: received, None: not known) becomes the pcapng's epb_flags."""
        self._record_stamped(self.epoch_ns + checked_timestamp(ts_ns), frame, outbound)

    def _record_stamped(self, ts_ns: int, frame: Frame, outbound: bool | None = None) -> None:
        """`record` with the file timestamp already computed."""
        data = checked_frame(ts_ns, frame)  # refuse bad input before any file is created
        if self.batch_sink is not None and self.batch_sink._deferred:
            self.batch_sink._write_deferred()  # what was deferred comes first
        if self._closed:
            raise ValueError(f"capture point {self.namespace}/{self.ifname}: capture set is closed")
        if self._pcap is None:
            self._pcap = PcapWriter(self.pcap_path, self.linktype, self._nanosecond,
                                    buffered=self._buffered)
            if self._opened is not None:
                self._opened.append(self)
            if self._merged is not None:
                name = f"{self.namespace}/{self.ifname}"
                self._interface_id = self._merged.add_interface(name, self.description, self.linktype)
        self._pcap.append_checked(ts_ns, data)
        if self._merged is not None and self._interface_id is not None:
            self._merged.write(self._interface_id, ts_ns, data, outbound)
        self.frames += 1

    __call__ = record

    @property
    def ready(self) -> bool:
        """Files open and not closed: `record` would only append records."""
        return self._pcap is not None and not self._closed

    def _write_rows(self, ts_ns: int, frames: list["np.ndarray"]) -> None:
        """This point's pcap records of `CaptureSet.record_interleaved` (a ready point)."""
        self._pcap.write_rows(ts_ns, frames)
        self.frames += len(frames) * frames[0].shape[0]

    def flush(self) -> None:
        if self._pcap is not None:
            self._pcap.flush()

    def close(self) -> None:
        self._closed = True
        if self._pcap is not None:
            self._pcap.close()


def _checked_name(field: str, value: str) -> str:
    """Names become file names: refuse what would escape out_dir or be empty."""
    if not isinstance(value, str) or not value or "/" in value or "\0" in value or value in (".", ".."):
        raise ValueError(f"{field}: expected a non-empty name without '/', got {value!r}")
    return value


class CaptureSet(ClosingContext):
    """All capture points of a run, writing into ``out_dir``.

    ``nanosecond`` chooses the timestamp resolution of every file, the pcaps
    and the merged pcapng alike, so a frame has the same time in both.
    ``pcapng_name=None`` writes the per-interface pcaps only. ``epoch_ns``
    (Unix nanoseconds) is added to every timestamp: the wall-clock time of
    virtual time 0, so Wireshark shows a date, not 1970.
    """

    def __init__(self, out_dir: str | Path, pcapng_name: str | None = "all.pcapng", nanosecond: bool = False,
                 buffered: bool = False, epoch_ns: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.epoch_ns = checked_timestamp(epoch_ns)
        self.buffered = bool(buffered)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"out_dir: {self.out_dir} exists and is not a directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.nanosecond = bool(nanosecond)
        if pcapng_name is None:
            self._merged: _MergedCapture | None = None
        else:
            self._merged = _MergedCapture(self.out_dir / _checked_name("pcapng_name", pcapng_name), self.nanosecond,
                                          self.buffered)
        self._points: dict[tuple[str, str], CapturePoint] = {}
        self._opened: list[CapturePoint] = []  # the points whose file exists, in opening order
        self._keys: dict[str, tuple[str, str]] = {}
        self._deferred: list[DeferredBatch] = []
        self._closed = False

    def point(self, namespace: str, ifname: str, linktype: int, description: str) -> CapturePoint:
        """The capture point of ``namespace``/``ifname``, created on first request.

        Asking again for the same interface returns the same point; asking with
        a different linktype or description is an error, since one file cannot
        hold both.
        """
        if self._closed:
            raise ValueError("capture set is closed")
        name = (_checked_name("namespace", namespace), _checked_name("ifname", ifname))
        linktype = checked_linktype(linktype)
        if not isinstance(description, str):
            raise ValueError(f"description: expected a string, got {description!r}")
        existing = self._points.get(name)
        if existing is not None:
            if (existing.linktype, existing.description) != (linktype, description):
                raise ValueError(
                    f"point {namespace}/{ifname}: already registered with linktype {existing.linktype} "
                    f"and description {existing.description!r}"
                )
            return existing
        capture_point = CapturePoint(
            namespace,
            ifname,
            linktype,
            description,
            self.out_dir / f"{namespace}_{ifname}.pcap",
            self._merged,
            self.nanosecond,
            self.buffered,
            batch_sink=self,
            epoch_ns=self.epoch_ns,
            opened=self._opened,
        )
        clash = self._keys.get(capture_point.key)
        if clash is not None:
            taken_by = "/".join(clash)
            raise ValueError(f"point {namespace}/{ifname}: file name {capture_point.key}.pcap is taken by {taken_by}")
        self._points[name] = capture_point
        self._keys[capture_point.key] = name
        return capture_point

    def record_interleaved(self, ts_ns: int, frames: Sequence[tuple]) -> None:
        """Record a batch of frames at ``ts_ns``: for each row j, for each
        (point, matrix[, outbound]) in order, ``point.record(ts_ns, matrix[j],
        outbound)`` (``ts_ns`` may be an integer array: row j at ``ts_ns[j]``).

        The files and counters come out exactly as with those calls, but each
        file gets one block built with numpy. Why: the flow cache replays M
        datagrams at once (each matrix is one recorded frame's M copies, all
        of one length), and per-frame Python calls would cost more than the
        whole replay. A point's first frame opens its file and declares its
        interface in the pcapng between records, so a batch with such a
        point (or a closed one, which raises) records its first row frame by
        frame.
        """
        self._write_deferred()
        entries = [(entry[0], entry[1], entry[2] if len(entry) > 2 else None) for entry in frames]
        count = checked_rows(entries[0][1]).shape[0] if entries else 0
        ts_ns = checked_timestamps(self.epoch_ns + checked_timestamps(ts_ns, count), count)
        for capture_point, rows, _ in entries:
            if capture_point.batch_sink is not self:
                raise ValueError(f"point {capture_point.namespace}/{capture_point.ifname}: "
                                 "not a point of this capture set")
            checked_rows(rows, count)
        first = 0
        if count and not all(capture_point.ready for capture_point, _, _ in entries):
            first_ts = int(ts_ns[0]) if isinstance(ts_ns, np.ndarray) else ts_ns
            for capture_point, rows, outbound in entries:
                capture_point._record_stamped(first_ts, rows[0].tobytes(), outbound)
            first = 1
        if first == count:
            return
        if isinstance(ts_ns, np.ndarray) and first:
            ts_ns = ts_ns[first:]
        per_point: dict[int, tuple[CapturePoint, list]] = {}
        for capture_point, rows, _ in entries:
            per_point.setdefault(id(capture_point), (capture_point, []))[1].append(rows[first:])
        for capture_point, matrices in per_point.values():
            capture_point._write_rows(ts_ns, matrices)
        if self._merged is not None:
            self._merged.write_rows(ts_ns, [(capture_point._interface_id, rows[first:], outbound)
                                            for capture_point, rows, outbound in entries])

    def defer(self, batch: "DeferredBatch", points: Sequence[CapturePoint]) -> bool:
        """Take `batch` to write later, in order with everything else: before
        any other frame reaches this set, and at `flush`, `counts` and
        `close`, the set calls ``batch.write()``, which hands its frames to
        `record_interleaved`. False (nothing taken) when a point of
        `points` (those the batch writes to) is not this set's or has no
        file yet (opening one declares an interface between records), or
        when an annotated run must see every frame as it is recorded.

        Why: the flow cache replays a flow one datagram per instant when an
        application sends at intervals (ping -i); built and written one by
        one, its frames cost more than the replay itself. Deferred, the
        replays of many instants come out as one numpy batch, with the
        same bytes in the same order."""
        if self._closed:
            raise ValueError("capture set is closed")
        if self._merged is not None and self._merged.annotator is not None:
            return False
        if not all(point.batch_sink is self and point.ready for point in points):
            return False
        self._deferred.append(batch)
        return True

    @property
    def last_deferred(self) -> "DeferredBatch | None":
        """The batch `defer` took last, while it waits (a caller may add
        rows to it: nothing was recorded after it)."""
        return self._deferred[-1] if self._deferred else None

    def _write_deferred(self) -> None:
        if self._deferred:
            batches, self._deferred = self._deferred, []
            for batch in batches:
                batch.write()

    def annotate(self, annotator) -> None:
        """Give every packet of the merged pcapng an epb_packetid and an
        opt_comment: `annotator()`, called as a frame is recorded, returns an
        object with ``packet`` (int) and ``comment()`` (str, read at the end
        of the instant). The per-interface pcaps are unchanged."""
        if self._merged is None:
            return
        if self._merged._interfaces:
            raise ValueError("annotate: call it before the first frame is recorded")
        self._merged.annotator = annotator

    def counts(self) -> dict[str, int]:
        """Frames recorded per ``<namespace>_<ifname>``, in the order points were created."""
        self._write_deferred()
        return {capture_point.key: capture_point.frames for capture_point in self._points.values()}

    def flush(self) -> None:
        """Write every deferred batch and buffered record to disk.

        With `buffered`, whole records wait in memory until this is called
        (or a file holds RecordFile.MAX_PENDING bytes), so the files on disk
        always end on a record boundary; `emu run` stages its files and
        closes them at the end."""
        self._write_deferred()
        for capture_point in self._opened:  # a point without a file has nothing to flush
            capture_point.flush()
        if self._merged is not None:
            self._merged.flush()

    def close(self) -> None:
        """Close every file; closing twice is harmless."""
        if not self._closed:
            self._write_deferred()
        self._closed = True
        for capture_point in self._points.values():
            capture_point.close()
        if self._merged is not None:
            self._merged.close()

