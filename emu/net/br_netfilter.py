"""br_netfilter: bridged IPv4 frames through the bridge namespace's iptables.

With `net.bridge.bridge-nf-call-iptables` = 1 (the namespace's
`bridge_nf_call_iptables`, Kubernetes' requirement on nodes) and netfilter
active in the bridge's namespace, the bridge hands every IPv4 frame it gets
from a port to the IPv4 hooks, as net/bridge/br_netfilter_hooks.c does:

- br_nf_pre_routing, before learning and the FDB decision: the header is
  validated (a bad one is dropped), conntrack (with defragmentation) and nat
  PREROUTING run with `-i` the bridge and `--physdev-in` the port. If a DNAT
  changed the destination (br_nf_pre_routing_finish), it is routed: when the
  new destination is behind this same bridge the frame stays bridged with
  the destination MAC of the bridge's neighbour entry for it ("bridged
  DNAT": a pod reaching its own Service goes back out the port it came in
  by, if that port is in hairpin mode); otherwise its destination MAC
  becomes the bridge's own, so the bridge passes it up to be routed.
- br_nf_forward_ip, for each port a frame is bridged to (every copy of a
  flood): filter FORWARD with `-i`/`-o` the bridge, `--physdev-in/-out` the
  ports, `--physdev-is-bridged`; then br_nf_post_routing: nat POSTROUTING
  (MASQUERADE takes the bridge's address) and conntrack confirmation; a
  datagram conntrack reassembled leaves in fragments of its largest
  fragment's size (br_nf_dev_queue_xmit). The TTL is not touched.
- a frame passed up to the bridge device carries its netfilter state into
  the stack, which skips PREROUTING for it (ip_sabotage_in).

A promiscuous bridge (every capture makes it one) also passes up a copy of
a bridged DNAT frame; it kept PACKET_HOST, so Linux routes it, without
conntrack: kube-proxy's `--ctstate INVALID -j DROP` counts it in FORWARD.
Not modelled: ARP and IPv6 (arptables, ip6tables), VLAN and PPPoE frames.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import emu.wire.ethernet as ethernet
from emu.net.fragment import fragment
from emu.net.neighbour import CONNECTED
from emu.net.netfilter.conntrack import ORIGINAL, Tracked
from emu.net.netfilter.hooks import PacketState
from emu.wire.addr import is_multicast_mac
from emu.wire.errors import WireError
from emu.wire.ethernet import HEADER_LEN as ETH_HLEN
from emu.wire.ipv4 import DST, Ipv4Packet

PENDING_KEPT = 64

if TYPE_CHECKING:
    from emu.net.bridge import Bridge
    from emu.net.device import NetDevice


def enabled(bridge: "Bridge") -> bool:
    """Whether frames of `bridge` go through iptables now."""
    ns = bridge.namespace
    return ns is not None and ns.netfilter.active and ns.bridge_nf_call_iptables


def pre_routing(bridge: "Bridge", port: "NetDevice", frame: bytes) -> tuple[bytes | None, "PacketState | None"]:
    """br_nf_pre_routing for a frame from `port`: the frame to bridge on with
    its netfilter state (None state: not IPv4, bridged as is), or (None,
    None) when netfilter took it (dropped, or a fragment waiting)."""
    if not ethernet.is_ipv4(frame):
        return frame, None
    ns = bridge.namespace
    try:
        header = Ipv4Packet(memoryview(frame)[ETH_HLEN:])
    except WireError:
        ns.drop("NETFILTER_DROP")  # br_validate_ipv4
        return None, None
    if not header.checksum_ok():
        ns.drop("NETFILTER_DROP")
        return None, None
    original = bytes(frame[ETH_HLEN:ETH_HLEN + header.total_length])  # pskb_trim_rcsum: padding goes
    packet, state = ns.stack.nf_prerouting(bridge, original, port)
    if packet is None:
        return None, None
    mac = frame[:ETH_HLEN]
    if packet[DST] != original[DST]:
        state.bridge_routed = True
        mac = _dnat_destination(bridge, port, packet, mac, state)
        if mac is None:
            return None, None
    return mac + packet, state


def _dnat_destination(bridge: "Bridge", port: "NetDevice", packet: bytes, mac: bytes,
                      state: "PacketState") -> bytes | None:
    """br_nf_pre_routing_finish after a DNAT: the Ethernet header to go on
    with (None: the neighbour layer took the packet). A bridged DNAT takes
    the neighbour's MAC directly when the entry is connected (neigh_hh_bridge);
    otherwise the neighbour layer sends it through the bridge device (taps
    see it with the bridge's MAC as source; ARP first if need be) and
    br_dev_xmit hands it back, source MAC restored, to bridging from the
    ingress port (br_nf_pre_routing_finish_bridge_slow)."""
    ns = bridge.namespace
    dst = bytes(packet[DST])
    route = None if ns.is_local_address(dst) else ns.routes.lookup(dst)
    if route is None or route.dev is not bridge:
        return bridge.mac + mac[ethernet.SRC] + mac[ethernet.TYPE]  # to be routed: the bridge passes it up
    nexthop = route.gateway or dst
    table = ns.neighbours(bridge)
    neighbour = table.entries.get(nexthop)
    if neighbour is not None and neighbour.state in CONNECTED:
        return neighbour.mac + mac[ethernet.SRC] + mac[ethernet.TYPE]  # neigh_hh_bridge keeps the source MAC
    pending = bridge._bridged_dnat
    pending[bytes(packet)] = (port, state, mac[ethernet.SRC])
    if len(pending) > PENDING_KEPT:  # resolution failed for the oldest: it was dropped
        del pending[next(iter(pending))]
    table.output(nexthop, packet)
    return None


def finish_bridge_slow(bridge: "Bridge", frame: bytes) -> bool:
    """br_dev_xmit for a bridged DNAT the neighbour layer sent: bridge it on
    from its ingress port with its own source MAC; False for any other frame."""
    pending = bridge._bridged_dnat.pop(bytes(frame[ETH_HLEN:]), None)
    if pending is None:
        return False
    port, state, src = pending
    bridge.bridge_frame(port, frame[ethernet.DST] + src + frame[ethernet.TYPE] + frame[ETH_HLEN:], state)
    return True


def bridged_out(bridge: "Bridge", egress: "NetDevice", frame: bytes, state: "PacketState") -> list[bytes]:
    """br_nf_forward_ip then br_nf_post_routing for one copy of a bridged
    frame leaving by `egress`: the frames to send (none if dropped)."""
    ns = bridge.namespace
    stack, netfilter, now = ns.stack, ns.netfilter, ns.sim.now_ns
    state = dataclasses.replace(state, bridged=True, physdev_out=egress.name)
    packet = bytes(frame[ETH_HLEN:])
    buf = bytearray(packet)
    packet = stack.nf_verdict(egress, "FORWARD", packet, buf, netfilter.forward(buf, state, bridge.name), state)
    if packet is None:
        return []
    buf = bytearray(packet)
    result = netfilter.postrouting(buf, state, bridge.name, bytes(packet[DST]), now)
    packet = stack.nf_verdict(egress, "POSTROUTING", packet, buf, result, state)
    if packet is None:
        return []
    mac = frame[:ETH_HLEN]
    if state.frag_max_size:
        return [mac + piece for piece in fragment(packet, min(egress.mtu, state.frag_max_size))]
    return [mac + packet]


def passed_up(bridge: "Bridge", frame: bytes, state: "PacketState") -> None:
    """A frame for the bridge device's own MAC (or a group address) goes up
    with its state, so the stack does not run PREROUTING again. A
    promiscuous bridge's copy of a bridged DNAT frame kept PACKET_HOST: the
    stack routes it, without conntrack (ctstate INVALID), as Linux does."""
    netfilter = bridge.namespace.netfilter
    if is_multicast_mac(frame[ethernet.DST]) or frame[ethernet.DST] == bridge.mac:
        netfilter.loop(bytes(frame[ETH_HLEN:]), state)
    elif state.bridge_routed:
        netfilter.loop(bytes(frame[ETH_HLEN:]), PacketState(Tracked(None, ORIGINAL, "INVALID"), in_dev=bridge.name,
                                                           bridge_routed=True, host_copy=True))
