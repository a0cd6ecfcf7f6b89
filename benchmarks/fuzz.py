"""`python -m benchmarks.fuzz`: random and mutated frames into every device
kind of a running cluster.

Two reference clusters (vxlan and udp backends: n1 with p1a and p1b, n2
with p2a) are built; each device kind gets the same number of frames,
drawn from a seeded generator: valid frames for that entry point (ARP, ICMP
echo, UDP, a first fragment, a cross-node echo, the VXLAN or flannel-udp
encapsulation n2 would send, loopback traffic) and mutations of them: one
byte set at random (the IPv4 checksum then fixed half the time, so the
change reaches the layers above), truncation, a wrong checksum, a wrong
VNI, ARP for foreign addresses, or random bytes.

Checked for every frame: nothing raises, and the frame is accounted for:
it moved a named drop counter, or caused a transmission, a delivery, a
forwarding or reassembly state somewhere in the cluster (well-formed ARP
about other hosts is consumed silently, as Linux does: counted apart).
After the frames, virtual time runs on a minute (neighbour entries a
mutated ARP poisoned expire as on Linux) and p1a must still ping p2a.
Exit 1 if any check failed. Frames, time and findings are printed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw, raw

from emu.net import Namespace, Ping
from emu.scenario import load_scenario_text
from emu.scenario.build import EmulatedCluster, build_cluster
from emu.sim import seconds
from emu.wire.arp import ArpRepr
from emu.wire.checksum import internet_checksum

CLUSTER = """
name: fuzz-{backend}
net-conf: {{Network: 10.244.0.0/16, SubnetLen: 24, Backend: {{Type: {backend}}}}}
underlay: {{subnet: 172.18.0.0/24}}
nodes:
  - name: n1
    ip: 172.18.0.11
    subnet: 10.244.1.0/24
    pods: [{{name: p1a, ip: 10.244.1.2}}, {{name: p1b, ip: 10.244.1.3}}]
  - name: n2
    ip: 172.18.0.12
    subnet: 10.244.2.0/24
    pods: [{{name: p2a, ip: 10.244.2.2}}]
"""
P1A, P1B, P2A = "10.244.1.2", "10.244.1.3", "10.244.2.2"
N1, N2 = "172.18.0.11", "172.18.0.12"
MUTATIONS = ("valid", "field", "truncated", "checksum", "bad-vni", "foreign-arp", "random")
OUTCOMES = ("delivered", "forwarded", "fragments held", "tx", "drops")  # by precedence
FRAME_GAP_S = 0.001  # virtual time between two frames


def build(backend: str) -> EmulatedCluster:
    return build_cluster(load_scenario_text(CLUSTER.format(backend=backend)))


def namespaces(emulated: EmulatedCluster) -> list[Namespace]:
    return [*emulated.cluster.namespaces(), emulated.cluster.underlay]


def footprint(emulated: EmulatedCluster, parts: list | None = None) -> Counter:
    """Everything a frame can cause, summed over the cluster, by kind
    (`parts`: `cluster_parts(emulated)`, computed once while nothing joins)."""
    total = Counter()
    drops = delivered = forwarded = held = tx = 0
    for ns, stats in parts if parts is not None else cluster_parts(emulated):
        drops += sum(ns.drops.values())
        delivered += ns.delivered
        forwarded += ns.forwarded
        held += sum(len(q.fragments) for q in ns.stack.reassembler.queues.values())
        for counters in stats:
            drops += sum(counters.drops.values())
            tx += counters.tx_packets
    total.update({"drops": drops, "delivered": delivered, "forwarded": forwarded,
                  "fragments held": held, "tx": tx})
    return total


def cluster_parts(emulated: EmulatedCluster) -> list:
    """Every namespace with its devices' counters."""
    return [(ns, [dev.stats for dev in ns.devices.values()]) for ns in namespaces(emulated)]


def drop_reasons(emulated: EmulatedCluster) -> Counter:
    total = Counter()
    for ns in namespaces(emulated):
        total.update(ns.drops)
        for dev in ns.devices.values():
            total.update(dev.stats.drops)
    return total


def is_well_formed_arp(frame: bytes) -> bool:
    """An ARP packet that parses may be consumed silently, as Linux does
    with a request or reply about other hosts."""
    if frame[12:14] != b"\x08\x06":
        return False
    try:
        arp = ArpRepr.parse(bytes(frame[14:]))
    except ValueError:
        return False
    return arp.htype == 1 and arp.ptype == 0x0800


@dataclass
class DeviceKind:
    """One entry point: how bytes are handed to it, the valid frames to
    mutate, and where in those frames a VNI or checksums sit."""

    name: str
    cluster: EmulatedCluster
    inject: Callable[[bytes], None]
    bases: list[bytes]
    l2: bool = True  # frames start with an Ethernet header (else raw IPv4, or VXLAN)
    vni_offset: int | None = None


def _l2_bases(dst_mac: str, src_mac: str, src: str, dst: str) -> list[bytes]:
    eth = Ether(dst=dst_mac, src=src_mac)
    return [
        raw(Ether(dst="ff:ff:ff:ff:ff:ff", src=src_mac) / ARP(psrc=src, pdst=dst, hwsrc=src_mac)),
        raw(eth / IP(src=src, dst=dst) / ICMP(type=8, id=7, seq=1) / Raw(b"p" * 56)),
        raw(eth / IP(src=src, dst=dst) / UDP(sport=1234, dport=5678) / Raw(b"u" * 20)),
        raw(eth / IP(src=src, dst=dst, flags="MF") / UDP() / Raw(b"f" * 16)),
        raw(eth / IP(src=src, dst=P2A) / ICMP(type=8, id=9, seq=1) / Raw(b"x" * 56)),  # cross node
    ]


def _inner_packets() -> list[bytes]:
    """What n2's pod sends to n1's pods, as IPv4 packets."""
    return [raw(IP(src=P2A, dst=P1A, ttl=63) / ICMP(type=8, id=5, seq=1) / Raw(b"i" * 56)),
            raw(IP(src=P2A, dst=P1B, ttl=63) / UDP(sport=999, dport=53) / Raw(b"q" * 12))]


def device_kinds() -> list[DeviceKind]:
    """Every device kind of the two clusters, with its valid frames."""
    vxlan, udp = build("vxlan"), build("udp")
    kinds = []
    for emulated in (vxlan, udp):
        n1, p1a = emulated.cluster.nodes["n1"].ns, emulated.cluster.pods["p1a"].ns
        p1b_mac, p1a_mac = "0a:58:0a:f4:01:03", "0a:58:0a:f4:01:02"
        node_mac = n1.devices["eth0"].mac.hex(":")
        n2_mac = emulated.cluster.nodes["n2"].ns.devices["eth0"].mac.hex(":")
        pod_frames = _l2_bases(p1a_mac, p1b_mac, P1B, P1A)
        if emulated is vxlan:
            device = n1.devices["flannel.1"]
            remote_vtep = emulated.cluster.nodes["n2"].ns.devices["flannel.1"].mac.hex(":")
            inner = [raw(Ether(dst=device.mac.hex(":"), src=remote_vtep, type=0x0800) / Raw(packet))
                     for packet in _inner_packets()]
            encapsulated = [raw(Ether(dst=node_mac, src=n2_mac) / IP(src=N2, dst=N1)
                                / UDP(sport=40000, dport=device.port) / VXLAN(vni=1) / Raw(frame))
                            for frame in inner]
            socket = n1.stack.udp_sockets[(None, device.port)]
            kinds += [
                DeviceKind("veth (node eth0, vxlan)", emulated, n1.devices["eth0"].receive,
                           encapsulated + _l2_bases(node_mac, n2_mac, N2, N1), vni_offset=46),
                DeviceKind("bridge port", emulated, n1.devices[emulated.cluster.pods["p1a"].host_veth].receive, pod_frames),
                DeviceKind("bridge", emulated, n1.devices["cni0"].receive, pod_frames),
                DeviceKind("stack (pod eth0)", emulated, p1a.devices["eth0"].receive, pod_frames),
                DeviceKind("loopback", emulated, p1a.lo.receive,
                           [raw(Ether(dst="00:00:00:00:00:00", src="00:00:00:00:00:00")
                                / IP(src="127.0.0.1", dst="127.0.0.1") / body)
                            for body in (ICMP(type=8) / Raw(b"l" * 8), UDP(dport=7) / Raw(b"l"))]),
                DeviceKind("vxlan (flannel.1)", emulated, device.receive, inner),
                DeviceKind("vxlan decap", emulated, device.decapsulated, inner),
                DeviceKind("vxlan socket", emulated, lambda data, s=socket, n=n1: s.deliver(
                    data, (bytes([172, 18, 0, 12]), 40000), b"", n.devices["eth0"]),
                    [raw(VXLAN(vni=1) / Raw(frame)) for frame in inner], l2=False, vni_offset=4),
            ]
        else:
            socket = next(iter(n1.stack.udp_sockets.values()))
            port = socket.port if hasattr(socket, "port") else 8285
            kinds += [
                DeviceKind("veth (node eth0, udp)", emulated, n1.devices["eth0"].receive,
                           [raw(Ether(dst=node_mac, src=n2_mac) / IP(src=N2, dst=N1)
                                / UDP(sport=port, dport=port) / Raw(packet)) for packet in _inner_packets()]),
                DeviceKind("tun (flannel0)", emulated, n1.devices["flannel0"].receive,
                           _inner_packets(), l2=False),
                DeviceKind("flanneld socket", emulated, lambda data, s=socket, n=n1: s.deliver(
                    data, (bytes([172, 18, 0, 12]), port), b"", n.devices["eth0"]),
                    _inner_packets(), l2=False),
            ]
    return kinds


def _fix_ip_checksum(frame: bytearray, offset: int) -> None:
    """Recompute the IPv4 header checksum at `offset` when the IHL allows."""
    if len(frame) >= offset + 20 and frame[offset] >> 4 == 4:
        header_len = (frame[offset] & 0x0F) * 4
        if 20 <= header_len <= len(frame) - offset:
            frame[offset + 10:offset + 12] = b"\x00\x00"
            checksum = internet_checksum(bytes(frame[offset:offset + header_len]))
            frame[offset + 10:offset + 12] = checksum.to_bytes(2, "big")


def mutate(rng: random.Random, kind: DeviceKind, mutation: str) -> bytes:
    """One frame for `kind`, changed as `mutation` says."""
    frame = bytearray(rng.choice(kind.bases))
    ip_at = 14 if kind.l2 else 0
    if mutation == "field":
        for _ in range(rng.randint(1, 3)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        if rng.random() < 0.5:
            _fix_ip_checksum(frame, ip_at)
    elif mutation == "truncated":
        frame = frame[:rng.randrange(len(frame))]
    elif mutation == "checksum":
        header_len = (frame[ip_at] & 0x0F) * 4 if len(frame) > ip_at else 20
        spots = [ip_at + 10, ip_at + header_len + 2, ip_at + header_len + 6]  # IPv4, ICMP, UDP
        spot = rng.choice([s for s in spots if s < len(frame)] or [0])
        frame[spot] ^= 1 + rng.randrange(255)
    elif mutation == "bad-vni" and kind.vni_offset is not None:
        frame[kind.vni_offset:kind.vni_offset + 3] = rng.randrange(2, 1 << 24).to_bytes(3, "big")
    elif mutation == "foreign-arp" and kind.l2:
        sender = rng.randbytes(6)
        arp = b"\x00\x01\x08\x00\x06\x04" + rng.choice((b"\x00\x01", b"\x00\x02")) + sender
        arp += rng.randbytes(4) + rng.choice((b"\x00" * 6, rng.randbytes(6))) + rng.randbytes(4)
        frame = bytearray(rng.choice([b"\xff" * 6, bytes(frame[:6])]) + sender + b"\x08\x06" + arp)
    elif mutation == "random":
        frame = bytearray(rng.randbytes(rng.randrange(0, 200)))
    return bytes(frame)


@dataclass
class KindReport:
    frames: int = 0
    outcomes: Counter = field(default_factory=Counter)
    mutations: Counter = field(default_factory=Counter)
    exceptions: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)


def fuzz_kind(kind: DeviceKind, frames: int, rng: random.Random) -> KindReport:
    """Inject `frames` frames into `kind`, checking each."""
    report = KindReport()
    sim = kind.cluster.sim
    gap = seconds(FRAME_GAP_S)
    parts = cluster_parts(kind.cluster)
    for _ in range(frames):
        mutation = rng.choice(MUTATIONS)
        frame = mutate(rng, kind, mutation)
        before = footprint(kind.cluster, parts)
        try:
            kind.inject(frame)
            sim.run(until_ns=sim.now_ns + gap)
        except Exception:  # a finding: frame content must never raise
            report.exceptions.append(f"{mutation} {frame.hex()}: {traceback.format_exc(limit=3)}")
            continue
        report.frames += 1
        report.mutations[mutation] += 1
        moved = footprint(kind.cluster, parts) - before
        effects = [name for name in OUTCOMES if moved[name] > 0]
        if effects:  # what the frame itself became; drops may be its consequences' (a reply refused)
            report.outcomes[effects[0]] += 1
        elif is_well_formed_arp(frame):
            report.outcomes["arp about others (consumed)"] += 1
        else:
            report.outcomes["UNACCOUNTED"] += 1
            report.unaccounted.append(f"{mutation} {frame.hex()}")
    return report


def still_pings(emulated: EmulatedCluster) -> bool:
    """After a minute of virtual time, p1a's `ping -c 3 p2a` gets a reply."""
    sim = emulated.sim
    sim.run(until_ns=sim.now_ns + seconds(60))
    results = []
    Ping(emulated.cluster.pods["p1a"].ns, P2A, 3, 1.0, 56, None, 1.0, "want", None, False,
         f"ping -c 3 {P2A}").start(results.append)
    while not results and sim.next_time() is not None:
        sim.run(until_ns=sim.now_ns + seconds(1))
    return bool(results) and results[0].received > 0


def run(frames_per_kind: int, seed: int, out=print) -> bool:
    """Fuzz every device kind; print the findings; True when every check held."""
    rng = random.Random(seed)
    kinds = device_kinds()
    ok = True
    total = 0
    started = time.perf_counter()
    out(f"fuzz: {frames_per_kind} frames into each of {len(kinds)} device kinds, seed {seed}")
    for kind in kinds:
        report = fuzz_kind(kind, frames_per_kind, rng)
        total += report.frames + len(report.exceptions)
        outcomes = ", ".join(f"{name} {count}" for name, count in report.outcomes.most_common())
        out(f"  {kind.name:26} {report.frames + len(report.exceptions):>8} frames: {outcomes}")
        for finding in (*report.exceptions[:3], *report.unaccounted[:3]):
            out(f"    FINDING {finding}")
        ok = ok and not report.exceptions and not report.unaccounted
    for emulated in {id(kind.cluster): kind.cluster for kind in kinds}.values():
        pings = still_pings(emulated)
        out(f"  {emulated.scenario.name}: p1a still pings p2a afterwards: {'yes' if pings else 'NO'}")
        reasons = drop_reasons(emulated)
        out(f"  {emulated.scenario.name}: {len(reasons)} drop reasons seen: "
            + ", ".join(f"{name} {count}" for name, count in reasons.most_common()))
        ok = ok and pings
    elapsed = time.perf_counter() - started
    out(f"fuzz: {total} frames in {elapsed:.1f} s ({total / elapsed:,.0f} frames/s): "
        f"{'ok' if ok else 'FAILED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000,
                        help="frames per device kind (default 100000: 1,100,000 over the 11 kinds)")
    parser.add_argument("--seed", type=int, default=15, help="the generator's seed")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    return 0 if run(args.frames, args.seed) else 1


if __name__ == "__main__":
    sys.exit(main())
