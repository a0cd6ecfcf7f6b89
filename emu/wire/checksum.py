"""Internet checksums: RFC 1071 full computation, RFC 1624 incremental update.

The full sum uses the identity 2**16 == 1 (mod 0xffff): the one's-complement
sum of the 16-bit words of a buffer is the buffer read as one big integer,
reduced mod 0xffff. That runs in C inside `int.from_bytes` and `%`, which is
several times faster than summing words in a Python loop.
"""

from __future__ import annotations


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """One's-complement sum (not inverted) of `data`, padded to even length.

    Returns a value in 0..0xffff where 0xffff stands for "negative zero", as a
    real end-around-carry adder would produce for any non-zero input.
    """
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    value = int.from_bytes(data, "big") + initial
    if value == 0:
        return 0
    folded = value % 0xFFFF
    return folded or 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data` (plus an already-summed `initial` part)."""
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """One's-complement sum of the IPv4 pseudo-header used by UDP/TCP
    (src, dst, a zero byte, protocol, length): the addresses as one integer
    plus the last two words, reduced as `ones_sum` does, without packing it."""
    value = int.from_bytes(src + dst, "big") + protocol + length
    if value == 0:
        return 0
    return value % 0xFFFF or 0xFFFF


def sum_verifies(data: bytes | bytearray | memoryview, initial: int = 0) -> bool:
    """`ones_sum(data, initial) == 0xFFFF` (a received checksum verifies), in
    one step: an odd length is padded by shifting instead of copying."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    value += initial
    return value != 0 and value % 0xFFFF == 0


def incremental_update(checksum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changes.

    HC' = ~(~HC + ~m + m'). Used on forward, where only the TTL word changes,
    so the router never re-reads the whole header (what Linux's
    `ip_decrease_ttl` does with `csum_replace2`).
    """
    total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_checksum_field(computed: int) -> int:
    """Map a computed UDP checksum of 0 to 0xffff (RFC 768: 0 means "none")."""
    return computed or 0xFFFF
