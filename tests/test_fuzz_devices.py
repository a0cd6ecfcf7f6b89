"""`python -m benchmarks.fuzz` at CI size: 20,000 random and mutated frames
into each device kind of a running cluster (vxlan and udp backends), every
one accounted for, nothing raising, a ping through afterwards. The checker
itself is shown to catch a swallowed frame and an exception.
"""

from __future__ import annotations

import random

from benchmarks.fuzz import DeviceKind, build, fuzz_kind, run

CI_FRAMES_PER_KIND = 20_000


def test_every_device_kind_survives_20000_fuzzed_frames():
    lines: list[str] = []
    assert run(CI_FRAMES_PER_KIND, seed=15, out=lines.append), "\n".join(lines)
    assert lines[-1].startswith(f"fuzz: {11 * CI_FRAMES_PER_KIND} frames in ")


def test_the_checker_reports_a_swallowed_frame_and_an_exception():
    emulated = build("vxlan")
    frame = bytes(range(64))
    silent = fuzz_kind(DeviceKind("silent", emulated, lambda data: None, [frame], l2=False), 20,
                       random.Random(1))
    assert silent.outcomes["UNACCOUNTED"] == 20 and len(silent.unaccounted) == 20

    def explode(data: bytes) -> None:
        raise IndexError("frame content reached an unchecked index")

    raising = fuzz_kind(DeviceKind("raising", emulated, explode, [frame], l2=False), 5, random.Random(1))
    assert len(raising.exceptions) == 5 and "IndexError" in raising.exceptions[0]
