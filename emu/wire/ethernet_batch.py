"""Ethernet headers of a batch of frames, as one numpy matrix.

Why: a device that decides per frame by its header (the learning bridge:
source and destination MAC, the VLAN ethertype for its MTU check) can decide
for a whole batch at once when the headers are the rows of a matrix. Frames
of any lengths are accepted; the ones shorter than the header are zero-padded
here and recognised by their length.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emu.wire.ethernet import DST, ETHERTYPE_VLAN, HEADER_LEN, SRC, TYPE
from emu.wire.packed import PackedFrames


def header_rows(frames: Sequence[bytes], width: int = HEADER_LEN) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, rows): every frame's length (int64) and its first `width`
    bytes as a row of a (len(frames), width) uint8 matrix (zero-padded).
    A `PackedFrames` batch is read in place (no copy of the frames)."""
    count = len(frames)
    if isinstance(frames, PackedFrames):
        rows = frames.rows
        if rows.shape[1] >= width:
            return frames.lengths, rows[:, :width]
        padded = np.zeros((count, width), np.uint8)
        padded[:, :rows.shape[1]] = rows
        return frames.lengths, padded
    lengths = np.fromiter(map(len, frames), np.int64, count)
    data = np.frombuffer(b"".join(frames), np.uint8)
    if count and lengths.min() == lengths.max() and lengths[0] >= width:
        return lengths, data.reshape(count, int(lengths[0]))[:, :width]
    rows = np.zeros((count, width), np.uint8)
    if data.size:
        starts = np.cumsum(lengths) - lengths
        columns = np.arange(width)
        inside = columns < lengths[:, None]
        index = np.minimum(starts[:, None] + columns, data.size - 1)
        rows[inside] = data[index][inside]
    return lengths, rows


def mac_keys(rows: np.ndarray, column: int) -> np.ndarray:
    """The 6-byte MAC at `column` of every row as an integer (uint64), the key
    `emu.net.mac_index` uses (`int.from_bytes(mac, "big")`)."""
    padded = np.zeros((len(rows), 8), np.uint8)
    padded[:, 2:] = rows[:, column:column + 6]
    return padded.view(">u8").ravel().astype(np.uint64)


def dst_keys(rows: np.ndarray) -> np.ndarray:
    """`mac_keys` of every row's destination MAC."""
    return mac_keys(rows, DST.start)


def src_keys(rows: np.ndarray) -> np.ndarray:
    """`mac_keys` of every row's source MAC."""
    return mac_keys(rows, SRC.start)


def group_dst(rows: np.ndarray) -> np.ndarray:
    """Rows whose destination is a group address (I/G bit: multicast, broadcast)."""
    return (rows[:, DST.start] & 1) != 0


def group_src(rows: np.ndarray) -> np.ndarray:
    """Rows whose source MAC has the I/G bit set (never a valid source)."""
    return (rows[:, SRC.start] & 1) != 0


def vlan_tagged(rows: np.ndarray) -> np.ndarray:
    """Rows whose EtherType is 802.1Q (one tag, VLAN_TAG_LEN more bytes)."""
    return (rows[:, TYPE.start] == ETHERTYPE_VLAN >> 8) & (rows[:, TYPE.start + 1] == ETHERTYPE_VLAN & 0xFF)
