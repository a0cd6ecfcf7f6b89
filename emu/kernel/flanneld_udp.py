"""flanneld's udp backend on a real kernel: a TUN device and a UDP socket.

The exported script (``emu export --netns``) gives each node of a udp
scenario a persistent ``flannel0`` TUN; this process, started inside the
node's namespace, attaches to it (IFF_TUN | IFF_NO_PI: raw IPv4, as flannel
opens it) and to a UDP socket on 0.0.0.0:PORT, and then does what flannel's
proxy.c does. The packet logic is the emulated backend's own
(``emu.flannel.udp_backend``), so both sides of a differential run share it;
only the file descriptors are real here.

The socket is bound before the TUN is attached: the TUN's carrier comes up
on attach, so a carrier on flannel0 tells the script the proxy is ready.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import socket
import struct
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network

from emu.flannel.udp_backend import MIN_PACKET, lease_public_ip, net_unreachable, proxy_ttl

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SIOCGIFADDR = 0x8915
MAX_PACKET = 65535


def parse_route(text: str) -> tuple[IPv4Network, IPv4Address]:
    """'10.244.2.0/24=172.18.0.12' -> (subnet, public IP); ValueError naming the part."""
    subnet_text, sep, ip_text = text.partition("=")
    if not sep:
        raise ValueError(f"--route {text!r}: expected SUBNET=PUBLIC_IP")
    try:
        return IPv4Network(subnet_text), IPv4Address(ip_text)
    except ValueError as error:
        raise ValueError(f"--route {text!r}: {error}") from None


def open_tun(name: str) -> int:
    """Attach to the TUN device `name` (creating it if absent); returns its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def device_address(name: str) -> bytes:
    """The IPv4 address of device `name` (flannel0's 10.244.N.0, the source of
    flanneld's ICMP net unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()))
    return answer[20:24]


class _Stop(Exception):
    """SIGTERM or SIGINT arrived: leave the forwarding loop at once."""


class UdpProxy:
    """proxy.c's two directions between one TUN fd and one UDP socket."""

    def __init__(self, tun_fd: int, sock: socket.socket, port: int, tun_address: bytes,
                 routes: Mapping[IPv4Network, IPv4Address]) -> None:
        self.tun_fd = tun_fd
        self.sock = sock
        self.port = port
        self.tun_address = tun_address
        self.routes = {subnet: ip.packed for subnet, ip in routes.items()}

    def tun_to_udp(self) -> None:
        packet = os.read(self.tun_fd, MAX_PACKET)
        if len(packet) < MIN_PACKET:
            return
        next_hop = lease_public_ip(self.routes, packet)
        if next_hop is None:
            reply = net_unreachable(packet, self.tun_address)
            if reply is not None:
                os.write(self.tun_fd, reply)
            return
        aged = proxy_ttl(packet)
        if isinstance(aged, bytes):
            try:
                self.sock.sendto(aged, (socket.inet_ntoa(next_hop), self.port))
            except OSError:
                pass  # like proxy.c: a failed send loses the packet, the proxy goes on

    def udp_to_tun(self) -> None:
        data = self.sock.recv(MAX_PACKET)
        aged = proxy_ttl(data)
        if isinstance(aged, bytes):
            try:
                os.write(self.tun_fd, aged)
            except OSError:
                pass  # a payload the kernel refuses is lost, as in proxy.c

    def serve(self) -> None:
        """Forward until SIGTERM or SIGINT."""
        selector = selectors.DefaultSelector()
        selector.register(self.tun_fd, selectors.EVENT_READ, self.tun_to_udp)
        selector.register(self.sock, selectors.EVENT_READ, self.udp_to_tun)

        def stop(signum, frame) -> None:
            raise _Stop

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            while True:
                for key, _ in selector.select():
                    key.data()
        except _Stop:
            pass
        finally:
            selector.close()


def run_flanneld_udp(tun: str, port: int, routes: Mapping[IPv4Network, IPv4Address]) -> None:
    """Bind the UDP socket, attach the TUN, and proxy until told to stop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    tun_fd = open_tun(tun)
    try:
        UdpProxy(tun_fd, sock, port, device_address(tun), routes).serve()
    finally:
        os.close(tun_fd)
        sock.close()
