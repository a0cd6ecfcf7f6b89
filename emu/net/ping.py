"""iputils `ping`, as a program running in a namespace.

What reaches the wire is what iputils makes the kernel send: one ICMP echo
request per interval with a 16-byte timestamp then a byte pattern as data,
sequence numbers from 1, the socket's TTL and PMTU-discovery mode (-t, -M),
MSG_CONFIRM on sends that follow a reply (which keeps the gateway's
neighbour entry confirmed). The printed lines and the summary follow
iputils' wording so the run output reads like a terminal session.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from emu.net.stack import SendError
from emu.sim import NS_PER_SECOND
from emu.wire import icmp
from emu.wire.addr import ip_from_str, ip_to_str
from emu.wire.icmp import IcmpMessage, IcmpRepr
from emu.wire.ipv4 import PROTO_ICMP, Ipv4Packet

if TYPE_CHECKING:
    from emu.net.namespace import Namespace

DEFAULT_LINGER_NS = 10 * NS_PER_SECOND

_ERROR_TEXT = {
    (icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE): "Destination Net Unreachable",
    (icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE): "Destination Host Unreachable",
    (icmp.DEST_UNREACHABLE, icmp.PROTOCOL_UNREACHABLE): "Destination Protocol Unreachable",
    (icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE): "Destination Port Unreachable",
    (icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED_IN_TRANSIT): "Time to live exceeded",
    (icmp.TIME_EXCEEDED, icmp.REASSEMBLY_TIME_EXCEEDED): "Frag reassembly time exceeded",
}


@dataclass
class PingResult:
    """What one ping run printed, and its counters."""

    command: str
    destination: str
    transmitted: int = 0
    received: int = 0
    errors: int = 0
    duplicates: int = 0
    lines: list[str] = field(default_factory=list)
    fatal: str | None = None
    started_ns: int = 0
    finished_ns: int = 0

    @property
    def loss_percent(self) -> int:
        if not self.transmitted:
            return 0
        return round(100 * (self.transmitted - self.received) / self.transmitted)

    def summary(self) -> str:
        if self.fatal:
            return self.fatal
        text = f"{self.transmitted} packets transmitted, {self.received} received"
        if self.duplicates:
            text += f", +{self.duplicates} duplicates"
        if self.errors:
            text += f", +{self.errors} errors"
        return text + f", {self.loss_percent}% packet loss"


def _payload(size: int, now_ns: int) -> bytes:
    data = bytearray(i & 0xFF for i in range(size))
    if size >= 16:
        seconds, rest = divmod(now_ns, NS_PER_SECOND)
        data[0:16] = struct.pack("<qq", seconds, rest // 1000)
    return bytes(data)


class Ping:
    """One `ping -c COUNT ... DEST` run in namespace `ns`."""

    def __init__(self, ns: "Namespace", destination: str, count: int, interval_s: float = 1.0,
                 size: int = 56, ttl: int | None = None, timeout_s: float | None = None,
                 pmtudisc: str = "want", interface: str | None = None, quiet: bool = False,
                 command: str = "", host_name: str | None = None) -> None:
        self.ns = ns
        self.dst = ip_from_str(destination)
        self.count = count
        self.interval_ns = round(interval_s * NS_PER_SECOND)
        self.size = size
        self.ttl = ttl
        self.linger_ns = round(timeout_s * NS_PER_SECOND) if timeout_s else DEFAULT_LINGER_NS
        self.pmtudisc = pmtudisc
        self.quiet = quiet
        self.src: bytes | None = None
        self.oif = None
        self.result = PingResult(command or f"ping {destination}", destination)
        self._interface = interface
        self._sent_at: dict[int, int] = {}
        self._answered: set[int] = set()
        self._confirm = False
        self._done: Callable[[PingResult], None] | None = None
        self._finish_event = None
        self.ident = 0
        self.host_name = host_name  # what the command line named, when not an address

    # -- life cycle ---------------------------------------------------------------
    def start(self, on_done: Callable[[PingResult], None]) -> None:
        self._done = on_done
        self.result.started_ns = self.ns.sim.now_ns
        problem = self._setup()
        if problem:
            self.result.fatal = problem
            self._finish()
            return
        self.ident = self._free_ident()
        self.ns.stack.echo_handlers[self.ident] = self._on_icmp
        shown = self.host_name or ip_to_str(self.dst)
        self._line(f"PING {shown} ({ip_to_str(self.dst)}) {self.size}({self.size + 28}) bytes of data.")
        self._send(1)

    def _setup(self) -> str | None:
        """What iputils does before the first probe: bind and connect."""
        if self._interface:
            try:
                self.src = ipaddress.IPv4Address(self._interface).packed
            except ValueError:
                if self._interface not in self.ns.devices:
                    return f"ping: SO_BINDTODEVICE {self._interface}: No such device"
                self.oif = self.ns.devices[self._interface]
            else:
                if not self.ns.is_local_address(self.src):
                    return "ping: bind: Cannot assign requested address"
        route, _ = self.ns.route_output(self.dst, self.oif)
        if route is None:
            return "ping: connect: Network is unreachable"
        return None

    def _free_ident(self) -> int:
        while True:
            ident = self.ns.rng.randrange(1, 0x10000)
            if ident not in self.ns.stack.echo_handlers:
                return ident

    def _send(self, seq: int) -> None:
        now = self.ns.sim.now_ns
        request = IcmpRepr.echo_request(self.ident, seq & 0xFFFF, _payload(self.size, now)).build()
        self.result.transmitted += 1
        self._sent_at[seq] = now
        try:
            self.ns.stack.send(self.dst, PROTO_ICMP, request, src=self.src, ttl=self.ttl,
                               pmtudisc=self.pmtudisc, oif=self.oif, confirm=self._confirm,
                               process=True)
        except SendError as error:
            self.result.errors += 1
            self._answered.add(seq)
            if error.errno_name == "EMSGSIZE":
                self._line(f"ping: local error: message too long, mtu={error.mtu}")
            else:
                self._line(f"ping: sendmsg: {error}")
        self._confirm = False
        if seq < self.count:
            self.ns.sim.call_process_at(now + self.interval_ns, self._send, seq + 1)
        else:
            self._finish_event = self.ns.sim.call_later(self.linger_ns, self._finish)
        self._check_done()

    def _on_icmp(self, kind: str, packet: bytes, message: IcmpMessage) -> None:
        now = self.ns.sim.now_ns
        src = ip_to_str(packet[12:16])
        if kind == "reply":
            seq = message.echo_seq
            if seq not in self._sent_at:
                return
            if seq in self._answered:
                self.result.duplicates += 1
                self._line(f"{len(message)} bytes from {src}: icmp_seq={seq} ttl={packet[8]} (DUP!)")
                return
            self._answered.add(seq)
            self.result.received += 1
            self._confirm = True
            rtt_ms = (now - self._sent_at[seq]) / 1e6
            self._line(f"{len(message)} bytes from {src}: icmp_seq={seq} ttl={packet[8]} time={rtt_ms:.3f} ms")
        else:
            try:
                quoted = Ipv4Packet(message.payload, allow_truncated=True)
                seq = (quoted.payload[6] << 8) | quoted.payload[7]
            except (ValueError, IndexError):
                return
            if seq not in self._sent_at:
                return
            if message.type == icmp.DEST_UNREACHABLE and message.code == icmp.FRAGMENTATION_NEEDED:
                text = f"Frag needed and DF set (mtu = {message.next_hop_mtu})"
            else:
                text = _ERROR_TEXT.get((message.type, message.code),
                                       f"ICMP type {message.type} code {message.code}")
            self.result.errors += 1
            self._answered.add(seq)
            self._line(f"From {src} icmp_seq={seq} {text}")
        self._check_done()

    def _check_done(self) -> None:
        if self.result.transmitted == self.count and len(self._answered) >= self.count:
            self._finish()

    def _finish(self) -> None:
        if self._done is None:
            return
        if self._finish_event is not None:
            self._finish_event.cancel()
        self.ns.stack.echo_handlers.pop(self.ident, None)
        self.result.finished_ns = self.ns.sim.now_ns
        if not self.result.fatal:
            self.result.lines.append(f"--- {self.host_name or ip_to_str(self.dst)} ping statistics ---")
            self.result.lines.append(self.result.summary())
        done, self._done = self._done, None
        done(self.result)

    def _line(self, text: str) -> None:
        if not self.quiet or text.startswith("ping:"):
            self.result.lines.append(text)
