"""Internet checksums of many near-identical packets, from one split sum.

Why: the flow cache rebuilds the frames of M datagrams that differ only in
a few fields (payload, IPv4 identifier, checksums). A one's-complement sum
is a sum, so a header's or a segment's checksum is the sum of its constant
bytes (computed once, with the varying fields zeroed) plus the varying
fields' sums (computed per packet, as numpy vectors). This module holds that
arithmetic next to the scalar codecs; it knows no protocol beyond "16-bit
fields at even offsets".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from emu.wire.checksum import ones_sum

if TYPE_CHECKING:
    import numpy as np

MASK = 0xFFFF


def constant_sum(buffer: bytes, start: int, stop: int, zeroed: Iterable[tuple[int, int]],
                 initial: int = 0) -> int:
    """One's-complement sum of buffer[start:stop] with every (offset, length)
    range of `zeroed` (absolute offsets) taken as zeros, plus `initial`."""
    constant = bytearray(buffer[start:stop])
    for offset, length in zeroed:
        lo, hi = max(offset, start), min(offset + length, stop)
        if lo < hi:
            constant[lo - start:hi - start] = bytes(hi - lo)
    return ones_sum(constant, initial)


def on_even_offsets(start: int, offsets: Iterable[int]) -> bool:
    """True when every varying field (or region) starts on an even offset
    from `start`, the condition for adding its sum to a sum taken from there."""
    return all((offset - start) % 2 == 0 for offset in offsets if offset >= start)


def fold_sums(sums: "np.ndarray") -> "np.ndarray":
    """One's-complement sums of uint64 totals: the end-around-carry fold of a
    positive total is its residue mod 0xffff, except that a multiple of
    0xffff folds to 0xffff; a total of 0 (all-zero data) stays 0. One
    division instead of repeated folds."""
    folded = sums % MASK
    folded[(folded == 0) & (sums != 0)] = MASK
    return folded


def checksums(constant: int, variable: "np.ndarray", zero_means_none: bool = False) -> "np.ndarray":
    """The checksum field of every packet: ~(constant + variable), folded;
    with `zero_means_none` (UDP) a computed 0 is sent as 0xffff."""
    import numpy as np

    result = ~fold_sums(variable + np.uint64(constant)) & np.uint64(MASK)
    if zero_means_none:
        result[result == 0] = MASK
    return result


def write_u16_rows(rows: "np.ndarray", offset: int, values: "np.ndarray") -> None:
    """Store big-endian 16-bit `values` (one per row) at `offset` of every row."""
    import numpy as np

    rows[:, offset] = values >> np.uint64(8)
    rows[:, offset + 1] = values & np.uint64(0xFF)


def write_u16(buf: bytearray, offset: int, value: int) -> None:
    """Store a big-endian 16-bit `value` at `offset` of one frame."""
    buf[offset] = value >> 8
    buf[offset + 1] = value & 0xFF
