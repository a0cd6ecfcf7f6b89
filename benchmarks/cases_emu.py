"""Benchmark cases that drive the emulator through its public API.

Three levels, cheapest first: the learning bridge alone (`Bridge.
handle_port_batch` with pre-built frames over an FDB of 10 to 1M MACs), the
VXLAN codec alone (`emu.wire.vxlan_batch` with full checksums, vectorised),
and whole pod->pod paths through a built cluster (datagrams sent with the
flow cache's `UdpSocket.sendto_batch`, or frames injected at the source
pod's eth0 for the slow-path variants, counted by a UDP socket in the
destination pod while the scheduler runs), every frame built at every
capture point (a `FrameSink`) or written to pcaps, and, apart, the
counters-only replay.

Every case takes a `batch`: how many frames are handed over per call.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from itertools import cycle
from pathlib import Path

import numpy as np

from benchmarks import topology
from benchmarks.case import CaseUnavailable, SteppedCase, current_rss_mb
from benchmarks.sink import FrameSink
from emu.capture import CaptureSet
from emu.net import Bridge, NetDevice, UdpSocket
from emu.net.vxlan import flow_source_port
from emu.scenario.run import _Captures
from emu.sim import Scheduler
from emu.wire.ethernet import ETHERTYPE_IPV4, ethernet_header
from emu.wire.packed import PackedFrames
from emu.wire.ipv4 import PROTO_UDP, Ipv4Repr
from emu.wire.udp import UdpRepr
from emu.wire.vxlan import OuterHeaders, encapsulate
from emu.wire.vxlan_batch import decapsulate_batch, encapsulate_rows

BRIDGE_PORTS = 4
DISTINCT_FRAMES = 1024  # frames cycled through per case: many flows, no single hot one
MIN_FRAME = 14 + 20 + 8  # Ethernet + IPv4 + UDP headers


class _SinkPort(NetDevice):
    """A bridge port whose wire counts frames: measures the bridge, not a peer.

    It also takes a bridge's interleaved batch in one call (what `transmit`
    frame by frame would do to its counters, per port at once), so the case
    measures the bridge's decisions rather than a per-frame hand-over. With
    veth ports the frames go on one by one to the peers' backlogs instead.
    """

    kind = "sink"
    takes_interleaved = True

    def __init__(self, sim: Scheduler, index: int) -> None:
        super().__init__(sim, f"port{index}", bytes([0x02, 0xEE, 0, 0, 0, index]))
        self.sent = 0

    def _xmit(self, frame: bytes) -> None:
        self.sent += 1

    @classmethod
    def transmit_interleaved_batch(cls, devices, which: np.ndarray, frames) -> None:
        counts = np.bincount(which, minlength=len(devices))
        numbers = np.flatnonzero(counts).tolist()
        involved = [devices[number] for number in numbers]
        if involved[0].sim.observer is not None or any(dev.taps or not dev.up for dev in involved):
            for number, frame in zip(which.tolist(), frames):
                devices[number].transmit(frame)
            return
        lengths = frames.lengths if isinstance(frames, PackedFrames) else \
            np.fromiter(map(len, frames), np.int64, len(frames))
        sizes = np.bincount(which, weights=lengths, minlength=len(devices))
        for number, device in zip(numbers, involved):
            device.stats.tx_packets += int(counts[number])
            device.stats.tx_bytes += int(sizes[number])
            device.sent += int(counts[number])


def _mac(index: int) -> bytes:
    """The index-th learned MAC: locally administered unicast, distinct for 2**40."""
    return b"\x02" + index.to_bytes(5, "big")


class BridgeCase(SteppedCase):
    """The cni0 learning bridge forwarding known unicast with `macs` learned MACs.

    Each frame comes in on the port its source MAC was learned on (so it
    refreshes, never moves, that entry) and goes to a MAC learned on another
    port, picked at random from the whole table, so the lookups spread over
    every entry as in a big L2 domain.
    """

    def __init__(self, name: str, macs: int, batch: int, packed: bool = True, seed: int = 6,
                 group: str = "bridge") -> None:
        if macs < 2 * BRIDGE_PORTS:
            raise ValueError(f"macs: need at least {2 * BRIDGE_PORTS}, got {macs}")
        super().__init__(name, group, macs=macs, batch=batch, packed=packed, frame_size=60)
        self.seed = seed

    def describe(self) -> str:
        text = (f"{self.params['macs']:,} MACs, batch {self.params['batch']:,} "
                f"{'packed' if self.params['packed'] else 'list[bytes]'}")
        if self.extra:
            text += f", FDB +{self.extra['fdb_mb']:.0f} MiB, filled in {self.extra['fdb_fill_s']:.1f} s"
        return text

    def setup(self) -> None:
        self.sim = Scheduler()
        self.bridge = Bridge(self.sim, "cni0", b"\x02\xbb\x00\x00\x00\x01")
        self.ports = [_SinkPort(self.sim, i) for i in range(BRIDGE_PORTS)]
        for port in self.ports:
            self.bridge.add_port(port)
        macs = self.params["macs"]
        before_mb, start = current_rss_mb(), time.perf_counter()
        learn = self.bridge.fdb.learn
        ports = self.ports
        for index in range(macs):
            learn(_mac(index), ports[index % BRIDGE_PORTS], 0)
        self.extra["fdb_fill_s"] = round(time.perf_counter() - start, 3)
        self.extra["fdb_mb"] = round(current_rss_mb() - before_mb, 1)
        rng = random.Random(self.seed)
        padding = bytes(60 - 14)
        batches = []
        for ingress in range(BRIDGE_PORTS):
            frames = []
            for _ in range(max(DISTINCT_FRAMES // BRIDGE_PORTS, self.params["batch"])):
                src = rng.randrange(macs // BRIDGE_PORTS) * BRIDGE_PORTS + ingress
                dst = rng.randrange(macs)
                if dst % BRIDGE_PORTS == ingress:
                    dst = (dst + 1) % macs
                frames.append(ethernet_header(_mac(dst), _mac(src), ETHERTYPE_IPV4) + padding)
            for batch in _batches(frames, self.params["batch"]):
                batches.append((ports[ingress], PackedFrames.from_frames(batch) if self.params["packed"]
                                else batch))
        self.batches = cycle(batches)

    def step(self) -> int:
        port, batch = next(self.batches)
        self.bridge.handle_port_batch(port, batch)
        return len(batch)


def _batches(items: list, size: int) -> list[list]:
    """`items` cut into consecutive batches of `size` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch: must be at least 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def inner_frames(size: int, count: int = DISTINCT_FRAMES) -> list[bytes]:
    """`count` pod->pod UDP frames of exactly `size` bytes, one flow each."""
    if size < MIN_FRAME:
        raise ValueError(f"frame_size: must be at least {MIN_FRAME}, got {size}")
    src_ip, dst_ip = b"\x0a\xf4\x01\x02", b"\x0a\xf4\x02\x02"
    payload = bytes(i & 0xFF for i in range(size - MIN_FRAME))
    frames = []
    for flow in range(count):
        segment = UdpRepr(20000 + flow, topology.RECEIVER_PORT, len(payload)).build(
            payload, src_ip, dst_ip)
        packet = Ipv4Repr(src=src_ip, dst=dst_ip, protocol=PROTO_UDP, payload_len=len(segment),
                          ident=flow, df=True).build(segment)
        frames.append(ethernet_header(b"\x0a\x58\x0a\xf4\x02\x02", b"\x0a\x58\x0a\xf4\x01\x02",
                                      ETHERTYPE_IPV4) + packet)
    return frames


def _outer_headers(inner: bytes, ident: int) -> OuterHeaders:
    """What flannel.1 on n1 puts around `inner`: the node addresses, hashed source port."""
    return OuterHeaders(src_mac=b"\x02\x42\xac\x12\x00\x0b", dst_mac=b"\x02\x42\xac\x12\x00\x0c",
                        src_ip=b"\xac\x12\x00\x0b", dst_ip=b"\xac\x12\x00\x0c",
                        src_port=flow_source_port(inner), ident=ident)


class VxlanEncapCase(SteppedCase):
    """VXLAN encapsulation of `frame_size`-byte inner frames, IPv4 and UDP checksums valid,
    vectorised over a packed batch (`emu.wire.vxlan_batch.encapsulate_rows`: an
    (N, L) matrix in, an (N, L + 50) matrix out)."""

    def __init__(self, name: str, frame_size: int, batch: int) -> None:
        super().__init__(name, "vxlan_encap", frame_size=frame_size, batch=batch)

    def describe(self) -> str:
        return f"encap, {self.params['frame_size']} B inner frames"

    def setup(self) -> None:
        frames = inner_frames(self.params["frame_size"], max(DISTINCT_FRAMES, self.params["batch"]))
        self.outer = _outer_headers(frames[0], 0)
        batches = []
        for batch in _batches(list(enumerate(frames)), self.params["batch"]):
            matrix = PackedFrames.from_frames([frame for _, frame in batch]).rows
            idents = np.array([index for index, _ in batch], np.uint64)
            ports = np.array([flow_source_port(frame) for _, frame in batch], np.uint64)
            batches.append((matrix, idents, ports))
        self.batches = cycle(batches)

    def step(self) -> int:
        inner, idents, ports = next(self.batches)
        encapsulate_rows(inner, self.outer, idents, ports)
        return len(inner)


class VxlanDecapCase(SteppedCase):
    """VXLAN decapsulation with full validation (lengths, IPv4 and UDP checksums),
    vectorised over the batch (`emu.wire.vxlan_batch.decapsulate_batch`)."""

    def __init__(self, name: str, frame_size: int, batch: int) -> None:
        super().__init__(name, "vxlan_decap", frame_size=frame_size, batch=batch)

    def describe(self) -> str:
        return f"decap, {self.params['frame_size']} B inner frames"

    def setup(self) -> None:
        frames = inner_frames(self.params["frame_size"], max(DISTINCT_FRAMES, self.params["batch"]))
        wire = [encapsulate(frame, _outer_headers(frame, i)) for i, frame in enumerate(frames)]
        self.batches = cycle(_batches(wire, self.params["batch"]))

    def step(self) -> int:
        batch = next(self.batches)
        decapsulate_batch(batch)
        return len(batch)


TAPS = ("sink", "capture", "none")


class PodToPodCase(SteppedCase):
    """UDP frames from pod p1a to `destination` through the whole emulated cluster.

    Setup builds the benchmark cluster and records DISTINCT_FRAMES datagrams
    from p1a's stack (`topology.record_traffic`). With `fast` (the default) a
    round sends `batch` datagrams with `UdpSocket.sendto_batch`, the flow
    cache's entry point (record once, replay the rest); without it, the
    recorded frames are injected at eth0 with `transmit_batch` and walk the
    slow path hop by hop (which makes every frame at every device on its
    way). Either way the scheduler drains the instant and the destination
    pod's socket counts arrivals.

    `taps` says what watches the devices, at the points `emu run` captures
    (every device of every node and pod):
    - "sink": a `FrameSink`, so the flow cache builds the bytes of every
      frame at every point, as with capture, but nothing is written;
    - "capture": pcap and pcapng files, as `emu run` writes them;
    - "none": nothing, so a replay builds no frame at all (counters and the
      receiving socket's queue only): not like work, reported apart.
    With a sink or capture, each round checks that every datagram that
    arrived left exactly as many frames as its slow-path walk shows the
    points (measured in setup), and fails otherwise: a case that stops
    building frames cannot report a number.
    """

    def __init__(self, name: str, backend: str, destination: str, batch: int,
                 taps: str = "sink", fast: bool = True, group: str = "end_to_end") -> None:
        if taps not in TAPS:
            raise ValueError(f"taps: expected one of {', '.join(TAPS)}, got {taps!r}")
        super().__init__(name, group, backend=backend, destination=destination,
                         batch=batch, taps=taps, fast=fast,
                         frame_size=MIN_FRAME + topology.PAYLOAD_LEN)
        self.capture_dir: Path | None = None
        self.capture_set: CaptureSet | None = None
        self.sink: FrameSink | None = None
        self.points_per_datagram = 0

    def describe(self) -> str:
        params = self.params
        points = self.points_per_datagram
        if params["taps"] == "capture":
            watching = f"every frame built and captured at {points} points"
        elif params["taps"] == "sink":
            watching = f"every frame built at {points} points"
        elif params["fast"]:
            watching = "no frame built after a flow's first (counters only)"
        else:
            watching = f"every frame built hop by hop ({points} points), no tap"
        return (f"{params['backend']}, {topology.SOURCE_POD}->{params['destination']}, batch "
                f"{params['batch']}, {'flow cache' if params['fast'] else 'slow path'}, {watching}")

    def setup(self) -> None:
        emulated = topology.build(self.params["backend"])
        self.sim = emulated.sim
        target = emulated.cluster.pods[self.params["destination"]]
        # An ordinary receiving socket: datagrams queue up for recvfrom().
        self.receiver = UdpSocket(target.ns)
        self.receiver.bind(None, topology.RECEIVER_PORT)
        try:
            recorded = topology.record_traffic(emulated, self.params["destination"],
                                               DISTINCT_FRAMES)
        except RuntimeError as error:
            raise CaseUnavailable(str(error)) from None
        primed = self._received()
        if primed != DISTINCT_FRAMES:
            raise CaseUnavailable(f"priming delivered {primed} of {DISTINCT_FRAMES} datagrams")
        self.eth0 = emulated.cluster.pods[topology.SOURCE_POD].ns.device("eth0")
        self.emulated = emulated
        if self.params["taps"] == "sink":
            self.sink = FrameSink()
            _Captures(self.sink, emulated).attach_all()
        elif self.params["taps"] == "capture":
            self._fresh_capture()
        # After the taps: a captured bridge is promiscuous, which can add a point.
        self.points_per_datagram = len(topology.frames_at_every_point(emulated, recorded.sent[0]))
        self._received()
        self.batches = cycle(_batches(recorded.sent, self.params["batch"]))
        self.sender = UdpSocket(emulated.cluster.pods[topology.SOURCE_POD].ns)
        self.address = (target.ip.packed, topology.RECEIVER_PORT)
        payloads = [index.to_bytes(4, "big") * (topology.PAYLOAD_LEN // 4)
                    for index in range(DISTINCT_FRAMES)]
        self.payload_batches = cycle(_batches(payloads, self.params["batch"]))

    def _received(self) -> int:
        """Datagrams the receiving socket got since the last call (then drops them)."""
        count = len(self.receiver.queue)
        self.receiver.queue.clear()
        return count

    def _drain(self) -> None:
        """Run every event of the current instant: the frames' whole walk."""
        self.sim.run(until_ns=self.sim.now_ns)

    def step(self) -> int:
        if self.params["fast"]:
            self.sender.sendto_batch(next(self.payload_batches), self.address)
        else:
            self.eth0.transmit_batch(next(self.batches))
        self._drain()
        return self._received()

    def measure(self, budget_s: float) -> tuple[int, float]:
        if self.params["taps"] == "capture":
            self._fresh_capture()
        elif self.sink is not None:
            self.sink.clear()
        frames, seconds = super().measure(budget_s)
        if self.capture_set is not None:
            # The round's last replays may wait in the capture set (deferred
            # batches, buffered records): writing them is part of the round.
            start = time.perf_counter()
            self.capture_set.flush()
            seconds += time.perf_counter() - start
        self._check_frames_built(frames)
        return frames, seconds

    def _frames_shown(self) -> int | None:
        """Frames the taps were shown this round (None without taps)."""
        if self.sink is not None:
            return self.sink.frames
        if self.capture_set is not None:
            self.capture_set.flush()
            return sum(self.capture_set.counts().values())
        return None

    def _check_frames_built(self, datagrams: int) -> None:
        shown = self._frames_shown()
        expected = datagrams * self.points_per_datagram
        if shown is not None and shown != expected:
            raise RuntimeError(f"{self.name}: {datagrams} datagrams arrived but the taps were shown "
                               f"{shown} frames, not {expected} ({self.points_per_datagram} per "
                               "datagram): the case stopped building every frame")

    def _fresh_capture(self) -> None:
        """Capture every device into new files, as `emu run` does (buffered,
        written in deferred batches and at the round's end, not per instant),
        after removing the last round's files.

        Why per round: a round writes ~2.8 KB of pcap + pcapng per datagram
        (hundreds of MB per second). Files deleted before the kernel writes
        them back cost no disk I/O, so the case measures the emulator's
        capture path, not this machine's disk; files kept for minutes would
        be written back and the disk's speed would set the pace."""
        self._drop_capture()
        self.capture_dir = Path(tempfile.mkdtemp(prefix="emu-bench-capture-"))
        self.capture_set = CaptureSet(self.capture_dir, buffered=True)
        _Captures(self.capture_set, self.emulated).attach_all()

    def _drop_capture(self) -> None:
        if self.capture_set is not None:
            old = self.capture_set
            for ns in self.emulated.cluster.namespaces():
                for dev in ns.devices.values():
                    dev.taps[:] = [tap for tap in dev.taps if getattr(tap, "batch_sink", None) is not old]
            old.close()
            self.capture_set = None
        if self.capture_dir is not None:
            shutil.rmtree(self.capture_dir, ignore_errors=True)
            self.capture_dir = None

    def close(self) -> None:
        self._drop_capture()
