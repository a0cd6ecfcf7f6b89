"""Baseline: the pod->pod cross-node VXLAN chain done naively with scapy objects.

What someone would write without an emulator: at every hop, dissect the
bytes into scapy layers, check / rewrite / re-encapsulate, and build the
bytes again. The same work as `cross_node_vxlan_slow_path`, frame for frame
(the same points and checks as `benchmarks.baseline_dpkt`): the chain holds
the bytes of the frame at each of the 10 capture points the emulator's taps
see; n1 and n2 route (IPv4 header checksum, TTL, MTU, then TTL - 1 and MACs
rewritten), flannel.1 encapsulates (outer Ethernet/IPv4/UDP/VXLAN, n1's
next IPv4 identifier, checksums filled in by scapy), n2 receives it (outer
IPv4 and UDP checksums, port, VXLAN flags and VNI, inner MACs), p2a's IPv4
and UDP input (both checksums, address, port). scapy verifies no checksum
when it dissects, so the checks use `scapy.utils.checksum` and
`in4_chksum` on the received bytes. No table lookups (see
`benchmarks.baseline.HopByHopChain`).
`benchmarks.baseline.ChainCase` measures it on the emulator's own frames and
checks it builds the emulator's frames at every point.
"""

from __future__ import annotations

from scapy.layers.inet import IP, UDP, in4_chksum
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import checksum

from benchmarks import topology
from benchmarks.baseline import HopByHopChain
from emu.net.vxlan import flow_source_port
from emu.wire.addr import ip_to_str, mac_to_str

VXLAN_FLAG_I = 0x08


def _ip_header_ok(frame: bytes, ip: IP) -> bool:
    """The IPv4 header checksum of `frame` (an Ethernet frame) verifies."""
    return checksum(frame[14:14 + ip.ihl * 4]) == 0


def _udp_ok(ip: IP) -> bool:
    """The UDP checksum verifies (0: none was sent)."""
    udp = ip[UDP]
    return udp.chksum == 0 or in4_chksum(17, ip, bytes(udp)) == 0


class ScapyChain(HopByHopChain):
    """The chain's hops over scapy packets; `forward` returns every point's bytes."""

    def __init__(self, chain: topology.VxlanChain) -> None:
        super().__init__(chain)
        self.gateway1 = mac_to_str(chain.gateway1_mac)
        self.vtep1, self.vtep2 = mac_to_str(chain.vtep1_mac), mac_to_str(chain.vtep2_mac)
        self.node1_mac, self.node2_mac = mac_to_str(chain.node1_mac), mac_to_str(chain.node2_mac)
        self.node1_ip, self.node2_ip = ip_to_str(chain.node1_ip), ip_to_str(chain.node2_ip)
        self.gateway2 = mac_to_str(chain.gateway2_mac)
        self.pod2_mac, self.pod2_ip = mac_to_str(chain.remote_pod_mac), ip_to_str(chain.remote_pod_ip)
        self.vni, self.port = chain.vni, chain.port

    def _bridge1(self, frame: bytes) -> bytes | None:
        """n1's cni0: the frame is for the gateway MAC, so it goes up to routing."""
        return frame if Ether(frame).dst == self.gateway1 else None

    @staticmethod
    def _routed(frame: bytes, src_mac: str, dst_mac: str, mtu: int) -> bytes | None:
        received = Ether(frame)
        if IP not in received:
            return None
        packet = received[IP]
        if not _ip_header_ok(frame, packet) or packet.ttl <= 1 or packet.len > mtu:
            return None
        packet.ttl -= 1
        del packet.chksum
        return bytes(Ether(src=src_mac, dst=dst_mac) / packet)

    def _route1(self, frame: bytes) -> bytes | None:
        return self._routed(frame, self.vtep1, self.vtep2, self.chain.vtep1_mtu)

    def _encapsulate(self, inner: bytes) -> bytes:
        outer = (Ether(src=self.node1_mac, dst=self.node2_mac)
                 / IP(src=self.node1_ip, dst=self.node2_ip, ttl=64, flags=0, id=self.next_ident())
                 / UDP(sport=flow_source_port(inner), dport=self.port)
                 / VXLAN(vni=self.vni, flags=VXLAN_FLAG_I) / Raw(inner))
        return bytes(outer)

    def _switch(self, wire: bytes) -> bytes | None:
        return wire if Ether(wire).dst == self.node2_mac else None

    def _decapsulate(self, wire: bytes) -> bytes | None:
        outer = Ether(wire)
        if (IP not in outer or not _ip_header_ok(wire, outer[IP]) or UDP not in outer
                or outer[UDP].dport != self.port or not _udp_ok(outer[IP])):
            return None
        vxlan = VXLAN(bytes(outer[UDP].payload))
        if vxlan.flags != VXLAN_FLAG_I or vxlan.vni != self.vni or vxlan.reserved1 or vxlan.reserved2:
            return None
        inner = bytes(vxlan.payload)
        frame = Ether(inner)
        return inner if frame.dst == self.vtep2 and frame.src != self.vtep2 else None

    def _route2(self, inner: bytes) -> bytes | None:
        return self._routed(inner, self.gateway2, self.pod2_mac, self.chain.gateway2_mtu)

    def _bridge2(self, frame: bytes) -> bytes | None:
        """n2's cni0: known unicast to p2a's veth."""
        return frame if Ether(frame).dst == self.pod2_mac else None

    def _deliver(self, frame: bytes) -> bool:
        """p2a's eth0 up to its UDP socket."""
        packet = Ether(frame)
        return (packet.dst == self.pod2_mac and IP in packet and _ip_header_ok(frame, packet[IP])
                and packet[IP].dst == self.pod2_ip and UDP in packet
                and packet[UDP].dport == topology.RECEIVER_PORT and _udp_ok(packet[IP]))
