"""TCP sockets as Linux 6.x runs them, as far as the wire can tell.

The API is a non-blocking BSD socket with poll-style wakeups (see
/work/notes/tcp-api.md): applications call `connect`, `send`, `recv`,
`shutdown_write`, `close`, `accept` in process context, and the socket
schedules `on_wake()` (call_process) whenever readiness may have changed.

What the wire shows, and where it comes from in Linux:
- SYN / SYN-ACK options in tcp_options_write's order (MSS, SACK_PERM + TS,
  NOP + WS, or NOP NOP TS / NOP NOP SACK_PERM when one is off), window and
  scale from `tcp_select_initial_window` over the namespace's sysctls
  (emu.net.tcp_params); MSS from the route's device MTU (or a learnt PMTU).
- Per-connection seeded ISN, timestamp offset and IP id base; timestamps in
  milliseconds; SYN-ACK and RST with IP id 0 (no full socket), DF on all.
- The sender: writes fill skbs up to the size goal (half the peer's largest
  window, at most 64 KB), `tcp_write_xmit` cuts them to the congestion
  quota (min(cwnd/2, cwnd - in flight) segments: tcp_cwnd_test) and Nagle;
  each skb leaves as one GSO super-packet (emu.net.gso) with the IP id
  advancing by its segment count. Reno: initial cwnd 10, slow start
  cwnd += segments acked, congestion avoidance, RTO 1 s initial then
  srtt/8 + rttvar (floor 200 ms, jiffies at HZ 250), SYN retries after
  1 s with `tcp_syn_linear_timeouts` linear ones, then doubling.
- The socket lock: while the application is in a system call that
  transmits, segments that arrive wait in the backlog and are processed
  when the call ends (release_sock); every skb transmitted in process
  context is one process step, so the same-instant chain it causes (ACKs
  included) runs before the next skb leaves, as Linux runs the softirq
  backlog when dev_queue_xmit re-enables bottom halves.
- The receiver: quick-ACK mode for the first segments (tcp_incr_quickack),
  delayed ACKs (40 ms ATO) otherwise and in ping-pong mode, an ACK for
  every second full segment, window updates after reads that double the
  window (tcp_cleanup_rbuf), rcv_ssthresh growth per segment
  (tcp_grow_window) and the never-shrink rule of tcp_select_window.
- Closing: FIN (merged into an unsent tail), FIN-ACK, TIME_WAIT (60 s),
  RST for a closed port, for data after close, and on close with unread
  data; ICMP fragmentation-needed lowers the MSS and retransmits at once.

Not modelled (bulk transfers may differ from the kernel there): SACK-based
loss recovery and fast retransmit (losses recover by RTO), receive buffer
autotuning (DRS needs a millisecond RTT measure; a transfer in one virtual
instant never triggers it), autocorking, TSO deferral.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import emu.net.gso as gso
import emu.wire.ipv4 as ipv4
import emu.wire.tcp as tcp
from emu.net.drops import errno_reason
from emu.net.errors import SocketError
from emu.net.tcp_params import (DEFAULT_SCALING_RATIO, GSO_MAX_SIZE, MAX_QUICKACKS,
                                RMEM_TO_WIN_SCALE, SKB_HEAD_TRUESIZE, TCP_INIT_CWND,
                                TCP_MSS_DEFAULT, TCPOLEN_TSTAMP_ALIGNED, TcpSysctls, align,
                                initial_rcv_mss, select_initial_window, space_from_win,
                                win_from_space)
from emu.sim import Event
from emu.wire.errors import WireError
from emu.wire.ipv4 import PROTO_TCP
from emu.wire.tcp import (ACK, FIN, OPT_MSS, OPT_NOP, OPT_SACK_PERM, OPT_TIMESTAMP, OPT_WSCALE,
                          PSH, RST, SYN, TcpRepr, TcpSegment, reset_for)

if TYPE_CHECKING:
    from emu.net.device import NetDevice
    from emu.net.namespace import Namespace

MS = 1_000_000
JIFFY_NS = 4 * MS  # HZ=250, as the reference kernel
TCP_TIMEOUT_INIT_NS = 1000 * MS
RTO_MIN_NS = 200 * MS
RTO_MAX_NS = 120_000 * MS
ATO_MIN_NS = 40 * MS
DELACK_MAX_NS = 200 * MS
TIME_WAIT_NS = 60_000 * MS

Address = tuple[bytes, int]


def _after(a: int, b: int) -> bool:
    """Sequence number a is after b (mod 2**32)."""
    return ((a - b) & 0xFFFFFFFF) not in (0,) and ((a - b) & 0xFFFFFFFF) < 0x80000000


def _before(a: int, b: int) -> bool:
    return _after(b, a)


def _jiffies(ns: int) -> int:
    """A delay rounded up to whole jiffies (usecs_to_jiffies)."""
    return -(-ns // JIFFY_NS) * JIFFY_NS


@dataclass
class _Skb:
    """One write-queue buffer: data (or a FIN) from `seq`."""

    seq: int
    data: bytearray
    fin: bool = False
    psh: bool = False
    sent: bool = False

    @property
    def end_seq(self) -> int:
        return (self.seq + len(self.data) + self.fin) & 0xFFFFFFFF


@dataclass
class _Received:
    """A received skb in the receive queue (its truesize is charged to rmem)."""

    data: bytes
    truesize: int
    fin: bool = False


class TcpLayer:
    """The TCP part of one namespace's stack: demultiplexing, ports, resets."""

    def __init__(self, ns: "Namespace") -> None:
        self.ns = ns
        self.connections: dict[tuple[bytes, int, bytes, int], "TcpSocket"] = {}
        self.listeners: dict[tuple[bytes | None, int], "TcpSocket"] = {}
        self.bound: dict[tuple[bytes | None, int], list["TcpSocket"]] = {}

    @property
    def sysctls(self) -> TcpSysctls:
        return self.ns.tcp_sysctls

    # -- ports ------------------------------------------------------------------
    def bind(self, sock: "TcpSocket", ip: bytes | None, port: int) -> int:
        if port == 0:
            port = self._ephemeral(odd=True)
        for (other_ip, other_port), users in self.bound.items():
            if other_port != port or not users:
                continue
            if ip is not None and other_ip is not None and ip != other_ip:
                continue
            if sock.reuseaddr and all(u.reuseaddr and u.state != "LISTEN" for u in users):
                continue
            if all(u.state == "TIME_WAIT" for u in users) and sock.reuseaddr:
                continue
            raise SocketError("EADDRINUSE", f"port {port} is in use in {self.ns.name}")
        self.bound.setdefault((ip, port), []).append(sock)
        return port

    def unbind(self, sock: "TcpSocket") -> None:
        if sock.local_bind is None:
            return
        users = self.bound.get(sock.local_bind, [])
        if sock in users:
            users.remove(sock)
        if not users:
            self.bound.pop(sock.local_bind, None)

    def _ephemeral(self, odd: bool = False, remote: Address | None = None,
                   src: bytes | None = None) -> int:
        """inet_hash_connect / inet_csk_find_open_port: a random start in
        ip_local_port_range, even ports for connect, odd for bind (seeded)."""
        low, high = self.ns.ip_local_port_range
        span = high - low + 1
        start = self.ns.rng.randrange(span)
        for step in range(span):
            port = low + (start + step) % span
            if (port & 1) != odd:
                continue
            if remote is not None:
                if (src, port, remote[0], remote[1]) in self.connections:
                    continue
                if any(p == port and not all(u.state == "TIME_WAIT" for u in us)
                       for (_, p), us in self.bound.items() if us and us[0].remote is None):
                    continue
            elif any(p == port for (_, p) in self.bound):
                continue
            return port
        raise SocketError("EADDRNOTAVAIL", "no free ephemeral port")

    # -- input ------------------------------------------------------------------
    def input(self, dev: "NetDevice", packet: bytes) -> None:
        """tcp_v4_rcv: a segment for a local address."""
        src, dst = ipv4.src(packet), ipv4.dst(packet)
        try:
            segment = TcpSegment(memoryview(packet)[ipv4.header_length(packet):])
        except WireError as error:
            self.ns.drop(error.reason)
            return
        if not segment.checksum_ok(src, dst):
            self.ns.drop("TCP_CSUM")
            return
        try:
            options = segment.options
        except WireError:
            self.ns.drop("TCP_BAD_OPTIONS")
            return
        seg = _Segment(src, dst, segment.src_port, segment.dst_port, segment.seq, segment.ack,
                       segment.flags, segment.window, options, bytes(segment.payload),
                       gso.gso_size(self.ns.sim, packet))
        sock = self.connections.get((dst, seg.dport, src, seg.sport))
        if sock is not None:
            sock.segment_arrived(seg)
            return
        listener = self.listeners.get((dst, seg.dport)) or self.listeners.get((None, seg.dport))
        if listener is not None:
            listener.listen_input(seg)
            return
        self.ns.drop("NO_SOCKET")
        self.send_reset(seg)

    def send_reset(self, seg: "_Segment") -> None:
        """tcp_v4_send_reset: never for a RST; seq from the ACK, else ACK it."""
        if seg.flags & RST:
            return
        repr_ = reset_for(seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, len(seg.data))
        try:
            self.ns.stack.send(seg.src, PROTO_TCP, repr_.build(b"", seg.dst, seg.src), src=seg.dst,
                               pmtudisc="do", ident=0)
        except SocketError:
            self.ns.drop("TCP_RESET_UNSENDABLE")

    def icmp_error(self, quoted: bytes, icmp_type: int, code: int) -> bool:
        """tcp_v4_err: an ICMP error quoting one of our segments; True if a socket took it."""
        header_len = ipv4.header_length(quoted)
        if len(quoted) < header_len + 8:  # the 8 bytes every ICMP error quotes
            return False
        src, dst = ipv4.src(quoted), ipv4.dst(quoted)
        sport, dport = tcp.ports(quoted[header_len:])
        sock = self.connections.get((src, sport, dst, dport))
        if sock is None:
            return False
        sock.icmp_error(icmp_type, code)
        return True


@dataclass
class _Segment:
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: list
    data: bytes
    gso_size: int = 0  # skb_shinfo(skb)->gso_size of a super-packet

    def option(self, kind: int):
        for k, value in self.options:
            if k == kind:
                return True if value is None else value
        return None


class TcpSocket:
    """One TCP socket (listener, connection, or a child of a listener)."""

    def __init__(self, ns: "Namespace") -> None:
        self.ns = ns
        self.layer: TcpLayer = ns.stack.tcp
        self.sim = ns.sim
        self.on_wake: Callable[[], None] | None = None
        self.reuseaddr = False
        self.state = "CLOSE"
        self.error: str | None = None
        self.local: Address | None = None
        self.remote: Address | None = None
        self.local_bind: tuple[bytes | None, int] | None = None
        self._wake_pending = False
        # listener
        self._backlog_max = 0
        self._accept_queue: list[TcpSocket] = []
        self._requests: dict[tuple[bytes, int], TcpSocket] = {}
        self._parent: TcpSocket | None = None
        # socket lock (sock_owned_by_user) and its backlog
        self._owned = False
        self._backlog: list[_Segment] = []
        self._tx_queue: list[Callable[[], None]] = []
        # calls the application made while its previous one was still running
        self._pending_calls: list[Callable[[], None]] = []
        self._pending_writes: list[bytes] = []
        self._deferred_timers: set[str] = set()
        self._timers: dict[str, Event] = {}
        self._app_closed = False
        self._shut_wr = False
        self._peer_fin = False
        self._init_conn_state()

    def _init_conn_state(self) -> None:
        s = self.layer.sysctls
        self.sndbuf = s.tcp_wmem[1]
        self.rcvbuf = s.tcp_rmem[1]
        self.scaling_ratio = DEFAULT_SCALING_RATIO
        self.iss = self.snd_una = self.snd_nxt = self.write_seq = 0
        self.snd_wnd = self.max_window = 0
        self.snd_wl1 = 0
        self.snd_wscale = self.rcv_wscale = 0
        self.irs = self.rcv_nxt = self.rcv_wup = self.copied_seq = 0
        self.rcv_wnd = self.rcv_ssthresh = self.window_clamp = 0
        self.advmss = self.mss_clamp = TCP_MSS_DEFAULT
        self.mss_cache = TCP_MSS_DEFAULT
        self.rcv_mss = TCP_MSS_DEFAULT
        self.tstamp_ok = self.sack_ok = self.wscale_ok = False
        self.ts_offset = 0
        self.ts_recent = 0
        self.inet_id = 0
        self.cwnd = TCP_INIT_CWND
        self.ssthresh = 0x7FFFFFFF
        self.cwnd_cnt = 0
        self.srtt_us = 0
        self.rttvar_us = 0
        self.rto_ns = TCP_TIMEOUT_INIT_NS
        self.retransmits = 0
        self.retrans_stamp = 0
        self.total_rto = 0
        self.write_queue: list[_Skb] = []
        self.receive_queue: list[_Received] = []
        self.ofo: dict[int, tuple[bytes, bool]] = {}
        self.rmem_alloc = 0
        # delayed-ACK engine (inet_connection_sock.icsk_ack)
        self.ack_pending = False
        self.ack_pushed = 0  # 1: ICSK_ACK_PUSHED, 2: also PUSHED2
        self.quick = 0
        self.ato_ns = 0
        self.lrcvtime = 0
        self.pingpong = 0
        self.lsndtime = 0
        self.snd_sml = 0
        self.sent_at: dict[int, int] = {}

    # == the application's calls (process context) ==================================
    def bind(self, ip: bytes | None, port: int) -> None:
        if self.local_bind is not None:
            raise SocketError("EINVAL", "socket is already bound")
        if ip is not None and not self.ns.is_local_address(ip):
            raise SocketError("EADDRNOTAVAIL")
        port = self.layer.bind(self, ip, port)
        self.local_bind = (ip, port)

    def listen(self, backlog: int = 1) -> None:
        if self.local_bind is None:
            self.bind(None, 0)
        self._backlog_max = backlog
        self.state = "LISTEN"
        self.layer.listeners[self.local_bind] = self

    def accept(self) -> "TcpSocket | None":
        if self._accept_queue:
            child = self._accept_queue.pop(0)
            child._parent = None
            return child
        return None

    def connect(self, address: Address) -> None:
        """Start the handshake (EINPROGRESS); ENETUNREACH at once without a route."""
        if self.state != "CLOSE":
            raise SocketError("EISCONN", "already connected")
        dst, port = address
        route, _ = self.ns.route_output(dst, None)
        if route is None:
            raise SocketError("ENETUNREACH")
        src = self.local_bind[0] if self.local_bind and self.local_bind[0] else None
        if src is None:
            src = self.ns.source_for(route)
            if src is None:
                raise SocketError("EADDRNOTAVAIL")
        if self.local_bind is None:
            sport = self.layer._ephemeral(remote=address, src=src)
            self.local_bind = (None, sport)
            self.layer.bound.setdefault(self.local_bind, []).append(self)
        self.local = (src, self.local_bind[1])
        self.remote = (dst, port)
        self.layer.connections[(src, self.local[1], dst, port)] = self
        rng = self.ns.rng
        self.iss = rng.getrandbits(32)
        self.ts_offset = rng.getrandbits(32)
        self.inet_id = rng.getrandbits(16)
        s = self.layer.sysctls
        self.advmss = self._route_mtu() - 40
        self.mss_cache = self._mss_for_mtu(self._route_mtu())
        self.window_clamp = 0
        self.rcv_wnd, self.window_clamp, self.rcv_wscale = select_initial_window(
            s, self._full_space(), self.advmss, self.window_clamp, bool(s.tcp_window_scaling))
        self.rcv_ssthresh = self.rcv_wnd
        self.snd_una = self.snd_nxt = self.iss
        self.write_seq = self.snd_sml = (self.iss + 1) & 0xFFFFFFFF
        self.state = "SYN_SENT"
        self._owned = True
        self._send_syn()
        self._arm("retransmit", self.rto_ns)
        self._release()

    def send(self, data: bytes) -> int:
        """write(2), non-blocking: the bytes taken into the send buffer."""
        if self.error is not None and self.state == "CLOSE":
            raise SocketError("ECONNRESET" if self.error == "ECONNRESET" else "EPIPE")
        if self._shut_wr or self._app_closed:
            raise SocketError("EPIPE")
        if self.state in ("SYN_SENT", "SYN_RECV", "CLOSE", "LISTEN"):
            raise SocketError("ENOTCONN")
        room = self.sndbuf - self._wmem_queued() - sum(len(d) for d in self._pending_writes)
        take = max(0, min(len(data), room))
        if take == 0:
            return 0
        if self._owned:  # the previous call is still running: this one follows it
            self._pending_writes.append(bytes(data[:take]))
            self._pending_calls.append(self._queue_pending_write)
            return take
        self._queue_write(data[:take])
        return take

    def _queue_pending_write(self) -> None:
        self._queue_write(self._pending_writes.pop(0))

    def _queue_write(self, data: bytes) -> None:
        """tcp_sendmsg_locked: fill skbs up to the size goal, push the tail."""
        take = len(data)
        self._owned = True
        size_goal = self._size_goal()
        view = memoryview(data)[:take]
        offset = 0
        while offset < take:
            tail = self.write_queue[-1] if self.write_queue else None
            if tail is None or tail.sent or tail.fin or len(tail.data) >= size_goal:
                tail = _Skb(self.write_seq, bytearray())
                self.write_queue.append(tail)
            chunk = view[offset:offset + size_goal - len(tail.data)]
            tail.data += chunk
            offset += len(chunk)
            self.write_seq = (self.write_seq + len(chunk)) & 0xFFFFFFFF
        self.write_queue[-1].psh = True
        self._write_xmit(nagle_push=False)
        self._release()

    def recv(self, size: int) -> bytes | None:
        """read(2), non-blocking: data, b"" at EOF, None when nothing is there."""
        if not self.receive_queue:
            if self.error is not None:  # SO_ERROR: reported once, then cleared
                error, self.error = self.error, None
                raise SocketError(error)
            if self._peer_fin or self.state == "CLOSE":
                return b""
            return None
        self._owned = True
        out = bytearray()
        while self.receive_queue and len(out) < size:
            head = self.receive_queue[0]
            take = head.data[:size - len(out)]
            out += take
            if len(take) == len(head.data):
                self.receive_queue.pop(0)
                self.rmem_alloc -= head.truesize
            else:
                head.data = head.data[len(take):]
        self.copied_seq = (self.copied_seq + len(out)) & 0xFFFFFFFF
        self._cleanup_rbuf(len(out))
        self._release()
        return bytes(out)

    def shutdown_write(self) -> None:
        """shutdown(SHUT_WR): a FIN after what is queued."""
        if self._shut_wr:
            return
        if self._owned:
            self._pending_calls.append(self.shutdown_write)
            return
        self._shut_wr = True
        if self.state in ("ESTABLISHED", "CLOSE_WAIT"):
            self._owned = True
            self._send_fin()
            self._release()

    def close(self) -> None:
        """close(2): RST if unread data remains, else FIN; the socket lives on."""
        if self._owned:
            self._pending_calls.append(self.close)
            self.on_wake = None
            return
        self._app_closed = True
        self.on_wake = None
        if self.state == "LISTEN":
            self.layer.listeners.pop(self.local_bind, None)
            for child in self._accept_queue:
                child.close()
            self._accept_queue.clear()
            self._set_closed()
            return
        if self.state in ("SYN_SENT", "CLOSE"):
            self._set_closed()
            return
        self._owned = True
        if self.receive_queue:
            self._send_active_reset()
            self._set_closed()
        elif not self._shut_wr and self.state in ("ESTABLISHED", "CLOSE_WAIT", "SYN_RECV"):
            self._shut_wr = True
            self._send_fin()
        self._release()

    # -- readiness ------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.state in ("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1", "FIN_WAIT2")

    @property
    def readable(self) -> bool:
        if self.state == "LISTEN":
            return bool(self._accept_queue)
        return bool(self.receive_queue) or self._peer_fin or self.error is not None

    @property
    def writable(self) -> bool:
        if not self.connected or self._shut_wr:
            return self.error is not None
        return self.sndbuf - self._wmem_queued() >= self._wmem_queued() // 2

    @property
    def hup(self) -> bool:
        """POLLHUP: both directions shut (our FIN sent and theirs received), or closed."""
        return self.state == "CLOSE" and self.remote is not None or (
            self._peer_fin and self._shut_wr)

    @property
    def eof(self) -> bool:
        return self._peer_fin and not self.receive_queue

    @property
    def unsent(self) -> int:
        return (self.write_seq - self.snd_una) & 0xFFFFFFFF

    def _wake(self) -> None:
        if self.on_wake is None or self._wake_pending:
            return
        self._wake_pending = True
        self.sim.call_wakeup(self._run_wake)

    def _run_wake(self) -> None:
        self._wake_pending = False
        if self.on_wake is not None:
            self.on_wake()

    # == helpers =====================================================================
    def _route_mtu(self) -> int:
        route, local = self.ns.route_output(self.remote[0], None)
        if route is None:
            return 576
        mtu = route.dev.mtu if local else self.ns.stack.path_mtu(route, self.remote[0])
        return min(mtu, 0xFFFF)  # IPV4_MAX_PMTU: lo's 65536 gives MSS 65495

    def _mss_for_mtu(self, mtu: int) -> int:
        """tcp_mtu_to_mss then the peer's clamp, minus the timestamp option."""
        mss = min(mtu - 40, self.mss_clamp if self.state != "SYN_SENT" or self.mss_clamp else mtu)
        if self.tstamp_ok:
            mss -= TCPOLEN_TSTAMP_ALIGNED
        return max(mss, 48)

    def _full_space(self) -> int:
        return win_from_space(self.scaling_ratio, self.rcvbuf)

    def _space(self) -> int:
        return win_from_space(self.scaling_ratio, self.rcvbuf - self.rmem_alloc)

    def _wmem_queued(self) -> int:
        return sum(len(skb.data) + SKB_HEAD_TRUESIZE for skb in self.write_queue)

    def _size_goal(self) -> int:
        """tcp_xmit_size_goal: GSO size bounded to half the peer's window."""
        mss = self.mss_cache
        goal = GSO_MAX_SIZE
        cutoff = self.max_window >> 1 if self.max_window > TCP_MSS_DEFAULT else self.max_window
        if cutoff and goal > cutoff:
            goal = max(cutoff, 68 - 20)
        return max(goal // mss * mss, mss)

    def _ts_now(self) -> int:
        return (self.sim.now_ns // MS + self.ts_offset) & 0xFFFFFFFF

    def _arm(self, name: str, delay_ns: int) -> None:
        old = self._timers.get(name)
        if old is not None:
            old.cancel()
        self._timers[name] = self.sim.call_later(delay_ns, self._timer_fired, name)

    def _disarm(self, name: str) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()

    def _timer_fired(self, name: str) -> None:
        self._timers.pop(name, None)
        if self._owned:
            self._deferred_timers.add(name)
            return
        getattr(self, f"_on_{name}")()

    # == process-context steps and the socket lock ========================================
    def _emit(self, send: Callable[[], None]) -> None:
        """Transmit now in softirq context; in process context one skb per step."""
        if not self._owned:
            send()
            return
        self._tx_queue.append(send)

    def _release(self) -> None:
        """release_sock: transmit queued skbs one per process step (each one's
        same-instant chain runs before the next), then the backlog, segment
        by segment, then deferred timers; the lock is free when nothing is left."""
        while True:
            if self._tx_queue:
                self._tx_queue.pop(0)()
                self.sim.call_process(self._release)
                return
            if self._backlog:
                self._process(self._backlog.pop(0))
                continue
            if self._deferred_timers:
                names, self._deferred_timers = sorted(self._deferred_timers), set()
                for name in names:
                    getattr(self, f"_on_{name}")()
                continue
            self._owned = False
            if self._pending_calls:
                self._pending_calls.pop(0)()
            return

    # == output ===================================================================
    def _transmit(self, seq: int, data: bytes, flags: int, options: list | None = None,
                  window: int | None = None, ident: int | None = None) -> None:
        """Build one segment (or GSO super-packet) and hand it to IP."""
        src, sport = self.local
        dst, dport = self.remote
        if options is None:
            options = [(OPT_NOP, None), (OPT_NOP, None),
                       (OPT_TIMESTAMP, (self._ts_now(), self.ts_recent))] if self.tstamp_ok else []
        if window is None:
            window = self._select_window()
        ack = self.rcv_nxt if flags & ACK else 0
        segment = TcpRepr(sport, dport, seq, ack, flags, window, options).build(data, src, dst)
        segs = max(1, -(-len(data) // self.mss_cache)) if data else 1
        if ident is None:
            ident = self.inet_id
            self.inet_id = (self.inet_id + segs) & 0xFFFF
        if flags & ACK:
            self._ack_sent()
        try:
            self.ns.stack.send(dst, PROTO_TCP, segment, src=src, pmtudisc="want", ident=ident,
                               seg_len=20 + len(segment) - len(data) + self.mss_cache
                               if segs > 1 else 0)
        except SocketError as error:
            self.ns.drop(errno_reason(error.errno_name))

    def _syn_options(self, syn_ack: bool, mss: int) -> list:
        """tcp_options_write for SYN / SYN-ACK."""
        s = self.layer.sysctls
        ts = self.tstamp_ok if syn_ack else bool(s.tcp_timestamps)
        sack = self.sack_ok if syn_ack else bool(s.tcp_sack)
        ws = self.wscale_ok if syn_ack else bool(s.tcp_window_scaling)
        options: list = [(OPT_MSS, mss)]
        if ts:
            if sack:
                options.append((OPT_SACK_PERM, None))
            else:
                options += [(OPT_NOP, None), (OPT_NOP, None)]
            options.append((OPT_TIMESTAMP, (self._ts_now(), self.ts_recent if syn_ack else 0)))
        elif sack:
            options += [(OPT_NOP, None), (OPT_NOP, None), (OPT_SACK_PERM, None)]
        if ws:
            options += [(OPT_NOP, None), (OPT_WSCALE, self.rcv_wscale)]
        return options

    def _send_syn(self) -> None:
        options = self._syn_options(False, self.advmss)
        self.sent_at[self.iss] = self.sim.now_ns
        self._emit(lambda: self._transmit(self.iss, b"", SYN, options, min(self.rcv_wnd, 0xFFFF)))
        self.snd_nxt = (self.iss + 1) & 0xFFFFFFFF

    def _send_synack(self) -> None:
        options = self._syn_options(True, self.advmss)
        self._transmit(self.iss, b"", SYN | ACK, options, min(self.rcv_wnd, 0xFFFF), ident=0)

    def _send_active_reset(self) -> None:
        self._emit(lambda: self._transmit(self.snd_nxt, b"", RST | ACK, []))

    def _send_ack(self) -> None:
        self._emit(lambda: self._transmit(self.snd_nxt, b"", ACK))

    def _select_window(self) -> int:
        """tcp_select_window: never shrink, remember what was offered, scale."""
        cur = max(0, (self.rcv_wup + self.rcv_wnd - self.rcv_nxt) & 0xFFFFFFFF)
        if cur >= 0x80000000:
            cur = 0
        new = self._raw_window()
        if new < cur:
            new = align(cur, 1 << self.rcv_wscale)
        self.rcv_wnd = new
        self.rcv_wup = self.rcv_nxt
        new = min(new, 0xFFFF << self.rcv_wscale)
        return new >> self.rcv_wscale

    def _raw_window(self) -> int:
        """__tcp_select_window."""
        mss = self.rcv_mss
        free_space = self._space()
        allowed = self._full_space()
        full_space = min(self.window_clamp, allowed)
        if mss > full_space:
            mss = full_space
            if mss <= 0:
                return 0
        if free_space < full_space >> 1:
            self.quick = 0
            free_space = free_space // (1 << self.rcv_wscale) * (1 << self.rcv_wscale)
            if free_space < allowed >> 4 or free_space < mss:
                return 0
        free_space = min(free_space, self.rcv_ssthresh)
        if self.rcv_wscale:
            return align(free_space, 1 << self.rcv_wscale)
        window = self.rcv_wnd
        if window <= free_space - mss or window > free_space:
            window = free_space // mss * mss
        elif mss == full_space and free_space > window + (full_space >> 1):
            window = free_space
        return window

    # -- the sender ---------------------------------------------------------------
    def _in_flight(self) -> int:
        return sum(self._segs(skb) for skb in self.write_queue
                   if skb.sent and _after(skb.end_seq, self.snd_una))

    def _segs(self, skb: _Skb) -> int:
        return max(1, -(-len(skb.data) // self.mss_cache))

    def _write_xmit(self, nagle_push: bool) -> None:
        """tcp_write_xmit: send what cwnd, the peer's window and Nagle allow."""
        mss = self.mss_cache
        index = 0
        while index < len(self.write_queue):
            skb = self.write_queue[index]
            if skb.sent:
                index += 1
                continue
            in_flight = self._in_flight()
            if in_flight >= self.cwnd:
                break
            quota = min(max(self.cwnd >> 1, 1), self.cwnd - in_flight)
            wnd_end = (self.snd_una + self.snd_wnd) & 0xFFFFFFFF
            first_end = skb.seq + min(len(skb.data), mss)
            if _after(first_end & 0xFFFFFFFF, wnd_end) and skb.data:
                break
            is_tail = index == len(self.write_queue) - 1
            if len(skb.data) <= mss:
                if not (nagle_push or not is_tail or skb.fin or skb.psh and self._nagle_ok(skb)):
                    break
                limit = len(skb.data)
            else:
                limit = self._split_point(skb, quota, wnd_end, is_tail, nagle_push)
            if limit < len(skb.data):
                rest = _Skb((skb.seq + limit) & 0xFFFFFFFF, skb.data[limit:], skb.fin, skb.psh)
                skb.data = skb.data[:limit]
                skb.fin = False
                self.write_queue.insert(index + 1, rest)
            self._send_skb(skb)
            index += 1

    def _nagle_ok(self, skb: _Skb) -> bool:
        """tcp_nagle_check's Minshall variant: a small segment waits while an
        earlier small one is unacknowledged."""
        if len(skb.data) >= self.mss_cache:
            return True
        packets_out = any(s.sent and _after(s.end_seq, self.snd_una) for s in self.write_queue)
        minshall = _after(self.snd_sml, self.snd_una) and not _after(self.snd_sml, self.snd_nxt)
        return not (packets_out and minshall)

    def _split_point(self, skb: _Skb, quota: int, wnd_end: int, is_tail: bool,
                     nagle_push: bool) -> int:
        """tcp_mss_split_point."""
        mss = self.mss_cache
        window = (wnd_end - skb.seq) & 0xFFFFFFFF
        max_len = mss * quota
        if max_len <= window and not is_tail:
            return min(max_len, len(skb.data))
        needed = min(len(skb.data), window)
        if max_len <= needed:
            return max_len
        partial = needed % mss
        if partial and not nagle_push and not self._nagle_ok(_Skb(0, bytearray(partial))):
            return needed - partial
        return needed

    def _send_skb(self, skb: _Skb) -> None:
        skb.sent = True
        flags = ACK | (PSH if skb.psh and skb.data else 0) | (FIN if skb.fin else 0)
        if len(skb.data) < self.mss_cache and skb.data:
            self.snd_sml = skb.end_seq
        seq, data = skb.seq, bytes(skb.data)
        self.sent_at[skb.end_seq] = self.sim.now_ns
        if _after(skb.end_seq, self.snd_nxt):
            self.snd_nxt = skb.end_seq
        self._data_sent()
        self._emit(lambda: self._transmit(seq, data, flags))
        if "retransmit" not in self._timers:
            self._arm("retransmit", self.rto_ns)

    def _data_sent(self) -> None:
        """tcp_event_data_sent: ping-pong detection."""
        now = self.sim.now_ns
        if self.lrcvtime and now - self.lrcvtime < self.ato_ns:
            self.pingpong = min(self.pingpong + 1, 255)
        self.lsndtime = now

    def _send_fin(self) -> None:
        """tcp_send_fin: merged into an unsent tail skb, else a new one."""
        tail = self.write_queue[-1] if self.write_queue else None
        if tail is not None and not tail.sent and not tail.fin:
            tail.fin = True
        else:
            self.write_queue.append(_Skb(self.write_seq, bytearray(), fin=True))
        self.write_seq = (self.write_seq + 1) & 0xFFFFFFFF
        self.state = {"ESTABLISHED": "FIN_WAIT1", "CLOSE_WAIT": "LAST_ACK",
                      "SYN_RECV": "FIN_WAIT1"}.get(self.state, self.state)
        self._write_xmit(nagle_push=True)

    # -- ACKs and windows, receiver side -------------------------------------------------
    def _ack_sent(self) -> None:
        """tcp_event_ack_sent: leave quick-ACK mode by one, stop the delack timer."""
        if self.quick:
            pkts = 1 if self.ack_pending else 0
            if pkts >= self.quick:
                self.quick = 0
                self.ato_ns = ATO_MIN_NS
            else:
                self.quick -= pkts
        self.ack_pending = False
        self.ack_pushed = 0
        self._disarm("delack")

    def _incr_quickack(self, max_quickacks: int) -> None:
        quickacks = self.rcv_wnd // (2 * self.rcv_mss) or 2
        quickacks = min(quickacks, max_quickacks)
        if quickacks > self.quick:
            self.quick = quickacks

    def _enter_quickack_mode(self) -> None:
        self._incr_quickack(MAX_QUICKACKS)
        self.pingpong = 0
        self.ato_ns = ATO_MIN_NS

    def _in_quickack_mode(self) -> bool:
        return bool(self.quick) and self.pingpong < self.layer.sysctls.tcp_pingpong_thresh

    def _ack_snd_check(self) -> None:
        """__tcp_ack_snd_check: now, or the delayed-ACK timer."""
        if not self.ack_pending:
            return
        received = (self.rcv_nxt - self.rcv_wup) & 0xFFFFFFFF
        if ((received > self.rcv_mss and self._raw_window() >= self.rcv_wnd)
                or self._in_quickack_mode() or self.ofo):
            self._send_ack()
            return
        self._send_delayed_ack()

    def _send_delayed_ack(self) -> None:
        """tcp_send_delayed_ack: the ATO bounded by the RTT, in jiffies."""
        ato = self.ato_ns
        if ato > ATO_MIN_NS:
            max_ato = DELACK_MAX_NS if (self.pingpong or self.ack_pushed) else ATO_MIN_NS * 5
            if self.srtt_us:
                rtt = max(_jiffies(self.srtt_us * 1000 // 8), ATO_MIN_NS)
                max_ato = min(max_ato, rtt)
            ato = min(ato, max_ato)
        if "delack" not in self._timers:
            self._arm("delack", _jiffies(max(ato, ATO_MIN_NS)))

    def _on_delack(self) -> None:
        if self.ack_pending and self.state not in ("CLOSE", "LISTEN"):
            if self.pingpong:
                self.pingpong = 0  # inet_csk_exit_pingpong_mode
                self.ato_ns = ATO_MIN_NS
            self._send_ack()

    def _cleanup_rbuf(self, copied: int) -> None:
        """tcp_cleanup_rbuf: ACK after a read that drained a pushed segment or
        that at least doubles the window we can offer."""
        time_to_ack = False
        if self.ack_pending:
            received = (self.rcv_nxt - self.rcv_wup) & 0xFFFFFFFF
            if received > self.rcv_mss or (copied > 0 and (self.ack_pushed >= 2 or (
                    self.ack_pushed and not self.pingpong)) and not self.rmem_alloc):
                time_to_ack = True
        if copied > 0 and not time_to_ack and not self._peer_fin:
            now = max(0, (self.rcv_wup + self.rcv_wnd - self.rcv_nxt) & 0xFFFFFFFF)
            if 2 * now <= self.window_clamp:
                new = self._raw_window()
                if new and new >= 2 * now:
                    time_to_ack = True
        if time_to_ack and self.state not in ("CLOSE", "LISTEN", "SYN_SENT"):
            self._send_ack()

    def _measure_rcv_mss(self, seg: _Segment, gso_size: int) -> None:
        """tcp_measure_rcv_mss, with the scaling ratio taken from the first
        full-sized skb (len / truesize)."""
        length = gso_size or len(seg.data)
        if length >= self.rcv_mss:
            if length != self.rcv_mss:
                truesize = len(seg.data) + SKB_HEAD_TRUESIZE
                ratio = max(1, (len(seg.data) << RMEM_TO_WIN_SCALE) // truesize)
                if ratio != self.scaling_ratio:
                    self.scaling_ratio = ratio
                    self._set_window_clamp(self._full_space())
            self.rcv_mss = min(length, self.advmss)
        else:
            self.ack_pushed = 2 if self.ack_pushed else 1

    def _set_window_clamp(self, value: int) -> None:
        """tcp_set_window_clamp, growing or shrinking rcv_ssthresh with it."""
        old = self.window_clamp
        new = max(2304, value)
        if new == old:
            return
        self.window_clamp = new
        if new < old:
            self.rcv_ssthresh = min(self.rcv_ssthresh, new)
        else:
            self.rcv_ssthresh = max(min(self.rcv_wnd, new), self.rcv_ssthresh)

    def _grow_window(self, seg: _Segment, truesize: int) -> None:
        """tcp_grow_window."""
        room = min(self.window_clamp, self._space()) - self.rcv_ssthresh
        if room <= 0:
            return
        if win_from_space(self.scaling_ratio, truesize) <= len(seg.data):
            incr = 2 * self.advmss
        else:
            incr = self._grow_window_slow(seg, truesize)
        if incr:
            incr = max(incr, 2 * len(seg.data))
            self.rcv_ssthresh += min(room, incr)
            self.quick |= 1

    def _grow_window_slow(self, seg: _Segment, truesize: int) -> int:
        """__tcp_grow_window."""
        size = win_from_space(self.scaling_ratio, truesize) >> 1
        window = win_from_space(self.scaling_ratio, self.layer.sysctls.tcp_rmem[2]) >> 1
        while self.rcv_ssthresh <= window:
            if size <= len(seg.data):
                return 2 * self.rcv_mss
            size >>= 1
            window >>= 1
        return 0

    def _event_data_recv(self, seg: _Segment, truesize: int, gso_size: int) -> None:
        """tcp_event_data_recv."""
        self.ack_pending = True
        self._measure_rcv_mss(seg, gso_size)
        now = self.sim.now_ns
        if not self.ato_ns:
            self._incr_quickack(MAX_QUICKACKS)
            self.ato_ns = ATO_MIN_NS
        else:
            gap = now - self.lrcvtime
            if gap <= ATO_MIN_NS // 2:
                self.ato_ns = (self.ato_ns >> 1) + ATO_MIN_NS // 2
            elif gap < self.ato_ns:
                self.ato_ns = min((self.ato_ns >> 1) + gap, self.rto_ns)
            elif gap > self.rto_ns:
                self._incr_quickack(MAX_QUICKACKS)
        self.lrcvtime = now
        if len(seg.data) >= 128:
            self._grow_window(seg, truesize)

    # == input =====================================================================
    def segment_arrived(self, seg: _Segment) -> None:
        if self._owned:
            self._backlog.append(seg)
            return
        self._process(seg)

    def _process(self, seg: _Segment) -> None:
        handler = {"SYN_SENT": self._synsent_input, "TIME_WAIT": self._timewait_input,
                   "SYN_RECV": self._synrecv_input}.get(self.state, self._established_input)
        handler(seg)

    def _parse_syn_options(self, seg: _Segment) -> None:
        s = self.layer.sysctls
        mss = seg.option(OPT_MSS)
        self.mss_clamp = mss if isinstance(mss, int) and mss else TCP_MSS_DEFAULT
        ts = seg.option(OPT_TIMESTAMP)
        self.tstamp_ok = bool(s.tcp_timestamps) and ts is not None
        if self.tstamp_ok:
            self.ts_recent = ts[0]
        self.sack_ok = bool(s.tcp_sack) and seg.option(OPT_SACK_PERM) is not None
        ws = seg.option(OPT_WSCALE)
        self.wscale_ok = bool(s.tcp_window_scaling) and ws is not None
        self.snd_wscale = min(ws, 14) if self.wscale_ok else 0
        if not self.wscale_ok:
            self.rcv_wscale = 0

    def _synsent_input(self, seg: _Segment) -> None:
        """tcp_rcv_synsent_state_process."""
        if seg.flags & ACK:
            if seg.ack != (self.iss + 1) & 0xFFFFFFFF:
                if not seg.flags & RST:
                    self.layer.send_reset(seg)
                return
            if seg.flags & RST:
                self._fail("ECONNREFUSED")
                return
            if not seg.flags & SYN:
                return
            self._parse_syn_options(seg)
            self.irs = seg.seq
            self.rcv_nxt = self.rcv_wup = self.copied_seq = (seg.seq + 1) & 0xFFFFFFFF
            self.snd_una = seg.ack
            self.snd_wnd = seg.window  # a SYN's window is never scaled
            self.max_window = self.snd_wnd
            self.snd_wl1 = seg.seq
            self._rtt_sample(self.sent_at.pop(self.iss, None))
            self.retransmits = 0
            self._disarm("retransmit")
            self.mss_cache = self._mss_for_mtu(self._route_mtu())
            self.advmss = self._route_mtu() - 40 - (12 if self.tstamp_ok else 0)
            self.rcv_mss = initial_rcv_mss(self.advmss, self.mss_cache, self.rcv_wnd)
            self.state = "ESTABLISHED"
            self._init_buffer_space()
            self.lsndtime = self.sim.now_ns
            self._send_ack()
            self._wake()

    def _sndbuf_expand(self) -> None:
        """tcp_sndbuf_expand: room for 2 x max(10, cwnd) skbs (Reno's factor)."""
        per_mss = (1 << (self.mss_cache + 576 - 1).bit_length()) + 256
        wanted = 2 * max(TCP_INIT_CWND, self.cwnd) * per_mss
        self.sndbuf = max(self.sndbuf, min(wanted, self.layer.sysctls.tcp_wmem[2]))

    def _init_buffer_space(self) -> None:
        """tcp_init_buffer_space: sndbuf for 10 segments (Reno: x2), the window
        clamp one segment below the full space."""
        self._sndbuf_expand()
        app_win = self.layer.sysctls.tcp_app_win
        maxwin = self._full_space()
        if self.window_clamp >= maxwin:
            self.window_clamp = maxwin
            if app_win and maxwin > 4 * self.advmss:
                self.window_clamp = max(maxwin - (maxwin >> app_win), 4 * self.advmss)
        if app_win and self.window_clamp > 2 * self.advmss and self.window_clamp + self.advmss > maxwin:
            self.window_clamp = max(2 * self.advmss, maxwin - self.advmss)
        self.rcv_ssthresh = min(self.rcv_ssthresh, self.window_clamp)

    def listen_input(self, seg: _Segment) -> None:
        """A segment for a listener: a SYN opens a request; anything else with
        ACK for an unknown connection gets a RST."""
        key = (seg.src, seg.sport)
        request = self._requests.get(key)
        if request is not None:
            request._process(seg)
            return
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            self.layer.send_reset(seg)
            return
        if not seg.flags & SYN:
            return
        if len(self._accept_queue) > self._backlog_max:
            self.ns.drop("TCP_LISTEN_OVERFLOW")
            return
        child = TcpSocket(self.ns)
        child._parent = self
        child.local = (seg.dst, seg.dport)
        child.remote = (seg.src, seg.sport)
        child.local_bind = self.local_bind
        self._requests[key] = child
        self.layer.connections[(seg.dst, seg.dport, seg.src, seg.sport)] = child
        child._open_request(seg)

    def _open_request(self, seg: _Segment) -> None:
        """tcp_conn_request + tcp_openreq_init_rwin: reply SYN-ACK."""
        s = self.layer.sysctls
        rng = self.ns.rng
        self.iss = rng.getrandbits(32)
        self.ts_offset = rng.getrandbits(32)
        self._parse_syn_options(seg)
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_wup = self.copied_seq = (seg.seq + 1) & 0xFFFFFFFF
        self.snd_wnd = seg.window
        self.max_window = seg.window
        mtu = self._route_mtu()
        self.advmss = mtu - 40
        mss = self.advmss - (TCPOLEN_TSTAMP_ALIGNED if self.tstamp_ok else 0)
        self.rcv_wnd, self.window_clamp, wscale = select_initial_window(
            s, self._full_space(), mss, 0, self.wscale_ok)
        self.rcv_wscale = wscale if self.wscale_ok else 0
        self.rcv_ssthresh = self.rcv_wnd
        self.snd_una = self.iss
        self.snd_nxt = self.write_seq = self.snd_sml = (self.iss + 1) & 0xFFFFFFFF
        self.state = "SYN_RECV"
        self.sent_at[self.iss] = self.sim.now_ns
        self._send_synack()
        self._arm("retransmit", TCP_TIMEOUT_INIT_NS)

    def _synrecv_input(self, seg: _Segment) -> None:
        """The handshake's third segment (tcp_check_req), or a SYN retransmit."""
        if seg.flags & RST:
            self._abandon_request()
            return
        if seg.flags & SYN and not seg.flags & ACK:
            self._send_synack()  # the SYN was retransmitted
            return
        if not seg.flags & ACK:
            return
        if seg.ack != (self.iss + 1) & 0xFFFFFFFF:
            self.layer.send_reset(seg)
            return
        ts = seg.option(OPT_TIMESTAMP)
        if self.tstamp_ok and ts is not None:
            self.ts_recent = ts[0]
        self.snd_una = seg.ack
        self.snd_wnd = seg.window << self.snd_wscale
        self.max_window = max(self.max_window, self.snd_wnd)
        self.snd_wl1 = seg.seq
        self._rtt_sample(self.sent_at.pop(self.iss, None))
        self._disarm("retransmit")
        self.retransmits = 0
        self.inet_id = self.ns.rng.getrandbits(16)
        self.mss_cache = self._mss_for_mtu(self._route_mtu())
        self.advmss = self._route_mtu() - 40 - (12 if self.tstamp_ok else 0)
        self.rcv_mss = initial_rcv_mss(self.advmss, self.mss_cache, self.rcv_wnd)
        self.state = "ESTABLISHED"
        self._init_buffer_space()
        self.lsndtime = self.sim.now_ns
        parent = self._parent
        if parent is not None:
            parent._requests.pop((seg.src, seg.sport), None)
            parent._accept_queue.append(self)
            parent._wake()
        if seg.data or seg.flags & FIN:
            self._established_input(seg)

    def _abandon_request(self) -> None:
        parent = self._parent
        if parent is not None:
            parent._requests.pop(self.remote, None)
        self._set_closed()

    def _timewait_input(self, seg: _Segment) -> None:
        """tcp_timewait_state_process: ACK a retransmitted FIN; RST ends it."""
        if seg.flags & RST:
            self._set_closed()
            return
        if seg.flags & FIN or seg.data:
            self._send_ack()

    def _established_input(self, seg: _Segment) -> None:
        """tcp_rcv_established / tcp_rcv_state_process for synchronised states."""
        if self.state == "CLOSE":
            return
        if seg.flags & RST:
            if self.state in ("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1", "FIN_WAIT2"):
                self._fail("ECONNRESET" if self.state != "CLOSE_WAIT" else "EPIPE")
            else:
                self._set_closed()
            return
        if seg.flags & SYN:
            self._send_ack()  # tcp_send_challenge_ack
            return
        if not seg.flags & ACK:
            return
        ts = seg.option(OPT_TIMESTAMP)
        if self.tstamp_ok and ts is not None and not _after(seg.seq, self.rcv_nxt):
            self.ts_recent = ts[0]
        self._ack_input(seg)
        if self.state == "CLOSE":
            return
        self._data_input(seg)
        self._ack_snd_check()

    def _ack_input(self, seg: _Segment) -> None:
        """tcp_ack: advance snd_una, RTT, cwnd, the send window, then send more."""
        ack = seg.ack
        if _after(ack, self.snd_nxt):
            self._send_ack()
            return
        window = seg.window << self.snd_wscale
        if _after(ack, self.snd_una) or _after(seg.seq, self.snd_wl1) or (
                seg.seq == self.snd_wl1 and window > self.snd_wnd):
            self.snd_wnd = window
            self.max_window = max(self.max_window, window)
            self.snd_wl1 = seg.seq
        if _after(ack, self.snd_una):
            acked_segs = 0
            sample = None
            while self.write_queue and not _after(self.write_queue[0].end_seq, ack) and \
                    self.write_queue[0].sent:
                skb = self.write_queue.pop(0)
                acked_segs += self._segs(skb)
                sample = self.sent_at.pop(skb.end_seq, sample)
            if self.write_queue and self.write_queue[0].sent and _after(ack, self.write_queue[0].seq):
                head = self.write_queue[0]
                cut = (ack - head.seq) & 0xFFFFFFFF
                acked_segs += max(1, cut // self.mss_cache)
                head.data = head.data[cut:]
                head.seq = ack
            self.snd_una = ack
            if self.retransmits == 0:
                self._rtt_sample(sample)
            self.retransmits = 0
            self._cong_avoid(acked_segs)
            if self._in_flight() < self.cwnd:
                self._sndbuf_expand()  # tcp_new_space
            if self._in_flight() or any(not s.sent for s in self.write_queue):
                self._arm("retransmit", self.rto_ns)
            else:
                self._disarm("retransmit")
            self._fin_acked_transition()
            self._wake()
        if self.state == "CLOSE":
            return
        self._write_xmit(nagle_push=False)

    def _fin_acked_transition(self) -> None:
        fin_acked = self._shut_wr and self.snd_una == self.write_seq
        if not fin_acked:
            return
        if self.state == "FIN_WAIT1":
            self.state = "FIN_WAIT2"
            if self._app_closed:
                self._arm("finwait2", self.layer.sysctls.tcp_fin_timeout * 1000 * MS)
        elif self.state == "CLOSING":
            self._enter_time_wait()
        elif self.state == "LAST_ACK":
            self._set_closed()

    def _cong_avoid(self, acked: int) -> None:
        """Reno: slow start below ssthresh, one segment per window above."""
        if acked <= 0:
            return
        if self.cwnd < self.ssthresh:
            grow = min(self.cwnd + acked, self.ssthresh)
            acked -= grow - self.cwnd
            self.cwnd = grow
            if not acked:
                return
        self.cwnd_cnt += acked
        if self.cwnd_cnt >= self.cwnd:
            self.cwnd += self.cwnd_cnt // self.cwnd
            self.cwnd_cnt %= max(self.cwnd, 1)

    def _rtt_sample(self, sent_ns: int | None) -> None:
        """tcp_rtt_estimator + tcp_set_rto (microseconds, RTO floor 200 ms)."""
        if sent_ns is None:
            return
        m = max(1, (self.sim.now_ns - sent_ns) // 1000)
        if self.srtt_us:
            m -= self.srtt_us >> 3
            self.srtt_us += m
            m = abs(m) - (self.rttvar_us >> 2)
            self.rttvar_us = max(self.rttvar_us + m, RTO_MIN_NS // 1000)
        else:
            self.srtt_us = m << 3
            self.rttvar_us = max(m << 1, RTO_MIN_NS // 1000)
        rto_us = (self.srtt_us >> 3) + self.rttvar_us
        self.rto_ns = min(_jiffies(rto_us * 1000), RTO_MAX_NS)

    def _data_input(self, seg: _Segment) -> None:
        """tcp_data_queue: in-order data and FIN to the receive queue, the
        rest out of order; data after our close gets a RST."""
        end = (seg.seq + len(seg.data)) & 0xFFFFFFFF
        if not seg.data and not seg.flags & FIN:
            return
        if self._app_closed and seg.data and _after(end, self.rcv_nxt):
            self.layer.send_reset(seg)
            self._set_closed()
            return
        if seg.seq != self.rcv_nxt:
            if not _after(end, self.rcv_nxt) and not seg.flags & FIN:
                self._enter_quickack_mode()  # a duplicate: ACK at once (DSACK)
                self.ack_pending = True
            elif _after(seg.seq, self.rcv_nxt):
                self.ofo[seg.seq] = (seg.data, bool(seg.flags & FIN))
                self.ack_pending = True
            return
        self._queue_in_order(seg, seg.data, bool(seg.flags & FIN))
        while self.rcv_nxt in self.ofo:
            data, fin = self.ofo.pop(self.rcv_nxt)
            self._queue_in_order(seg, data, fin)
        self._wake()

    def _queue_in_order(self, seg: _Segment, data: bytes, fin: bool) -> None:
        if data:
            truesize = len(data) + SKB_HEAD_TRUESIZE
            self.receive_queue.append(_Received(data, truesize))
            self.rmem_alloc += truesize
            self.rcv_nxt = (self.rcv_nxt + len(data)) & 0xFFFFFFFF
            gso_size = seg.gso_size if data is seg.data else 0
            self._event_data_recv(_Segment(seg.src, seg.dst, seg.sport, seg.dport, seg.seq,
                                           seg.ack, seg.flags, seg.window, seg.options, data),
                                  truesize, gso_size)
        if fin:
            self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
            self._fin_input()

    def _fin_input(self) -> None:
        """tcp_fin."""
        self.ack_pending = True
        self._peer_fin = True
        if self.state in ("SYN_RECV", "ESTABLISHED"):
            self.state = "CLOSE_WAIT"
            self.pingpong = max(self.pingpong, self.layer.sysctls.tcp_pingpong_thresh)
        elif self.state == "FIN_WAIT1":
            self._send_ack()
            self.state = "CLOSING"
        elif self.state == "FIN_WAIT2":
            self._send_ack()
            self._enter_time_wait()

    # == timers, errors, teardown ========================================================
    def _on_retransmit(self) -> None:
        """tcp_retransmit_timer (and the SYN / SYN-ACK timers)."""
        s = self.layer.sysctls
        if self.state == "SYN_SENT":
            if self._timed_out(s.tcp_syn_retries, TCP_TIMEOUT_INIT_NS):
                self._fail("ETIMEDOUT")
                return
            if not self.retransmits:
                self.retrans_stamp = self.sim.now_ns - self.rto_ns
            self.retransmits += 1
            self.total_rto += 1
            self.sent_at.pop(self.iss, None)
            self._transmit(self.iss, b"", SYN, self._syn_options(False, self.advmss),
                           min(self.rcv_wnd, 0xFFFF))
            if self.total_rto > s.tcp_syn_linear_timeouts:
                self.rto_ns = min(self.rto_ns * 2, RTO_MAX_NS)
            self._arm("retransmit", self.rto_ns)
            return
        if self.state == "SYN_RECV":
            if self.retransmits >= s.tcp_synack_retries:
                self._abandon_request()
                return
            self.retransmits += 1
            self._send_synack()
            self._arm("retransmit", TCP_TIMEOUT_INIT_NS << self.retransmits)
            return
        unacked = [skb for skb in self.write_queue if skb.sent]
        if not unacked:
            return
        if self._timed_out(s.tcp_retries2, RTO_MIN_NS):
            self._fail("ETIMEDOUT")
            return
        if not self.retransmits:
            self.retrans_stamp = self.sim.now_ns - self.rto_ns
        self.retransmits += 1
        self.ssthresh = max(self._in_flight() >> 1, 2)
        self.cwnd = 1
        self.cwnd_cnt = 0
        for skb in unacked:  # go back: everything unacknowledged is lost
            skb.sent = False
            self.sent_at.pop(skb.end_seq, None)
        self.snd_nxt = self.snd_una
        self._merge_unsent()
        self._write_xmit(nagle_push=True)
        self.rto_ns = min(self.rto_ns * 2, RTO_MAX_NS)
        self._arm("retransmit", self.rto_ns)

    def _timed_out(self, boundary: int, rto_base_ns: int) -> bool:
        """retransmits_timed_out: the time `boundary` doubling RTOs from
        `rto_base` would take (tcp_model_timeout) has passed since the first
        retransmission's original send."""
        if not self.retransmits:
            return False
        thresh = (RTO_MAX_NS // rto_base_ns).bit_length() - 1
        if boundary <= thresh:
            timeout = ((2 << boundary) - 1) * rto_base_ns
        else:
            timeout = ((2 << thresh) - 1) * rto_base_ns + (boundary - thresh) * RTO_MAX_NS
        return self.sim.now_ns - self.retrans_stamp >= timeout

    def _merge_unsent(self) -> None:
        """Lost skbs go out again cut to the current MSS by the split logic."""
        merged: list[_Skb] = []
        for skb in self.write_queue:
            if merged and not merged[-1].sent and not skb.sent and not merged[-1].fin:
                merged[-1].data += skb.data
                merged[-1].fin = skb.fin
                merged[-1].psh = merged[-1].psh or skb.psh
            else:
                merged.append(skb)
        self.write_queue = merged

    def _on_finwait2(self) -> None:
        self._set_closed()

    def _on_timewait(self) -> None:
        self._set_closed()

    def icmp_error(self, icmp_type: int, code: int) -> None:
        """tcp_v4_err: PMTU drops the MSS and retransmits; hard errors during
        the handshake end it, later they are only remembered."""
        if icmp_type == 3 and code == 4:
            if self.state in ("SYN_SENT", "LISTEN", "CLOSE", "TIME_WAIT"):
                return
            new_mss = self._mss_for_mtu(self._route_mtu())
            if new_mss < self.mss_cache:
                self.mss_cache = new_mss
                for skb in self.write_queue:
                    if skb.sent and len(skb.data) > new_mss:
                        skb.sent = False
                if any(not skb.sent for skb in self.write_queue if _before(skb.seq, self.snd_nxt)):
                    self.snd_nxt = self.snd_una
                    self._merge_unsent()
                    self._write_xmit(nagle_push=True)
            return
        errno = {0: "ENETUNREACH", 1: "EHOSTUNREACH", 2: "ENOPROTOOPT", 3: "ECONNREFUSED"}.get(
            code, "EHOSTUNREACH") if icmp_type == 3 else "EHOSTUNREACH"
        if self.state in ("SYN_SENT", "SYN_RECV"):
            if self.state == "SYN_RECV":
                self._abandon_request()
            else:
                self._fail(errno)

    def _fail(self, errno: str) -> None:
        """tcp_done with an error: the application sees it on its next call."""
        self.error = errno
        self._set_closed()

    def _enter_time_wait(self) -> None:
        self.state = "TIME_WAIT"
        for name in list(self._timers):
            self._disarm(name)
        self._arm("timewait", TIME_WAIT_NS)

    def _set_closed(self) -> None:
        for name in list(self._timers):
            self._disarm(name)
        if self.local is not None and self.remote is not None:
            key = (self.local[0], self.local[1], self.remote[0], self.remote[1])
            if self.layer.connections.get(key) is self:
                del self.layer.connections[key]
        if self.state == "LISTEN":
            self.layer.listeners.pop(self.local_bind, None)
        if self._parent is None:
            self.layer.unbind(self)
        self.state = "CLOSE"
        self.write_queue.clear()
        self._wake()
