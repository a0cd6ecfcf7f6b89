"""flannel's udp backend: the flannel0 TUN and flanneld's userspace proxy.

Set-up (flannel's configureIface): flannel0 with address 10.244.N.0/32,
MTU = underlay MTU - 28, and the route `<Network> dev flannel0`.

The proxy is flannel's proxy.c, step by step:
- tun_to_udp: a packet read from flannel0 goes to the lease whose subnet
  holds its destination; none: an ICMP net unreachable is written back into
  flannel0 (source = flannel0's address, TTL 8, quoting the header + 8 bytes;
  never about an ICMP packet or a non-first fragment). Then the TTL is
  decremented with a checksum patch (reaching 0: silently dropped) and the
  packet is sent as one UDP datagram from port P to PublicIP:P.
- udp_to_tun: a datagram's payload gets the same TTL treatment and is
  written into flannel0.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from emu.flannel.leases import Lease
from emu.net import Namespace, Tun, UdpSocket
from emu.net.device import NetDevice
from emu.net.route import SCOPE_UNIVERSE
from emu.net.stack import SendError
from emu.wire.icmp import DEST_UNREACHABLE, NET_UNREACHABLE, IcmpRepr
from emu.wire.ipv4 import PROTO_ICMP, Ipv4Repr, decrement_ttl

DEVICE_NAME = "flannel0"
UDP_OVERHEAD = 28
NET_UNREACHABLE_TTL = 8


class UdpBackend:
    type = "udp"

    def __init__(self, ns: Namespace, network: IPv4Network, underlay_mtu: int, port: int,
                 public_ip: str) -> None:
        self.ns = ns
        self.network = network
        self.mtu = underlay_mtu - UDP_OVERHEAD
        self.port = port
        self.public_ip = public_ip
        self.device: Tun | None = None
        self.socket: UdpSocket | None = None
        self.routes: dict[IPv4Network, bytes] = {}
        self.own_subnet: IPv4Network | None = None

    def backend_data(self) -> None:
        return None

    def setup(self, lease: Lease) -> None:
        self.own_subnet = lease.subnet
        tun = Tun(self.ns.sim, DEVICE_NAME, self.mtu)
        self.ns.add_device(tun)
        tun.reader = self._tun_to_udp
        self.ns.add_address(tun, lease.subnet.network_address.packed, 32)
        self.ns.add_route(str(self.network), tun, scope=SCOPE_UNIVERSE)
        self.device = tun
        self.socket = UdpSocket(self.ns, on_receive=self._udp_to_tun)
        self.socket.bind(None, self.port)

    def add_remote(self, lease: Lease) -> str | None:
        self.routes[lease.subnet] = lease.public_ip.packed
        return None

    def remove_remote(self, lease: Lease) -> None:
        self.routes.pop(lease.subnet, None)

    def teardown(self) -> None:
        if self.socket is not None:
            self.socket.close()
        if self.device is not None:
            self.ns.detach_device(self.device)
        self.device = self.socket = None

    # -- the proxy ----------------------------------------------------------------
    def _find_route(self, dst: bytes) -> bytes | None:
        value = int.from_bytes(dst, "big")
        for subnet, public_ip in self.routes.items():
            if value & int(subnet.netmask) == int(subnet.network_address):
                return public_ip
        return None

    def _tun_to_udp(self, packet: bytes) -> None:
        if len(packet) < 20:
            self.device.drop("flanneld-short-packet")
            return
        next_hop = self._find_route(packet[16:20])
        if next_hop is None:
            self.device.drop("flanneld-no-lease")
            self._send_net_unreachable(packet)
            return
        buf = bytearray(packet)
        if buf[8] <= 1:
            self.device.drop("flanneld-ttl-zero")
            return
        decrement_ttl(buf)
        try:
            self.socket.sendto(bytes(buf), (next_hop, self.port))
        except SendError as error:
            self.device.drop(f"flanneld-send-{error.errno_name.lower()}")

    def _udp_to_tun(self, data: bytes, source: tuple[bytes, int], packet: bytes,
                    dev: NetDevice) -> None:
        if len(data) < 20:
            self.device.drop("flanneld-short-packet")
            return
        buf = bytearray(data)
        if buf[8] <= 1:
            self.device.drop("flanneld-ttl-zero")
            return
        decrement_ttl(buf)
        self.device.write(bytes(buf))

    def _send_net_unreachable(self, offender: bytes) -> None:
        header_len = (offender[0] & 0x0F) * 4
        if header_len >= 60 or offender[9] == PROTO_ICMP:
            return
        if ((offender[6] << 8) | offender[7]) & 0x1FFF:
            return
        quoted = bytes(offender[:header_len + 8]).ljust(header_len + 8, b"\x00")
        message = IcmpRepr(DEST_UNREACHABLE, NET_UNREACHABLE, 0, quoted).build()
        header = Ipv4Repr(src=self.own_subnet.network_address.packed, dst=bytes(offender[12:16]),
                          protocol=PROTO_ICMP, payload_len=len(message), ttl=NET_UNREACHABLE_TTL)
        self.device.write(header.header() + message)
