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

from emu.net.stack import SendError
from emu.wire.checksum import internet_checksum

if TYPE_CHECKING:
    from emu.net.device import NetDevice
    from emu.net.namespace import Namespace

MIN_HEADER_LEN = 20


def send_hdrinc(ns: "Namespace", packet: bytes, oif: "NetDevice | None" = None) -> bytes:
    """Send `packet` (a whole IPv4 packet) from `ns`, out of `oif` if given
    (SO_BINDTODEVICE), as a raw IP_HDRINCL socket does; returns the packet as
    it went to the neighbour layer. Raises ValueError for a packet that is
    not IPv4 with a whole header, SendError for what the kernel refuses."""
    packet = bytearray(packet)
    if len(packet) < MIN_HEADER_LEN or packet[0] >> 4 != 4:
        raise ValueError("packet: not an IPv4 packet (version 4, at least 20 bytes)")
    header_len = (packet[0] & 0x0F) * 4
    if header_len < MIN_HEADER_LEN or header_len > len(packet):
        raise ValueError(f"packet: header length {header_len} does not fit the {len(packet)}-byte packet")
    dst = bytes(packet[16:20])
    route, local = ns.route_output(dst, oif)
    if route is None:
        raise SendError("ENETUNREACH", "Network is unreachable")
    if len(packet) > route.dev.mtu:
        raise SendError("EMSGSIZE", "Message too long", route.dev.mtu)
    if packet[12:16] == bytes(4):
        src = ns.source_for(route)
        if src is None:
            raise SendError("EADDRNOTAVAIL", "Cannot assign requested address")
        packet[12:16] = src
    packet[2:4] = len(packet).to_bytes(2, "big")
    if packet[4:6] == bytes(2):
        packet[4:6] = ns.stack.next_ident().to_bytes(2, "big")
    packet[10:12] = bytes(2)
    packet[10:12] = internet_checksum(bytes(packet[:header_len])).to_bytes(2, "big")
    ns.sent += 1
    nexthop = dst if local else (route.gateway or dst)
    # arp_error_report: an unresolved next hop answers the sender with host unreachable.
    ns.stack.neigh_xmit(route.dev, nexthop, bytes(packet), on_error=ns.stack._unreachable_report)
    return bytes(packet)
