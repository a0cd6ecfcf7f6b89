"""The batch machinery of the bridge: MacIndex against a dict, Ethernet header
rows against slicing each frame, PackedFrames against a list of bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.net.mac_index import MacIndex, mac_key
from emu.wire.ethernet_batch import header_rows, mac_keys
from emu.wire.packed import PackedFrames

# A few keys that collide in a small table, plus any 48-bit key.
keys = st.one_of(st.integers(0, 40), st.integers(0, (1 << 48) - 1))
operations = st.lists(st.tuples(st.sampled_from(["insert", "remove", "get"]), keys,
                                st.integers(0, 2**31 - 1)), max_size=400)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_mac_index_behaves_like_a_dict(ops):
    index, model = MacIndex(), {}
    for op, key, value in ops:
        if op == "insert":
            index.insert(key, value)
            model[key] = value
        elif op == "remove":
            index.remove(key)
            model.pop(key, None)
        else:
            assert index.get(key) == model.get(key, -1)
    assert len(index) == len(model)
    probe = list(model) + [key + 1 for key in model if key + 1 < 1 << 48] + [0, 1, 2]
    found = index.get_many(np.array(probe, np.uint64))
    assert found.tolist() == [model.get(key, -1) for key in probe]
    stored_keys, values = index.items()
    assert dict(zip(stored_keys.tolist(), values.tolist())) == model


def test_mac_index_grows_and_reuses_tombstones():
    index = MacIndex()
    for key in range(10_000):
        index.insert(key, key)
    assert index.capacity >= 2 * 10_000
    for key in range(0, 10_000, 2):
        index.remove(key)
    capacity = index.capacity
    for key in range(20_000, 25_000):  # as many as were removed: no growth needed
        index.insert(key, key)
    assert index.capacity == capacity
    assert index.get_many(np.arange(25_000, dtype=np.uint64)).tolist() == \
        [-1 if key < 10_000 and key % 2 == 0 or 10_000 <= key < 20_000 else key for key in range(25_000)]


def test_mac_key_is_the_big_endian_integer():
    assert mac_key(b"\x02\x00\x00\x00\x01\x00") == 0x020000000100


frames_strategy = st.lists(st.binary(min_size=0, max_size=30), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(frames_strategy)
def test_header_rows_are_each_frames_first_bytes(frames):
    lengths, rows = header_rows(frames)
    assert lengths.tolist() == [len(frame) for frame in frames]
    assert [bytes(row) for row in rows] == [frame[:14].ljust(14, b"\0") for frame in frames]
    full = [frame.ljust(14, b"\0") for frame in frames]
    assert mac_keys(rows, 0).tolist() == [int.from_bytes(frame[0:6], "big") for frame in full]
    assert mac_keys(rows, 6).tolist() == [int.from_bytes(frame[6:12], "big") for frame in full]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(0, 40), st.randoms())
def test_packed_frames_read_like_a_list(count, length, rng):
    frames = [bytes(rng.randrange(256) for _ in range(length)) for _ in range(count)]
    packed = PackedFrames.from_frames(frames)
    assert len(packed) == count and list(packed) == frames
    assert [packed[i] for i in range(count)] == frames
    assert list(packed[1:]) == frames[1:]
    assert list(packed.take([count - 1, 0])) == [frames[-1], frames[0]]
    assert packed.lengths.tolist() == [length] * count
    lengths, rows = header_rows(packed)
    assert lengths.tolist() == [length] * count
    assert [bytes(row) for row in rows] == [frame[:14].ljust(14, b"\0") for frame in frames]


def test_packed_frames_refuse_what_they_cannot_hold():
    with pytest.raises(ValueError, match="one length"):
        PackedFrames.from_frames([b"ab", b"abc"])
    with pytest.raises(ValueError, match="empty"):
        PackedFrames.from_frames([])
    with pytest.raises(ValueError, match="rows"):
        PackedFrames(np.zeros(4, np.uint8))
