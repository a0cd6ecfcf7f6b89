"""The Linux learning bridge (cni0): FDB learning, aging, flooding, hairpin.

Follows br_handle_frame_finish / br_dev_xmit:
- a frame from a port teaches the FDB its source MAC (multicast or zero
  source MACs are dropped, like `is_valid_ether_addr`);
- broadcast/multicast and unknown unicast are flooded to every port except
  the ingress one (hairpin ports get it back too) and passed up locally;
- known unicast goes to its port (back out the ingress port only in hairpin
  mode); a frame for a local MAC (the bridge's or a port's own) goes up;
- in promiscuous mode every frame from a port is also passed up. tcpdump puts
  the interface it captures in promiscuous mode, which is why the kernel's
  cni0 captures show every frame the bridge forwards.
The bridge device itself carries the pod gateway address; what the stack
transmits on it is forwarded by the same FDB, without learning.

Batches (`handle_port_batch`) take the same decisions for all their frames
at once with numpy (`Fdb.lookup_batch`), and send the known-unicast frames
to their ports in one `transmit_interleaved` call per stretch; any other
frame (flood, local delivery, refused source) takes the per-frame path at
its place in the batch, so every output keeps the per-frame order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emu.net.device import NetDevice
from emu.net.fdb import DEFAULT_AGEING_NS, Fdb
from emu.sim import Scheduler
import emu.wire.ethernet as ethernet
import emu.wire.ethernet_batch as batch
from emu.wire.addr import BROADCAST_MAC, ZERO_MAC, is_multicast_mac, mac_to_str
from emu.wire.ethernet import HEADER_LEN, VLAN_TAG_LEN
from emu.wire.ethernet_batch import header_rows
from emu.wire.packed import PackedFrames

VECTOR_MIN = 64  # below this many frames numpy's per-call cost outweighs its speed (measured: equal at 64)
MAX_PLANS = 4  # fresh batch decisions per batch before the rest goes frame by frame


class Bridge(NetDevice):
    kind = "bridge"

    def __init__(self, sim: Scheduler, name: str, mac: bytes, mtu: int = 1500,
                 ageing_ns: int = DEFAULT_AGEING_NS) -> None:
        super().__init__(sim, name, mac, mtu)
        self.ports: list[NetDevice] = []
        self.fdb = Fdb(ageing_ns)
        self.fdb.add_static(mac, None, local=True)
        self._promiscuous = False
        self.flooded = 0
        self.forwarded = 0
        self.delivered_local = 0

    @property
    def promiscuous(self) -> bool:
        return self._promiscuous

    @promiscuous.setter
    def promiscuous(self, value: bool) -> None:
        """Promiscuous mode changes what is passed up: a configuration change."""
        self._promiscuous = value
        self._config_changed()

    # -- configuration ------------------------------------------------------
    def add_port(self, port: NetDevice, hairpin: bool = False) -> None:
        """Enslave `port` (`ip link set PORT master BRIDGE`).

        Linux adds new ports at the head of its port list, so floods visit
        the newest port first; we keep the same order.
        """
        if port.master is not None:
            raise ValueError(f"{port.name} is already a port of {port.master.name}")
        port.master = self
        port.hairpin = hairpin
        self.ports.insert(0, port)
        self.fdb.add_static(port.mac, port, local=True)

    def remove_port(self, port: NetDevice) -> None:
        self.ports.remove(port)
        port.master = None
        self.fdb.flush_port(port)
        self.fdb.remove(port.mac)

    # -- data path ----------------------------------------------------------
    def handle_port_frame(self, port: NetDevice, frame: bytes) -> None:
        """A frame received on one of our ports (the bridge rx_handler)."""
        if len(frame) < ethernet.HEADER_LEN:
            port.drop("PKT_TOO_SMALL")
            return
        src = frame[ethernet.SRC]
        if is_multicast_mac(src) or src == ZERO_MAC:
            port.drop("MAC_INVALID_SOURCE")
            return
        now = self.sim.now_ns
        self.fdb.learn(src, port, now)
        dst = frame[ethernet.DST]
        observer = self.sim.observer
        if observer is not None:
            observer.fdb_learn(self.fdb, src, port)
        local_rcv = self._promiscuous
        if is_multicast_mac(dst):
            if observer is not None:
                self._hop(observer, port, "flooded", "flood: broadcast" if dst == BROADCAST_MAC
                          else "flood: multicast")
            self._flood(frame, port)
            local_rcv = True
        else:
            found = self.fdb.lookup_port(dst, now)
            if observer is not None:
                observer.fdb_lookup(self.fdb, dst, found is not None)
                self._hop_lookup(observer, port, dst, found)
            if found is None:
                self._flood(frame, port)
            elif found[1]:
                self._pass_up(frame)
                return
            else:
                self._forward(found[0], frame, port)
        if local_rcv:
            self._pass_up(frame)

    def _hop(self, observer, port: NetDevice | None, verdict: str, evidence: str) -> None:
        observer.hop(self.namespace, port or self, "bridge", verdict, evidence)

    def _hop_lookup(self, observer, port: NetDevice | None, dst: bytes,
                    found: tuple[NetDevice | None, bool] | None) -> None:
        """The FDB's answer, in `bridge fdb show` words."""
        if found is None:
            self._hop(observer, port, "flooded", "flood: unknown unicast")
            return
        egress, local = found
        where = f"fdb {mac_to_str(dst)} dev {(egress or self).name} master {self.name}"
        if local:
            self._hop(observer, port, "delivered", f"{where} permanent: local")
        elif egress is port and not egress.hairpin:
            self._hop(observer, port, "dropped:BRIDGE_SAME_PORT", where)
        else:
            self._hop(observer, port, "forwarded", where)

    def handle_port_batch(self, port: NetDevice, frames: Sequence[bytes]) -> None:
        """Frames received on one port, in order (a list of bytes or a
        `PackedFrames` batch): exactly `handle_port_frame` for each, faster. Large batches are decided with numpy (`_handle_planned`),
        small ones frame by frame with known unicast gathered into runs
        (`_handle_runs`); a flow recorder or promiscuous mode (every frame also
        goes up) takes the per-frame path, and so does a batch an observer
        listens to (it hears every frame's decision)."""
        if self.sim.observer is not None or self._promiscuous:
            for frame in frames:
                self.handle_port_frame(port, frame)
        elif len(frames) >= VECTOR_MIN:
            self._handle_planned(port, frames)
        else:
            self._handle_runs(port, frames)

    def _handle_planned(self, port: NetDevice, frames: Sequence[bytes]) -> None:
        """Decide the whole batch at once, then act in order.

        A plan says, for every frame, whether it is plain known unicast
        (valid source, unicast destination with a live, non-local entry) and
        to which port, given the learning of every earlier frame of the batch.
        Stretches of such frames are learned and forwarded together; any other
        frame goes through `handle_port_frame` at its place. If that frame
        changed the FDB beyond what the plan foresaw (its generation moved),
        the rest of the batch is planned again (at most MAX_PLANS times, then
        frame by frame).
        """
        start, plans = 0, 0
        while start < len(frames):
            rest = frames[start:] if start else frames
            if len(rest) < VECTOR_MIN or plans == MAX_PLANS:
                self._handle_runs(port, rest)
                return
            plans += 1
            start += self._follow_plan(port, rest)

    def _follow_plan(self, port: NetDevice, frames: Sequence[bytes]) -> int:
        """Plan `frames` and act on them until the plan no longer holds;
        return how many frames were handled."""
        now = self.sim.now_ns
        fdb = self.fdb
        lengths, headers = header_rows(frames)
        dst_keys, src_keys = batch.dst_keys(headers), batch.src_keys(headers)
        valid_source = (lengths >= HEADER_LEN) & ~batch.group_src(headers) & (src_keys != 0)
        egress, local, src_slots = fdb.lookup_batch(dst_keys, src_keys, valid_source, port, now)
        layout = fdb.layout
        plain = valid_source & ~batch.group_dst(headers) & (egress >= 0) & ~local
        vlan = batch.vlan_tagged(headers)
        others = np.flatnonzero(~plain).tolist()
        start = 0
        for index in [*others, len(frames)]:
            if index > start:
                fdb.learn_batch(src_keys[start:index], port, now,
                                src_slots[start:index] if fdb.layout == layout else None)
                self._forward_known(port, frames[start:index], egress[start:index],
                                    lengths[start:index], vlan[start:index])
            if index == len(frames):
                return index
            generation = fdb.generation
            self.handle_port_frame(port, frames[index])
            start = index + 1
            if fdb.generation != generation:
                return start
        return len(frames)

    def _forward_known(self, ingress: NetDevice, frames: Sequence[bytes], egress: np.ndarray,
                       lengths: np.ndarray, vlan: np.ndarray) -> None:
        """`_forward` for known-unicast frames to the FDB's port numbers `egress`:
        same-port drops (unless hairpin), MTU drops, then one interleaved send."""
        devices = self.fdb.ports_by_number
        send = np.ones(len(frames), bool)
        if not ingress.hairpin:
            same = egress == self.fdb.port_number(ingress)
            if same.any():
                ingress.drop("BRIDGE_SAME_PORT", int(same.sum()))
                send &= ~same
        self.forwarded += int(send.sum())
        limits = np.array([0 if dev is None else dev.mtu + HEADER_LEN for dev in devices], np.int64)
        too_big = send & (lengths > limits[egress] + VLAN_TAG_LEN * vlan)
        if too_big.any():
            for number, count in zip(*np.unique(egress[too_big], return_counts=True)):
                devices[number].drop("PKT_TOO_BIG", int(count))
            send &= ~too_big
        if send.all():
            NetDevice.transmit_interleaved(devices, egress, frames)
        else:
            chosen = np.flatnonzero(send)
            picked = frames.take(chosen) if isinstance(frames, PackedFrames) else \
                [frames[i] for i in chosen.tolist()]
            NetDevice.transmit_interleaved(devices, egress[send], picked)

    def _handle_runs(self, port: NetDevice, frames: Sequence[bytes]) -> None:
        """`handle_port_frame` for each frame, but known unicast to another
        port (the common case) is gathered into runs per egress port and sent
        with `transmit_batch`.

        Deferring those transmissions to the end of the run is invisible:
        forwarding reads nothing the later frames change (their learning only
        affects lookups, and transmission reads no FDB). Everything else
        (floods, local delivery, refused frames) first sends the pending run,
        then takes the per-frame path, so the order of every output is the
        per-frame order.
        """
        now = self.sim.now_ns
        learn = self.fdb.learn
        lookup = self.fdb.lookup_port
        run: list[bytes] = []
        run_port: NetDevice | None = None
        for frame in frames:
            if len(frame) >= HEADER_LEN:
                src, dst = ethernet.src(frame), ethernet.dst(frame)
                if not is_multicast_mac(dst) and not is_multicast_mac(src) and src != ZERO_MAC:
                    learn(src, port, now)
                    found = lookup(dst, now)
                    if found is not None and not found[1] and found[0] is not port:
                        if found[0] is not run_port:
                            if run:
                                self._forward_run(run_port, run)
                            run, run_port = [], found[0]
                        run.append(frame)
                        continue
            if run:
                self._forward_run(run_port, run)
                run, run_port = [], None
            self.handle_port_frame(port, frame)
        if run:
            self._forward_run(run_port, run)

    def _forward_run(self, egress: NetDevice, run: list[bytes]) -> None:
        """`_forward` for consecutive frames to one port (not the ingress)."""
        self.forwarded += len(run)
        fitting = [frame for frame in run if egress.fits_mtu(frame)]
        for _ in range(len(run) - len(fitting)):
            egress.drop("PKT_TOO_BIG")
        egress.transmit_batch(fitting)

    def _xmit(self, frame: bytes) -> None:
        """The bridge device transmits (br_dev_xmit): forward by FDB or flood."""
        dst = frame[ethernet.DST]
        observer = self.sim.observer
        if is_multicast_mac(dst):
            if observer is not None:
                self._hop(observer, None, "flooded", "flood: broadcast" if dst == BROADCAST_MAC
                          else "flood: multicast")
            self._flood(frame, None)
            return
        found = self.fdb.lookup_port(dst, self.sim.now_ns)
        if observer is not None:
            observer.fdb_lookup(self.fdb, dst, found is not None)
            self._hop_lookup(observer, None, dst, None if found is None or found[1] else found)
        if found is None or found[1]:
            self._flood(frame, None)
        else:
            self._forward(found[0], frame, None)

    def _deliverable(self, port: NetDevice, ingress: NetDevice | None) -> bool:
        return port is not ingress or port.hairpin

    def _send_to_port(self, port: NetDevice, frame: bytes) -> None:
        if not port.fits_mtu(frame):
            port.drop("PKT_TOO_BIG")
            return
        port.transmit(frame)

    def _forward(self, port: NetDevice, frame: bytes, ingress: NetDevice | None) -> None:
        if not self._deliverable(port, ingress):
            port.drop("BRIDGE_SAME_PORT")
            return
        self.forwarded += 1
        self._send_to_port(port, frame)

    def _flood(self, frame: bytes, ingress: NetDevice | None) -> None:
        self.flooded += 1
        for port in list(self.ports):
            if self._deliverable(port, ingress):
                self._send_to_port(port, frame)

    def _pass_up(self, frame: bytes) -> None:
        """Deliver to the bridge device itself, as if received on it."""
        self.delivered_local += 1
        NetDevice.receive(self, frame)

    def receive(self, frame: bytes) -> None:
        """Frames never arrive on a bridge from a wire; only via its ports."""
        self.drop("BRIDGE_DIRECT_RECEIVE")

    def counters(self) -> dict:
        return {"flooded": self.flooded, "forwarded": self.forwarded,
                "delivered_local": self.delivered_local, "fdb_entries": len(self.fdb)}
