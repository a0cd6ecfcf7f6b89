"""Baseline: the pod->pod cross-node VXLAN chain done naively with scapy objects.

What someone would write without an emulator: at every hop, dissect the
bytes into scapy layers, look up / rewrite / re-encapsulate, and build the
bytes again. The hops are the emulator's: n1's cni0 bridge, n1 routing
(TTL - 1, MACs to flannel.1's), flannel.1 encapsulation (outer
Ethernet/IPv4/UDP/VXLAN, checksums filled in by scapy), the underlay switch,
n2's VXLAN receive, n2 routing (TTL - 1, MACs to the pod's), n2's cni0
bridge, delivery to p2a's UDP port.
`benchmarks.baseline.ChainCase` measures it on the emulator's own frames.
"""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from benchmarks import topology
from benchmarks.baseline import HopByHopChain
from emu.net.vxlan import flow_source_port
from emu.wire.addr import ip_to_str, mac_to_str



class ScapyChain(HopByHopChain):
    """The chain's hops over scapy packets; `forward` returns the delivered bytes."""

    def __init__(self, chain: topology.VxlanChain) -> None:
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

    def _route1(self, frame: bytes) -> bytes:
        packet = Ether(frame)[IP]
        packet.ttl -= 1
        del packet.chksum
        return bytes(Ether(src=self.vtep1, dst=self.vtep2) / packet)

    def _encapsulate(self, inner: bytes) -> bytes:
        outer = (Ether(src=self.node1_mac, dst=self.node2_mac)
                 / IP(src=self.node1_ip, dst=self.node2_ip, ttl=64, flags=0, id=0)
                 / UDP(sport=flow_source_port(inner), dport=self.port)
                 / VXLAN(vni=self.vni, flags=0x08) / Raw(inner))
        return bytes(outer)

    def _switch(self, wire: bytes) -> bytes | None:
        return wire if Ether(wire).dst == self.node2_mac else None

    def _decapsulate(self, wire: bytes) -> bytes | None:
        outer = Ether(wire)
        if UDP not in outer or outer[UDP].dport != self.port:
            return None
        vxlan = VXLAN(bytes(outer[UDP].payload))
        if vxlan.vni != self.vni:
            return None
        inner = bytes(vxlan.payload)
        return inner if Ether(inner).dst == self.vtep2 else None

    def _route2(self, inner: bytes) -> bytes:
        packet = Ether(inner)[IP]
        packet.ttl -= 1
        del packet.chksum
        return bytes(Ether(src=self.gateway2, dst=self.pod2_mac) / packet)

    def _bridge2(self, frame: bytes) -> bytes | None:
        """n2's cni0: known unicast to p2a's veth."""
        return frame if Ether(frame).dst == self.pod2_mac else None

    def _deliver(self, frame: bytes) -> bytes | None:
        packet = Ether(frame)
        if (IP in packet and packet[IP].dst == self.pod2_ip and UDP in packet
                and packet[UDP].dport == topology.RECEIVER_PORT):
            return frame
        return None

