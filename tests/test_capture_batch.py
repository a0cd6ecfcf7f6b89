"""Batched capture writes give the same files as frame-by-frame writes.

`CaptureSet.record_interleaved`, `PcapWriter.write_rows` and
`PcapngWriter.write_rows` take whole matrices of frames (the flow cache's
replayed levels). Their contract is the trace of the per-frame API: for each
row j, for each matrix in order, one `record` / `write` call. So every test
writes the same frames both ways, into two directories, and compares the
files byte for byte (and the frame counters).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.capture import LINKTYPE_ETHERNET, LINKTYPE_RAW, CaptureSet, PcapngWriter, PcapWriter
from emu.capture.pcap import DEFAULT_SNAPLEN

POINTS = [("n1", "eth0", LINKTYPE_ETHERNET), ("n1", "cni0", LINKTYPE_ETHERNET),
          ("n1", "flannel0", LINKTYPE_RAW), ("p1a", "eth0", LINKTYPE_ETHERNET)]


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def matrix(seed: int, count: int, length: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, length), dtype=np.uint8)


class Pair:
    """Two capture sets with the same points: `batched` gets `record_interleaved`,
    `single` the equivalent `record` calls."""

    def __init__(self, root: Path, nanosecond: bool, buffered: bool, pcapng_name: str | None) -> None:
        self.dirs = (root / "batched", root / "single")
        self.sets = [CaptureSet(d, pcapng_name, nanosecond, buffered) for d in self.dirs]
        self.points = [[s.point(ns, ifname, linktype, f"{ns} {ifname}") for ns, ifname, linktype in POINTS]
                       for s in self.sets]

    def level(self, ts_ns: int, entries: list[tuple[int, np.ndarray]]) -> None:
        batched, single = self.points
        self.sets[0].record_interleaved(ts_ns, [(batched[index], rows) for index, rows in entries])
        count = entries[0][1].shape[0] if entries else 0
        for j in range(count):
            for index, rows in entries:
                single[index].record(ts_ns, rows[j].tobytes())

    def frame(self, ts_ns: int, index: int, frame: bytes) -> None:
        for points in self.points:
            points[index](ts_ns, frame)  # a point is a tap: callable like record

    def assert_identical(self) -> None:
        assert files(self.dirs[0]) == files(self.dirs[1])
        assert self.sets[0].counts() == self.sets[1].counts()

    def close(self) -> None:
        for capture_set in self.sets:
            capture_set.close()


# One step: a level (timestamp, entries of (point, frame length), rows, seed)
# or a single frame on one point between levels.
levels = st.tuples(
    st.integers(0, 5 * 10**9),
    st.lists(st.tuples(st.integers(0, len(POINTS) - 1), st.integers(0, 80)), min_size=1, max_size=6),
    st.integers(0, 5),
    st.integers(0, 2**32),
)
singles = st.tuples(st.integers(0, 5 * 10**9), st.integers(0, len(POINTS) - 1), st.binary(max_size=40))


@given(steps=st.lists(st.one_of(levels, singles), min_size=1, max_size=8),
       nanosecond=st.booleans(), buffered=st.booleans(), pcapng=st.booleans())
def test_record_interleaved_matches_record_frame_by_frame(tmp_path_factory, steps, nanosecond, buffered, pcapng):
    """Random levels (points repeated within a level, points whose first frame
    is in a level, empty levels, zero-length frames) mixed with single frames."""
    pair = Pair(tmp_path_factory.mktemp("levels"), nanosecond, buffered, "all.pcapng" if pcapng else None)
    for step in steps:
        if len(step) == 4:
            ts_ns, shape, count, seed = step
            pair.level(ts_ns, [(index, matrix(seed + n, count, length))
                               for n, (index, length) in enumerate(shape)])
        else:
            pair.frame(*step)
        if not buffered:  # whole records on disk after every call
            pair.assert_identical()
    pair.close()
    pair.assert_identical()


def test_first_frames_in_a_level_declare_interfaces_between_records(tmp_path):
    """n1/eth0 is open; cni0 and p1a/eth0 see their first frame in the level:
    their interface blocks come after eth0's first packet block, in order."""
    pair = Pair(tmp_path, nanosecond=True, buffered=False, pcapng_name="all.pcapng")
    pair.frame(5, 0, b"\x01" * 20)
    pair.level(7, [(0, matrix(1, 3, 30)), (3, matrix(2, 3, 31)), (1, matrix(3, 3, 32))])
    pair.close()
    pair.assert_identical()
    blocks = []
    data = (pair.dirs[0] / "all.pcapng").read_bytes()
    offset = 0
    while offset < len(data):
        block_type, length = struct.unpack_from("<II", data, offset)
        blocks.append(block_type if block_type != 6 else ("epb", struct.unpack_from("<I", data, offset + 8)[0]))
        offset += length
    assert blocks == [0x0A0D0D0A, 1, ("epb", 0), ("epb", 0), 1, ("epb", 1), 1, ("epb", 2),
                      ("epb", 0), ("epb", 1), ("epb", 2), ("epb", 0), ("epb", 1), ("epb", 2)]
    assert pair.sets[0].counts() == {"n1_eth0": 4, "n1_cni0": 3, "n1_flannel0": 0, "p1a_eth0": 3}


def test_timestamps_in_microsecond_and_nanosecond_files(tmp_path):
    ts_ns = 3_000_123_456
    for nanosecond in (False, True):
        pair = Pair(tmp_path / str(nanosecond), nanosecond, buffered=True, pcapng_name="all.pcapng")
        pair.level(ts_ns, [(0, matrix(4, 2, 60))])
        pair.close()
        pair.assert_identical()
        record = (pair.dirs[0] / "n1_eth0.pcap").read_bytes()[24:40]
        fraction = 123_456 if nanosecond else 123
        assert struct.unpack("<IIII", record) == (3, fraction, 60, 60)


def test_frames_longer_than_the_snaplen_are_cut_in_both_files(tmp_path):
    pair = Pair(tmp_path, nanosecond=False, buffered=True, pcapng_name="all.pcapng")
    pair.level(1_000, [(0, matrix(5, 2, DEFAULT_SNAPLEN + 3)), (1, matrix(6, 2, 50))])
    pair.close()
    pair.assert_identical()
    record = (pair.dirs[0] / "n1_eth0.pcap").read_bytes()[24:40]
    assert struct.unpack("<IIII", record)[2:] == (DEFAULT_SNAPLEN, DEFAULT_SNAPLEN + 3)


@pytest.mark.parametrize("snaplen", [1, 17, 64, 100])
def test_pcap_writer_write_rows_with_a_small_snaplen(tmp_path, snaplen):
    frames = [matrix(7, 4, 64), matrix(8, 4, 3), matrix(9, 4, 0)]
    with PcapWriter(tmp_path / "rows.pcap", snaplen=snaplen, nanosecond=True) as writer:
        writer.write_rows(42, frames)
    with PcapWriter(tmp_path / "single.pcap", snaplen=snaplen, nanosecond=True) as writer:
        for j in range(4):
            for rows in frames:
                writer.write(42, rows[j].tobytes())
    assert (tmp_path / "rows.pcap").read_bytes() == (tmp_path / "single.pcap").read_bytes()


def test_pcapng_writer_write_rows_per_interface_resolution(tmp_path):
    outputs = []
    for name in ("rows", "single"):
        writer = PcapngWriter(tmp_path / f"{name}.pcapng")
        micro = writer.add_interface("a", "micro", LINKTYPE_ETHERNET, nanosecond=False)
        nano = writer.add_interface("b", "nano", LINKTYPE_RAW, nanosecond=True)
        frames = [(nano, matrix(10, 3, 41)), (micro, matrix(11, 3, 42)), (nano, matrix(12, 3, 43))]
        if name == "rows":
            writer.write_rows(7_000_001_999, frames)
        else:
            for j in range(3):
                for interface_id, rows in frames:
                    writer.write(interface_id, 7_000_001_999, rows[j].tobytes())
        writer.close()
        outputs.append((tmp_path / f"{name}.pcapng").read_bytes())
    assert outputs[0] == outputs[1]


def test_a_closed_set_refuses_a_level_like_a_frame(tmp_path):
    pair = Pair(tmp_path, nanosecond=False, buffered=True, pcapng_name="all.pcapng")
    pair.level(1, [(0, matrix(13, 2, 30))])
    pair.close()
    before = files(pair.dirs[0])
    with pytest.raises(ValueError, match="capture set is closed"):
        pair.sets[0].record_interleaved(2, [(pair.points[0][0], matrix(14, 2, 30))])
    with pytest.raises(ValueError, match="capture set is closed"):
        pair.sets[0].record_interleaved(2, [(pair.points[0][1], matrix(14, 2, 30))])  # never opened
    assert files(pair.dirs[0]) == before


def test_bad_levels_are_refused_before_anything_is_written(tmp_path):
    capture_set = CaptureSet(tmp_path / "a")
    other = CaptureSet(tmp_path / "b")
    point = capture_set.point("n1", "eth0", LINKTYPE_ETHERNET, "n1 eth0")
    stranger = other.point("n2", "eth0", LINKTYPE_ETHERNET, "n2 eth0")
    good = matrix(15, 2, 20)
    cases = [
        ((-1, [(point, good)]), ValueError, "ts_ns"),
        ((1.5, [(point, good)]), TypeError, "ts_ns"),
        ((1, [(point, good.astype(np.uint16))]), TypeError, "rows"),
        ((1, [(point, good[0])]), TypeError, "rows"),
        ((1, [(point, [[1, 2]])]), TypeError, "rows"),
        ((1, [(point, good), (point, matrix(16, 3, 20))]), ValueError, "rows"),
        ((1, [(point, good), (stranger, good)]), ValueError, "n2/eth0"),
    ]
    for args, error, field in cases:
        with pytest.raises(error, match=field):
            capture_set.record_interleaved(*args)
    assert list((tmp_path / "a").iterdir()) == []
    assert point.frames == 0
    capture_set.record_interleaved(1, [])  # an empty level is no frame at all
    capture_set.record_interleaved(1, [(point, matrix(17, 0, 20))])
    assert list((tmp_path / "a").iterdir()) == []
    capture_set.close()
    other.close()


def test_a_point_is_a_tap_whose_batch_sink_is_its_set(tmp_path):
    capture_set = CaptureSet(tmp_path)
    point = capture_set.point("n1", "eth0", LINKTYPE_ETHERNET, "n1 eth0")
    assert point.batch_sink is capture_set
    point(1, b"\x00" * 14)
    assert point.frames == 1
    capture_set.close()


# == one timestamp per row, and deferred batches (the flow cache's replays of many instants) ==
@given(rows=st.lists(st.integers(0, 4 * 10**9), min_size=1, max_size=6),
       shape=st.lists(st.tuples(st.integers(0, len(POINTS) - 1), st.integers(0, 70)), min_size=1, max_size=4),
       nanosecond=st.booleans(), seed=st.integers(0, 2**32))
def test_a_level_with_one_timestamp_per_row_matches_record_frame_by_frame(tmp_path_factory, rows, shape,
                                                                          nanosecond, seed):
    pair = Pair(tmp_path_factory.mktemp("rows"), nanosecond, True, "all.pcapng")
    pair.frame(0, 0, b"\x07" * 30)  # some points open, some first seen in the level
    times = np.array(sorted(rows), np.uint64)
    entries = [(index, matrix(seed + n, len(rows), length)) for n, (index, length) in enumerate(shape)]
    batched, single = pair.points
    pair.sets[0].record_interleaved(times, [(batched[index], matrix_) for index, matrix_ in entries])
    for j, ts_ns in enumerate(times):
        for index, matrix_ in entries:
            single[index].record(int(ts_ns), matrix_[j].tobytes())
    pair.close()
    pair.assert_identical()


def test_per_row_timestamps_are_checked(tmp_path):
    capture_set = CaptureSet(tmp_path)
    point = capture_set.point("n1", "eth0", LINKTYPE_ETHERNET, "n1 eth0")
    good = matrix(20, 2, 20)
    for times, error in ((np.array([1, 2, 3], np.uint64), TypeError), (np.array([1.0, 2.0]), TypeError),
                         (np.array([1, -1], np.int64), ValueError),
                         (np.array([1, 2**32 * 10**9], np.uint64), ValueError)):
        with pytest.raises(error, match="ts_ns"):
            capture_set.record_interleaved(times, [(point, good)])
    assert point.frames == 0 and list(tmp_path.iterdir()) == []
    capture_set.close()


class Batch:
    """A deferred batch: what it writes when the set asks (`CaptureSet.defer`)."""

    def __init__(self, capture_set: CaptureSet, times: list[int], entries: list) -> None:
        self.capture_set, self.times, self.entries = capture_set, times, entries
        self.written = 0

    def write(self) -> None:
        self.written += 1
        self.capture_set.record_interleaved(np.array(self.times, np.uint64), self.entries)


def test_a_deferred_batch_is_written_before_anything_recorded_after_it(tmp_path):
    """Deferred rows land where they were deferred: before a later frame on
    another point (the merged pcapng's order), at counts(), flush() and
    close(), each batch once; the files equal recording everything at once."""
    pair = Pair(tmp_path, nanosecond=True, buffered=True, pcapng_name="all.pcapng")
    batched, single = pair.points
    pair.frame(1, 0, b"\x01" * 20)
    pair.frame(1, 3, b"\x02" * 20)
    rows = [matrix(30, 3, 40), matrix(31, 3, 41)]
    batch = Batch(pair.sets[0], [2, 3, 4], [(batched[0], rows[0]), (batched[3], rows[1])])
    assert pair.sets[0].defer(batch, [batched[0], batched[3]])
    assert pair.sets[0].last_deferred is batch and batch.written == 0
    for j, ts_ns in enumerate((2, 3, 4)):
        single[0].record(ts_ns, rows[0][j].tobytes())
        single[3].record(ts_ns, rows[1][j].tobytes())
    pair.frame(5, 1, b"\x03" * 20)  # cni0's first frame: after the batch, in both files
    assert batch.written == 1 and pair.sets[0].last_deferred is None
    later = Batch(pair.sets[0], [6], [(batched[1], matrix(32, 1, 9))])
    assert pair.sets[0].defer(later, [batched[1]])
    single[1].record(6, later.entries[0][1][0].tobytes())
    assert pair.sets[0].counts() == pair.sets[1].counts()  # counts() writes what waits
    assert later.written == 1
    final = Batch(pair.sets[0], [7, 7], [(batched[0], matrix(33, 2, 12))])
    assert pair.sets[0].defer(final, [batched[0]])
    for j in range(2):
        single[0].record(7, final.entries[0][1][j].tobytes())
    pair.close()
    assert (batch.written, later.written, final.written) == (1, 1, 1)
    pair.assert_identical()


def test_defer_declines_what_it_cannot_write_in_order(tmp_path):
    """A point without a file yet (its interface block would come between
    records), another set's point, an annotated merged file: declined, nothing
    taken; a closed set refuses."""
    capture_set = CaptureSet(tmp_path / "a")
    other = CaptureSet(tmp_path / "b")
    point = capture_set.point("n1", "eth0", LINKTYPE_ETHERNET, "n1 eth0")
    fresh = capture_set.point("n1", "cni0", LINKTYPE_ETHERNET, "n1 cni0")
    stranger = other.point("n2", "eth0", LINKTYPE_ETHERNET, "n2 eth0")
    point(1, b"\x01" * 20)
    stranger(1, b"\x01" * 20)
    batch = Batch(capture_set, [2], [(point, matrix(40, 1, 20))])
    assert not capture_set.defer(batch, [point, fresh])
    assert not capture_set.defer(batch, [point, stranger])
    assert capture_set.last_deferred is None
    capture_set.close()
    with pytest.raises(ValueError, match="capture set is closed"):
        capture_set.defer(batch, [point])
    annotated = CaptureSet(tmp_path / "c")
    annotated.annotate(lambda: None)
    noted = annotated.point("n1", "eth0", LINKTYPE_ETHERNET, "n1 eth0")
    noted(1, b"\x01" * 20)
    assert noted.ready and not annotated.defer(Batch(annotated, [2], []), [noted])
    annotated.close()
    other.close()
    assert batch.written == 0
