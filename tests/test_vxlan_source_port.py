"""The VXLAN source port (udp_flow_src_port): a symmetric hash of the inner
flow, always inside the kernel's default local port range.

The reference below is the formula written out from the description (crc32
of the sorted addresses, the protocol, the sorted TCP/UDP ports of an
unfragmented packet; the sorted MAC pair for anything else), independent of
emu.wire.flow, and checked on random frames."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, strategies as st

from emu.net.vxlan import PORT_MAX, PORT_MIN, flow_source_port


def reference_port(frame: bytes) -> int:
    if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        key = b"".join(sorted((ip[12:16], ip[16:20]))) + ip[9:10]
        transport = ip[ihl:ihl + 4]
        if ip[9] in (6, 17) and not struct.unpack("!H", ip[6:8])[0] & 0x3FFF and len(transport) == 4:
            key += b"".join(sorted((transport[:2], transport[2:])))
    else:
        key = b"".join(sorted((frame[:6], frame[6:12])))
    return PORT_MIN + ((zlib.crc32(key) * (PORT_MAX - PORT_MIN)) >> 32)


def _ipv4_frame(src, dst, protocol, flags_offset, ihl_words, sport, dport, tail):
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl_words, 0, 20, 1, flags_offset, 64, protocol, 0, src, dst)
    header += bytes(4 * ihl_words - 20)
    return bytes(12) + b"\x08\x00" + header + struct.pack("!HH", sport, dport)[:tail]


ipv4_frames = st.builds(_ipv4_frame, st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
                        st.sampled_from([1, 6, 17, 47]), st.sampled_from([0, 0x4000, 0x2000, 0x0001]),
                        st.integers(5, 7), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 4))


@given(st.one_of(ipv4_frames, st.binary(min_size=14, max_size=80)))
def test_the_source_port_is_the_symmetric_flow_hash_in_range(frame):
    port = flow_source_port(frame)
    assert PORT_MIN <= port < PORT_MAX
    assert port == reference_port(frame)


@given(ipv4_frames)
def test_both_directions_of_a_flow_share_a_port(frame):
    ip = bytearray(frame[14:])
    ihl = (ip[0] & 0x0F) * 4
    ip[12:16], ip[16:20] = ip[16:20], ip[12:16]
    ip[ihl:ihl + 4] = (ip[ihl + 2:ihl + 4] + ip[ihl:ihl + 2])[:len(ip[ihl:ihl + 4])] if len(ip) >= ihl + 4 \
        else ip[ihl:ihl + 4]
    reply = frame[6:12] + frame[:6] + frame[12:14] + bytes(ip)
    assert flow_source_port(reply) == flow_source_port(frame)
