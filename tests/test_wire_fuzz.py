"""Every emu.wire parser, fed garbage, returns a value or raises WireError.

The forwarding path catches exactly `WireError` and counts a drop; any other
exception escaping a parser (IndexError, struct.error, ...) would crash a
device. Two sources of input:
- a seeded `random` loop for volume (20,000 inputs per parser with CI=true):
  raw random bytes, random bytes with a plausible first byte, and valid frames
  cut at a header boundary, then bit-flipped and truncated;
- hypothesis for structure: mutated `vxlan_frames()` output, shrunk on failure.
A parser that returns must also leave a view whose accessors all work.
"""

from __future__ import annotations

import os
import random
from typing import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.testing.strategies import ethernet_frames, vxlan_frames
from emu.wire import WireError
from emu.wire.arp import ArpRepr
from emu.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetFrame, EthernetRepr
from emu.wire.icmp import IcmpMessage, IcmpRepr
from emu.wire.ipv4 import PROTO_ICMP, PROTO_UDP, Ipv4Packet, Ipv4Repr
from emu.wire.udp import UdpDatagram, UdpRepr
from emu.wire.vxlan import OuterHeaders, VxlanHeader, VxlanRepr, decapsulate, encapsulate

INPUTS_PER_PARSER = 20_000 if os.environ.get("CI") == "true" else 2_000
SEED = 0x5EED
ANY_IP = b"\x0a\x00\x00\x01"


def read_all(view: object) -> object:
    """Read every property and checker of a view: none may fail after parsing."""
    for name, attr in vars(type(view)).items():
        if isinstance(attr, property):
            getattr(view, name)
    for checker in ("checksum_ok", "is_fragment", "is_error"):
        if hasattr(view, checker):
            method = getattr(view, checker)
            method(ANY_IP, ANY_IP) if isinstance(view, UdpDatagram) else method()
    if hasattr(view, "__len__"):
        len(view)
    return view.to_repr()


PARSERS: dict[str, Callable[[bytes], object]] = {
    "EthernetFrame": lambda buf: read_all(EthernetFrame(buf)),
    "Ipv4Packet": lambda buf: read_all(Ipv4Packet(buf)),
    "Ipv4Packet(allow_truncated)": lambda buf: read_all(Ipv4Packet(buf, allow_truncated=True)),
    "IcmpMessage": lambda buf: read_all(IcmpMessage(buf)),
    "UdpDatagram": lambda buf: read_all(UdpDatagram(buf)),
    "VxlanHeader": lambda buf: read_all(VxlanHeader(buf)),
    "decapsulate": decapsulate,
    "EthernetRepr.parse": EthernetRepr.parse,
    "ArpRepr.parse": ArpRepr.parse,
    "Ipv4Repr.parse": Ipv4Repr.parse,
    "IcmpRepr.parse": IcmpRepr.parse,
    "UdpRepr.parse": UdpRepr.parse,
    "VxlanRepr.parse": VxlanRepr.parse,
}


def parse_or_wire_error(parse: Callable[[bytes], object], buf: bytes | memoryview) -> None:
    """The property: a value or a WireError; anything else propagates and fails."""
    try:
        parse(buf)
    except WireError:
        pass


# --- seeded corpus for volume ---

def random_bytes(rng: random.Random, low: int, high: int) -> bytes:
    return rng.randbytes(rng.randint(low, high))


def random_valid_frame(rng: random.Random) -> bytes:
    """An ARP, ICMP or UDP frame with random fields, maybe tagged, maybe VXLAN-wrapped."""
    mac, ip = (lambda: rng.randbytes(6)), (lambda: rng.randbytes(4))
    kind = rng.randrange(3)
    if kind == 0:
        ethertype = ETHERTYPE_ARP
        payload = ArpRepr(rng.randint(1, 2), mac(), ip(), mac(), ip()).build()
    else:
        ethertype = ETHERTYPE_IPV4
        options = rng.choice([b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00" * rng.randint(1, 10)])
        src, dst, data = ip(), ip(), random_bytes(rng, 0, 40)
        if kind == 1:
            segment, protocol = IcmpRepr(rng.randrange(256), rng.randrange(256),
                                         rng.getrandbits(32), data).build(), PROTO_ICMP
        else:
            segment, protocol = UdpRepr(rng.getrandbits(16), rng.getrandbits(16), len(data)).build(
                data, src, dst, with_checksum=rng.random() < 0.8), PROTO_UDP
        payload = Ipv4Repr(src, dst, protocol, len(segment), ttl=rng.randrange(256),
                           options=options).build(segment)
    tci = rng.getrandbits(16) if rng.random() < 0.2 else None
    frame = EthernetRepr(mac(), mac(), ethertype, tci).build(payload)
    if rng.random() < 0.5:
        outer = OuterHeaders(mac(), mac(), ip(), ip(), rng.getrandbits(16), vni=rng.getrandbits(24),
                             udp_checksum=rng.random() < 0.8)
        frame = encapsulate(frame, outer)
    return frame


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """Start at a header boundary, change up to 3 bytes, maybe truncate."""
    data = bytearray(frame[rng.choice([0, 0, 14, 18, 34, 42, 50]):])
    if rng.random() < 0.25:
        return bytes(data)
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        if data:
            data[rng.randrange(len(data))] = rng.choice([0, 0xFF, 0x45, rng.randrange(256)])
    if data and rng.random() < 0.5:
        del data[rng.randrange(len(data) + 1):]
    return bytes(data)


def fuzz_corpus(count: int) -> list[bytes]:
    rng = random.Random(SEED)
    corpus = []
    for _ in range(count):
        choice = rng.random()
        if choice < 0.25:
            corpus.append(random_bytes(rng, 0, 80))
        elif choice < 0.5:  # first byte that gets past the version/IHL or flags checks
            corpus.append(bytes([rng.choice([0x45, 0x46, 0x4F, 0x08, 0x00])])
                          + random_bytes(rng, 0, 80))
        else:
            corpus.append(mutate(rng, random_valid_frame(rng)))
    return corpus


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    return fuzz_corpus(INPUTS_PER_PARSER)


@pytest.mark.parametrize("name", PARSERS)
def test_seeded_inputs_give_value_or_wire_error(name: str, corpus: list[bytes]) -> None:
    parse = PARSERS[name]
    for i, buf in enumerate(corpus):
        parse_or_wire_error(parse, memoryview(buf) if i % 2 else buf)


def test_corpus_reaches_past_the_length_checks(corpus: list[bytes]) -> None:
    """Guard against a fuzz corpus that only ever exercises the first check."""
    for parse in (lambda b: Ipv4Packet(b, allow_truncated=True), UdpDatagram, decapsulate):
        accepted = 0
        for buf in corpus:
            try:
                parse(buf)
                accepted += 1
            except WireError:
                pass
        assert accepted > len(corpus) // 100


# --- hypothesis, for structure ---

mutations = st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4)


def apply(frame: bytes, changes: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(frame)
    for position, value in changes:
        data[position % len(data)] = value
    return bytes(data[:cut % (len(data) + 1)])


@given(vxlan_frames(), mutations, st.integers(0, 2000), st.sampled_from(sorted(PARSERS)))
def test_mutated_vxlan_frames_give_value_or_wire_error(frame: bytes, changes, cut: int,
                                                       name: str) -> None:
    parse_or_wire_error(PARSERS[name], apply(frame, changes, cut))


@given(vxlan_frames(inner=st.binary(max_size=40)), mutations, st.integers(0, 200))
def test_mutated_vxlan_frames_at_every_layer(frame: bytes, changes, cut: int) -> None:
    for offset in range(0, 60, 2):
        buf = apply(frame[offset:], changes, cut) if frame[offset:] else b""
        for parse in PARSERS.values():
            parse_or_wire_error(parse, buf)


@given(ethernet_frames(), st.binary(max_size=8), st.sampled_from(sorted(PARSERS)))
def test_frames_with_junk_appended_give_value_or_wire_error(frame: bytes, junk: bytes,
                                                            name: str) -> None:
    parse_or_wire_error(PARSERS[name], frame + junk)
    parse_or_wire_error(PARSERS[name], frame[14:] + junk)


@given(st.binary(max_size=100), st.sampled_from(sorted(PARSERS)))
def test_random_bytes_give_value_or_wire_error(buf: bytes, name: str) -> None:
    parse_or_wire_error(PARSERS[name], buf)
