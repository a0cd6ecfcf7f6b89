"""The loopback device `lo`: every namespace has one.

Traffic to the namespace's own addresses leaves through `lo` and comes
straight back in, so it can be captured like on Linux (`tcpdump -i lo` shows
Ethernet frames with zero MAC addresses).
"""

from __future__ import annotations

from emu.net.device import NetDevice
from emu.sim import Scheduler
from emu.wire.addr import ZERO_MAC

LOOPBACK_MTU = 65536


class Loopback(NetDevice):
    kind = "loopback"

    def __init__(self, sim: Scheduler, name: str = "lo") -> None:
        super().__init__(sim, name, ZERO_MAC, LOOPBACK_MTU)

    def _xmit(self, frame: bytes) -> None:
        self.sim.call_soon(self.receive, frame)
