"""netcat (Debian's netcat-openbsd 1.219) as a program running in a namespace.

What reaches the wire is what nc makes the kernel send, so this follows
netcat.c with Debian's patches (quit-timer, misc-failures-and-features):
- the client makes a non-blocking socket, binds it when -s / -p are given,
  connects it (UDP: the route's source address, an ephemeral port) and runs
  ``readwrite``; a connect that fails exits 1 without a word (no -v);
- a UDP listener binds (SO_REUSEADDR and SO_REUSEPORT), waits for the first
  datagram (recvfrom MSG_PEEK, no timeout), connects the socket to its sender
  and runs ``readwrite``; with -k it never connects and serves every sender;
- ``readwrite`` is a poll() loop over stdin, the socket (twice: net out, net
  in) and stdout with 16384-byte buffers. Each loop turn reads stdin into the
  buffer (what a read of a regular file returns: everything up to the free
  room), writes the whole buffer to the socket (one datagram per write) on
  the next turn, reads the socket (one datagram per read, cut to the free
  room) and writes to stdout. POLLERR on the socket (a pending ICMP error:
  ECONNREFUSED from a closed port) drops it silently; stdin's EOF ends
  sending, and with -q SECS >= 0 (which implies -N) also receiving, after
  which nc waits SECS and exits 0 (SIGALRM); -w SECS ends readwrite when a
  poll() sees nothing for SECS.

TCP (no -u) runs the same loop over ``emu.net.tcp.TcpSocket``: the client
connects without blocking and waits for the handshake (connect_with_timeout,
-w bounds it; a refused or timed-out connect exits 1 silently); the
listener (SO_REUSEADDR, backlog 1) accepts one connection, runs readwrite
on it, closes it, and exits 0, or with -k accepts the next. Writes take
what the send buffer has room for (the rest on the next POLLOUT); POLLHUP
(both directions shut, or reset) stops writing.

Each loop turn is one event in process context on the virtual clock, so the
packets a write causes are processed before the next turn, as the kernel
runs the backlog inside the write. stdin is a regular file (the scenario's
bytes): always readable, EOF when consumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from emu.net.process import ProcessResult
from emu.net.tcp import TcpSocket
from emu.net.udp import UdpSocket
from emu.sim import NS_PER_SECOND, Event
from emu.wire.addr import ip_from_str

if TYPE_CHECKING:
    from emu.net.namespace import Namespace

BUFSIZE = 16384
POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x4, 0x8, 0x10, 0x20
STDIN, NETOUT, NETIN, STDOUT = range(4)
EAGAIN = -2


@dataclass(frozen=True)
class NcOptions:
    """A parsed nc command line (see emu.scenario.nc).

    ``port``: the port listened on or connected to; ``address``: the
    listener's local address (-s, or the host operand of ``nc -l HOST
    PORT``); ``source``/``source_port``: the client's -s / -p;
    ``quit_after``: -q (negative: none, as nc's default -1); ``timeout``: -w
    seconds (None: -1, wait for ever); ``shutdown``: -N (set by -q >= 0 too).
    """

    port: int
    listen: bool = False
    udp: bool = False
    keep: bool = False
    address: str | None = None
    source: str | None = None
    source_port: int | None = None
    shutdown: bool = False
    quit_after: int = -1
    timeout: int | None = None


class Netcat:
    """One nc run in namespace `ns`; `destination` is the client's peer address."""

    def __init__(self, ns: "Namespace", options: NcOptions, destination: str | None = None,
                 stdin: bytes = b"", command: str = "nc") -> None:
        self.ns = ns
        self.options = options
        self.destination = destination
        self.stdin = stdin
        self._stdin_offset = 0
        self.result = ProcessResult(command)
        self.sock: UdpSocket | TcpSocket | None = None
        self._on_exit: Callable[[ProcessResult], None] | None = None
        self._keep = options.keep
        self._loop: _ReadWrite | None = None
        self._alarm: Event | None = None
        self._on_blocked: Callable[[], None] | None = None
        self._listener = None  # a TCP/UDP listener's own socket
        self._connect_timer: Event | None = None

    # -- life cycle ---------------------------------------------------------------
    def start(self, on_exit: Callable[[ProcessResult], None],
              on_blocked: Callable[[], None] | None = None) -> None:
        """Run until nc exits (`on_exit(result)`); `on_blocked()` is called
        the first time it waits for something (poll() or recvfrom() block)."""
        self._on_exit = on_exit
        self._on_blocked = on_blocked
        self.result.started_ns = self.ns.sim.now_ns
        if self.options.listen:
            self._listen()
        else:
            self._connect()

    def stop(self) -> None:
        """SIGTERM at the end of the run: nc has no handler, the kernel closes its socket."""
        if self._on_exit is None:
            return
        self.result.stopped = True
        self._end(None)

    def _exit(self, status: int) -> None:
        self._end(status)

    def blocked(self) -> None:
        """It waits now (the first time: tell whoever waits for that)."""
        notify, self._on_blocked = self._on_blocked, None
        if notify is not None:
            notify()

    def _end(self, status: int | None) -> None:
        if self._on_exit is None:
            return
        for event in (self._alarm,):
            if event is not None:
                event.cancel()
        if self._loop is not None:
            self._loop.cancel()
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        self._close_sockets()
        self.result.exit_status = status
        self.result.finished_ns = self.ns.sim.now_ns
        done, self._on_exit = self._on_exit, None
        done(self.result)

    def _fail(self, message: str | None) -> None:
        """errx(1, ...) / a silent exit 1."""
        if message:
            self.result.stderr.append(f"nc: {message}")
        self._exit(1)

    # -- client -------------------------------------------------------------------
    def _connect(self) -> None:
        options = self.options
        self.sock = UdpSocket(self.ns) if options.udp else TcpSocket(self.ns)
        if options.source is not None or options.source_port is not None:
            source = ip_from_str(options.source) if options.source is not None else None
            try:
                self.sock.bind(source, options.source_port or 0)
            except OSError as error:
                self._fail(f"bind failed: {_strerror(error)}")
                return
        try:
            self.sock.connect((ip_from_str(self.destination), options.port))
        except OSError:
            self._fail(None)  # remote_connect failed: ret stays 1, nothing printed without -v
            return
        if options.udp:
            self._readwrite(lambda: self._exit(0))
            return
        # connect_with_timeout: select() for writability, -w bounds it
        self.sock.on_wake = self._connect_done
        if options.timeout:
            self._connect_timer = self.ns.sim.call_process_at(
                self.ns.sim.now_ns + options.timeout * NS_PER_SECOND, self._connect_timed_out)
        self._connect_done()

    def _connect_done(self) -> None:
        if self._on_exit is None or self._loop is not None:
            return
        sock = self.sock
        if sock.error is not None:
            self._fail(None)  # ECONNREFUSED, ETIMEDOUT...: remote_connect fails, exit 1 silently
            return
        if not sock.connected:
            # select() sleeps, but a handshake that can complete at this instant wakes it
            # first: it counts as blocked only if still connecting once the instant's
            # work is done (the kernel runner sees nc asleep for longer than a handshake)
            self.ns.sim.call_process(self._still_connecting)
            return
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        self._readwrite(lambda: self._exit(0))

    def _still_connecting(self) -> None:
        if self._on_exit is not None and self._loop is None and not self.sock.connected:
            self.blocked()

    def _connect_timed_out(self) -> None:
        if self._loop is None:
            self._fail(None)  # CONNECTION_TIMEOUT: nothing printed without -v

    # -- listener -----------------------------------------------------------------
    def _listen(self) -> None:
        options = self.options
        self.sock = UdpSocket(self.ns) if options.udp else TcpSocket(self.ns)
        self.sock.reuseaddr = True  # local_listen sets SO_REUSEADDR (and SO_REUSEPORT)
        address = ip_from_str(options.address) if options.address is not None else None
        try:
            self.sock.bind(address, options.port)
            if not options.udp:
                self.sock.listen(1)
        except OSError as error:
            self._fail(_strerror(error))  # local_listen returned -1: err(1, NULL)
            return
        self._listener = self.sock
        self._serve()

    def _serve(self) -> None:
        """One turn of main's `for (;;)` around readwrite."""
        if not self.options.udp:
            self._listener.on_wake = self._accept
            self._accept()
            return
        if self._keep:
            self._readwrite(self._served)
            return
        self.sock.on_wake = self._peek
        self._peek()

    def _accept(self) -> None:
        """accept4(SOCK_NONBLOCK), blocking until a connection is queued."""
        if self._on_exit is None:
            return
        child = self._listener.accept()
        if child is None:
            self.blocked()
            return
        self._listener.on_wake = None
        self.sock = child
        self._readwrite(self._accepted_done)

    def _accepted_done(self) -> None:
        """readwrite returned: close(connfd), then the next connection (-k) or the end."""
        self.sock.close()
        self.sock = self._listener
        self._loop = None
        self._served()

    def _peek(self) -> None:
        """recvfrom(MSG_PEEK): block until a datagram is queued, then connect to its sender."""
        if self._on_exit is None:
            return
        if not self.sock.queue:
            self.blocked()
            return
        _, sender = self.sock.queue[0]
        self.sock.connect(sender)
        self._readwrite(self._served)

    def _served(self) -> None:
        if not self._keep:
            self._exit(0)
        else:
            self._serve()

    def _close_sockets(self) -> None:
        """What exit(2) closes: the connection and the listener."""
        for sock in (self.sock, self._listener):
            if sock is not None:
                sock.close()

    # -- readwrite ------------------------------------------------------------------
    def _readwrite(self, returned: Callable[[], None]) -> None:
        self._loop = _ReadWrite(self, returned)
        self.sock.on_wake = self._loop.wake
        self.ns.sim.call_process(self._loop.turn)

    def read_stdin(self, room: int) -> bytes:
        """read(2) of the stdin file: up to `room` bytes, b"" at EOF."""
        data = self.stdin[self._stdin_offset:self._stdin_offset + room]
        self._stdin_offset += len(data)
        return data

    def arm_alarm(self, seconds: int) -> None:
        """alarm(seconds) with quit() as handler: exit 0 when it rings."""
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm = self.ns.sim.call_process_at(self.ns.sim.now_ns + seconds * NS_PER_SECOND,
                                                  self._exit, 0)

    def stop_keeping(self) -> None:
        """readwrite's #817050 fix: stdin done with -q clears kflag."""
        self._keep = False


class _ReadWrite:
    """netcat.c readwrite() over one socket, one poll() return per turn."""

    def __init__(self, nc: Netcat, returned: Callable[[], None]) -> None:
        self.nc = nc
        self.sock = nc.sock
        self.returned = returned
        self.open = [True, True, True, True]  # pfd[n].fd != -1
        self.events = [POLLIN, 0, POLLIN, 0]
        self.stdinbuf = bytearray()
        self.netinbuf = bytearray()
        self.net_closed = False
        self.blocked = False
        self.done = False
        self._timeout: Event | None = None

    def cancel(self) -> None:
        self.done = True
        if self._timeout is not None:
            self._timeout.cancel()

    def wake(self) -> None:
        """The socket's readiness changed (poll() would return)."""
        if self.blocked and not self.done:
            self.blocked = False
            if self._timeout is not None:
                self._timeout.cancel()
            self.turn()

    def _return(self) -> None:
        self.done = True
        self.returned()

    def turn(self) -> None:
        if self.done:
            return
        options = self.nc.options
        inputs_gone = not self.open[STDIN] and not self.open[NETIN] and not self.stdinbuf and not self.netinbuf
        outputs_gone = not self.open[NETOUT] and not self.open[STDOUT]
        listen_done = (options.listen and not self.open[NETIN] and not self.stdinbuf
                       and not self.netinbuf)
        if inputs_gone or outputs_gone or listen_done:
            if options.quit_after <= 0:
                self._return()
                return
            self.sock.close()  # delay_exit: close(net_fd); signal(SIGALRM, quit); alarm(qflag)
            self.net_closed = True
            self.nc.arm_alarm(options.quit_after)
        revents = self._poll()
        if not any(revents):
            timeout = options.timeout
            if timeout == 0:
                self._return()  # poll() returned 0: readwrite returns
                return
            self.blocked = True
            self.nc.blocked()
            if timeout is not None:
                self._timeout = self.nc.ns.sim.call_process_at(
                    self.nc.ns.sim.now_ns + timeout * NS_PER_SECOND, self._timed_out)
            return
        self._handle(revents)
        if not self.done:
            self.nc.ns.sim.call_process(self.turn)

    def _timed_out(self) -> None:
        if self.blocked and not self.done:
            self.blocked = False
            self._return()

    def _net_ready(self) -> int:
        if self.net_closed:
            return POLLNVAL
        sock = self.sock
        ready = POLLOUT if sock.writable else 0
        if sock.readable:
            ready |= POLLIN
        if sock.error is not None:
            ready |= POLLERR
        if sock.hup:
            ready |= POLLHUP
        return ready

    def _poll(self) -> list[int]:
        net = self._net_ready()
        ready = [POLLIN, net, net, POLLOUT]  # stdin: a regular file; stdout: always writable
        always = POLLERR | POLLHUP | POLLNVAL
        return [(ready[n] & (self.events[n] | always)) if self.open[n] else 0 for n in range(4)]

    def _handle(self, revents: list[int]) -> None:
        """The body of readwrite's loop after poll(), in netcat.c's order."""
        options, open_, events = self.nc.options, self.open, self.events
        for n in range(4):
            if revents[n] & (POLLERR | POLLNVAL):
                open_[n] = False
        if events[NETIN] & POLLIN and revents[NETIN] & POLLHUP and not revents[NETIN] & POLLIN:
            open_[NETIN] = False
        if revents[NETOUT] & POLLHUP:
            if options.shutdown:
                self._shutdown_write()
            open_[NETOUT] = False
        if not open_[NETOUT]:
            open_[STDIN] = False
        if not open_[STDOUT]:
            if open_[NETIN]:
                self._shutdown_read()
            open_[NETIN] = False

        if revents[STDIN] & POLLIN and len(self.stdinbuf) < BUFSIZE:
            ret = self._fill_stdin()
            if ret in (0, -1):
                open_[STDIN] = False
            if self.stdinbuf:
                events[NETOUT] = POLLOUT
            if len(self.stdinbuf) == BUFSIZE:
                events[STDIN] = 0
        if revents[NETOUT] & POLLOUT and self.stdinbuf:
            ret = self._drain_net()
            if ret == -1:
                open_[NETOUT] = False
            if not self.stdinbuf:
                events[NETOUT] = 0
            if len(self.stdinbuf) < BUFSIZE:
                events[STDIN] = POLLIN
        if revents[NETIN] & POLLIN and len(self.netinbuf) < BUFSIZE:
            ret = self._fill_net()
            if ret == -1:
                open_[NETIN] = False
            if ret == 0:
                self._shutdown_read()
                open_[NETIN] = False
            if self.netinbuf:
                events[STDOUT] = POLLOUT
            if len(self.netinbuf) == BUFSIZE:
                events[NETIN] = 0
        if revents[STDOUT] & POLLOUT and self.netinbuf:
            if open_[STDOUT]:
                self.nc.result.stdout += self.netinbuf
                self.netinbuf.clear()
                events[STDOUT] = 0
                events[NETIN] = POLLIN
            else:
                open_[STDOUT] = False

        if not open_[STDIN] and not self.stdinbuf:
            if open_[NETOUT] and options.shutdown:
                self._shutdown_write()
            open_[NETOUT] = False
            if ((options.listen or options.udp) and open_[NETIN] and options.quit_after >= 0
                    and not self.netinbuf):
                self._shutdown_read()
                open_[NETIN] = False
                self.nc.stop_keeping()
        if not open_[NETIN] and not self.netinbuf:
            open_[STDOUT] = False

    def _fill_stdin(self) -> int:
        if not self.open[STDIN]:
            return -1  # read(-1): EBADF
        data = self.nc.read_stdin(BUFSIZE - len(self.stdinbuf))
        self.stdinbuf += data
        return len(data)

    def _drain_net(self) -> int:
        if not self.open[NETOUT] or self.net_closed:
            return -1
        try:
            sent = self.sock.send(bytes(self.stdinbuf))
        except OSError:
            return -1  # ECONNREFUSED, EMSGSIZE, ...: drainbuf returns -1, nothing printed
        del self.stdinbuf[:sent]
        return sent

    def _fill_net(self) -> int:
        if not self.open[NETIN] or self.net_closed:
            return -1
        try:
            data = self.sock.recv(BUFSIZE - len(self.netinbuf))
        except OSError:
            return -1
        if data is None:
            return EAGAIN
        self.netinbuf += data
        return len(data)

    def _shutdown_write(self) -> None:
        """shutdown(SHUT_WR): a FIN for TCP, nothing on the wire for UDP."""
        if not self.net_closed:
            self.sock.shutdown_write()

    def _shutdown_read(self) -> None:
        if not self.net_closed:
            self.sock.read_shut = True


def _strerror(error: OSError) -> str:
    return error.strerror or str(error)
