"""The baseline case: a naive hop-by-hop chain (scapy or dpkt) fed the
emulator's own frames.

Setup builds the benchmark cluster with the VXLAN backend, records what
p1a's stack sends to p2a, gives the chain the cluster's addresses, and
checks that the chain delivers byte for byte the frame the emulator
delivers to p2a's eth0: both then provably do the same work per frame.
"""

from __future__ import annotations

from itertools import cycle
from typing import Callable, Protocol

from benchmarks import topology
from benchmarks.case import SteppedCase


class Chain(Protocol):
    def forward(self, frame: bytes) -> bytes | None:
        """The frame p2a receives for `frame` sent by p1a, or None if dropped."""


class HopByHopChain:
    """The shared walk of both naive chains: each hop returns the frame it
    passes on, or None where it refuses it."""

    HOPS = ("_bridge1", "_route1", "_encapsulate", "_switch", "_decapsulate", "_route2",
            "_bridge2", "_deliver")

    def forward(self, frame: bytes) -> bytes | None:
        """Walk `frame` from p1a's eth0 to p2a; None where a hop refuses it."""
        hops = self.__dict__.get("_hops")
        if hops is None:
            hops = self._hops = [getattr(self, name) for name in self.HOPS]
        for hop in hops:
            frame = hop(frame)
            if frame is None:
                return None
        return frame


class ChainCase(SteppedCase):
    """Frames/s of a naive chain, one frame per step (they have no batch API)."""

    def __init__(self, name: str, library: str, make_chain: Callable[[topology.VxlanChain], Chain],
                 frames: int = 256) -> None:
        super().__init__(name, "baseline", library=library, batch=1,
                         frame_size=42 + topology.PAYLOAD_LEN)
        self.make_chain = make_chain
        self.frame_count = frames

    def describe(self) -> str:
        return f"naive {self.params['library']} chain, {topology.SOURCE_POD}->{topology.REMOTE_POD}"

    def setup(self) -> None:
        emulated = topology.build("vxlan")
        recorded = topology.record_traffic(emulated, topology.REMOTE_POD, self.frame_count)
        self.chain = self.make_chain(topology.vxlan_chain(emulated))
        if self.chain.forward(recorded.sent[0]) != recorded.delivered[0]:
            raise RuntimeError(f"the {self.params['library']} chain does not deliver the "
                               "emulator's frame")
        self.frames = cycle(recorded.sent)

    def step(self) -> int:
        return 1 if self.chain.forward(next(self.frames)) is not None else 0
