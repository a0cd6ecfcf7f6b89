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

The packet logic is a set of pure functions (`lease_public_ip`,
`proxy_ttl`, `net_unreachable`) shared by the emulated proxy below and by
`emu flanneld-udp`, the same proxy on a real TUN and UDP socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Network

from emu.flannel.leases import Lease
from emu.net import Namespace, Tun, UdpSocket
from emu.net.device import NetDevice
from emu.net.route import SCOPE_UNIVERSE
import emu.wire.ipv4 as ipv4
from emu.net.errors import SocketError
from emu.wire.addr import ip_from_str, ip_to_int, ip_to_str
from emu.wire.icmp import DEST_UNREACHABLE, NET_UNREACHABLE, IcmpRepr
from emu.wire.ipv4 import PROTO_ICMP, Ipv4Repr, decrement_ttl

DEVICE_NAME = "flannel0"
UDP_OVERHEAD = 28
NET_UNREACHABLE_TTL = 8
MIN_PACKET = ipv4.MIN_HEADER_LEN  # an IPv4 header without options
DROP_SHORT = "FLANNELD_SHORT_PACKET"


class UdpBackend:
    type = "udp"
    # flannel's udp backend registers its lease with no BackendType at all.
    lease_type = ""

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
        # flanneld listens on the node's public address only (net.ListenUDP on IfaceAddr).
        self.socket.bind(ip_from_str(self.public_ip), self.port)

    def add_remote(self, lease: Lease) -> str | None:
        self.routes[lease.subnet] = lease.public_ip_packed
        self.ns.changed()  # flanneld's forwarding state, read by every packet it proxies
        return None

    def remove_remote(self, lease: Lease) -> None:
        self.routes.pop(lease.subnet, None)
        self.ns.changed()

    def teardown(self) -> None:
        if self.socket is not None:
            self.socket.close()
        if self.device is not None:
            self.ns.detach_device(self.device)
        self.device = self.socket = None

    # -- the proxy ----------------------------------------------------------------
    def _tun_to_udp(self, packet: bytes) -> None:
        if len(packet) < MIN_PACKET:
            self.device.drop(DROP_SHORT)
            return
        next_hop = lease_public_ip(self.routes, packet)
        if next_hop is None:
            self._hop("dropped:FLANNELD_NO_LEASE", f"no lease for {ip_to_str(ipv4.dst(packet))}")
            self.device.drop("FLANNELD_NO_LEASE")
            reply = net_unreachable(packet, self.own_subnet.network_address.packed)
            if reply is not None:
                self.device.write(reply)
            return
        aged = proxy_ttl(packet)
        if isinstance(aged, str):
            self.device.drop(aged)
            return
        if self.ns.sim.observer is not None:  # what flanneld decided (emu.net.observe)
            self._hop("sent", f"lease for {ip_to_str(ipv4.dst(packet))}: udp to {ip_to_str(next_hop)}:{self.port}")
        try:
            self.socket.sendto(aged, (next_hop, self.port))
        except SocketError as error:
            self.device.drop("FLANNELD_SEND_FAILED")

    def _udp_to_tun(self, data: bytes, source: tuple[bytes, int], packet: bytes,
                    dev: NetDevice) -> None:
        aged = proxy_ttl(data)
        if isinstance(aged, str):
            self.device.drop(aged)
            return
        if self.ns.sim.observer is not None:
            self._hop("delivered", f"udp from {ip_to_str(source[0])}:{source[1]}: write to {self.device.name}")
        self.device.write(aged)

    def _hop(self, verdict: str, evidence: str) -> None:
        """Tell the simulation's observer (emu.net.observe) what the proxy did."""
        observer = self.ns.sim.observer
        if observer is not None:
            observer.hop(self.ns, self.device, "flanneld", verdict, evidence)


def lease_public_ip(routes: Mapping[IPv4Network, bytes], packet: bytes) -> bytes | None:
    """proxy.c's find_route: the public IP of the lease holding the packet's
    destination (None: no lease, the packet is unroutable)."""
    value = ip_to_int(ipv4.dst(packet))
    for subnet, public_ip in routes.items():
        if value & int(subnet.netmask) == int(subnet.network_address):
            return public_ip
    return None


def proxy_ttl(packet: bytes) -> bytes | str:
    """proxy.c's decrement_ttl, applied on both sides of the tunnel: the packet
    with its TTL one lower and the header checksum patched, or the drop reason
    (too short for an IPv4 header, or a TTL that would reach 0)."""
    if len(packet) < MIN_PACKET:
        return DROP_SHORT
    if ipv4.ttl(packet) <= 1:
        return "FLANNELD_TTL_ZERO"
    buf = bytearray(packet)
    decrement_ttl(buf)
    return bytes(buf)


def net_unreachable(offender: bytes, tun_address: bytes) -> bytes | None:
    """proxy.c's send_net_unreachable: the ICMP net unreachable flanneld writes
    into flannel0 for a packet no lease holds (from flannel0's address, TTL 8,
    quoting the header + 8 bytes), or None where proxy.c stays silent (the
    offender is ICMP, a non-first fragment, or has a 60-byte header)."""
    header_len = ipv4.header_length(offender)
    if header_len >= ipv4.MAX_HEADER_LEN or ipv4.protocol(offender) == PROTO_ICMP:
        return None
    if ipv4.flags_offset(offender) & ipv4.OFFSET_MASK:
        return None
    quoted = bytes(offender[:header_len + 8]).ljust(header_len + 8, b"\x00")
    message = IcmpRepr(DEST_UNREACHABLE, NET_UNREACHABLE, 0, quoted).build()
    header = Ipv4Repr(src=tun_address, dst=ipv4.src(offender), protocol=PROTO_ICMP,
                      payload_len=len(message), ttl=NET_UNREACHABLE_TTL)
    return header.header() + message
