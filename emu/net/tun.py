"""TUN devices: an L3 device whose other side is a userspace program.

What the stack transmits on a TUN goes to the program's reader callback (the
program "reads the fd"); what the program writes comes in as received. Frames
are raw IPv4 packets (no packet-info header), so captures use linktype 101.
"""

from __future__ import annotations

from typing import Callable

import emu.net.gso as gso
from emu.net.device import LINKTYPE_RAW, NetDevice
from emu.sim import Scheduler
from emu.wire.addr import ZERO_MAC


class Tun(NetDevice):
    kind = "tun"
    linktype = LINKTYPE_RAW
    has_l2 = False

    def __init__(self, sim: Scheduler, name: str, mtu: int = 1500) -> None:
        super().__init__(sim, name, ZERO_MAC, mtu)
        self.reader: Callable[[bytes], None] | None = None

    def transmit(self, packet: bytes) -> None:
        """A TUN without a vnet header has no offloads: a GSO super-packet is
        cut into its segments before the device sees it (validate_xmit_skb)."""
        size = gso.gso_size(self.sim, packet)
        if not size:
            super().transmit(packet)
            return
        for segment in gso.segments(packet, size):
            super().transmit(segment)

    def _xmit(self, packet: bytes) -> None:
        if self.reader is None:
            self.drop("DEV_READY")
            return
        self.sim.call_soon_batched(self._read_batch, (self.reader, packet))

    @staticmethod
    def _read_batch(reads: list[tuple[Callable[[bytes], None], bytes]]) -> None:
        """The program reads every packet queued at this instant, in order."""
        for reader, packet in reads:
            reader(packet)

    def write(self, packet: bytes) -> None:
        """The userspace side writes a packet: it enters the stack as received."""
        self.sim.call_soon_batched(self.receive_batch, packet)
