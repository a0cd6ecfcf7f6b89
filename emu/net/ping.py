"""iputils `ping`, as a program running in a namespace.

What reaches the wire is what iputils makes the kernel send: one ICMP echo
request per interval with a 16-byte timestamp then a byte pattern as data
(0, 1, 2, ... or -p's), sequence numbers from 1, the socket's TTL, TOS and
PMTU-discovery mode (-t, -Q, -M), MSG_CONFIRM on sends that follow a reply
(which keeps the gateway's neighbour entry confirmed).

Timing follows iputils 20221126 ping_common.c: ``pinger``'s token bucket
sends the first -l PRELOAD requests back to back (one ``do { pinger() }``
loop, reading no reply in between), then one per interval. Without -w, ping
stops sending after -c COUNT and waits for the last answers (-W, else 10 s).
With -w DEADLINE it keeps sending past COUNT and ``main_loop`` ends at the
first ICMP error, when COUNT replies are in, or at the deadline (SIGALRM).

The printed lines and the summary follow iputils' wording (-D timestamps,
-O "no answer yet", -v ident) so the run output reads like a terminal
session.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import emu.wire.ipv4 as ipv4
from emu.net.errors import SocketError
from emu.sim import NS_PER_SECOND, Event
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
    stopped: bool = False  # the run ended it (SIGTERM: no statistics printed)
    deadline: bool = False
    count: int = 0

    @property
    def exit_status(self) -> int | None:
        """iputils: 2 on a fatal error, 1 without replies (or, with -w and
        -c, fewer than COUNT), else 0; None when stopped."""
        if self.stopped:
            return None
        if self.fatal:
            return 2
        short = self.deadline and self.count and self.received < self.count
        return 1 if not self.received or short else 0

    @property
    def loss_percent(self) -> float:
        """As iputils computes it: a double quotient cast to float."""
        if not self.transmitted:
            return 0.0
        loss = (self.transmitted - self.received) * 100.0 / self.transmitted
        return struct.unpack("f", struct.pack("f", loss))[0]

    def summary(self) -> str:
        if self.fatal:
            return self.fatal
        text = f"{self.transmitted} packets transmitted, {self.received} received"
        if self.duplicates:
            text += f", +{self.duplicates} duplicates"
        if self.errors:
            text += f", +{self.errors} errors"
        return text + f", {self.loss_percent:g}% packet loss"


def echo_data(size: int, pattern: bytes | None = None) -> bytes:
    """The ICMP data before the timestamp goes in. iputils' setup() writes
    0, 1, 2, ...; with -p, fill() copies the pattern whole at offsets 0,
    len, 2*len, ... up to size - len + 8 (only once when size < len + 8),
    so it may run past the data, which is cut at `size`. Bytes fill() never
    writes are heap garbage in iputils (the parser refuses such -p/-s
    pairs); here they are 0."""
    if pattern is None:
        return bytes(i & 0xFF for i in range(size))
    data = bytearray(size + len(pattern) + 8)
    last = 0 if size < len(pattern) + 8 else size - len(pattern) + 8
    for offset in range(0, last + 1, len(pattern) or 1):
        data[offset:offset + len(pattern)] = pattern
    return bytes(data[:size])


def _payload(data: bytes, now_ns: int) -> bytes:
    """The data with the send time (struct timeval) over its first 16
    bytes, when it has that many (iputils' `timing`)."""
    if len(data) < icmp.ECHO_TIMEVAL_LEN:
        return data
    seconds, rest = divmod(now_ns, NS_PER_SECOND)
    return icmp.echo_timeval(seconds, rest // 1000) + data[icmp.ECHO_TIMEVAL_LEN:]


def _rtt_text(triptime_us: int) -> str:
    """gather_statistics' " time=" precision: fewer decimals as it grows."""
    if triptime_us >= 100000 - 50:
        return f"{(triptime_us + 500) // 1000}"
    if triptime_us >= 10000 - 5:
        return f"{(triptime_us + 50) // 1000}.{(triptime_us + 50) % 1000 // 100}"
    if triptime_us >= 1000:
        return f"{(triptime_us + 5) // 1000}.{(triptime_us + 5) % 1000 // 10:02d}"
    return f"0.{triptime_us:03d}"


class Ping:
    """One `ping -c COUNT ... DEST` run in namespace `ns` (count 0: no -c,
    then `deadline_s`, -w, must end it)."""

    def __init__(self, ns: "Namespace", destination: str, count: int, interval_s: float = 1.0,
                 size: int = 56, ttl: int | None = None, timeout_s: float | None = None,
                 pmtudisc: str = "want", interface: str | None = None, quiet: bool = False,
                 command: str = "", host_name: str | None = None, *, tos: int = 0,
                 pattern: bytes | None = None, preload: int = 1, deadline_s: int | None = None,
                 timestamps: bool = False, outstanding: bool = False,
                 verbose: bool = False) -> None:
        if count < 1 and not deadline_s:
            raise ValueError("ping needs a count or a deadline")
        self.ns = ns
        self.dst = ip_from_str(destination)
        self.count = count
        self.interval_ns = round(interval_s * NS_PER_SECOND)
        self.size = size
        self.ttl = ttl
        self.tos = tos
        self.linger_ns = round(timeout_s * NS_PER_SECOND) if timeout_s else DEFAULT_LINGER_NS
        self.deadline_ns = deadline_s * NS_PER_SECOND if deadline_s else None
        # pinger()'s tokens: the first `burst` requests go out back to back.
        self._burst = preload if self.deadline_ns is not None else min(preload, count)
        self.pmtudisc = pmtudisc
        self.quiet = quiet
        self.timestamps = timestamps
        self.outstanding = outstanding
        self.verbose = verbose
        self.src: bytes | None = None
        self.oif = None
        self.result = PingResult(command or f"ping {destination}", destination,
                                 deadline=deadline_s is not None and deadline_s > 0, count=count)
        self._interface = interface
        self._pattern = pattern
        self._data = echo_data(size, pattern)
        self._sent_at: dict[int, int] = {}
        self._answered: set[int] = set()  # a reply or an error came back
        self._replied: set[int] = set()  # a reply came back (iputils' rcvd bitmap)
        self._confirm = False
        self._done: Callable[[PingResult], None] | None = None
        self._alarm: Event | None = None  # -w's SIGALRM
        self._next: Event | None = None  # the next send, or the end of waiting after the last
        self._unread: list[tuple[str, bytes, IcmpMessage]] | None = None  # during a preload burst
        self.ident = 0
        self.host_name = host_name  # what the command line named, when not an address

    # -- life cycle ---------------------------------------------------------------
    def start(self, on_done: Callable[[PingResult], None]) -> None:
        self._done = on_done
        self.result.started_ns = now = self.ns.sim.now_ns
        if self._pattern is not None:  # fill() prints it before anything else
            self._line(f"PATTERN: 0x{self._pattern.hex()}")
        problem = self._setup()
        if problem:
            self.result.fatal = problem
            self._finish()
            return
        self.ident = self._free_ident()
        self.ns.stack.echo_handlers[self.ident] = self._on_icmp
        shown = self.host_name or ip_to_str(self.dst)
        self._line(f"PING {shown} ({ip_to_str(self.dst)}) {self.size}({self.size + 28}) bytes of data.")
        if self.deadline_ns is not None:  # setup()'s alarm, armed before the first probe
            self._alarm = self.ns.sim.call_process_at(now + self.deadline_ns, self._finish)
        if self._burst > 1:
            self._unread = []
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
        if self.deadline_ns is not None and now >= self.result.started_ns + self.deadline_ns:
            return  # the alarm came first; it ends the run
        if self.outstanding and seq > 1 and seq - 1 not in self._replied:
            self._line(f"{self._stamp()}no answer yet for icmp_seq={seq - 1}", always=True)
        request = IcmpRepr.echo_request(self.ident, seq & 0xFFFF,
                                        _payload(self._data, self.ns.sim.realtime_ns(now))).build()
        self.result.transmitted += 1
        self._sent_at[seq] = now
        try:
            self.ns.stack.send(self.dst, PROTO_ICMP, request, src=self.src, ttl=self.ttl, tos=self.tos,
                               pmtudisc=self.pmtudisc, oif=self.oif, confirm=self._confirm,
                               process=True)
        except SocketError as error:
            if error.errno_name != "EPERM":  # netfilter's OUTPUT dropped it: iputils says nothing (seen live)
                self._send_failed(seq, error)
        self._confirm = False
        if self.deadline_ns is None and seq >= self.count:
            self._next = self.ns.sim.call_later(self.linger_ns, self._finish)
        elif seq < self._burst:
            self._next = self.ns.sim.call_process(self._send, seq + 1)
        else:
            self._next = self.ns.sim.call_process_at(now + self.interval_ns, self._send, seq + 1)
        if self._unread is not None and seq >= self._burst:
            # The burst is over: main_loop reads what came back meanwhile.
            self.ns.sim.call_process(self._read_unread)
        self._check_done()

    def _send_failed(self, seq: int, error: SocketError) -> None:
        """sendmsg failed: an error, the sequence answered, ping's message."""
        self.result.errors += 1
        self._answered.add(seq)
        if error.errno_name == "EMSGSIZE":
            self._line(f"ping: local error: message too long, mtu={error.mtu}")
        else:
            self._line(f"ping: sendmsg: {error.strerror}")

    def _read_unread(self) -> None:
        unread, self._unread = self._unread or [], None
        for kind, packet, message in unread:
            if self._done is not None:
                self._on_icmp(kind, packet, message)

    def _on_icmp(self, kind: str, packet: bytes, message: IcmpMessage) -> None:
        if self._unread is not None:  # sending its preload burst, ping reads nothing yet
            self._unread.append((kind, packet, message))
            return
        now = self.ns.sim.now_ns
        src = ip_to_str(ipv4.src(packet))
        if kind == "reply":
            seq = message.echo_seq
            if seq not in self._sent_at:
                return
            about = f"{self._stamp()}{len(message)} bytes from {src}: icmp_seq={seq}"
            if self.verbose:
                about += f" ident={self.ident}"
            about += f" ttl={ipv4.ttl(packet)}"
            if seq in self._replied:
                self.result.duplicates += 1
                self._line(f"{about} (DUP!)")
                return
            self._answered.add(seq)
            self._replied.add(seq)
            self.result.received += 1
            self._confirm = True
            if len(self._data) >= icmp.ECHO_TIMEVAL_LEN:  # iputils' `timing`: microseconds, as timevals subtract
                clock = self.ns.sim.realtime_ns
                triptime_us = clock(now) // 1000 - clock(self._sent_at[seq]) // 1000
                about += f" time={_rtt_text(triptime_us)} ms"
            self._line(about)
        else:
            try:
                quoted = Ipv4Packet(message.payload, allow_truncated=True)
                seq = IcmpMessage(quoted.payload).echo_seq
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
            self._line(f"{self._stamp()}From {src} icmp_seq={seq} {text}")
        self._check_done()

    def _check_done(self) -> None:
        if self.deadline_ns is None:
            if self.result.transmitted == self.count and len(self._answered) >= self.count:
                self._finish()
        elif self.result.errors or (self.count and self.result.received >= self.count):
            # main_loop's exit test, after it has read what is queued now.
            self.ns.sim.call_process(self._finish)

    def stop(self) -> None:
        """SIGTERM at the end of the run: iputils has no handler for it, so
        ping dies without its statistics."""
        if self._done is None:
            return
        self.result.stopped = True
        self._finish()

    def _finish(self) -> None:
        if self._done is None:
            return
        for event in (self._alarm, self._next):
            if event is not None:
                event.cancel()
        self.ns.stack.echo_handlers.pop(self.ident, None)
        self.result.finished_ns = self.ns.sim.now_ns
        if not self.result.fatal and not self.result.stopped:
            self.result.lines.append(f"--- {self.host_name or ip_to_str(self.dst)} ping statistics ---")
            self.result.lines.append(self.result.summary())
        done, self._done = self._done, None
        done(self.result)

    def _stamp(self) -> str:
        """-D: print_timestamp's "[seconds.micros] " (the scenario's start + virtual time)."""
        if not self.timestamps:
            return ""
        seconds, rest = divmod(self.ns.sim.realtime_ns(), NS_PER_SECOND)
        return f"[{seconds}.{rest // 1000:06d}] "

    def _line(self, text: str, always: bool = False) -> None:
        if always or not self.quiet or text.startswith("ping:"):
            self.result.lines.append(text)
