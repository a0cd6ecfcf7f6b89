"""Baseline: the pod->pod cross-node VXLAN chain done naively with dpkt objects.

The same work as `cross_node_vxlan_slow_path`, frame for frame: the chain
holds the bytes of the frame at each of the 10 capture points the emulator's
taps see (p1a eth0, n1 veth, n1 cni0, n1 flannel.1, n1 eth0, n2 eth0, n2
flannel.1, n2 cni0, n2 veth, p2a eth0), and checks at each hop what the
emulator's device checks: n1 and n2 route (IPv4 header checksum, TTL, MTU,
then TTL - 1 and MACs rewritten), flannel.1 encapsulates (outer
Ethernet/IPv4/UDP/VXLAN with n1's next IPv4 identifier and a full UDP
checksum), n2 receives it (outer IPv4 and UDP checksums, port, VXLAN flags
and VNI, inner MACs), p2a's IPv4 and UDP input (both checksums, address,
port). Each hop unpacks the bytes it gets into dpkt objects and packs them
again; dpkt fills in the checksums it is given as 0 and verifies none, so
the checks use `dpkt.in_cksum` on the received bytes. dpkt 1.9 has no VXLAN
class, so its 8-byte header is packed by hand. The chain does no table
lookups (see `benchmarks.baseline.HopByHopChain`).
`benchmarks.baseline.ChainCase` measures it on the emulator's own frames and
checks it builds the emulator's frames at every point.
"""

from __future__ import annotations

import struct

from dpkt import in_cksum, in_cksum_add, in_cksum_done
from dpkt.ethernet import ETH_TYPE_IP, Ethernet
from dpkt.ip import IP, IP_PROTO_UDP
from dpkt.udp import UDP

from benchmarks import topology
from benchmarks.baseline import HopByHopChain
from emu.net.vxlan import flow_source_port

_VXLAN = struct.Struct("!II")
_PSEUDO = struct.Struct("!4s4sxBH")
VXLAN_FLAG_I = 0x08


def _ip_header_ok(frame: bytes, ip: IP) -> bool:
    """The IPv4 header checksum of `frame` (an Ethernet frame) verifies."""
    return in_cksum(frame[14:14 + ip.hl * 4]) == 0


def _udp_ok(ip: IP) -> bool:
    """The UDP checksum verifies (0: none was sent)."""
    udp = ip.data
    if udp.sum == 0:
        return True
    segment = bytes(udp)
    total = in_cksum_add(0, _PSEUDO.pack(ip.src, ip.dst, IP_PROTO_UDP, len(segment)))
    return in_cksum_done(in_cksum_add(total, segment)) == 0


class DpktChain(HopByHopChain):
    """The chain's hops over dpkt packets; `forward` returns every point's bytes."""

    def __init__(self, chain: topology.VxlanChain) -> None:
        super().__init__(chain)
        self.vxlan_header = _VXLAN.pack(VXLAN_FLAG_I << 24, chain.vni << 8)

    def _bridge1(self, frame: bytes) -> bytes | None:
        """n1's cni0: the frame is for the gateway MAC, so it goes up to routing."""
        return frame if Ethernet(frame).dst == self.chain.gateway1_mac else None

    @staticmethod
    def _routed(frame: bytes, src_mac: bytes, dst_mac: bytes, mtu: int) -> bytes | None:
        packet = Ethernet(frame).data
        if (not isinstance(packet, IP) or not _ip_header_ok(frame, packet) or packet.ttl <= 1
                or packet.len > mtu):
            return None
        packet.ttl -= 1
        packet.sum = 0
        return bytes(Ethernet(src=src_mac, dst=dst_mac, type=ETH_TYPE_IP, data=packet))

    def _route1(self, frame: bytes) -> bytes | None:
        chain = self.chain
        return self._routed(frame, chain.vtep1_mac, chain.vtep2_mac, chain.vtep1_mtu)

    def _encapsulate(self, inner: bytes) -> bytes:
        chain = self.chain
        payload = self.vxlan_header + inner
        udp = UDP(sport=flow_source_port(inner), dport=chain.port, ulen=8 + len(payload),
                  data=payload)
        ip = IP(src=chain.node1_ip, dst=chain.node2_ip, ttl=64, p=IP_PROTO_UDP,
                id=self.next_ident(), len=20 + udp.ulen, data=udp)
        return bytes(Ethernet(src=chain.node1_mac, dst=chain.node2_mac, type=ETH_TYPE_IP, data=ip))

    def _switch(self, wire: bytes) -> bytes | None:
        return wire if Ethernet(wire).dst == self.chain.node2_mac else None

    def _decapsulate(self, wire: bytes) -> bytes | None:
        ip = Ethernet(wire).data
        if (not isinstance(ip, IP) or not _ip_header_ok(wire, ip) or not isinstance(ip.data, UDP)
                or ip.data.dport != self.chain.port or not _udp_ok(ip)):
            return None
        payload = ip.data.data
        flags, vni = _VXLAN.unpack_from(payload)
        if flags != VXLAN_FLAG_I << 24 or vni != self.chain.vni << 8:
            return None
        inner = payload[_VXLAN.size:]
        frame = Ethernet(inner)
        return inner if frame.dst == self.chain.vtep2_mac and frame.src != frame.dst else None

    def _route2(self, inner: bytes) -> bytes | None:
        chain = self.chain
        return self._routed(inner, chain.gateway2_mac, chain.remote_pod_mac, chain.gateway2_mtu)

    def _bridge2(self, frame: bytes) -> bytes | None:
        """n2's cni0: known unicast to p2a's veth."""
        return frame if Ethernet(frame).dst == self.chain.remote_pod_mac else None

    def _deliver(self, frame: bytes) -> bool:
        """p2a's eth0 up to its UDP socket."""
        ethernet = Ethernet(frame)
        ip = ethernet.data
        return (ethernet.dst == self.chain.remote_pod_mac and isinstance(ip, IP)
                and _ip_header_ok(frame, ip) and ip.dst == self.chain.remote_pod_ip
                and isinstance(ip.data, UDP) and ip.data.dport == topology.RECEIVER_PORT
                and _udp_ok(ip))
