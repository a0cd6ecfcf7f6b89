"""veth pairs: what one end transmits, the other end receives.

Like Linux's veth_xmit, a frame longer than the peer's MTU is dropped
(`frame-too-big`, counted on the peer), and delivery is queued on the
scheduler rather than called recursively (the kernel's netif_rx backlog).
Consecutive deliveries to one peer at one instant travel as one batch.
A veth with a `delay_ns` delivers that much later instead (the underlay's
wire latency, what `tc qdisc add dev X root netem delay D` does to its
egress); frames keep their order.
"""

from __future__ import annotations

from emu.net.device import NetDevice
from emu.sim import Scheduler


class Veth(NetDevice):
    """One end of a veth pair; `peer` is the other end."""

    kind = "veth"

    def __init__(self, sim: Scheduler, name: str, mac: bytes, mtu: int = 1500) -> None:
        super().__init__(sim, name, mac, mtu)
        self.peer: Veth | None = None
        self._delay_ns = 0

    @property
    def delay_ns(self) -> int:
        return self._delay_ns

    @delay_ns.setter
    def delay_ns(self, value: int) -> None:
        """netem delay on this end's egress (a configuration change)."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"delay_ns: expected an int >= 0, got {value!r}")
        self._delay_ns = value
        self._config_changed()

    def _xmit(self, frame: bytes) -> None:
        peer = self.peer
        if peer is None:
            self.drop("DEV_READY")
            return
        if not peer.fits_mtu(frame):
            peer.drop("PKT_TOO_BIG")
            return
        if self._delay_ns:
            self.sim.call_at(self.sim.now_ns + self._delay_ns, peer.receive_batch, [frame])
        else:
            self.sim.call_soon_batched(peer.receive_batch, frame)


def veth_pair(sim: Scheduler, name_a: str, mac_a: bytes, name_b: str, mac_b: bytes,
              mtu: int = 1500) -> tuple[Veth, Veth]:
    """Create two connected veth ends (like `ip link add A type veth peer name B`)."""
    a = Veth(sim, name_a, mac_a, mtu)
    b = Veth(sim, name_b, mac_b, mtu)
    a.peer, b.peer = b, a
    return a, b
