"""The symmetric flow key of a frame, as the kernel's flow dissector sees it.

Why here: the VXLAN source port (udp_flow_src_port) hashes the inner flow,
which means reading the inner Ethernet, IPv4 and transport headers; that is
codec work, done once per encapsulated frame, so it reads the fields in
place. Addresses (and TCP/UDP ports) are sorted so both directions of a flow
give one key; like skb_get_hash, ICMP contributes no identifier and a
fragment no ports; a non-IPv4 frame is keyed by its MAC pair.
"""

from __future__ import annotations

from emu.wire.ethernet import DST, HEADER_LEN, SRC, TYPE, TYPE_IPV4
from emu.wire.ipv4 import FLAG_MF, MIN_HEADER_LEN, OFFSET_MASK, PROTO_TCP, PROTO_UDP, fixed_fields

_PORTED = (PROTO_TCP, PROTO_UDP)


def symmetric_flow_key(frame: bytes | bytearray | memoryview) -> bytes:
    """The bytes a symmetric flow hash of `frame` (an Ethernet frame) covers."""
    if len(frame) >= HEADER_LEN + MIN_HEADER_LEN and frame[TYPE] == TYPE_IPV4:
        ip = memoryview(frame)[HEADER_LEN:]
        version_ihl, _, _, _, flags_offset, _, protocol, _, src, dst = fixed_fields(ip)
        key = (src + dst if src <= dst else dst + src) + bytes((protocol,))
        ports = ip[(version_ihl & 0x0F) * 4:][:4]
        if protocol in _PORTED and not flags_offset & (FLAG_MF | OFFSET_MASK) and len(ports) == 4:
            first, second = bytes(ports[:2]), bytes(ports[2:])
            key += first + second if first <= second else second + first
        return key
    one, other = bytes(frame[DST]), bytes(frame[SRC])
    return one + other if one <= other else other + one
