"""The VXLAN device (flannel.1): an Ethernet device whose wire is UDP.

Transmit (vxlan_xmit): look the inner destination MAC up in the device's
own FDB (`bridge fdb append MAC dev flannel.1 dst REMOTE`; flannel runs it
with `nolearning`, so entries are only ever added by flanneld), then send
UDP from a source port hashed from the inner flow (symmetric, so both
directions of a flow share it, in 32768..60999) to the configured port,
through the namespace's own routing (outer TTL 64, DF clear, tos = the
inner ECN bits encapsulated, a full UDP checksum unless `udp_checksum` is off).

Receive (vxlan_rcv): a UDP socket on the port hands every datagram to the
device with that VNI; a missing I flag, reserved flags, an unknown VNI, a
truncated header or inner frame, an inner frame from our own MAC or to a MAC
that is not ours are dropped with named reasons.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import emu.net.gso as gso
from emu.net.device import NetDevice
from emu.net.drops import errno_reason
from emu.net.errors import SocketError
from emu.net.udp import UdpSocket
from emu.sim import Scheduler
from emu.wire.addr import ip_to_str, mac_to_str
import emu.wire.ethernet as ethernet
import emu.wire.ipv4 as ipv4
from emu.wire.addr import is_multicast_mac
from emu.wire.flow import symmetric_flow_key
from emu.wire.ipv4 import PROTO_UDP
from emu.wire.udp import udp_segment
from emu.wire.vxlan import FLAG_I, HEADER_LEN, header_fields, vxlan_header

if TYPE_CHECKING:
    from emu.net.namespace import Namespace

PORT_MIN, PORT_MAX = 32768, 61000  # the kernel's default local port range, end exclusive


def flow_source_port(inner_frame: bytes, low: int = PORT_MIN, high: int = PORT_MAX) -> int:
    """udp_flow_src_port: a symmetric hash of the inner flow scaled into [low, high).

    Addresses are sorted (and ports, for TCP/UDP) so both directions of a
    flow map to the same port, like the kernel's consistent flow hash. Like
    skb_get_hash's flow dissector, ICMP contributes no identifier (every
    ping between two pods shares one port) and fragments contribute no
    ports (all fragments of a datagram share one port). Non-IP frames hash
    their MAC pair.
    """
    value = zlib.crc32(symmetric_flow_key(inner_frame))
    return low + ((value * (high - low)) >> 32)


def _ecn_encapsulate(inner_tos: int) -> int:
    """INET_ECN_encapsulate with outer tos 0: copy ECT bits, CE becomes ECT(0)."""
    ecn = inner_tos & 3
    return 2 if ecn == 3 else ecn


class VxlanSocket(UdpSocket):
    """The UDP socket shared by the VXLAN devices of one port (demux by VNI)."""

    def __init__(self, ns: "Namespace", port: int) -> None:
        super().__init__(ns)
        self.devices: dict[int, Vxlan] = {}
        self.bind(None, port)

    def deliver(self, data: bytes, source: tuple[bytes, int], packet: bytes,
                dev: NetDevice) -> None:
        if len(data) < HEADER_LEN:
            self.ns.drop("VXLAN_INVALID_HDR")
            return
        flags, reserved1, vni, reserved2 = header_fields(data)
        if flags != FLAG_I or reserved1 or reserved2:
            self.ns.drop("VXLAN_INVALID_HDR")
            return
        device = self.devices.get(vni)
        if device is None:
            self.ns.drop("VXLAN_VNI_NOT_FOUND")
            return
        observer = self.ns.sim.observer
        if observer is not None:
            observer.hop(self.ns, device, "vxlan_rcv", "delivered",
                         f"vni {vni} from {ip_to_str(source[0])}:{source[1]} dev {device.name}")
        device.decapsulated(data[HEADER_LEN:])


class Vxlan(NetDevice):
    """`ip link add NAME type vxlan id VNI local IP dstport PORT nolearning`."""

    kind = "vxlan"

    def __init__(self, sim: Scheduler, name: str, mac: bytes, vni: int, port: int,
                 local_ip: bytes, mtu: int = 1450, udp_checksum: bool = True) -> None:
        super().__init__(sim, name, mac, mtu)
        self.vni = vni
        self.port = port
        self.local_ip = local_ip
        self.udp_checksum = udp_checksum
        self.fdb: dict[bytes, bytes] = {}

    # -- configuration ----------------------------------------------------------
    def attach(self) -> None:
        """Open (or join) the namespace's VXLAN socket for our port."""
        ns = self.namespace
        sock = ns.stack.udp_sockets.get((None, self.port))
        if sock is None:
            sock = VxlanSocket(ns, self.port)
        if not isinstance(sock, VxlanSocket):
            raise ValueError(f"{ns.name}: UDP port {self.port} is taken by another socket")
        if self.vni in sock.devices:
            raise ValueError(f"{ns.name}: VNI {self.vni} on port {self.port} exists already")
        sock.devices[self.vni] = self
        ns.changed()

    def detach(self) -> None:
        sock = self.namespace.stack.udp_sockets.get((None, self.port))
        if isinstance(sock, VxlanSocket):
            sock.devices.pop(self.vni, None)
            if not sock.devices:
                sock.close()
            self.namespace.changed()

    def fdb_append(self, mac: bytes, dst: bytes) -> None:
        """`bridge fdb append MAC dev DEV dst DST`."""
        self.fdb[mac] = dst
        self._config_changed()

    def fdb_delete(self, mac: bytes) -> None:
        if self.fdb.pop(mac, None) is not None:
            self._config_changed()

    def fdb_line(self, mac: bytes, dst: bytes) -> str:
        """One entry as `bridge fdb show dev DEV` prints it."""
        return f"{mac_to_str(mac)} dev {self.name} dst {ip_to_str(dst)} self permanent"

    def fdb_show(self) -> list[str]:
        return [self.fdb_line(mac, dst) for mac, dst in sorted(self.fdb.items())]

    # -- data path --------------------------------------------------------------
    def _xmit(self, frame: bytes) -> None:
        dst_mac = bytes(frame[ethernet.DST])
        remote = self.fdb.get(dst_mac)
        observer = self.sim.observer
        if remote is None:
            if observer is not None:
                observer.hop(self.namespace, self, "vxlan_xmit", "dropped:VXLAN_NO_REMOTE",
                             f"no fdb entry for {mac_to_str(dst_mac)}")
            self.drop("VXLAN_NO_REMOTE")
            return
        if observer is not None:
            observer.hop(self.namespace, self, "vxlan_xmit", "sent",
                         f"fdb {self.fdb_line(dst_mac, remote)}")
        inner = memoryview(frame)[ethernet.HEADER_LEN:]
        # The inner TOS byte, when the frame is IPv4 and long enough to hold it.
        inner_tos = inner[ipv4.TOS] if len(inner) > ipv4.TOS and frame[ethernet.TYPE] == ethernet.TYPE_IPV4 else 0
        payload = vxlan_header(self.vni) + bytes(frame)
        segment = udp_segment(flow_source_port(frame), self.port, payload, self.local_ip, remote,
                              with_checksum=self.udp_checksum)
        inner_seg_len = gso.segment_len(self.sim, inner)
        try:
            # A GSO inner frame stays one super-packet outside (UDP tunnel GSO).
            self.namespace.stack.send(remote, PROTO_UDP, segment, src=self.local_ip,
                                      tos=_ecn_encapsulate(inner_tos), pmtudisc="dont",
                                      seg_len=inner_seg_len + 50 if inner_seg_len else 0)
        except SocketError as error:
            self.drop(errno_reason(error.errno_name))

    def decapsulated(self, inner: bytes) -> None:
        """An inner frame that arrived for our VNI."""
        if len(inner) < ethernet.HEADER_LEN:
            self.drop("PKT_TOO_SMALL")
            return
        if inner[ethernet.SRC] == self.mac:
            self.drop("VXLAN_INVALID_SMAC")
            return
        dst = inner[ethernet.DST]
        if dst != self.mac and not is_multicast_mac(dst):
            self._tap(inner)
            self.drop("OTHERHOST")
            return
        self.receive(inner)
