"""The numpy VXLAN batch codec is byte-identical to the scalar codec, frame by frame."""

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from emu.testing.strategies import ethernet_frames, vxlan_frames, vxlan_outer_headers
from emu.wire.errors import WireError
from emu.wire.vxlan import OuterHeaders, decapsulate, encapsulate
from emu.wire.vxlan_batch import decapsulate_batch, encapsulate_batch, encapsulate_rows

u16 = st.integers(0, 0xFFFF)


@st.composite
def batches(draw):
    """Several inner frames, many of one length (the vectorised case), plus others."""
    frames = draw(st.lists(ethernet_frames(), min_size=1, max_size=6))
    same = draw(st.lists(st.binary(min_size=len(frames[0]), max_size=len(frames[0])), max_size=8))
    order = draw(st.permutations(frames + same))
    return list(order)


@given(batches(), vxlan_outer_headers(), st.data())
def test_encapsulate_batch_equals_encapsulate(inner_frames, outer, data):
    n = len(inner_frames)
    idents = data.draw(st.lists(u16, min_size=n, max_size=n))
    ports = data.draw(st.none() | st.lists(u16, min_size=n, max_size=n))
    checksum = data.draw(st.booleans())
    got = encapsulate_batch(inner_frames, outer, idents, ports, udp_checksum=checksum)
    for i, inner in enumerate(inner_frames):
        port = outer.src_port if ports is None else ports[i]
        want = encapsulate(inner, replace(outer, ident=idents[i], src_port=port,
                                          udp_checksum=checksum))
        assert got[i] == want


def _scalar(frame):
    try:
        return decapsulate(frame).inner_frame
    except WireError as error:
        return error


def _damaged(frame, flips):
    """`frame` with bytes XOR-ed: each flip names a position (mod the length)."""
    frame = bytearray(frame)
    for position, value in flips:
        frame[position % len(frame)] ^= value
    return bytes(frame)


@given(st.lists(vxlan_frames(), min_size=1, max_size=6), st.integers(1, 12),
       st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), min_size=1, max_size=3),
       st.data())
def test_decapsulate_batch_equals_decapsulate(frames, copies, flips, data):
    # Copies of one frame (some damaged) make an equal-length, vectorised group.
    group = [frames[0]] * copies + [_damaged(frames[0], flips)]
    batch = data.draw(st.permutations(frames + group + [frames[0][:30], b""]))
    got = decapsulate_batch(batch)
    for frame, result in zip(batch, got):
        want = _scalar(frame)
        if isinstance(want, WireError):
            assert isinstance(result, WireError) and str(result) == str(want)
        else:
            assert result == want


def test_a_known_frame_round_trips_with_valid_checksums():
    outer = OuterHeaders(src_mac=bytes.fromhex("02420a000001"), dst_mac=bytes.fromhex("02420a000002"),
                         src_ip=bytes([172, 18, 0, 11]), dst_ip=bytes([172, 18, 0, 12]),
                         src_port=40000)
    inner = bytes(range(100))
    frames = encapsulate_batch([inner] * 3, outer, [1, 2, 0xFFFF])
    assert [f[18:20] for f in frames] == [b"\x00\x01", b"\x00\x02", b"\xff\xff"]
    assert decapsulate_batch(frames) == [inner] * 3
    broken = frames[0][:25] + bytes([frames[0][25] ^ 1]) + frames[0][26:]
    result = decapsulate_batch([broken, frames[1]])
    assert isinstance(result[0], WireError) and result[0].reason == "vxlan-outer-ip-checksum"
    assert result[1] == inner
    inner_flip = frames[2][:60] + bytes([frames[2][60] ^ 0x10]) + frames[2][61:]
    result = decapsulate_batch([frames[0], inner_flip, frames[1]])
    assert isinstance(result[1], WireError) and result[1].reason == "vxlan-udp-checksum"
    assert result[0] == result[2] == inner


@given(st.integers(14, 200), st.integers(1, 12), vxlan_outer_headers(), st.data())
def test_encapsulate_rows_equals_encapsulate(length, count, outer, data):
    import numpy as np

    inner = [data.draw(st.binary(min_size=length, max_size=length)) for _ in range(count)]
    idents = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    ports = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    matrix = np.frombuffer(b"".join(inner), np.uint8).reshape(count, length)
    rows = encapsulate_rows(matrix, outer, np.array(idents), np.array(ports), outer.udp_checksum)
    expected = [encapsulate(frame, replace(outer, ident=ident, src_port=port))
                for frame, ident, port in zip(inner, idents, ports)]
    assert [row.tobytes() for row in rows] == expected
