"""UDP sockets: bind / sendto / recvfrom, plus a receive callback.

The callback is how in-kernel users (the VXLAN device's encap_rcv) and
userspace daemons (flanneld's udp backend) hear about datagrams; plain
programs can read the queue with `recvfrom()` instead.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable

from emu.net.fastpath import config_changed, flow_cache
from emu.wire.ipv4 import PROTO_UDP
from emu.wire.udp import UdpRepr

if TYPE_CHECKING:
    from emu.net.device import NetDevice
    from emu.net.namespace import Namespace

EPHEMERAL_PORTS = (32768, 60999)

Receiver = Callable[[bytes, tuple[bytes, int], bytes, "NetDevice"], None]


class UdpSocket:
    """A UDP socket in one namespace."""

    def __init__(self, ns: "Namespace", on_receive: Receiver | None = None,
                 pmtudisc: str = "want", checksum: bool = True) -> None:
        self.ns = ns
        self.on_receive = on_receive
        self.pmtudisc = pmtudisc
        self.checksum = checksum
        self.local: tuple[bytes | None, int] | None = None
        self.queue: deque = deque()
        # errno names of bursts (`sendto_batch`) that stopped at a refused datagram
        self.send_errors: list[str] = []

    def bind(self, ip: bytes | None, port: int) -> None:
        """Bind to (ip, port); ip None means every address (0.0.0.0)."""
        if self.local is not None:
            raise OSError("EINVAL: socket is already bound")
        if ip is not None and not self.ns.is_local_address(ip):
            raise OSError("EADDRNOTAVAIL: Cannot assign requested address")
        if port == 0:
            port = self._free_port()
        sockets = self.ns.stack.udp_sockets
        if (ip, port) in sockets or (None, port) in sockets:
            raise OSError(f"EADDRINUSE: port {port} is in use in {self.ns.name}")
        sockets[(ip, port)] = self
        self.local = (ip, port)
        config_changed()

    def _free_port(self) -> int:
        low, high = EPHEMERAL_PORTS
        used = {port for _, port in self.ns.stack.udp_sockets}
        start = self.ns.rng.randrange(low, high + 1)
        for offset in range(high - low + 1):
            port = low + (start - low + offset) % (high - low + 1)
            if port not in used:
                return port
        raise OSError("EADDRINUSE: no free ephemeral port")

    def close(self) -> None:
        if self.local is not None:
            self.ns.stack.udp_sockets.pop(self.local, None)
            self.local = None
            config_changed()

    def sendto(self, data: bytes, address: tuple[bytes, int], ttl: int | None = None,
               tos: int = 0) -> None:
        """Send one datagram (raises SendError for what the kernel refuses)."""
        if self.local is None:
            self.bind(None, 0)
        dst, port = address
        src_ip = self.local[0]
        route, _ = self.ns.route_output(dst, None)
        if src_ip is None and route is not None:
            src_ip = self.ns.source_for(route)
        segment = UdpRepr(self.local[1], port, len(data)).build(
            data, src_ip or bytes(4), dst, with_checksum=self.checksum)
        self.ns.stack.send(dst, PROTO_UDP, segment, src=src_ip, ttl=ttl, tos=tos,
                           pmtudisc=self.pmtudisc, process=True)

    def sendto_batch(self, payloads: list[bytes], address: tuple[bytes, int]) -> None:
        """Send `payloads` as one burst, as a process calling `sendto` for each
        in turn (sendmmsg): the burst starts in process context at this
        instant (when the scheduler runs it), and each datagram's whole
        same-instant chain runs before the next is sent, as in Linux. A
        datagram the kernel refuses ends the burst; its errno name is added
        to `send_errors`.

        The flow cache records the first datagram's walk through the slow path
        and replays it for the rest of the flow (see emu.net.fastpath).
        """
        flow_cache(self.ns.sim).send_batch(self, payloads, address)

    def deliver(self, data: bytes, source: tuple[bytes, int], packet: bytes,
                dev: "NetDevice") -> None:
        """Called by the stack for each datagram addressed to this socket."""
        recorder = self.ns.sim.context
        if recorder is not None:
            recorder.on_deliver_begin(self, data, source, packet, dev)
        if self.on_receive is not None:
            self.on_receive(data, source, packet, dev)
        else:
            self.queue.append((data, source))
        if recorder is not None:
            recorder.on_deliver_end(self)

    def recvfrom(self) -> tuple[bytes, tuple[bytes, int]] | None:
        """The oldest queued datagram and its source, or None."""
        return self.queue.popleft() if self.queue else None
