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

Per-port settings (hairpin, learning, STP port state) live in the port's
`BridgePort` (`dev.bridge_port`, Linux's net_bridge_port), not on devices.
One function, `Bridge.decide`, gives a frame's fate (flood, up, forward,
drop and why); the per-frame path and the runs of `_handle_runs` act on its
answer. Large batches (`handle_port_batch`) are planned at once with numpy
(`Fdb.lookup_batch`) and the known-unicast frames sent to their ports in one
`transmit_interleaved` call per stretch; every other frame takes the
per-frame path at its place, so every output keeps the per-frame order. The
plan is proven equal to `decide` by property tests over random FDB states,
port settings and frames (tests/test_bridge_batch.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

import emu.net.br_netfilter as br_netfilter
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


# Port states (BR_STATE_*, `bridge link set dev DEV state N`): a port learns
# in "learning" and "forwarding", and only a "forwarding" port passes frames.
PORT_STATES = ("disabled", "listening", "learning", "forwarding", "blocking")

# A frame's fate, as `decide` gives it.
FLOOD_GROUP = "flood-group"  # broadcast/multicast: every port but the ingress, and up
FLOOD_UNKNOWN = "flood-unknown"  # unicast the FDB does not know: every port but the ingress
LOCAL = "local"  # for the bridge or one of its ports' own MACs: up
FORWARD = "forward"  # known unicast: out of one port
DROP = "drop"  # known unicast that may not leave by its port (reason given)


class BridgePort:
    """A device enslaved to a bridge and its per-port settings (Linux's
    net_bridge_port): `bridge link set dev DEV hairpin on|off learning on|off
    state STATE`. The settings change forwarding, so each setter counts as a
    configuration change of the bridge's namespace (the flow cache rechecks)."""

    __slots__ = ("bridge", "dev", "_hairpin", "_learning", "_state")

    def __init__(self, bridge: "Bridge", dev: NetDevice, hairpin: bool = False, learning: bool = True,
                 state: str = "forwarding") -> None:
        self.bridge = bridge
        self.dev = dev
        self._hairpin = hairpin
        self._learning = learning
        self._state = _checked_state(state)

    def __repr__(self) -> str:
        return f"<BridgePort {self.dev.name} master {self.bridge.name} state {self._state}>"

    @property
    def hairpin(self) -> bool:
        """Known unicast may go back out of the port it came in on (and floods too)."""
        return self._hairpin

    @hairpin.setter
    def hairpin(self, value: bool) -> None:
        self._hairpin = bool(value)
        self.bridge.port_changed()

    @property
    def learning(self) -> bool:
        """Source MACs of frames from this port are learned (BR_LEARNING)."""
        return self._learning

    @learning.setter
    def learning(self, value: bool) -> None:
        self._learning = bool(value)
        self.bridge.port_changed()

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = _checked_state(value)
        self.bridge.port_changed()

    @property
    def forwarding(self) -> bool:
        return self._state == "forwarding"


def _checked_state(state: str) -> str:
    if state not in PORT_STATES:
        raise ValueError(f"state: expected one of {', '.join(PORT_STATES)}, got {state!r}")
    return state


class Bridge(NetDevice):
    kind = "bridge"

    def __init__(self, sim: Scheduler, name: str, mac: bytes, mtu: int = 1500,
                 ageing_ns: int = DEFAULT_AGEING_NS) -> None:
        super().__init__(sim, name, mac, mtu)
        self.ports: list[NetDevice] = []
        self.fdb = Fdb(ageing_ns)
        self.fdb.add_static(mac, None, local=True)
        self._promiscuous = False
        self._plain_ports = True  # every port forwarding and learning: batches may be planned
        self.flooded = 0
        self.forwarded = 0
        self.delivered_local = 0
        self._nf_state = None  # br_netfilter: the state of the frame being bridged
        self._bridged_dnat: dict[bytes, tuple] = {}  # br_netfilter: packets sent by the neighbour layer

    @property
    def promiscuous(self) -> bool:
        return self._promiscuous

    @promiscuous.setter
    def promiscuous(self, value: bool) -> None:
        """Promiscuous mode changes what is passed up: a configuration change."""
        self._promiscuous = value
        self._config_changed()

    # -- configuration ------------------------------------------------------
    def add_port(self, port: NetDevice, hairpin: bool = False) -> BridgePort:
        """Enslave `port` (`ip link set PORT master BRIDGE`); returns its
        BridgePort (`port.bridge_port`), where the per-port settings live.

        Linux adds new ports at the head of its port list, so floods visit
        the newest port first; we keep the same order.
        """
        if port.bridge_port is not None:
            raise ValueError(f"{port.name} is already a port of {port.master.name}")
        port.bridge_port = BridgePort(self, port, hairpin=hairpin)
        self.ports.insert(0, port)
        self.fdb.add_static(port.mac, port, local=True)
        self.port_changed()
        return port.bridge_port

    def remove_port(self, port: NetDevice) -> None:
        self.ports.remove(port)
        port.bridge_port = None
        self.fdb.flush_port(port)
        self.fdb.remove(port.mac)
        self.port_changed()

    def port_changed(self) -> None:
        """A port joined, left or changed a setting."""
        self._plain_ports = all(dev.bridge_port.forwarding and dev.bridge_port.learning for dev in self.ports)
        self._config_changed()

    # -- the decision -------------------------------------------------------
    def decide(self, ingress: NetDevice | None, dst: bytes, now: int) -> tuple[str, NetDevice | None, str | None]:
        """The fate of a frame to `dst` that arrived on port `ingress` (None:
        sent by the bridge device itself), as (fate, egress port, drop reason):
        br_handle_frame_finish / br_dev_xmit with should_deliver. Every path
        (frame by frame, runs, the numpy plan) acts on this answer or, for the
        plan, is proven equal to it (tests/test_bridge_batch.py)."""
        if is_multicast_mac(dst):
            return FLOOD_GROUP, None, None
        found = self.fdb.lookup_port(dst, now)
        if found is None:
            return FLOOD_UNKNOWN, None, None
        egress, local = found
        if local:
            # The bridge's own transmission to a local MAC is flooded (no port
            # to deliver it to); from a port it goes up.
            return (LOCAL, egress, None) if ingress is not None else (FLOOD_UNKNOWN, None, None)
        port = egress.bridge_port
        if egress is ingress and not port._hairpin:
            return DROP, egress, "BRIDGE_SAME_PORT"
        if port._state != "forwarding":
            return DROP, egress, "BRIDGE_PORT_STATE"
        return FORWARD, egress, None

    def _ingress(self, port: NetDevice, frame: bytes, now: int) -> tuple[str, NetDevice | None, str | None] | None:
        """br_handle_frame: check and learn a frame from `port`, then `decide`;
        None: dropped here (counted)."""
        if len(frame) < HEADER_LEN:
            port.drop("PKT_TOO_SMALL")
            return None
        src = frame[ethernet.SRC]
        if is_multicast_mac(src) or src == ZERO_MAC:
            port.drop("MAC_INVALID_SOURCE")
            return None
        settings = port.bridge_port
        state = settings._state  # read in place: the per-frame path (the properties are for users)
        if state != "forwarding" and state != "learning":
            port.drop("BRIDGE_PORT_STATE")
            return None
        observer = self.sim.observer
        if settings._learning:
            self.fdb.learn(src, port, now)
            if observer is not None:
                observer.fdb_learn(self.fdb, src, port)
        if state == "learning":
            port.drop("BRIDGE_PORT_STATE")
            return None
        dst = frame[ethernet.DST]
        verdict = self.decide(port, dst, now)
        if observer is not None:
            self._hop_verdict(observer, port, dst, verdict)
        return verdict

    def _act(self, port: NetDevice | None, frame: bytes, verdict: tuple[str, NetDevice | None, str | None]) -> None:
        """Carry out `decide`'s verdict for one frame."""
        fate, egress, reason = verdict
        local_rcv = self._promiscuous and port is not None
        if fate == FORWARD:
            self.forwarded += 1
            self._send_to_port(egress, frame)
        elif fate == FLOOD_GROUP or fate == FLOOD_UNKNOWN:
            self._flood(frame, port)
            local_rcv = local_rcv or (fate == FLOOD_GROUP and port is not None)
        elif fate == LOCAL:
            self._pass_up(frame)
            return
        else:
            egress.drop(reason)
        if local_rcv:
            self._pass_up(frame)

    # -- data path ----------------------------------------------------------
    def handle_port_frame(self, port: NetDevice, frame: bytes) -> None:
        """A frame received on one of our ports (the bridge rx_handler);
        with br_netfilter on, a frame that passes br_handle_frame's first
        checks goes through PREROUTING before learning, and its netfilter
        state follows it (emu.net.br_netfilter)."""
        state = None
        if br_netfilter.enabled(self) and len(frame) >= HEADER_LEN and not is_multicast_mac(frame[ethernet.SRC]) \
                and frame[ethernet.SRC] != ZERO_MAC and port.bridge_port.state in ("forwarding", "learning"):
            frame, state = br_netfilter.pre_routing(self, port, frame)
            if frame is None:
                return
        self.bridge_frame(port, frame, state)

    def bridge_frame(self, port: NetDevice, frame: bytes, nf_state=None) -> None:
        """br_handle_frame_finish for a frame from `port` (with its
        br_netfilter state, if any, for the hooks on the way out)."""
        outer, self._nf_state = self._nf_state, nf_state
        try:
            verdict = self._ingress(port, frame, self.sim.now_ns)
            if verdict is not None:
                self._act(port, frame, verdict)
        finally:
            self._nf_state = outer

    def _hop(self, observer, port: NetDevice | None, verdict: str, evidence: str) -> None:
        observer.hop(self.namespace, port or self, "bridge", verdict, evidence)

    def _hop_verdict(self, observer, port: NetDevice | None, dst: bytes,
                     verdict: tuple[str, NetDevice | None, str | None]) -> None:
        """The decision, in `bridge fdb show` words."""
        fate, egress, reason = verdict
        if fate == FLOOD_GROUP:
            self._hop(observer, port, "flooded", "flood: broadcast" if dst == BROADCAST_MAC else "flood: multicast")
            return
        observer.fdb_lookup(self.fdb, dst, fate != FLOOD_UNKNOWN)
        if fate == FLOOD_UNKNOWN:
            self._hop(observer, port, "flooded", "flood: unknown unicast")
            return
        where = f"fdb {mac_to_str(dst)} dev {(egress or self).name} master {self.name}"
        if fate == LOCAL:
            self._hop(observer, port, "delivered", f"{where} permanent: local")
        elif fate == DROP:
            self._hop(observer, port, f"dropped:{reason}", where)
        else:
            self._hop(observer, port, "forwarded", where)

    def handle_port_batch(self, port: NetDevice, frames: Sequence[bytes]) -> None:
        """Frames received on one port, in order (a list of bytes or a
        `PackedFrames` batch): exactly `handle_port_frame` for each, faster. Large batches are decided with numpy (`_handle_planned`),
        small ones frame by frame with known unicast gathered into runs
        (`_handle_runs`); a flow recorder or promiscuous mode (every frame also
        goes up) takes the per-frame path, and so does a batch an observer
        listens to (it hears every frame's decision)."""
        if self.sim.observer is not None or self._promiscuous or br_netfilter.enabled(self):
            for frame in frames:
                self.handle_port_frame(port, frame)
        elif len(frames) >= VECTOR_MIN and self._plain_ports:
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
        if not ingress.bridge_port.hairpin:
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
        ingress = self._ingress
        run: list[bytes] = []
        run_port: NetDevice | None = None
        for frame in frames:
            verdict = ingress(port, frame, now)
            if verdict is not None and verdict[0] == FORWARD:
                if verdict[1] is not run_port:
                    if run:
                        self._forward_run(run_port, run)
                    run, run_port = [], verdict[1]
                run.append(frame)
                continue
            if run:
                self._forward_run(run_port, run)
                run, run_port = [], None
            if verdict is not None:
                self._act(port, frame, verdict)
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
        """The bridge device transmits (br_dev_xmit): forward by FDB or flood
        (or, for a bridged DNAT the neighbour layer sent, go on bridging it)."""
        if self._bridged_dnat and br_netfilter.finish_bridge_slow(self, frame):
            return
        dst = frame[ethernet.DST]
        verdict = self.decide(None, dst, self.sim.now_ns)
        observer = self.sim.observer
        if observer is not None:
            self._hop_verdict(observer, None, dst, verdict)
        self._act(None, frame, verdict)

    def _may_deliver(self, dev: NetDevice, ingress: NetDevice | None) -> bool:
        """should_deliver: not back out of the ingress port unless hairpin, and
        only to a forwarding port."""
        port = dev.bridge_port
        return (dev is not ingress or port.hairpin) and port.forwarding

    def _send_to_port(self, port: NetDevice, frame: bytes) -> None:
        state = self._nf_state
        if state is None:
            frames = [frame]
        else:  # br_netfilter's FORWARD and POSTROUTING (what they send themselves sees no state)
            self._nf_state = None
            frames = br_netfilter.bridged_out(self, port, frame, state)
            self._nf_state = state
        for frame in frames:
            if not port.fits_mtu(frame):
                port.drop("PKT_TOO_BIG")
                continue
            port.transmit(frame)

    def _flood(self, frame: bytes, ingress: NetDevice | None) -> None:
        self.flooded += 1
        for port in list(self.ports):
            if self._may_deliver(port, ingress):
                self._send_to_port(port, frame)

    def _pass_up(self, frame: bytes) -> None:
        """Deliver to the bridge device itself, as if received on it."""
        self.delivered_local += 1
        state, self._nf_state = self._nf_state, None
        if state is not None:
            br_netfilter.passed_up(self, frame, state)
        NetDevice.receive(self, frame)

    def receive(self, frame: bytes) -> None:
        """Frames never arrive on a bridge from a wire; only via its ports."""
        self.drop("BRIDGE_DIRECT_RECEIVE")

    def counters(self) -> dict:
        return {"flooded": self.flooded, "forwarded": self.forwarded,
                "delivered_local": self.delivered_local, "fdb_entries": len(self.fdb)}
