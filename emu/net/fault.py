"""Deterministic frame loss at a device, for retransmission and loss tests.

`DropNth(direction, nth)` drops the nth frame entering ("in": arriving from
the wire, after the capture taps saw it) or leaving ("out": before the taps,
so the capture does not show it) a device, counted under the device's drop
reason ``fault-injected``. Every frame counts, ARP included: the kernel run
mirrors it with an nftables netdev ingress/egress rule (``numgen inc``),
which sees frames at exactly these places (ingress after AF_PACKET taps,
egress before them), unlike iptables, which sees IP packets only.
"""

from __future__ import annotations

from dataclasses import dataclass

DROP_REASON = "FAULT_INJECTED"


@dataclass
class DropNth:
    """Drop the `nth` frame (1-based) in `direction` ("in" or "out")."""

    direction: str
    nth: int
    seen: int = 0

    def hit(self, direction: str) -> bool:
        """Count a frame going `direction`; True when it is the one to drop."""
        if direction != self.direction:
            return False
        self.seen += 1
        return self.seen == self.nth
