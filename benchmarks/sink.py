"""A materialising sink: the bytes of every frame at every capture point, written nowhere.

Why: with no tap attached, the flow cache replays a datagram by adding
counters and queueing its payload on the receiving socket; no frame is built
after a flow's first datagram. A case that reports frames/s through the
cluster must build them all, or it divides counter updates by systems that
process every packet. This sink is attached exactly where `emu run` puts its
capture points (every device of every node and pod, bridges promiscuous as
tcpdump makes them) and takes whole replays the way `CaptureSet` does
(`record_interleaved`), so the emulator builds and hands over the same
frames as with capture on; the sink then makes a bytes copy of each one and
counts it, but writes no file.

`keep` also stores every (point, frame) in order, for tests that compare the
frames with the slow path's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np


class SinkPoint:
    """One device's tap: a capture point that only materialises frames."""

    def __init__(self, sink: "FrameSink", name: str) -> None:
        self.batch_sink = sink
        self.name = name
        self.frames = 0

    def __call__(self, ts_ns: int, frame: bytes) -> None:
        self.batch_sink.take(self, bytes(frame))


class FrameSink:
    """Counts (and with `keep` stores) the frames its points are shown."""

    def __init__(self, keep: bool = False) -> None:
        self.points: list[SinkPoint] = []
        self.frames = 0
        self.bytes = 0
        self.kept: list[tuple[str, bytes]] | None = [] if keep else None

    def point(self, namespace: str, ifname: str, linktype: int, description: str) -> SinkPoint:
        """The `CaptureSet.point` signature, so `emu.scenario.run._Captures` can attach us."""
        point = SinkPoint(self, f"{namespace}/{ifname}")
        self.points.append(point)
        return point

    def take(self, point: SinkPoint, data: bytes) -> None:
        point.frames += 1
        self.frames += 1
        self.bytes += len(data)
        if self.kept is not None:
            self.kept.append((point.name, data))

    def record_interleaved(self, ts_ns: int, frames: Sequence[tuple[SinkPoint, "np.ndarray", bool]]) -> None:
        """A replay: for each row j, for each (point, matrix, outgoing), the frame matrix[j].
        Each matrix becomes one bytes object (every row's bytes copied once)."""
        if not frames:
            return
        count = frames[0][1].shape[0]
        for point, rows, *_direction in frames:
            data = rows.tobytes()
            point.frames += count
            self.frames += count
            self.bytes += len(data)
        if self.kept is not None:
            for j in range(count):
                for point, rows, *_direction in frames:
                    self.kept.append((point.name, rows[j].tobytes()))

    def clear(self) -> None:
        """Forget the kept frames and the totals (the points stay attached)."""
        self.frames = self.bytes = 0
        for point in self.points:
            point.frames = 0
        if self.kept is not None:
            self.kept.clear()
