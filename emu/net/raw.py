"""Raw IP sockets with IP_HDRINCL: a process hands the stack a whole IPv4
packet, header included (what `scapy.send(IP()/...)` does on Linux).

Why: a test that builds its own packet wants it sent exactly as written,
yet through the namespace's routing and neighbour layer, so the Ethernet
header is the one the kernel would give it (and ARP happens first if the
next hop is unknown). As raw_send_hdrinc does, the kernel fills in the
total length, a zero source address (from the route), a zero identifier,
and always recomputes the header checksum; a packet longer than the
route's MTU is refused (EMSGSIZE), never fragmented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import emu.wire.ipv4 as ipv4
from emu.net.errors import SocketError

if TYPE_CHECKING:
    from emu.net.device import NetDevice
    from emu.net.namespace import Namespace


def send_hdrinc(ns: "Namespace", packet: bytes, oif: "NetDevice | None" = None) -> bytes:
    """Send `packet` (a whole IPv4 packet) from `ns`, out of `oif` if given
    (SO_BINDTODEVICE), as a raw IP_HDRINCL socket does; returns the packet as
    it went to the neighbour layer. Raises ValueError for a packet that is
    not IPv4 with a whole header, SocketError for what the kernel refuses."""
    packet = bytearray(packet)
    if len(packet) < ipv4.MIN_HEADER_LEN or ipv4.version(packet) != 4:
        raise ValueError("packet: not an IPv4 packet (version 4, at least 20 bytes)")
    header_len = ipv4.header_length(packet)
    if header_len < ipv4.MIN_HEADER_LEN or header_len > len(packet):
        raise ValueError(f"packet: header length {header_len} does not fit the {len(packet)}-byte packet")
    dst = ipv4.dst(packet)
    route, local = ns.route_output(dst, oif)
    if route is None:
        raise SocketError("ENETUNREACH")
    if len(packet) > route.dev.mtu:
        raise SocketError("EMSGSIZE", mtu=route.dev.mtu)
    if ipv4.src(packet) == bytes(4):
        src = ns.source_for(route)
        if src is None:
            raise SocketError("EADDRNOTAVAIL")
        ipv4.set_src(packet, src)
    ipv4.set_total_length(packet, len(packet))
    if ipv4.ident(packet) == 0:
        ipv4.set_ident(packet, ns.stack.next_ident())
    ipv4.fill_checksum(packet)
    ns.sent += 1
    nexthop = dst if local else (route.gateway or dst)
    # arp_error_report: an unresolved next hop answers the sender with host unreachable.
    ns.stack.neigh_xmit(route.dev, nexthop, bytes(packet), on_error=ns.stack._unreachable_report)
    return bytes(packet)
