"""What a captured frame is, for people and for following it across hops.

Why: `emu trace`, the annotated pcapng and the report follow one emulated
packet through every interface it crosses, also through encapsulation (a
VXLAN frame on eth0 carries the pod's echo request; flannel's udp backend
carries it raw in UDP; a TUN shows it bare). A packet's identity is its
innermost IPv4 header's (src, dst, protocol, identifier, fragment offset):
routers change the TTL and checksum, tunnels wrap it, but those stay; an ARP
packet is (op, sender MAC and IP, target IP). Parsing uses dpkt and never
raises on frame content: what it cannot read is an "undecoded" frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import dpkt

from emu.wire.addr import ip_to_str, mac_to_str
from emu.wire.vxlan import VxlanHeader

LINKTYPE_RAW = 101
ICMP_NAMES = {0: "echo reply", 3: "unreachable", 8: "echo request", 11: "time exceeded"}


@dataclass(frozen=True)
class Dissected:
    """The innermost packet of a frame, and the frame's layers as text."""

    kind: str  # "ip", "arp" or "other"
    key: tuple  # the packet's identity (see the module docstring)
    summary: str  # "VXLAN 172.18.0.11 > 172.18.0.12 vni 1 | ICMP echo request 10.244.1.2 > ..."
    proto: str = ""  # innermost: "icmp", "udp", "tcp", "arp", or the IP protocol number
    src: str = ""
    dst: str = ""
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None


def _ip_layer(ip: dpkt.ip.IP, tunnel_ports: dict[int, str], depth: int) -> tuple[list[str], Dissected]:
    src, dst = ip_to_str(ip.src), ip_to_str(ip.dst)
    key = ("ip", ip.src, ip.dst, ip.p, ip.id, ip.offset)
    fragment = f" frag offset {ip.offset}{' +' if ip.mf else ''}" if ip.mf or ip.offset else ""
    payload = ip.data
    if isinstance(payload, dpkt.icmp.ICMP):
        name = ICMP_NAMES.get(payload.type, f"type {payload.type} code {payload.code}")
        detail = ""
        ident = None
        if payload.type in (0, 8) and isinstance(payload.data, dpkt.icmp.ICMP.Echo):
            ident = payload.data.id
            detail = f" id {ident} seq {payload.data.seq}"
        text = f"ICMP {name} {src} > {dst}{detail} ttl {ip.ttl}{fragment}"
        return [text], Dissected("ip", key, text, "icmp", src, dst, icmp_id=ident)
    if isinstance(payload, dpkt.udp.UDP):
        tunnel = tunnel_ports.get(payload.dport)
        if tunnel is not None and depth < 3:
            inner = _tunnel_payload(tunnel, bytes(payload.data), tunnel_ports, depth + 1)
            if inner is not None:
                layers, innermost = inner
                vni = ""
                if tunnel == "vxlan" and len(payload.data) >= 8:
                    vni = f" vni {VxlanHeader(payload.data).vni}"
                outer = f"{tunnel.upper()} {src}:{payload.sport} > {dst}:{payload.dport}{vni}"
                return [outer, *layers], innermost
        text = f"UDP {src}:{payload.sport} > {dst}:{payload.dport} len {len(payload.data)}{fragment}"
        return [text], Dissected("ip", key, text, "udp", src, dst, payload.sport, payload.dport)
    if isinstance(payload, dpkt.tcp.TCP):
        text = f"TCP {src}:{payload.sport} > {dst}:{payload.dport}{fragment}"
        return [text], Dissected("ip", key, text, "tcp", src, dst, payload.sport, payload.dport)
    text = f"IPv4 {src} > {dst} proto {ip.p}{fragment}"
    return [text], Dissected("ip", key, text, str(ip.p), src, dst)


def _tunnel_payload(tunnel: str, data: bytes, tunnel_ports: dict[int, str],
                    depth: int) -> tuple[list[str], Dissected] | None:
    try:
        if tunnel == "vxlan":
            return _ethernet_layers(dpkt.ethernet.Ethernet(data[8:]), tunnel_ports, depth)
        return _ip_layer(dpkt.ip.IP(data), tunnel_ports, depth)
    except (dpkt.UnpackError, ValueError, IndexError, AttributeError):
        return None


def _ethernet_layers(eth: dpkt.ethernet.Ethernet, tunnel_ports: dict[int, str],
                     depth: int) -> tuple[list[str], Dissected]:
    payload = eth.data
    if isinstance(payload, dpkt.ip.IP):
        return _ip_layer(payload, tunnel_ports, depth)
    if isinstance(payload, dpkt.arp.ARP):
        spa, tpa = ip_to_str(payload.spa), ip_to_str(payload.tpa)
        if payload.op == dpkt.arp.ARP_OP_REQUEST:
            text = f"ARP who-has {tpa} tell {spa}"
        else:
            text = f"ARP {spa} is-at {mac_to_str(payload.sha)}"
        text += f" ({mac_to_str(eth.src)} > {mac_to_str(eth.dst)})"
        key = ("arp", payload.op, payload.sha, payload.spa, payload.tpa, eth.dst)
        return [text], Dissected("arp", key, text, "arp", spa, tpa)
    text = f"ethertype 0x{eth.type:04x} {mac_to_str(eth.src)} > {mac_to_str(eth.dst)}"
    return [text], Dissected("other", ("other", bytes(eth)), text)


def dissect(frame: bytes, linktype: int = 1, tunnel_ports: dict[int, str] | None = None) -> Dissected:
    """The frame's innermost packet and layers. `tunnel_ports` maps a UDP
    destination port to "vxlan" (an Ethernet frame after 8 bytes) or "udp"
    (flannel's udp backend: a raw IPv4 packet)."""
    ports = tunnel_ports or {}
    try:
        if linktype == LINKTYPE_RAW:
            layers, innermost = _ip_layer(dpkt.ip.IP(frame), ports, 0)
        else:
            layers, innermost = _ethernet_layers(dpkt.ethernet.Ethernet(frame), ports, 0)
    except (dpkt.UnpackError, ValueError, IndexError, AttributeError, TypeError):
        text = f"undecoded {len(frame)} bytes"
        return Dissected("other", ("other", bytes(frame)), text)
    return Dissected(innermost.kind, innermost.key, " | ".join(layers), innermost.proto, innermost.src,
                     innermost.dst, innermost.sport, innermost.dport, innermost.icmp_id)
