"""Verify: hold the emulator's pcaps against the real kernel's, field by field.

An independent oracle (it parses with dpkt, not with ``emu.wire``), so a bug
in the emulator's codecs cannot hide itself. ``compare_dirs`` gives the
fidelity report behind ``emu verify``; ``frame_fields`` and
``checksum_problems`` are the per-frame building blocks.
"""

from emu.verify.compare import PointResult, Report, compare_dirs, compare_frames
from emu.verify.fields import checksum_problems, frame_fields

__all__ = [
    "PointResult",
    "Report",
    "checksum_problems",
    "compare_dirs",
    "compare_frames",
    "frame_fields",
]
