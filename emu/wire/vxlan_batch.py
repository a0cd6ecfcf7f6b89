"""VXLAN encap/decap over a batch of frames, vectorised with numpy.

Why: per-frame Python costs microseconds; a batch of equal-length frames is
a matrix (one frame per row), so every header field and both checksums are
computed for all rows at once. The output is byte-identical to
`emu.wire.vxlan.encapsulate` / `decapsulate` frame by frame (hypothesis
checks it); frames the vectorised decoder cannot vouch for (VLAN tags, IPv4
options, any failed check) go through the scalar decoder, which also names
the exact error.

The checksum helpers (`ones_sum_rows`, `ipv4_checksum_rows`,
`udp_checksum_rows`) work on any uint8 matrix and are shared with the flow
cache's frame templates.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from emu.wire.errors import WireError
from emu.wire.ethernet import ETHERTYPE_IPV4
from emu.wire.ipv4 import PROTO_UDP
from emu.wire.vxlan import HEADER_LEN, OuterHeaders, decapsulate, encapsulate

ETH = 14
IP = 20
UDP = 8
OUTER_LEN = ETH + IP + UDP + HEADER_LEN  # 50


# -- checksums over matrix rows ---------------------------------------------------
def ones_sum_rows(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Unfolded one's-complement sums (uint64) of rows[:, start:stop] read as
    big-endian 16-bit words (an odd tail is padded with zero)."""
    segment = rows[:, start:stop]
    high = segment[:, 0::2].sum(axis=1, dtype=np.uint64)
    low = segment[:, 1::2].sum(axis=1, dtype=np.uint64)
    return (high << np.uint64(8)) + low


def fold(sums: np.ndarray) -> np.ndarray:
    """End-around-carry fold of uint64 sums into 16 bits."""
    mask = np.uint64(0xFFFF)
    for _ in range(4):
        sums = (sums & mask) + (sums >> np.uint64(16))
    return sums


def _write_u16(rows: np.ndarray, offset: int, values: np.ndarray) -> None:
    rows[:, offset] = values >> 8
    rows[:, offset + 1] = values & 0xFF


def ipv4_checksum_rows(rows: np.ndarray, offset: int, header_len: int = IP) -> None:
    """Write a valid IPv4 header checksum into every row (header at `offset`)."""
    rows[:, offset + 10:offset + 12] = 0
    sums = fold(ones_sum_rows(rows, offset, offset + header_len))
    _write_u16(rows, offset + 10, (~sums) & np.uint64(0xFFFF))


def udp_checksum_rows(rows: np.ndarray, offset: int, length: int, pseudo: np.ndarray | int) -> None:
    """Write the UDP checksum into every row: segment at `offset`, `length`
    bytes, `pseudo` the pseudo-header sum (per row or shared); 0 becomes 0xffff."""
    rows[:, offset + 6:offset + 8] = 0
    sums = fold(ones_sum_rows(rows, offset, offset + length) + np.uint64(pseudo))
    checksum = (~sums) & np.uint64(0xFFFF)
    checksum[checksum == 0] = 0xFFFF
    _write_u16(rows, offset + 6, checksum)


def pseudo_sum(src: bytes, dst: bytes, length: int) -> int:
    """Unfolded sum of the UDP/IPv4 pseudo-header words."""
    words = src + dst
    return (sum((words[i] << 8) | words[i + 1] for i in range(0, 8, 2)) + PROTO_UDP + length)


def rows_to_bytes(rows: np.ndarray) -> list[bytes]:
    """One bytes object per row."""
    width = rows.shape[1]
    flat = rows.tobytes()
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def _groups_by_length(frames: Sequence) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for index, frame in enumerate(frames):
        groups.setdefault(len(frame), []).append(index)
    return groups


# -- encapsulation --------------------------------------------------------------
def encapsulate_batch(inner_frames: Sequence[bytes], outer: OuterHeaders, idents: Sequence[int],
                      src_ports: Sequence[int] | None = None,
                      udp_checksum: bool = True) -> list[bytes]:
    """Frame i == `encapsulate(inner_frames[i], outer)` with ident `idents[i]`,
    source port `src_ports[i]` (default `outer.src_port`) and a UDP checksum
    only when `udp_checksum` (else 0, like `noudpcsum`)."""
    if len(idents) != len(inner_frames):
        raise ValueError(f"idents: need {len(inner_frames)} values, got {len(idents)}")
    if src_ports is not None and len(src_ports) != len(inner_frames):
        raise ValueError(f"src_ports: need {len(inner_frames)} values, got {len(src_ports)}")
    result: list[bytes] = [b""] * len(inner_frames)
    for length, indices in _groups_by_length(inner_frames).items():
        inner = np.frombuffer(b"".join(bytes(inner_frames[i]) for i in indices),
                              np.uint8).reshape(len(indices), length)
        ports = None if src_ports is None else np.fromiter(
            (src_ports[i] for i in indices), np.uint64, len(indices))
        rows = encapsulate_rows(inner, outer, np.fromiter((idents[i] for i in indices), np.uint64,
                                                          len(indices)), ports, udp_checksum)
        for index, frame in zip(indices, rows_to_bytes(rows)):
            result[index] = frame
    return result


def encapsulate_rows(inner: np.ndarray, outer: OuterHeaders, idents: np.ndarray,
                     src_ports: np.ndarray | None = None, udp_checksum: bool = True) -> np.ndarray:
    """The packed-buffer form of `encapsulate_batch`: `inner` is an (N, L)
    uint8 matrix of equal-length inner frames, `idents` (and `src_ports`)
    N integers; returns the (N, L + 50) matrix of outer frames, row i equal
    to `encapsulate(inner[i], outer)` with that ident and source port.
    No per-frame Python object is made, which is what makes it fast."""
    count, length = inner.shape
    base = replace(outer, ident=0, udp_checksum=False)
    template = np.frombuffer(encapsulate(b"\x00" * length, base), np.uint8)
    rows = np.empty((count, OUTER_LEN + length), np.uint8)
    rows[:, :OUTER_LEN] = template[:OUTER_LEN]
    rows[:, OUTER_LEN:] = inner
    _write_u16(rows, ETH + 4, idents.astype(np.uint64, copy=False))
    ipv4_checksum_rows(rows, ETH)
    if src_ports is not None:
        _write_u16(rows, ETH + IP, src_ports.astype(np.uint64, copy=False))
    if udp_checksum:
        segment = UDP + HEADER_LEN + length
        udp_checksum_rows(rows, ETH + IP, segment, pseudo_sum(outer.src_ip, outer.dst_ip, 0) + segment)
    return rows


# -- decapsulation --------------------------------------------------------------
def _checked_rows(rows: np.ndarray) -> np.ndarray:
    """Rows that pass every check `decapsulate` makes (untagged Ethernet, IPv4
    without options); the rest go through the scalar decoder."""
    width = rows.shape[1]
    ok = (rows[:, 12] == ETHERTYPE_IPV4 >> 8) & (rows[:, 13] == ETHERTYPE_IPV4 & 0xFF)
    ok &= rows[:, ETH] == 0x45
    total = (rows[:, ETH + 2].astype(np.int64) << 8) | rows[:, ETH + 3]
    ok &= (total >= IP + UDP + HEADER_LEN) & (total <= width - ETH)
    ok &= fold(ones_sum_rows(rows, ETH, ETH + IP)) == 0xFFFF
    ok &= rows[:, ETH + 9] == PROTO_UDP
    ok &= ((rows[:, ETH + 6] & 0x3F) == 0) & (rows[:, ETH + 7] == 0)
    udp_len = (rows[:, ETH + IP + 4].astype(np.int64) << 8) | rows[:, ETH + IP + 5]
    ok &= (udp_len >= UDP + HEADER_LEN) & (udp_len <= total - IP)
    # The UDP checksum varies with the per-row length: check rows by length group.
    has_sum = (rows[:, ETH + IP + 6] | rows[:, ETH + IP + 7]) != 0
    for length in np.unique(udp_len[ok & has_sum]):
        select = ok & has_sum & (udp_len == length)
        part = rows[select]
        pseudo = (ones_sum_rows(part, ETH + 12, ETH + 20) + np.uint64(PROTO_UDP + int(length)))
        sums = fold(ones_sum_rows(part, ETH + IP, ETH + IP + int(length)) + pseudo)
        ok[np.flatnonzero(select)[sums != 0xFFFF]] = False
    return ok


def decapsulate_batch(frames: Sequence[bytes]) -> list[bytes | WireError]:
    """Item i == `decapsulate(frames[i]).inner_frame`, or the WireError it raises."""
    result: list[bytes | WireError] = [b""] * len(frames)
    for length, indices in _groups_by_length(frames).items():
        slow = indices
        if length >= OUTER_LEN:
            rows = np.frombuffer(b"".join(bytes(frames[i]) for i in indices),
                                 np.uint8).reshape(len(indices), length)
            ok = _checked_rows(rows)
            udp_len = (rows[:, ETH + IP + 4].astype(np.int64) << 8) | rows[:, ETH + IP + 5]
            start = ETH + IP + UDP + HEADER_LEN
            for row in np.flatnonzero(ok):
                result[indices[row]] = bytes(frames[indices[row]][start:ETH + IP + int(udp_len[row])])
            slow = [indices[row] for row in np.flatnonzero(~ok)]
        for index in slow:
            try:
                result[index] = decapsulate(frames[index]).inner_frame
            except WireError as error:
                result[index] = error
    return result
