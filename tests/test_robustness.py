"""Frame content never crashes the emulator, and every refusal has a name.

Random and garbled frames are injected, as if they arrived from the wire, into
every kind of device a cluster has: a plain veth end (node eth0), a bridge
port (veth1a), the bridge itself, a pod's eth0, the pod's lo, flannel.1
(vxlan; also its decapsulation path and its UDP socket) and flannel0 (tun).
Nothing may raise, and a frame that caused nothing (no transmission,
delivery, forwarding or reassembly state) must have been counted under a
named drop reason. Then one hand-made bad frame per layer checks that the
drop is counted under its own specific reason.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import cache

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw, raw

from benchmarks.fuzz import footprint, is_well_formed_arp
from emu.net import Namespace
from emu.wire.checksum import internet_checksum
from helpers_net import advance, two_nodes

P1A, P1A_MAC = "10.244.1.2", "0a:58:0a:f4:01:02"


@cache
def clusters():
    return {backend: two_nodes(backend=backend) for backend in ("vxlan", "udp")}


def namespaces(emulated) -> list[Namespace]:
    return [*emulated.cluster.namespaces(), emulated.cluster.underlay]


def entry_points(emulated) -> dict:
    """name -> a callable that hands bytes to one device's receive path."""
    cluster = emulated.cluster
    n1, p1a = cluster.nodes["n1"].ns, cluster.pods["p1a"].ns
    points = {
        "node-eth0 (veth end)": n1.devices["eth0"].receive,
        "bridge port": n1.devices["veth1a"].receive,
        "bridge": n1.devices["cni0"].receive,
        "pod eth0": p1a.devices["eth0"].receive,
        "pod lo": p1a.lo.receive,
    }
    if "flannel.1" in n1.devices:
        vxlan = n1.devices["flannel.1"]
        socket = n1.stack.udp_sockets[(None, vxlan.port)]
        points["vxlan"] = vxlan.receive
        points["vxlan decap"] = vxlan.decapsulated
        points["vxlan socket"] = lambda data: socket.deliver(
            data, (bytes([172, 18, 0, 12]), 40000), b"", n1.devices["eth0"])
    if "flannel0" in n1.devices:
        points["tun"] = n1.devices["flannel0"].receive
    return points


def inject_and_check(emulated, point: str, frame: bytes) -> None:
    before = footprint(emulated)
    entry_points(emulated)[point](frame)
    advance(emulated.sim, 0.001)
    after = footprint(emulated)
    if after == before:
        assert is_well_formed_arp(frame), f"{point}: {frame.hex()} vanished without a drop reason"


POINTS = sorted({name for emulated in clusters().values() for name in entry_points(emulated)})


def cluster_with(point: str):
    return next(e for e in clusters().values() if point in entry_points(e))


@given(st.sampled_from(POINTS), st.binary(max_size=160))
def test_random_bytes_never_raise_and_are_accounted_for(point, frame):
    inject_and_check(cluster_with(point), point, frame)


def valid_frames() -> list[bytes]:
    """Well-formed frames for the pod and node addresses: mutations of these
    reach deeper than random bytes do."""
    eth = Ether(dst=P1A_MAC, src="0a:58:0a:f4:01:03")
    ip = IP(src="10.244.1.3", dst=P1A)
    return [
        raw(Ether(dst="ff:ff:ff:ff:ff:ff", src="0a:58:0a:f4:01:03") / ARP(psrc="10.244.1.3", pdst=P1A,
                                                                          hwsrc="0a:58:0a:f4:01:03")),
        raw(eth / ip / ICMP(type=8, id=7, seq=1) / Raw(b"p" * 56)),
        raw(eth / ip / UDP(sport=1234, dport=5678) / Raw(b"u" * 20)),
        raw(eth / IP(src="10.244.1.3", dst="10.244.2.2", flags="MF") / UDP() / Raw(b"f" * 16)),
    ]


def with_ip_checksum(frame: bytearray) -> bytearray:
    """Recompute the IPv4 header checksum (when the IHL allows) so a mutation
    gets past it to the layers above."""
    if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
        header_len = (frame[14] & 0x0F) * 4
        if 20 <= header_len <= len(frame) - 14:
            frame[24:26] = b"\x00\x00"
            frame[24:26] = internet_checksum(bytes(frame[14:14 + header_len])).to_bytes(2, "big")
    return frame


def test_seeded_mutations_never_raise_and_are_accounted_for():
    rng = random.Random(20240611)
    bases = valid_frames()
    for _ in range(3000):
        point = rng.choice(POINTS)
        frame = bytearray(rng.choice(bases))
        if point == "tun":
            frame = frame[14:]
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        if rng.random() < 0.3:
            frame = frame[:rng.randrange(len(frame) + 1)]
        if point != "tun" and rng.random() < 0.5:
            frame = with_ip_checksum(frame)
        inject_and_check(cluster_with(point), point, bytes(frame))


# -- specific reasons --------------------------------------------------------------------

def drops_in(ns: Namespace) -> Counter:
    total = Counter(ns.drops)
    for dev in ns.devices.values():
        total.update(dev.stats.drops)
    return total


def reason_for(frame: bytes, l3: bool = False) -> dict:
    """Inject into a fresh p1a's eth0 (or, with `l3`, n1's flannel0 TUN) and
    return exactly which drop counters moved."""
    emulated = two_nodes(backend="udp")
    ns = emulated.cluster.nodes["n1"].ns if l3 else emulated.cluster.pods["p1a"].ns
    device = ns.devices["flannel0" if l3 else "eth0"]
    before = drops_in(ns)
    device.receive(frame)
    advance(emulated.sim, 0.001)
    return dict(drops_in(ns) - before)


ETH = bytes.fromhex("0a580af40102" "0a580af40103")
ETH_IP, ETH_ARP = ETH + b"\x08\x00", ETH + b"\x08\x06"


def ip_header(total_length: int, protocol: int, ihl: int = 5, fix_checksum: bool = True) -> bytes:
    header = bytearray(raw(IP(src="10.244.1.3", dst=P1A, proto=protocol, len=total_length)))[:20]
    header[0] = 0x40 | ihl
    if fix_checksum:
        header[10:12] = b"\x00\x00"
        header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header)


def test_truncated_ethernet():
    assert reason_for(ETH[:9]) == {"PKT_TOO_SMALL": 1}


def test_truncated_and_garbled_arp():
    arp = raw(ARP(psrc="10.244.1.3", pdst=P1A, hwsrc="0a:58:0a:f4:01:03"))
    assert reason_for(ETH_ARP + arp[:20]) == {"ARP_TRUNCATED": 1}
    bad_hlen = bytearray(arp)
    bad_hlen[4] = 8
    assert reason_for(ETH_ARP + bytes(bad_hlen)) == {"ARP_BAD_HEADER": 1}
    multicast_sender = raw(ARP(psrc="10.244.1.3", pdst=P1A, hwsrc="01:00:5e:00:00:01"))
    assert reason_for(ETH_ARP + multicast_sender) == {"ARP_BAD_SENDER_MAC": 1}


def test_garbled_ipv4_headers():
    good = ip_header(28, 17) + raw(UDP(sport=1, dport=2))
    bad_checksum = bytearray(good)
    bad_checksum[10] ^= 0xFF
    assert reason_for(ETH_IP + bytes(bad_checksum)) == {"IP_CSUM": 1}
    assert reason_for(ETH_IP + ip_header(28, 17, ihl=4) + bytes(8)) == {"IP_INHDR": 1}
    assert reason_for(ETH_IP + ip_header(12, 17) + bytes(8)) == {"IP_INHDR": 1}
    assert reason_for(ETH_IP + ip_header(100, 17) + bytes(8)) == {"PKT_TOO_SMALL": 1}
    assert reason_for(ETH_IP + good[:15]) == {"PKT_TOO_SMALL": 1}
    version6 = bytearray(good)
    version6[0] = 0x65
    assert reason_for(ETH_IP + bytes(version6)) == {"IP_INHDR": 1}
    assert reason_for(bytes(bad_checksum), l3=True) == {"IP_CSUM": 1}  # on the TUN too


def test_garbled_icmp():
    assert reason_for(ETH_IP + ip_header(24, 1) + b"\x08\x00\x00\x00") == {"PKT_TOO_SMALL": 1}
    echo = bytearray(raw(ICMP(type=8, id=1, seq=1) / Raw(b"e" * 8)))
    echo[2] ^= 0x55
    assert reason_for(ETH_IP + ip_header(20 + len(echo), 1) + bytes(echo)) == {"ICMP_CSUM": 1}


def test_garbled_udp():
    assert reason_for(ETH_IP + ip_header(24, 17) + bytes(4)) == {"PKT_TOO_SMALL": 1}
    bad_length = bytes.fromhex("0001 0002 0004 0000")  # length 4 < the 8-byte header
    assert reason_for(ETH_IP + ip_header(28, 17) + bad_length) == {"PKT_TOO_SMALL": 1}
    bad_checksum = bytearray(raw(IP(src="10.244.1.3", dst=P1A) / UDP(sport=1, dport=2) / Raw(b"d" * 4)))
    bad_checksum[26] ^= 0x0F
    assert reason_for(ETH_IP + bytes(bad_checksum)) == {"UDP_CSUM": 1}


def test_a_duplicate_fragment_is_a_named_drop():
    fragment = raw(IP(src="10.244.1.3", dst=P1A, flags="MF", id=99) / UDP() / Raw(b"f" * 16))
    emulated = two_nodes()
    p1a = emulated.cluster.pods["p1a"].ns
    p1a.devices["eth0"].receive(ETH_IP + fragment)
    before = drops_in(p1a)
    p1a.devices["eth0"].receive(ETH_IP + fragment)
    advance(emulated.sim, 0.001)
    assert dict(drops_in(p1a) - before) == {"DUP_FRAG": 1}
