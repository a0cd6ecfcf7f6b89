"""The loopback device `lo`: every namespace has one.

Traffic to the namespace's own addresses leaves through `lo` and comes
straight back in, so it can be captured like on Linux (`tcpdump -i lo` shows
Ethernet frames with zero MAC addresses). Each packet appears once in such a
capture, not twice: libpcap rejects the outgoing copy on a loopback device
because the same packet is seen again as incoming, so only the received
copy reaches the taps.
"""

from __future__ import annotations

from emu.net.device import NetDevice
from emu.sim import Scheduler
from emu.wire.addr import ZERO_MAC

LOOPBACK_MTU = 65536


class Loopback(NetDevice):
    kind = "loopback"
    taps_see_transmit = False

    def __init__(self, sim: Scheduler, name: str = "lo") -> None:
        super().__init__(sim, name, ZERO_MAC, LOOPBACK_MTU)

    def _xmit(self, frame: bytes) -> None:
        self.sim.call_soon_batched(self.receive_batch, frame)
