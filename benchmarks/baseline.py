"""The baseline case: a naive hop-by-hop chain (scapy or dpkt) fed the
emulator's own frames.

Setup builds the benchmark cluster with the VXLAN backend, records what
p1a's stack sends to p2a, gives the chain the cluster's addresses, and
checks that the chain builds byte for byte the frame the emulator's slow
path shows at every capture point (10 for this path), and delivers it: the
chain and `cross_node_vxlan_slow_path` then provably make the same frames.
"""

from __future__ import annotations

from itertools import cycle
from typing import Callable, Protocol

from benchmarks import topology
from benchmarks.case import SteppedCase
from emu.net import UdpSocket


class Chain(Protocol):
    def forward(self, frame: bytes) -> list[bytes] | None:
        """Every frame the walk of `frame` (sent by p1a) shows at each capture
        point, ending with what p2a receives; None if a hop refuses it."""


class HopByHopChain:
    """The shared walk of both naive chains, one step per capture point.

    The points are those where the emulator's taps see a cross-node VXLAN
    datagram (`topology.frames_at_every_point`), in the same order; at each
    one the chain holds the bytes of the frame seen there, built by its
    library. A point whose hop is None passes the previous frame on
    unchanged, as a veth or a wire does (in the emulator too). Each hop
    checks what the emulator's device checks there (destination MACs, IPv4
    header checksums, TTL and MTU when routing, UDP checksums where a
    socket receives, the VXLAN flags and VNI) and returns the frame it
    passes on, or None where it refuses it; `_deliver` is p2a's IPv4 and UDP
    input. What the chains do not do is look anything up: addresses, MTUs
    and the VNI are fixed at construction (no FDB, route or neighbour
    table, no counters), so they do a little less work than the emulator.
    """

    POINTS = (("p1a/eth0", None), ("n1/veth", None), ("n1/cni0", "_bridge1"),
              ("n1/flannel.1", "_route1"), ("n1/eth0", "_encapsulate"), ("n2/eth0", "_switch"),
              ("n2/flannel.1", "_decapsulate"), ("n2/cni0", "_route2"), ("n2/veth", "_bridge2"),
              ("p2a/eth0", None))

    def __init__(self, chain: topology.VxlanChain) -> None:
        self.chain = chain
        self.ident = chain.node1_next_ident  # n1's IPv4 identifier counter (outer headers)
        self._hops = [getattr(self, hop) if hop else None for _, hop in self.POINTS]

    def next_ident(self) -> int:
        ident = self.ident
        self.ident = (ident + 1) & 0xFFFF
        return ident

    def forward(self, frame: bytes) -> list[bytes] | None:
        """Walk `frame` from p1a's eth0 to p2a; None where a hop refuses it."""
        frames = []
        for hop in self._hops:
            if hop is not None:
                frame = hop(frame)
                if frame is None:
                    return None
            frames.append(frame)
        return frames if self._deliver(frame) else None

    def _deliver(self, frame: bytes) -> bool:
        raise NotImplementedError


class ChainCase(SteppedCase):
    """Frames/s of a naive chain, one frame per step (they have no batch API).

    Setup checks that the chain builds, at every capture point, the very
    bytes the emulator's slow path shows there for the same datagram."""

    def __init__(self, name: str, library: str, make_chain: Callable[[topology.VxlanChain], Chain],
                 frames: int = 256) -> None:
        super().__init__(name, "baseline", library=library, batch=1,
                         frame_size=42 + topology.PAYLOAD_LEN)
        self.make_chain = make_chain
        self.frame_count = frames

    def describe(self) -> str:
        return (f"naive {self.params['library']} chain, {topology.SOURCE_POD}->{topology.REMOTE_POD},"
                f" every frame built at {len(HopByHopChain.POINTS)} points")

    def setup(self) -> None:
        emulated = topology.build("vxlan")
        receiver = UdpSocket(emulated.cluster.pods[topology.REMOTE_POD].ns)
        receiver.bind(None, topology.RECEIVER_PORT)
        recorded = topology.record_traffic(emulated, topology.REMOTE_POD, self.frame_count)
        self.chain = self.make_chain(topology.vxlan_chain(emulated))
        reference = [frame for _, frame in topology.frames_at_every_point(emulated, recorded.sent[0])]
        if self.chain.forward(recorded.sent[0]) != reference:
            raise RuntimeError(f"the {self.params['library']} chain does not build the emulator's "
                               "frames at every point")
        self.frames = cycle(recorded.sent)

    def step(self) -> int:
        return 1 if self.chain.forward(next(self.frames)) is not None else 0
