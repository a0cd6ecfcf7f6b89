"""A packed batch: equal-length frames as the rows of one uint8 matrix.

Why: a batch given as `list[bytes]` costs a visit to every bytes object
before numpy can see the headers (lengths, a join), which is most of the
cost of a vectorised device. A packed batch is already the matrix. It
behaves like a read-only sequence of bytes (indexing gives one frame,
slicing gives a packed batch, iteration gives every frame), so any device
that takes `list[bytes]` also takes it; the vectorised ones (the bridge)
read `rows` directly. `emu.wire.vxlan_batch` uses the same (N, L) layout.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


class PackedFrames(Sequence[bytes]):
    """N frames of L bytes each, stored as an (N, L) uint8 matrix."""

    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray) -> None:
        if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
            raise ValueError(f"rows: expected a 2-D uint8 numpy array, got {type(rows).__name__} "
                             f"{getattr(rows, 'dtype', '')} {getattr(rows, 'shape', '')}".rstrip())
        self.rows = rows

    @classmethod
    def from_frames(cls, frames: Sequence[bytes]) -> "PackedFrames":
        """Pack frames that all have the same length."""
        if not frames:
            raise ValueError("frames: cannot pack an empty batch (its frame length is unknown)")
        length = len(frames[0])
        if any(len(frame) != length for frame in frames):
            raise ValueError("frames: a packed batch needs frames of one length")
        data = np.frombuffer(b"".join(frames), np.uint8)
        return cls(data.reshape(len(frames), length))

    @property
    def frame_length(self) -> int:
        return self.rows.shape[1]

    @property
    def lengths(self) -> np.ndarray:
        """Every frame's length (int64), as `list(map(len, batch))` would give."""
        return np.full(len(self.rows), self.rows.shape[1], np.int64)

    def take(self, indices: Sequence[int] | np.ndarray) -> "PackedFrames":
        """The frames at `indices`, in that order."""
        return PackedFrames(self.rows[np.asarray(indices, np.int64)])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return PackedFrames(self.rows[index])
        return self.rows[index].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        return iter(map(bytes, self.rows))

    def __repr__(self) -> str:
        return f"PackedFrames({len(self.rows)} x {self.rows.shape[1]} bytes)"
