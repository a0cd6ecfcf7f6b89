"""`emu trace`: every packet's walk through the cluster, one line per hop.

Why: the pcaps show what crossed each interface, not why. The network model
reports each decision through emu.net.observe (`hop`: stage, verdict and the
evidence in iproute2's words; `frame`: a device showing a frame to its
taps); the `Tracer` listens and files every event under the packet it
concerns, like cilium's pwru does per skb:

- A frame event names the packet by content (`emu.explain.dissect`: the
  innermost IPv4 header, so a VXLAN frame on eth0 is the same packet as the
  pod's echo request) and becomes the packet *in hand* for the rest of that
  scheduler event; the same content seen again within `window_ns` is the
  same packet (an ARP request resent a second later is a new one).
- A decision about the packet in hand (bridge, ip_rcv, ip_forward, ...)
  follows its frame. One about a packet not yet in a frame (from ip_output
  or icmp_send on, until the next frame: a local send, an echo reply, an
  encapsulation's outer packet, a packet queued behind ARP) waits until a
  frame of that kind leaves the device it named. A refused send never has a
  frame: it is a packet of its own.

The result is a list of `TracedPacket`s in order of first sighting, each
with its `Hop`s in order. Frame hops carry the decisions attached to them
(`Hop.decisions`): the annotated pcapng writes those as the packet's
comment. A traced run replays nothing from the flow cache (an observer
makes every batch go frame by frame), and its pcaps are byte-identical to
an untraced run's.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from dataclasses import dataclass, field
from typing import Callable, Iterable

from emu.explain.dissect import Dissected, dissect
from emu.net.observe import Observer, attach

DEFAULT_WINDOW_NS = 100_000_000  # 100 ms: far below ARP's 1 s retransmit, far above a packet's transit
_ARP_STAGES = ("arp_rcv",)
_NEW_PACKET_STAGES = ("ip_output", "icmp_send")  # these build a packet not yet in any frame
_ANY_KIND_STAGES = ("bridge",)


@dataclass
class Hop:
    """One line of the trace."""

    t_ns: int
    namespace: str
    device: str
    stage: str
    evidence: str
    verdict: str
    packet: int = 0
    outbound: bool | None = None  # a frame hop: the direction through `device`
    decisions: list["Hop"] = field(default_factory=list)  # a frame hop: what was decided about it

    @property
    def is_frame(self) -> bool:
        return self.stage in ("xmit", "rcv", "tap")

    def comment(self) -> str:
        """The frame's decisions in one line (the pcapng's opt_comment)."""
        return "; ".join(f"{d.stage}: {d.evidence} -> {d.verdict}" for d in self.decisions)

    def as_dict(self) -> dict:
        return {"packet": self.packet, "t_ns": self.t_ns, "time": f"{self.t_ns / 1e9:.6f}",
                "namespace": self.namespace, "device": self.device, "stage": self.stage,
                "evidence": self.evidence, "verdict": self.verdict}


@dataclass
class TracedPacket:
    id: int
    dissected: Dissected
    first_ns: int
    hops: list[Hop] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return self.dissected.summary.split(" | ")[-1]


def _kind_of_stage(stage: str) -> str | None:
    if stage in _ARP_STAGES:
        return "arp"
    if stage in _ANY_KIND_STAGES:
        return None
    return "ip"


class Tracer(Observer):
    """Listens to one simulation and files every event under its packet."""

    def __init__(self, sim, tunnel_ports: dict[int, str] | None = None,
                 window_ns: int = DEFAULT_WINDOW_NS) -> None:
        self.sim = sim
        self.tunnel_ports = dict(tunnel_ports or {})
        self.window_ns = window_ns
        self.packets: list[TracedPacket] = []
        self._recent: dict[tuple, tuple[TracedPacket, int]] = {}
        self._event: tuple[int, int] | None = None
        self._in_hand: tuple[TracedPacket, Hop] | None = None
        self._pending: list[Hop] = []  # decisions waiting for their frame
        self._building = False  # a new packet is being built in this event: its decisions wait
        self._last_on: dict[tuple[str, str], tuple[TracedPacket, Hop]] = {}  # the last frame per device
        self.last_frame: Hop | None = None  # the frame hop the capture taps are being shown

    def attach(self) -> "Tracer":
        attach(self.sim, self)
        return self

    # -- bookkeeping ---------------------------------------------------------
    def _current(self) -> tuple[TracedPacket, Hop] | None:
        event = (self.sim.now_ns, self.sim.events_run)
        if event != self._event:
            self._event, self._in_hand, self._building = event, None, False
        return self._in_hand

    def _packet(self, dissected: Dissected) -> TracedPacket:
        now = self.sim.now_ns
        seen = self._recent.get(dissected.key)
        if seen is not None and now - seen[1] <= self.window_ns:
            packet = seen[0]
        else:
            packet = TracedPacket(len(self.packets) + 1, dissected, now)
            self.packets.append(packet)
        self._recent[dissected.key] = (packet, now)
        return packet

    def _add(self, packet: TracedPacket, hop: Hop) -> None:
        hop.packet = packet.id
        packet.hops.append(hop)

    # -- observer events -----------------------------------------------------
    def frame(self, dev, frame, outbound: bool | None = None) -> None:
        self._current()
        dissected = dissect(bytes(frame), dev.linktype, self.tunnel_ports)
        packet = self._packet(dissected)
        stage = "tap" if outbound is None else ("xmit" if outbound else "rcv")
        verdict = "" if outbound is None else ("sent" if outbound else "received")
        ns = dev.namespace.name if dev.namespace is not None else "-"
        hop = Hop(self.sim.now_ns, ns, dev.name, stage, dissected.summary, verdict, outbound=outbound)
        waiting = [d for d in self._pending if d.device == dev.name and d.namespace == ns
                   and _kind_of_stage(d.stage) in (None, dissected.kind) and outbound is not False]
        for decision in waiting:
            self._pending.remove(decision)
            self._add(packet, decision)
            hop.decisions.append(decision)
        self._add(packet, hop)
        self._in_hand, self._building = (packet, hop), False
        self._last_on[(ns, dev.name)] = (packet, hop)
        self.last_frame = hop

    def hop(self, ns, dev, stage: str, verdict: str, evidence: str) -> None:
        in_hand = self._current()
        name = ns.name if ns is not None else "-"
        hop = Hop(self.sim.now_ns, name, dev.name if dev is not None else "-", stage, evidence, verdict)
        kind = _kind_of_stage(stage)
        if stage in _NEW_PACKET_STAGES and not verdict.startswith("refused"):
            self._building = True
        if in_hand is None and not self._building:
            # a program reading a device (flanneld on its TUN) decides about the
            # frame that device last showed, at this same instant
            last = self._last_on.get((name, hop.device))
            if last is not None and last[1].t_ns == self.sim.now_ns:
                in_hand = last
        if in_hand is not None and not self._building and kind in (None, in_hand[0].dissected.kind):
            self._add(in_hand[0], hop)
            in_hand[1].decisions.append(hop)
        elif verdict.startswith(("refused", "dropped")):
            packet = TracedPacket(len(self.packets) + 1, Dissected("other", ("none",), f"(no frame) {evidence}"),
                                  self.sim.now_ns)
            self.packets.append(packet)
            self._add(packet, hop)
        else:
            self._pending.append(hop)

    def drop(self, ns, dev, reason: str) -> None:
        in_hand = self._current()
        if in_hand is None:
            return
        packet, frame_hop = in_hand
        verdict = f"dropped:{reason}"
        if packet.hops and packet.hops[-1].verdict == verdict:
            return  # the decision already said so
        hop = Hop(self.sim.now_ns, ns.name if ns is not None else "-", dev.name if dev is not None else "-",
                  "drop", reason, verdict)
        self._add(packet, hop)
        frame_hop.decisions.append(hop)

    def finish(self) -> None:
        """File decisions whose frame never came (a packet queued and never sent)."""
        if self._pending:
            packet = TracedPacket(len(self.packets) + 1, Dissected("other", ("none",), "(queued, never sent)"),
                                  self._pending[0].t_ns)
            self.packets.append(packet)
            for hop in self._pending:
                self._add(packet, hop)
            self._pending.clear()


def select(packets: Iterable[TracedPacket], keep: Callable[[TracedPacket], bool]) -> list[TracedPacket]:
    return [packet for packet in packets if keep(packet)]


def format_text(packets: list[TracedPacket]) -> list[str]:
    """The trace as aligned lines: a header per packet, then one line per hop."""
    lines: list[str] = []
    for packet in packets:
        lines.append(f"packet {packet.id}: {packet.summary}")
        rows = [(f"{hop.t_ns / 1e9:.6f}", hop.namespace, hop.device, hop.stage, hop.evidence, hop.verdict)
                for hop in packet.hops]
        widths = [max(len(row[i]) for row in rows) for i in range(4)] if rows else []
        for row in rows:
            head = "  ".join(value.ljust(width) for value, width in zip(row[:4], widths))
            lines.append(f"  {head}  {row[4]}" + (f"  => {row[5]}" if row[5] else ""))
    return lines


def format_json(packets: list[TracedPacket]) -> list[str]:
    """One JSON object per hop (JSON Lines), in packet order."""
    return [json.dumps(hop.as_dict(), sort_keys=True) for packet in packets for hop in packet.hops]


# -- a traced run -------------------------------------------------------------------


@dataclass
class TracedRun:
    """A scenario run with a tracer listening, and what it needs to choose flows."""

    result: object  # emu.scenario.run.RunResult
    tracer: Tracer
    emulated: object  # emu.scenario.build.EmulatedCluster

    def flow(self, flow: str | int | None) -> list[TracedPacket]:
        """The packets of `flow`: None every packet; an int (or digits) the
        packets of traffic[N] (see `traffic_packets`); else a filter
        (emu.explain.flowfilter) on each packet's innermost header."""
        from emu.explain.flowfilter import parse_filter

        packets = self.tracer.packets
        if flow is None:
            return list(packets)
        if isinstance(flow, int) or flow.strip().isdigit():
            return self.traffic_packets(int(flow))
        keep = parse_filter(flow)
        return [packet for packet in packets if keep(packet.dissected)]

    def traffic_packets(self, index: int) -> list[TracedPacket]:
        """The packets of traffic[index], first seen while it ran: IPv4
        packets between its namespace's address and its peer (ping's or nc's
        destination; for a listener, any address on the port it listens on),
        loopback packets inside its namespace, ICMP errors sent to it, and the
        ARP packets seen meanwhile (the resolution its first packet waited for)."""
        traffic = self.result.traffic
        if not 0 <= index < len(traffic):
            raise IndexError(f"--flow {index}: the scenario has {len(traffic)} commands (0..{len(traffic) - 1})")
        item = traffic[index]
        keep = self._flow_matcher(item.spec)
        started, finished = item.result.started_ns, item.result.finished_ns or self.result.end_ns
        return [packet for packet in self.tracer.packets if started <= packet.first_ns <= finished and keep(packet)]

    def _flow_matcher(self, spec) -> Callable[[TracedPacket], bool]:
        from emu.scenario.play import resolve_destination

        cluster = self.emulated.cluster
        namespace = cluster.namespace(spec.source)
        own = {str(IPv4Address(a.ip)) for a in namespace.addresses} if namespace is not None else set()
        program = spec.program
        destination = getattr(program, "destination", None)
        peer = resolve_destination(self.emulated, destination) if destination is not None else None
        options = getattr(program, "options", None)
        port = options.port if options is not None else None

        def keep(packet: TracedPacket) -> bool:
            d = packet.dissected
            if d.proto == "arp":
                return True
            if d.kind != "ip":
                return False
            if port is not None and port not in (d.sport, d.dport) and d.proto in ("tcp", "udp"):
                return False
            if d.src.startswith("127.") and d.dst.startswith("127."):
                return bool(packet.hops) and packet.hops[0].namespace == spec.source
            if d.proto == "icmp" and d.icmp_id is None and d.dst in own:
                return True  # an error about something it sent
            if peer is None:
                return d.src in own or d.dst in own
            return (d.src in own and d.dst == peer) or (d.src == peer and d.dst in own)
        return keep

def tunnel_ports(scenario) -> dict[int, str]:
    """The UDP port flannel's backend encapsulates on (so a frame on eth0 is
    read down to the pod's packet)."""
    backend = scenario.net_conf.backend
    return {backend.port: backend.type} if backend.type in ("vxlan", "udp") else {}


def traced_run(scenario, out_dir=None, annotate: bool = True) -> TracedRun:
    """Run `scenario` with a Tracer attached (the flow cache off, so every
    packet is walked and heard); with `out_dir`, the merged pcapng gets a
    packet id and a comment per packet (the per-interface pcaps are the same
    bytes as an untraced run's)."""
    from emu.scenario.run import run_scenario

    holder: dict = {}

    def setup(emulated, capture_set) -> None:
        if emulated.sim.offload is not None:  # the flow cache, if the run has one
            emulated.sim.offload.enabled = False
        tracer = Tracer(emulated.sim, tunnel_ports(scenario)).attach()
        holder.update(tracer=tracer, emulated=emulated)
        if capture_set is not None and annotate:
            capture_set.annotate(lambda: tracer.last_frame)

    result = run_scenario(scenario, out_dir, setup=setup)
    holder["tracer"].finish()
    return TracedRun(result, holder["tracer"], holder["emulated"])
