"""UDP sockets: bind / connect / send / recv, plus a receive callback.

The callback is how in-kernel users (the VXLAN device's encap_rcv) and
userspace daemons (flanneld's udp backend) hear about datagrams; programs
(nc) read the queue instead and are woken the way poll() would wake them:
`on_wake` is scheduled in process context (at most one pending wakeup)
whenever the socket's readiness may have changed, and never called
synchronously from the packet path.

What follows Linux (net/ipv4/udp.c, datagram.c):
- an ephemeral port is chosen as udp_lib_get_port does: a random start in
  ``ip_local_port_range`` (reciprocal_scale of a 32-bit draw, seeded here),
  then, if that port is taken, the odd-multiple-of-table-size stride through
  the ports of the same hash slot, then the next slot;
- connect() autobinds, takes the route's source address as the socket's
  own (ip4_datagram_connect rehashes it) and filters what it receives: a
  connected socket only gets datagrams from its peer (compute_score);
- ICMP errors reach the socket that sent the quoted datagram
  (__udp4_lib_err): only hard errors (port and protocol unreachable,
  fragmentation needed unless IP_PMTUDISC_DONT, parameter problem) on a
  connected socket set its pending error (SO_ERROR), which the next send or
  receive returns and poll() reports as POLLERR; soft ones are ignored, as
  without IP_RECVERR;
- a read takes one datagram and truncates it to the buffer given.

A socket's `generation` counts changes of its options (PMTU discovery mode,
checksum, receive callback) and of its owner's forwarding state
(`changed()`, e.g. flanneld's lease map); binding and closing change the
namespace's socket table, so they bump the namespace's generation.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable

from emu.net.errors import SocketError
from emu.wire import icmp
from emu.wire.ipv4 import PROTO_UDP
from emu.wire.udp import udp_segment

if TYPE_CHECKING:
    from emu.net.device import NetDevice
    from emu.net.namespace import Namespace

EPHEMERAL_PORTS = (32768, 60999)  # net.ipv4.ip_local_port_range's default
# udp_table's slot count (alloc_large_system_hash scales it with memory; 16384
# on a machine of a few GB to tens of GB). It only orders the search when the
# first random pick is taken.
UDP_HASH_SLOTS = 16384
PORT_SPACE = 0x10000

Receiver = Callable[[bytes, tuple[bytes, int], bytes, "NetDevice"], None]

# icmp_err_convert for destination unreachable codes: (errno name, hard error).
_UNREACH_ERRORS = {
    icmp.NET_UNREACHABLE: ("ENETUNREACH", False),
    icmp.HOST_UNREACHABLE: ("EHOSTUNREACH", False),
    icmp.PROTOCOL_UNREACHABLE: ("ENOPROTOOPT", True),
    icmp.PORT_UNREACHABLE: ("ECONNREFUSED", True),
    5: ("EOPNOTSUPP", False),  # source route failed
    6: ("ENETUNREACH", True), 7: ("EHOSTDOWN", True), 8: ("ENONET", True),
    9: ("ENETUNREACH", True), 10: ("EHOSTUNREACH", True), 11: ("ENETUNREACH", False),
    12: ("EHOSTUNREACH", False), 13: ("EHOSTUNREACH", True), 14: ("EHOSTUNREACH", True),
    15: ("EHOSTUNREACH", True),
}
ICMP_PARAMETER_PROBLEM = 12


def choose_ephemeral_port(ns: "Namespace", used: set[int]) -> int:
    """udp_lib_get_port(snum=0): the port a bind to port 0 (or an autobind) gets."""
    low, high = ns.ip_local_port_range
    remaining = high - low + 1
    rand = ns.rng.getrandbits(32)
    first = ((rand * remaining) >> 32) + low
    stride = ((rand | 1) * UDP_HASH_SLOTS) % PORT_SPACE
    for slot in range(UDP_HASH_SLOTS):
        start = (first + slot) % PORT_SPACE
        port = start
        while True:
            if low <= port <= high and port not in used:
                return port
            port = (port + stride) % PORT_SPACE
            if port == start:
                break
    raise SocketError("EADDRINUSE", "no free ephemeral port")


class UdpSocket:
    """A UDP socket in one namespace."""

    def __init__(self, ns: "Namespace", on_receive: Receiver | None = None,
                 pmtudisc: str = "want", checksum: bool = True) -> None:
        self.ns = ns
        self.generation = 0
        self._on_receive = on_receive
        self._pmtudisc = pmtudisc
        self._checksum = checksum
        self.local: tuple[bytes | None, int] | None = None
        self.remote: tuple[bytes, int] | None = None
        self.error: str | None = None  # SO_ERROR: a pending errno name
        self.read_shut = False
        self.reuseaddr = False  # SO_REUSEADDR: no effect on UDP binds here
        self.on_wake: Callable[[], None] | None = None
        self._wake_pending = False
        self.queue: deque = deque()
        # errno names of bursts (`sendto_batch`) that stopped at a refused datagram
        self.send_errors: list[str] = []

    def changed(self) -> None:
        """An option, or the forwarding state of the program reading this socket, changed."""
        self.generation += 1

    @property
    def on_receive(self) -> Receiver | None:
        return self._on_receive

    @on_receive.setter
    def on_receive(self, value: Receiver | None) -> None:
        self._on_receive = value
        self.changed()

    @property
    def pmtudisc(self) -> str:
        """IP_MTU_DISCOVER: "want", "do" or "dont"."""
        return self._pmtudisc

    @pmtudisc.setter
    def pmtudisc(self, value: str) -> None:
        self._pmtudisc = value
        self.changed()

    @property
    def checksum(self) -> bool:
        """False: SO_NO_CHECK (datagrams sent with a zero UDP checksum)."""
        return self._checksum

    @checksum.setter
    def checksum(self, value: bool) -> None:
        self._checksum = value
        self.changed()

    def bind(self, ip: bytes | None, port: int) -> None:
        """Bind to (ip, port); ip None means every address (0.0.0.0), port 0 an ephemeral one."""
        if self.local is not None:
            raise SocketError("EINVAL", "socket is already bound")
        if ip is not None and not self.ns.is_local_address(ip):
            raise SocketError("EADDRNOTAVAIL")
        sockets = self.ns.stack.udp_sockets
        if port == 0:
            port = choose_ephemeral_port(self.ns, {p for _, p in sockets})
        elif (ip, port) in sockets or (None, port) in sockets or (
                ip is None and any(p == port for _, p in sockets)):
            raise SocketError("EADDRINUSE", f"port {port} is in use in {self.ns.name}")
        sockets[(ip, port)] = self
        self.local = (ip, port)
        self.ns.changed()

    def connect(self, address: tuple[bytes, int]) -> None:
        """connect(2) on a datagram socket: autobind, fix the source address
        from the route (ENETUNREACH without one), remember the peer."""
        dst, _ = address
        route, _ = self.ns.route_output(dst, None)
        if route is None:
            raise SocketError("ENETUNREACH")
        if self.local is None:
            self.bind(None, 0)
        ip, port = self.local
        if ip is None:
            source = self.ns.source_for(route)
            sockets = self.ns.stack.udp_sockets
            if source is not None and (source, port) not in sockets:
                del sockets[(None, port)]
                sockets[(source, port)] = self
                self.local = (source, port)
        self.remote = address
        self.ns.changed()

    def close(self) -> None:
        if self.local is not None:
            self.ns.stack.udp_sockets.pop(self.local, None)
            self.local = None
            self.ns.changed()
        self.on_wake = None

    def accepts(self, source: tuple[bytes, int]) -> bool:
        """compute_score: a connected socket takes datagrams from its peer only."""
        return self.remote is None or self.remote == source

    def sendto(self, data: bytes, address: tuple[bytes, int], ttl: int | None = None,
               tos: int = 0) -> None:
        """Send one datagram (raises SocketError for what the kernel refuses)."""
        if self.local is None:
            self.bind(None, 0)
        dst, port = address
        src_ip = self.local[0]
        route, _ = self.ns.route_output(dst, None)
        if src_ip is None and route is not None:
            src_ip = self.ns.source_for(route)
        segment = udp_segment(self.local[1], port, data, src_ip or bytes(4), dst,
                                with_checksum=self.checksum)
        self.ns.stack.send(dst, PROTO_UDP, segment, src=src_ip, ttl=ttl, tos=tos,
                           pmtudisc=self.pmtudisc, process=True)

    def send(self, data: bytes) -> int:
        """write(2) on a connected socket: one datagram. Raises SocketError
        (a pending error is returned once, then cleared)."""
        if self.remote is None:
            raise SocketError("EDESTADDRREQ")
        self._raise_pending()
        self.sendto(data, self.remote)
        return len(data)

    def recv(self, size: int) -> bytes | None:
        """read(2): one datagram cut to `size` bytes; None when none is queued
        (EAGAIN); b"" once reading is shut down."""
        self._raise_pending()
        if self.queue:
            data, _ = self.queue.popleft()
            return data[:size]
        return b"" if self.read_shut else None

    def _raise_pending(self) -> None:
        if self.error is not None:
            name, self.error = self.error, None
            raise SocketError(name)

    @property
    def readable(self) -> bool:
        return bool(self.queue) or self.read_shut

    writable = True  # sock_writeable: the send buffer frees as soon as a datagram leaves
    hup = False  # nc never shuts both directions of a datagram socket while polling it

    def shutdown_write(self) -> None:
        """shutdown(SHUT_WR): nothing on the wire."""

    def sendto_batch(self, payloads: list[bytes], address: tuple[bytes, int]) -> None:
        """Send `payloads` as one burst, as a process calling `sendto` for each
        in turn (sendmmsg): the burst starts in process context at this
        instant (when the scheduler runs it), and each datagram's whole
        same-instant chain runs before the next is sent, as in Linux. A
        datagram the kernel refuses ends the burst; its errno name is added
        to `send_errors`.

        An offload (`Scheduler.offload`, e.g. the flow cache) may
        serve some of the datagrams itself, with the same effects.
        """
        if payloads:
            self.ns.sim.call_process(self._burst_step, [bytes(p) for p in payloads], address, 0)

    def _burst_step(self, payloads: list[bytes], address: tuple[bytes, int], index: int) -> None:
        """Send payloads[index] (or let the offload serve it and maybe the
        next ones), then continue as the same process."""
        offload = self.ns.sim.offload
        try:
            served = 0 if offload is None else offload.udp_burst(self, payloads, address, index)
            if not served:
                self.sendto(payloads[index], address)
                served = 1
        except SocketError as error:
            self.send_errors.append(error.errno_name)  # sendmmsg stops at a refused datagram
            return
        if index + served < len(payloads):
            self.ns.sim.call_process(self._burst_step, payloads, address, index + served)

    def deliver(self, data: bytes, source: tuple[bytes, int], packet: bytes,
                dev: "NetDevice") -> None:
        """Called by the stack for each datagram addressed to this socket."""
        observer = self.ns.sim.observer
        if observer is not None:
            observer.deliver(self, data, source, packet, dev)
        if self._on_receive is not None:
            self._on_receive(data, source, packet, dev)
        else:
            self.queue.append((data, source))
            self._wake()
        if observer is not None:
            observer.delivered(self)

    def enqueue(self, datagrams: list[tuple[bytes, tuple[bytes, int]]]) -> None:
        """`deliver`'s end for a socket without a receive callback, for
        several (data, source) datagrams at once: queue them, wake the reader
        (an upper layer reproducing deliveries, the flow cache)."""
        self.queue.extend(datagrams)
        self._wake()

    def icmp_error(self, icmp_type: int, code: int) -> None:
        """__udp4_lib_err for an ICMP error about a datagram this socket sent."""
        if icmp_type == icmp.DEST_UNREACHABLE and code == icmp.FRAGMENTATION_NEEDED:
            if self.pmtudisc == "dont":
                return
            name, hard = "EMSGSIZE", True
        elif icmp_type == icmp.DEST_UNREACHABLE:
            name, hard = _UNREACH_ERRORS.get(code, ("EHOSTUNREACH", False))
        elif icmp_type == ICMP_PARAMETER_PROBLEM:
            name, hard = "EPROTO", True
        else:  # time exceeded and the rest: soft; redirects and quench: nothing
            return
        if hard and self.remote is not None:
            self.error = name
            self._wake()

    def _wake(self) -> None:
        if self.on_wake is not None and not self._wake_pending:
            self._wake_pending = True
            self.ns.sim.call_process(self._run_wake)

    def _run_wake(self) -> None:
        self._wake_pending = False
        if self.on_wake is not None:
            self.on_wake()

    def recvfrom(self) -> tuple[bytes, tuple[bytes, int]] | None:
        """The oldest queued datagram and its source, or None."""
        return self.queue.popleft() if self.queue else None
