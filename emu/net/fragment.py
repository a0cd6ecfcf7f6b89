"""IPv4 fragmentation (ip_do_fragment) and reassembly (ip_defrag).

Fragmentation keeps the header length of every fragment (options that are
not "copied" become NOPs after the first fragment, like ip_options_fragment),
puts (MTU - header) rounded down to 8 bytes of data in each fragment but the
last, and emits them first to last. Reassembly keys on (src, dst, id,
protocol), drops the whole queue on overlapping fragments (Linux does since
RFC 5722's advice), and times out after 30 s with ICMP time exceeded
(reassembly) when the first fragment had arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from emu.sim import NS_PER_SECOND, Event, Scheduler
from emu.sim.timer_wheel import fire_time_ns
import emu.wire.ipv4 as ipv4
from emu.wire.ipv4 import FLAG_DF, FLAG_MF, OFFSET_MASK

IPFRAG_TIME_NS = 30 * NS_PER_SECOND
IPOPT_END = 0
IPOPT_NOOP = 1
IPOPT_COPY = 0x80


def _with_checksum(header: bytearray) -> bytes:
    ipv4.fill_checksum(header)
    return bytes(header)


def _options_for_later_fragments(options: bytes) -> bytes:
    """Replace options without the copy flag by NOPs (length unchanged)."""
    out = bytearray(options)
    i = 0
    while i < len(out):
        kind = out[i]
        if kind == IPOPT_END:
            break
        if kind == IPOPT_NOOP:
            i += 1
            continue
        length = out[i + 1] if i + 1 < len(out) else 0
        if length < 2 or i + length > len(out):
            break
        if not kind & IPOPT_COPY:
            out[i:i + length] = bytes([IPOPT_NOOP]) * length
        i += length
    return bytes(out)


def fragment(packet: bytes, mtu: int) -> list[bytes]:
    """Split an IPv4 packet (DF clear) into fragments that fit `mtu`.

    As Linux's ip_do_fragment: every fragment but the last carries a multiple
    of 8 bytes; the rest goes into one last fragment as soon as it fits the
    MTU whole, even when that is not a multiple of 8 (MTU 613: 592 + 593
    bytes of data, not 592 + 592 + 1)."""
    header_len = ipv4.header_length(packet)
    payload = packet[header_len:ipv4.total_length(packet)]
    flags_offset = ipv4.flags_offset(packet)
    base_offset = (flags_offset & OFFSET_MASK) * 8
    original_mf = flags_offset & FLAG_MF
    room = mtu - header_len
    chunk = room & ~7
    if chunk <= 0:
        raise ValueError(f"MTU {mtu} too small for a {header_len}-byte header")
    fragments = []
    later_options = _options_for_later_fragments(ipv4.options(packet))
    position = 0
    while position < len(payload):
        remaining = len(payload) - position
        data = payload[position:position + (remaining if remaining <= room else chunk)]
        last = position + len(data) >= len(payload)
        header = bytearray(packet[:header_len])
        if position:
            ipv4.set_options(header, later_options)
        ipv4.set_total_length(header, header_len + len(data))
        mf = original_mf if last else FLAG_MF
        ipv4.set_flags_offset(header, (flags_offset & ~(OFFSET_MASK | FLAG_MF | FLAG_DF)) | mf
                              | ((base_offset + position) // 8))
        fragments.append(_with_checksum(header) + bytes(data))
        position += len(data)
    return fragments


@dataclass
class _Queue:
    fragments: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    first_header: bytes | None = None
    first_packet: bytes | None = None
    total_len: int | None = None
    timer: Event | None = None
    max_size: int = 0  # the largest fragment's IPv4 length (inet_frag_queue.max_size)


class Reassembler:
    """Reassembly queues of one namespace."""

    def __init__(self, sim: Scheduler, on_timeout: Callable[[bytes], None],
                 on_drop: Callable[[str], None]) -> None:
        self.sim = sim
        self.on_timeout = on_timeout
        self.on_drop = on_drop
        self.queues: dict[tuple, _Queue] = {}

    def add(self, packet: bytes) -> bytes | None:
        """Take a fragment; return the whole datagram when it is complete."""
        whole = self.add_sized(packet)
        return None if whole is None else whole[0]

    def add_sized(self, packet: bytes) -> tuple[bytes, int] | None:
        """`add`, returning with the whole datagram the IPv4 length of its
        largest fragment (IPCB(skb)->frag_max_size, which refragmentation
        of a datagram netfilter reassembled keeps to: ip_do_fragment)."""
        header_len = ipv4.header_length(packet)
        flags_offset = ipv4.flags_offset(packet)
        offset = (flags_offset & OFFSET_MASK) * 8
        more = bool(flags_offset & FLAG_MF)
        data = bytes(ipv4.payload(packet))
        key = (ipv4.src(packet), ipv4.dst(packet), ipv4.ident(packet), ipv4.protocol(packet))
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = _Queue()
            now = self.sim.now_ns  # inet_frag's mod_timer: the timer wheel rounds it up
            # Housekeeping until the first fragment arrives: only then does
            # the timeout send an ICMP time exceeded.
            queue.timer = self.sim.call_housekeeping_at(fire_time_ns(now, now + IPFRAG_TIME_NS), self._expire,
                                                        key, quiet_if=lambda: queue.first_packet is None)
        end = offset + len(data)
        if more and len(data) % 8:
            self._discard(key, "FRAG_BAD_LENGTH")
            return None
        if not more:
            if queue.total_len is not None and queue.total_len != end:
                self._discard(key, "FRAG_INCONSISTENT_LENGTH")
                return None
            queue.total_len = end
        for other_offset, other in queue.fragments.items():
            if offset < other_offset + len(other) and other_offset < end:
                if other_offset == offset and other == data:
                    self.on_drop("DUP_FRAG")  # Linux: SKB_DROP_REASON_DUP_FRAG
                    return None
                self._discard(key, "FRAG_OVERLAP")
                return None
        if queue.total_len is not None and end > queue.total_len:
            self._discard(key, "FRAG_BEYOND_END")
            return None
        queue.fragments[offset] = data
        queue.max_size = max(queue.max_size, header_len + len(data))
        if offset == 0:
            queue.first_header = ipv4.header(packet)
            queue.first_packet = bytes(packet[:ipv4.total_length(packet)])
        if queue.total_len is None or queue.first_header is None:
            return None
        covered = 0
        for frag_offset in sorted(queue.fragments):
            if frag_offset != covered:
                return None
            covered += len(queue.fragments[frag_offset])
        if covered != queue.total_len:
            return None
        payload = b"".join(queue.fragments[o] for o in sorted(queue.fragments))
        header = bytearray(queue.first_header)
        ipv4.set_total_length(header, len(header) + len(payload))
        ipv4.set_flags_offset(header, ipv4.flags_offset(header) & ~(OFFSET_MASK | FLAG_MF))
        self._forget(key)
        return _with_checksum(header) + payload, queue.max_size

    def _forget(self, key: tuple) -> None:
        queue = self.queues.pop(key, None)
        if queue is not None and queue.timer is not None:
            queue.timer.cancel()

    def _discard(self, key: tuple, reason: str) -> None:
        self._forget(key)
        self.on_drop(reason)

    def _expire(self, key: tuple) -> None:
        queue = self.queues.pop(key, None)
        if queue is None:
            return
        self.on_drop("FRAG_REASM_TIMEOUT")
        if queue.first_packet is not None:
            self.on_timeout(queue.first_packet)
