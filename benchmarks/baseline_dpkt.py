"""Baseline: the pod->pod cross-node VXLAN chain done naively with dpkt objects.

The same hops as `baseline_scapy` (n1's cni0, n1 routing, flannel.1
encapsulation, the underlay switch, n2's VXLAN receive, n2 routing, n2's
cni0, delivery to p2a), each one unpacking the bytes it gets into dpkt
objects and packing them again; dpkt fills in the IPv4 and UDP checksums
it is given as 0. dpkt 1.9 has no VXLAN class, so its 8-byte header is
packed by hand.
`benchmarks.baseline.ChainCase` measures it on the emulator's own frames.
"""

from __future__ import annotations

import struct

from dpkt.ethernet import ETH_TYPE_IP, Ethernet
from dpkt.ip import IP, IP_PROTO_UDP
from dpkt.udp import UDP

from benchmarks import topology
from benchmarks.baseline import HopByHopChain
from emu.net.vxlan import flow_source_port

_VXLAN = struct.Struct("!II")
VXLAN_FLAG_I = 0x08


class DpktChain(HopByHopChain):
    """The chain's hops over dpkt packets; `forward` returns the delivered bytes."""

    def __init__(self, chain: topology.VxlanChain) -> None:
        self.chain = chain
        self.vxlan_header = _VXLAN.pack(VXLAN_FLAG_I << 24, chain.vni << 8)

    def _bridge1(self, frame: bytes) -> bytes | None:
        """n1's cni0: the frame is for the gateway MAC, so it goes up to routing."""
        return frame if Ethernet(frame).dst == self.chain.gateway1_mac else None

    @staticmethod
    def _routed(frame: bytes, src_mac: bytes, dst_mac: bytes) -> bytes:
        packet = Ethernet(frame).data
        packet.ttl -= 1
        packet.sum = 0
        return bytes(Ethernet(src=src_mac, dst=dst_mac, type=ETH_TYPE_IP, data=packet))

    def _route1(self, frame: bytes) -> bytes:
        return self._routed(frame, self.chain.vtep1_mac, self.chain.vtep2_mac)

    def _encapsulate(self, inner: bytes) -> bytes:
        chain = self.chain
        payload = self.vxlan_header + inner
        udp = UDP(sport=flow_source_port(inner), dport=chain.port, ulen=8 + len(payload),
                  data=payload)
        ip = IP(src=chain.node1_ip, dst=chain.node2_ip, ttl=64, p=IP_PROTO_UDP, id=0,
                len=20 + udp.ulen, data=udp)
        return bytes(Ethernet(src=chain.node1_mac, dst=chain.node2_mac, type=ETH_TYPE_IP, data=ip))

    def _switch(self, wire: bytes) -> bytes | None:
        return wire if Ethernet(wire).dst == self.chain.node2_mac else None

    def _decapsulate(self, wire: bytes) -> bytes | None:
        ip = Ethernet(wire).data
        if not isinstance(ip, IP) or not isinstance(ip.data, UDP) or ip.data.dport != self.chain.port:
            return None
        payload = ip.data.data
        flags, vni = _VXLAN.unpack_from(payload)
        if flags >> 24 != VXLAN_FLAG_I or vni >> 8 != self.chain.vni:
            return None
        inner = payload[_VXLAN.size:]
        return inner if Ethernet(inner).dst == self.chain.vtep2_mac else None

    def _route2(self, inner: bytes) -> bytes:
        return self._routed(inner, self.chain.gateway2_mac, self.chain.remote_pod_mac)

    def _bridge2(self, frame: bytes) -> bytes | None:
        """n2's cni0: known unicast to p2a's veth."""
        return frame if Ethernet(frame).dst == self.chain.remote_pod_mac else None

    def _deliver(self, frame: bytes) -> bytes | None:
        ip = Ethernet(frame).data
        if (isinstance(ip, IP) and ip.dst == self.chain.remote_pod_ip and isinstance(ip.data, UDP)
                and ip.data.dport == topology.RECEIVER_PORT):
            return frame
        return None

