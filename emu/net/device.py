"""The network-device contract every virtual device follows.

A device has two directions, named from the device's point of view:
`transmit(frame)` sends a frame out (the stack or a bridge hands it over),
`receive(frame)` takes a frame that arrived from the wire. Both first show the
frame to the device's capture taps, like tcpdump on that interface, then count
it. Enslaved devices (bridge ports) hand received frames to their master
instead of the namespace's stack, exactly as Linux's rx_handler does.
`transmit_batch` / `receive_batch` take a list of frames and behave exactly
like the single-frame calls made one after the other.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

import emu.net.gso as gso
import emu.wire.ethernet as ethernet
from emu.net.fault import DROP_REASON
from emu.sim import Scheduler

if TYPE_CHECKING:
    from emu.net.bridge import Bridge, BridgePort
    from emu.net.namespace import Namespace

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

# A tap is called tap(time_ns, frame); one with a true `with_direction`
# attribute is called tap(time_ns, frame, outgoing) (see NetDevice._tap).
Tap = Callable[..., None]


@dataclass
class DeviceStats:
    """Per-device counters, the `ip -s link` view plus named drop reasons."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    drops: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
            "drops": dict(sorted(self.drops.items())),
        }


class NetDevice:
    """Base class: name, MAC, MTU, owner namespace, taps, counters."""

    kind = "device"
    linktype = LINKTYPE_ETHERNET
    has_l2 = True
    taps_see_transmit = True  # False where tcpdump shows only the received copy
    takes_interleaved = False  # True where a class defines `transmit_interleaved_batch`

    def __init__(self, sim: Scheduler, name: str, mac: bytes, mtu: int = 1500) -> None:
        self.sim = sim
        self.name = name
        self._mac = mac
        self._mtu = mtu
        self._up = True
        self.namespace: Namespace | None = None
        self.bridge_port: BridgePort | None = None  # set by Bridge.add_port
        self.stats = DeviceStats()
        self.taps: list[Tap] = []
        self.faults: list = []  # emu.net.fault.DropNth: injected loss

    @property
    def master(self) -> "Bridge | None":
        """The bridge this device is a port of (`ip link show` master)."""
        return self.bridge_port.bridge if self.bridge_port is not None else None

    def __repr__(self) -> str:
        owner = self.namespace.name if self.namespace else "-"
        return f"<{type(self).__name__} {owner}/{self.name}>"

    # -- configuration (changes bump the namespace's generation) --------------
    @property
    def mac(self) -> bytes:
        return self._mac

    @mac.setter
    def mac(self, value: bytes) -> None:
        """`ip link set DEV address MAC`."""
        self._mac = value
        self._config_changed()

    @property
    def mtu(self) -> int:
        return self._mtu

    @mtu.setter
    def mtu(self, value: int) -> None:
        """`ip link set DEV mtu MTU`."""
        self._mtu = value
        self._config_changed()

    @property
    def up(self) -> bool:
        return self._up

    @up.setter
    def up(self, value: bool) -> None:
        """`ip link set DEV up/down`."""
        self._up = value
        self._config_changed()

    def _config_changed(self) -> None:
        """A device's settings belong to its namespace's configuration."""
        if self.namespace is not None:
            self.namespace.changed()

    # -- the two directions -------------------------------------------------
    def transmit(self, frame: bytes) -> None:
        """Send `frame` out of this device (from the stack or a bridge)."""
        if not self._up:
            self.drop("DEV_READY")
            return
        if self.faults and self._fault_drops("out"):
            return
        if self.taps_see_transmit:
            self._tap(frame, outgoing=True)
        self.stats.tx_packets += 1
        self.stats.tx_bytes += len(frame)
        self._xmit(frame)

    def receive(self, frame: bytes) -> None:
        """Take `frame` arriving from the wire."""
        if not self._up:
            self.drop("DEV_READY")
            return
        self._tap(frame)
        if self.faults and self._fault_drops("in"):
            return
        self.stats.rx_packets += 1
        self.stats.rx_bytes += len(frame)
        if self.bridge_port is not None:
            self.bridge_port.bridge.handle_port_frame(self, frame)
        elif self.namespace is not None:
            self.namespace.stack.receive(self, frame)
        else:
            self.drop("DEV_READY")

    def transmit_batch(self, frames: list[bytes]) -> None:
        """`transmit` for each frame in order. With no tap and no observer
        listening, the counters are added once for the batch (nothing reads
        them in between, so this is invisible)."""
        if not self._up or self.taps or self.faults or self.sim.observer is not None:
            for frame in frames:
                self.transmit(frame)
            return
        self.stats.tx_packets += len(frames)
        self.stats.tx_bytes += sum(map(len, frames))
        xmit = self._xmit
        for frame in frames:
            xmit(frame)

    def receive_batch(self, frames: list[bytes]) -> None:
        """`receive` for each frame in order; a bridge port hands the whole
        batch to `Bridge.handle_port_batch` when nothing watches frame by frame."""
        master = self.bridge_port.bridge if self.bridge_port is not None else None
        if master is None or not self._up or self.taps or self.faults or self.sim.observer is not None:
            for frame in frames:
                self.receive(frame)
            return
        self.stats.rx_packets += len(frames)
        self.stats.rx_bytes += sum(map(len, frames))
        master.handle_port_batch(self, frames)

    @staticmethod
    def transmit_interleaved(devices: Sequence["NetDevice"], which: "np.ndarray",
                             frames: Sequence[bytes]) -> None:
        """Send frames[i] out of devices[which[i]], for i in order: exactly
        `transmit` frame after frame (a bridge forwarding a batch to its ports).

        If every device involved is of one class with `takes_interleaved`,
        that class takes the whole batch in one call; otherwise each run of
        consecutive frames for one device goes out with `transmit_batch`.
        """
        if not len(frames):
            return
        involved = {type(devices[number]) for number in np.flatnonzero(np.bincount(which)).tolist()}
        if len(involved) == 1:
            kind = involved.pop()
            if kind.takes_interleaved:
                kind.transmit_interleaved_batch(devices, which, frames)
                return
        starts = [0, *(np.flatnonzero(which[1:] != which[:-1]) + 1).tolist(), len(frames)]
        numbers = which.tolist()
        for start, stop in zip(starts, starts[1:]):
            devices[numbers[start]].transmit_batch(frames[start:stop])

    @classmethod
    def transmit_interleaved_batch(cls, devices: Sequence["NetDevice"], which: "np.ndarray",
                                   frames: Sequence[bytes]) -> None:
        """`transmit_interleaved` when all the devices are of this class."""
        raise NotImplementedError(f"{cls.__name__} does not take interleaved batches")

    def _xmit(self, frame: bytes) -> None:
        """Device-specific transmit; the base device has no wire."""
        self.drop("DEV_READY")

    # -- helpers --------------------------------------------------------------
    def _tap(self, frame: bytes, outgoing: bool = False) -> None:
        """Show `frame` to the taps: `outgoing` when the device sends it
        (transmit), not when it arrived (receive), Linux's PACKET_OUTGOING."""
        observer = self.sim.observer
        if observer is not None:
            observer.frame(self, frame, outgoing)
        if self.taps:
            now = self.sim.now_ns
            for tap in self.taps:
                if getattr(tap, "with_direction", False):
                    tap(now, frame, outgoing)
                else:
                    tap(now, frame)

    def _fault_drops(self, direction: str) -> bool:
        """Whether an injected fault (emu.net.fault) takes this frame; never
        replayed by the flow cache."""
        observer = self.sim.observer
        if observer is not None:
            observer.hop(self.namespace, self, "fault", "checked", f"{len(self.faults)} injected faults")
        if any([fault.hit(direction) for fault in self.faults]):
            self.drop(DROP_REASON)
            return True
        return False

    def drop(self, reason: str, count: int = 1) -> None:
        """Count `count` refused frames under a named reason."""
        self.stats.drops[reason] += count
        observer = self.sim.observer
        if observer is not None:
            for _ in range(count):
                observer.drop(self.namespace, self, reason)

    def fits_mtu(self, frame: bytes) -> bool:
        """Linux's is_skb_forwardable: L3 length within MTU (+ one VLAN tag)."""
        limit = self.mtu + ethernet.HEADER_LEN
        if len(frame) <= limit:
            return True
        if ethernet.ethertype(frame) == ethernet.ETHERTYPE_VLAN and len(frame) <= limit + ethernet.VLAN_TAG_LEN:
            return True
        offset = ethernet.HEADER_LEN if self.has_l2 else 0
        return gso.fits(self.sim, memoryview(frame)[offset:], self.mtu)  # skb_is_gso
