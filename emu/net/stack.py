"""The IPv4 stack of one namespace: input, local delivery, forwarding, output.

The paths follow Linux (net/ipv4/ip_input.c, ip_forward.c, ip_output.c,
icmp.c) as far as the frames on the wire can tell:
- input checks the header and checksum, delivers to local addresses
  (reassembling fragments), forwards when `ip_forward` is on, else drops;
- forwarding checks TTL (ICMP time exceeded quoting the packet as received),
  then the egress MTU (ICMP fragmentation needed with the next-hop MTU when DF
  is set, otherwise fragmentation), then decrements the TTL with an
  incremental checksum update and resolves the next hop; a packet that
  leaves by the device it came in on, from a source reachable without a
  gateway, first makes the node send an ICMP host redirect (send_redirects
  and shared_media are on by default), quoting the packet with its TTL
  already decremented;
- local output picks the source address like the kernel's route lookup and
  applies the socket's PMTU discovery mode ("want": DF only when the packet
  fits, else fragment locally; "do": EMSGSIZE; "dont": never DF);
- ICMP echo requests get replies (DF clear, source = the address pinged).
Nothing here raises because of frame content: every refusal is a counted,
named drop.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable

import emu.net.gso as gso
from emu.net.drops import wire_reason
from emu.net.errors import SocketError
from emu.net.fragment import Reassembler, fragment
from emu.net.icmp_errors import (RATEMASK_TYPES, REDIRECT, REDIRECT_HOST, GlobalLimit,
                                  PeerLimits, build_error, error_tos, may_send_error)
from emu.net.neighbour import arp_input
from emu.sim import NS_PER_SECOND
import emu.wire.ethernet as ethernet
import emu.wire.ipv4 as ipv4
import emu.wire.udp as udp
from emu.wire import icmp
from emu.wire.addr import (CLASS_D_FIRST, LOOPBACK_FIRST, LOOPBACK_LAST, ip_to_int, ip_to_str,
                           is_multicast_mac)
from emu.wire.errors import WireError
from emu.wire.ethernet import DST as ETH_DST, HEADER_LEN as ETH_HEADER_LEN
from emu.wire.ethernet import ETHERTYPE_IPV4, ethernet_header
from emu.wire.icmp import IcmpMessage, IcmpRepr
from emu.wire.ipv4 import DST as IP_DST, FLAGS_OFFSET as IP_FLAGS_OFFSET, PROTOCOL as IP_PROTOCOL, SRC as IP_SRC
from emu.wire.ipv4 import TTL as IP_TTL, UNFRAGMENTED
from emu.wire.ipv4 import (PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Packet, decrement_ttl,
                           ipv4_header)
from emu.wire.tcp import RST as TCP_RST
from emu.wire.tcp import TcpSegment, reset_for
from emu.wire.udp import UdpDatagram

if TYPE_CHECKING:
    from emu.net.device import NetDevice
    from emu.net.namespace import Namespace
    from emu.net.netfilter.hooks import HookResult, PacketState
    from emu.net.route import Route
    from emu.net.tcp import TcpLayer

PMTU_EXPIRES_NS = 600 * NS_PER_SECOND
REJECT_CODES = {"icmp-net-unreachable": icmp.NET_UNREACHABLE, "icmp-host-unreachable": icmp.HOST_UNREACHABLE,
                "icmp-proto-unreachable": icmp.PROTOCOL_UNREACHABLE, "icmp-port-unreachable": icmp.PORT_UNREACHABLE,
                "icmp-net-prohibited": 9, "icmp-host-prohibited": 10, "icmp-admin-prohibited": 13}
"""iptables' --reject-with names -> ICMP destination unreachable codes (RFC 1812's 9, 10, 13)."""
MIN_PMTU = 552
BROADCAST_IP = b"\xff\xff\xff\xff"


class Ipv4Stack:
    """IPv4 and ARP processing for one namespace."""

    def __init__(self, ns: "Namespace") -> None:
        self.ns = ns
        self.reassembler = Reassembler(ns.sim, self._reassembly_timeout, ns.drop)
        # nf_defrag_ipv4's queues (IP_DEFRAG_CONNTRACK_IN), apart from local delivery's
        self.nf_reassembler = Reassembler(ns.sim, self._nf_reassembly_timeout, ns.drop)
        # One inet_peer table for ICMP errors, no-route errors and redirects,
        # as Linux shares it (see emu.net.icmp_errors).
        self.peers = PeerLimits()
        # The global limit's random credit costs come from a second stream with
        # the namespace's seed (a copy of its stream as it starts): reproducible,
        # and drawing from it does not move the namespace's own draws (IP IDs,
        # ports, ARP timers).
        self.icmp_global = GlobalLimit(ns.rng_seed)
        self.pmtu: dict[bytes, tuple[int, int]] = {}
        self.echo_handlers: dict[int, Callable] = {}
        self.udp_sockets: dict[tuple[bytes | None, int], object] = {}
        self.tcp: "TcpLayer | None" = None  # set by the namespace (emu.net.tcp)
        self._next_ident: int | None = None  # the namespace stream's first draw (Namespace.rng)
        self._icmp_echo_ignore_broadcasts = True

    @property
    def icmp_echo_ignore_broadcasts(self) -> bool:
        """`sysctl net.ipv4.icmp_echo_ignore_broadcasts`."""
        return self._icmp_echo_ignore_broadcasts

    @icmp_echo_ignore_broadcasts.setter
    def icmp_echo_ignore_broadcasts(self, value: bool) -> None:
        self._icmp_echo_ignore_broadcasts = value
        self.ns.changed()

    def _hop(self, dev: "NetDevice | None", stage: str, verdict: str, evidence: str) -> None:
        """Tell the observer (if any) about a decision; see emu.net.observe.
        Hot paths check `sim.observer` themselves before building evidence."""
        observer = self.ns.sim.observer
        if observer is not None:
            observer.hop(self.ns, dev, stage, verdict, evidence)

    # == input ==================================================================
    def receive(self, dev: "NetDevice", frame: bytes) -> None:
        """A frame (or, on an L3 device, a packet) received on `dev`."""
        if not dev.has_l2:
            self.ip_input(dev, frame, l2_broadcast=False)
            return
        if len(frame) < 14:
            dev.drop("PKT_TOO_SMALL")
            return
        dst = frame[ETH_DST]
        if dst == dev.mac:
            to_us, l2_broadcast = True, False
        elif is_multicast_mac(dst):
            to_us, l2_broadcast = False, True
        elif self.ns.netfilter.is_host_copy(frame[ETH_HEADER_LEN:]):
            to_us, l2_broadcast = True, False  # br_netfilter's bridged DNAT kept PACKET_HOST
        else:
            dev.drop("OTHERHOST")
            return
        ethertype = frame[ethernet.TYPE]
        if ethertype == ethernet.TYPE_IPV4:
            self.ip_input(dev, memoryview(frame)[ETH_HEADER_LEN:], l2_broadcast)
        elif ethertype == ethernet.TYPE_ARP:
            arp_input(self.ns, dev, bytes(ethernet.payload(frame)), to_us)
        elif ethertype == ethernet.TYPE_VLAN:
            dev.drop("VLAN_UNSUPPORTED")
        else:
            dev.drop("UNHANDLED_PROTO")

    def ip_input(self, dev: "NetDevice", data, l2_broadcast: bool) -> None:
        """ip_rcv: validate, then deliver locally or forward."""
        try:
            header = Ipv4Packet(data)
        except WireError as error:
            dev.drop(wire_reason(error))
            return
        if not header.checksum_ok():
            dev.drop("IP_CSUM")
            return
        packet = bytes(data[:header.total_length])
        nf_state = None
        if self.ns.netfilter.active:
            packet, nf_state = self.nf_prerouting(dev, packet)
            if packet is None:
                return
        src, dst = packet[IP_SRC], packet[IP_DST]
        if src >= CLASS_D_FIRST or (LOOPBACK_FIRST <= src <= LOOPBACK_LAST and dev is not self.ns.lo):
            self.ns.drop("IP_INVALID_SOURCE")
            return
        if self.ns.is_local_address(dst) or self.ns.is_broadcast_address(dst):
            if self.ns.sim.observer is not None:
                self._hop(dev, "ip_rcv", "delivered", f"local {ip_to_str(dst)} from {ip_to_str(src)}")
            self.local_deliver(dev, packet, l2_broadcast or self.ns.is_broadcast_address(dst), nf_state)
        elif dst >= CLASS_D_FIRST:
            self.ns.drop("MULTICAST_UNSUPPORTED")
        elif not self.ns.ip_forward:
            self.ns.drop("IP_INADDRERRORS")
        elif l2_broadcast:
            self.ns.drop("UNICAST_IN_L2_MULTICAST")
        else:
            if self.ns.sim.observer is not None:
                self._hop(dev, "ip_rcv", "forwarded", f"{ip_to_str(src)} > {ip_to_str(dst)} ip_forward 1")
            self.forward(dev, packet, nf_state)

    # == forwarding =============================================================
    def forward(self, in_dev: "NetDevice", packet: bytes, nf_state: "PacketState | None" = None) -> None:
        """ip_forward; netfilter's FORWARD hook after the TTL decrement and
        the redirect, as NF_HOOK(FORWARD) ends ip_forward."""
        dst = packet[IP_DST]
        route = self.ns.routes.lookup(dst)
        if route is None:
            self._hop(in_dev, "ip_forward", "dropped:IP_INNOROUTES", f"no route to {ip_to_str(dst)}")
            if self.peers.route_error_allow(ipv4.src(packet), self.ns.sim.now_ns):
                self.send_error(packet, icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE)
            self.ns.drop("IP_INNOROUTES")
            return
        ttl = packet[IP_TTL]
        if ttl <= 1:
            self._hop(in_dev, "ip_forward", "dropped:IP_INHDR", f"route {route} ttl {ttl}")
            self.send_error(packet, icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED_IN_TRANSIT)
            self.ns.drop("IP_INHDR")
            return
        mtu = route.dev.mtu
        if len(packet) > mtu and ipv4.dont_fragment(packet) and not gso.fits(self.ns.sim, packet, mtu):
            self._hop(in_dev, "ip_forward", "dropped:PKT_TOO_BIG", f"route {route} mtu {mtu} DF")
            self.send_error(packet, icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED, mtu)
            self.ns.drop("PKT_TOO_BIG")
            return
        buf = bytearray(packet)
        decrement_ttl(buf)
        if route.dev is in_dev and not (nf_state is not None and nf_state.bridge_routed) \
                and self._redirect_wanted(packet):
            self.send_error(bytes(buf), REDIRECT, REDIRECT_HOST,
                            ip_to_int(route.gateway or dst))
        packet = bytes(buf)
        if nf_state is not None:
            packet = self.nf_verdict(route.dev, "FORWARD", packet, buf,
                                      self.ns.netfilter.forward(buf, nf_state, route.dev.name), nf_state)
            if packet is None:
                return
        self.ns.forwarded += 1
        if self.ns.sim.observer is not None:
            self._hop(route.dev, "ip_forward", "forwarded", f"route {route}")
        self.output_on(route.dev, route.gateway or dst, packet, mtu,
                       on_error=self._unreachable_report, nf_state=nf_state)

    def _redirect_wanted(self, packet: bytes) -> bool:
        """ip_route_input_slow's IPSKB_DOREDIRECT: the source is reachable
        without a gateway (fib_validate_source > 0); then ip_rt_send_redirect's
        backoff, kept in the source's inet_peer entry."""
        src = ipv4.src(packet)
        reverse = self.ns.routes.lookup(src)
        if reverse is None or reverse.gateway is not None:
            return False
        return self.peers.redirect_allow(src, self.ns.sim.now_ns)

    # == output =================================================================
    def output_on(self, dev: "NetDevice", nexthop: bytes, packet: bytes, mtu: int,
                  on_error: Callable[[bytes], None] | None = None, confirm: bool = False,
                  process: bool = False, nf_state: "PacketState | None" = None) -> None:
        """ip_output: netfilter's POSTROUTING hook (`nf_state` given: the
        namespace has netfilter), then ip_finish_output: fragment if needed
        (a datagram conntrack reassembled into fragments no larger than its
        largest one), then hand to the neighbour layer.

        From process context (`process`), fragments after the first are sent
        one by one as process work (see `send`)."""
        if nf_state is not None:
            netfilter = self.ns.netfilter
            buf = bytearray(packet)
            result = netfilter.postrouting(buf, nf_state, dev.name, nexthop, self.ns.sim.now_ns)
            packet = self.nf_verdict(dev, "POSTROUTING", packet, buf, result, nf_state)
            if packet is None:
                return
            if dev is self.ns.lo:
                netfilter.loop(packet, nf_state)
            if nf_state.frag_max_size:
                mtu = min(mtu, nf_state.frag_max_size)  # ip_do_fragment keeps the fragments' size
        if len(packet) <= mtu or gso.fits(self.ns.sim, packet, mtu):
            self.neigh_xmit(dev, nexthop, packet, on_error, confirm)
            return
        first, *rest = fragment(packet, mtu)
        if self.ns.sim.observer is not None:
            self._hop(dev, "ip_fragment", "sent", f"{len(packet)} bytes > mtu {mtu}: {1 + len(rest)} fragments")
        self.neigh_xmit(dev, nexthop, first, on_error, confirm)
        for piece in rest:
            if process:
                self.ns.sim.call_process(self.neigh_xmit, dev, nexthop, piece, on_error, confirm)
            else:
                self.neigh_xmit(dev, nexthop, piece, on_error, confirm)

    def neigh_xmit(self, dev: "NetDevice", nexthop: bytes, packet: bytes,
                   on_error: Callable[[bytes], None] | None = None, confirm: bool = False) -> None:
        if not dev.has_l2:
            dev.transmit(packet)
        elif dev is self.ns.lo:
            dev.transmit(ethernet_header(dev.mac, dev.mac, ETHERTYPE_IPV4) + packet)
        elif nexthop == BROADCAST_IP or self.ns.is_broadcast_address(nexthop, dev):
            dev.transmit(ethernet_header(b"\xff" * 6, dev.mac, ETHERTYPE_IPV4) + packet)
        else:
            self.ns.neighbours(dev).output(nexthop, packet, on_error, confirm)

    def path_mtu(self, route: "Route", dst: bytes) -> int:
        mtu = route.dev.mtu
        cached = self.pmtu.get(dst)
        if cached is not None:
            value, expires = cached
            if self.ns.sim.now_ns < expires:
                mtu = min(mtu, value)
                if self.ns.sim.observer is not None:
                    self._hop(route.dev, "pmtu", "sent", f"{ip_to_str(dst)} mtu {value} expires "
                              f"{(expires - self.ns.sim.now_ns) // NS_PER_SECOND}sec")
            else:
                del self.pmtu[dst]
        return mtu

    def next_ident(self) -> int:
        ident = self._ident()
        self._next_ident = (ident + 1) & 0xFFFF
        observer = self.ns.sim.observer
        if observer is not None:
            observer.ident(self, ident)
        return ident

    def reserve_idents(self, count: int) -> int:
        """Consume `count` identifiers at once (sends reproduced in one go);
        returns the first."""
        first = self._ident()
        self._next_ident = (first + count) & 0xFFFF
        return first

    def _ident(self) -> int:
        if self._next_ident is None:
            self.ns.rng  # drawing the stream's first value sets it
        return self._next_ident

    def seed_ident(self, rng: random.Random) -> None:
        """The first IP identifier: the first draw of the namespace's stream."""
        self._next_ident = rng.randrange(0x10000)

    def send(self, dst: bytes, protocol: int, payload: bytes, src: bytes | None = None,
             ttl: int | None = None, tos: int = 0, pmtudisc: str = "want",
             oif: "NetDevice | None" = None, confirm: bool = False,
             process: bool = False, ident: int | None = None, seg_len: int = 0,
             nf_related: "PacketState | None" = None) -> bytes:
        """Send a locally generated datagram; returns the source address used.

        `process` marks a send from an application's system call: its
        fragments after the first then go out one by one in process context,
        each after the previous one's same-instant processing has finished,
        as Linux runs the softirq backlog between them. Sends made while
        processing packets (ICMP, encapsulation) fragment in one go.
        `ident` is the IP id a socket chose (TCP); `seg_len` marks a GSO
        super-packet whose segments are that long (see emu.net.gso): it
        leaves whole when they fit the MTU. `nf_related`: the netfilter state
        of the packet this one answers for netfilter (REJECT's reset).
        Netfilter's OUTPUT hook runs once the packet is built (a DNAT routes
        it again, as ip_route_me_harder); a drop there is EPERM for a
        process, silent for the kernel's own sends.
        Raises SocketError for what the kernel refuses at send time. An
        offload (`Scheduler.offload`, the flow cache) may serve a process
        send itself, with the same effects.
        """
        if process:
            offload = self.ns.sim.offload
            if offload is not None and offload.process_send(self, dst, protocol, payload,
                                                            (src, ttl, tos, pmtudisc, oif, confirm)):
                return src
        route, local = self.ns.route_output(dst, oif)
        if route is None:
            self._hop(oif, "ip_output", "refused:ENETUNREACH", f"no route to {ip_to_str(dst)}")
            raise SocketError("ENETUNREACH")
        if src is None:
            src = self.ns.source_for(route)  # a local destination's route has src = dst
            if src is None:
                self._hop(route.dev, "ip_output", "refused:EADDRNOTAVAIL", f"route {route}")
                raise SocketError("EADDRNOTAVAIL")
        mtu = route.dev.mtu if local else self.path_mtu(route, dst)
        total = 20 + len(payload)
        if total > 0xFFFF:
            raise SocketError("EMSGSIZE", mtu=mtu)
        if pmtudisc == "do" and total > mtu:
            raise SocketError("EMSGSIZE", mtu=mtu)
        if seg_len and pmtudisc == "want" and seg_len > mtu:
            seg_len = 0  # the segments do not fit: an ordinary packet, fragmented
        df = pmtudisc == "do" or (pmtudisc == "want" and (total <= mtu or bool(seg_len)))
        header = ipv4_header(src, dst, protocol, len(payload),
                             self.ns.default_ttl if ttl is None else ttl, tos,
                             self.next_ident() if ident is None else ident, df)
        packet = header + bytes(payload)
        if seg_len and total > mtu:
            gso.mark(self.ns.sim, packet, seg_len)
        if self.ns.sim.observer is not None:
            self._hop(route.dev, "ip_output", "sent",
                      f"route {route} ({ip_to_str(src)} > {ip_to_str(dst)} protocol {protocol})")
        nf_state = None
        if self.ns.netfilter.active:
            hooked = self._nf_local_out(packet, route, oif, nf_related)
            if hooked is None:
                if process:
                    raise SocketError("EPERM")
                return src
            packet, route, local, nf_state = hooked
            dst = ipv4.dst(packet)
            mtu = route.dev.mtu if local else self.path_mtu(route, dst)
        self.ns.sent += 1
        nexthop = dst if local else (route.gateway or dst)
        self.output_on(route.dev, nexthop, packet, mtu, on_error=self._unreachable_report,
                       confirm=confirm, process=process, nf_state=nf_state)
        return src

    # == ICMP errors ============================================================
    def send_error(self, packet: bytes, icmp_type: int, code: int, rest: int = 0,
                   l2_broadcast: bool = False, nf_related: "PacketState | None" = None) -> None:
        """icmp_send: an ICMP error about `packet`, from the address Linux uses
        (`nf_related`: REJECT's error, RELATED to the rejected packet's
        connection even before it is confirmed, as measured live)."""
        if not may_send_error(packet, l2_broadcast):
            return
        if self.ns.sim.observer is not None:
            self._hop(None, "icmp_send", "sent", f"type {icmp_type} code {code} to {ip_to_str(ipv4.src(packet))}")
        orig_src, orig_dst = ipv4.src(packet), ipv4.dst(packet)
        route, local = self.ns.route_output(orig_src, None)
        if route is None:
            self.ns.drop("IP_OUTNOROUTES")
            return
        frag_needed = icmp_type == icmp.DEST_UNREACHABLE and code == icmp.FRAGMENTATION_NEEDED
        # icmpv4_global_allow, then icmpv4_xrlim_allow (which calls
        # icmp_global_consume once the peer allowed it); neither for a packet
        # of our own (it came in on lo) nor for types outside icmp_ratemask.
        if icmp_type in RATEMASK_TYPES and not frag_needed and not local:
            now = self.ns.sim.now_ns
            if not self.icmp_global.allow(now):
                self.ns.drop("ICMP_GLOBAL_RATELIMITED")
                return
            if not self.peers.icmp_allow(orig_src, now):
                self.ns.drop("ICMP_RATELIMITED")
                return
            self.icmp_global.consume()
        saddr = orig_dst if self.ns.is_local_address(orig_dst) else None
        message = build_error(packet, icmp_type, code, rest, route.dev.mtu)
        try:
            self.send(orig_src, PROTO_ICMP, message, src=saddr, tos=error_tos(packet),
                      pmtudisc="dont", nf_related=nf_related)
        except SocketError:
            self.ns.drop("ICMP_ERROR_UNSENDABLE")

    def _unreachable_report(self, packet: bytes) -> None:
        """arp_error_report: neighbour resolution failed for a queued packet."""
        self.send_error(packet, icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE)

    def _reassembly_timeout(self, first_fragment: bytes) -> None:
        self.send_error(first_fragment, icmp.TIME_EXCEEDED, icmp.REASSEMBLY_TIME_EXCEEDED)

    def _nf_reassembly_timeout(self, first_fragment: bytes) -> None:
        """ip_expire for conntrack's queues: only an end host answers
        (frag_expire_skip_icmp unless the destination is local)."""
        if self.ns.is_local_address(ipv4.dst(first_fragment)):
            self._reassembly_timeout(first_fragment)

    # == netfilter ==============================================================
    def nf_prerouting(self, dev: "NetDevice", packet: bytes,
                      bridge_port: "NetDevice | None" = None) -> tuple[bytes | None, "PacketState | None"]:
        """NF_INET_PRE_ROUTING, before the local/forward decision (a DNAT
        changes it). A packet looping back through lo, or passed up by a
        bridge whose br_netfilter already ran the hook, keeps its state (as
        ip_sabotage_in skips the hook). `bridge_port`: br_netfilter hands a
        frame from that port of bridge `dev` (-i is the bridge, --physdev-in
        the port).
        When conntrack runs, nf_defrag_ipv4 first reassembles fragments (a
        fragment waits in its queue, neither dropped nor passed on); the
        datagram remembers its largest fragment for refragmentation."""
        netfilter = self.ns.netfilter
        if bridge_port is None:
            state = netfilter.unloop(packet)
            if state is not None:
                return packet, state
        frag_max_size = 0
        if netfilter.tracking and ipv4.is_fragment(packet):
            whole = self.nf_reassembler.add_sized(packet)
            if whole is None:
                if self.ns.sim.observer is not None:
                    self._hop(bridge_port or dev, "netfilter", "queued",
                              "PREROUTING: nf_defrag_ipv4: fragment queued")
                return None, None
            packet, frag_max_size = whole
        buf = bytearray(packet)
        result, state = netfilter.prerouting(buf, dev.name, self.ns.sim.now_ns,
                                             None if bridge_port is None else bridge_port.name)
        state.frag_max_size = frag_max_size
        return self.nf_verdict(bridge_port or dev, "PREROUTING", packet, buf, result, state), state

    def _nf_local_out(self, packet: bytes, route: "Route", oif: "NetDevice | None",
                      related: "PacketState | None") -> tuple | None:
        """NF_INET_LOCAL_OUT; a changed destination is routed again
        (ip_route_me_harder). Returns (packet, route, local, state) or None."""
        buf = bytearray(packet)
        result, state = self.ns.netfilter.local_out(buf, route.dev.name, self.ns.sim.now_ns, related)
        out = self.nf_verdict(route.dev, "OUTPUT", packet, buf, result, state)
        if out is None:
            return None
        local = self.ns.is_local_address(ipv4.dst(packet))
        if ipv4.dst(out) != ipv4.dst(packet):
            route, local = self.ns.route_output(ipv4.dst(out), oif)
            if route is None:
                self.ns.drop("IP_OUTNOROUTES")
                return None
        return out, route, local, state

    def nf_verdict(self, dev: "NetDevice | None", hook: str, packet: bytes, buf: bytearray,
                    result: "HookResult", state: "PacketState") -> bytes | None:
        """Act on a hook's result: the packet to go on with (`buf`, rewritten
        in place, keeping a super-packet's gso_size), or None when it was
        dropped (a REJECT answers first, as ipt_REJECT does)."""
        if self.ns.sim.observer is not None:
            verdict = "accepted" if result.verdict == "ACCEPT" else "dropped:NETFILTER_DROP"
            self._hop(dev, "netfilter", verdict, f"{hook}: {result.evidence}")
        if result.verdict == "ACCEPT":
            if buf == packet:
                return packet
            rewritten = bytes(buf)
            seg_len = gso.segment_len(self.ns.sim, packet)
            if seg_len:
                gso.mark(self.ns.sim, rewritten, seg_len)
            return rewritten
        if result.verdict == "REJECT":
            self._reject(packet, result.reject_with, state)
        self.ns.drop("NETFILTER_DROP")
        return None

    def _reject(self, packet: bytes, reject_with: str, state: "PacketState") -> None:
        """ipt_REJECT: an ICMP destination unreachable (nf_send_unreach is
        icmp_send), or for tcp-reset the RST nf_send_reset builds: addresses
        and ports swapped, seq from the ACK or else an ACK of the segment,
        window 0, IP id 0, DF, TOS 0, attached to the connection (RELATED)."""
        if reject_with != "tcp-reset":
            self.send_error(packet, icmp.DEST_UNREACHABLE, REJECT_CODES[reject_with], nf_related=state)
            return
        header_len = ipv4.header_length(packet)
        if ipv4.protocol(packet) != PROTO_TCP or ipv4.flags_offset(packet) & ipv4.OFFSET_MASK:
            return
        src, dst = ipv4.src(packet), ipv4.dst(packet)
        try:
            segment = TcpSegment(memoryview(packet)[header_len:])
        except WireError:
            return
        if segment.flags & TCP_RST or not segment.checksum_ok(src, dst):
            return
        reset = reset_for(segment.src_port, segment.dst_port, segment.seq, segment.ack, segment.flags,
                          len(segment.payload))
        try:
            self.send(src, PROTO_TCP, reset.build(b"", dst, src), src=dst, pmtudisc="do", ident=0,
                      nf_related=state)
        except SocketError:
            self.ns.drop("TCP_RESET_UNSENDABLE")

    # == local delivery ========================================================
    def local_deliver(self, dev: "NetDevice", packet: bytes, broadcast: bool,
                      nf_state: "PacketState | None" = None) -> None:
        """ip_local_deliver: reassembly, netfilter's INPUT hook, then the protocol."""
        if packet[IP_FLAGS_OFFSET] not in UNFRAGMENTED:
            whole = self.reassembler.add(packet)
            if whole is None:
                return
            packet = whole
        if nf_state is not None:
            buf = bytearray(packet)
            result = self.ns.netfilter.local_in(buf, nf_state, self.ns.sim.now_ns)
            packet = self.nf_verdict(dev, "INPUT", packet, buf, result, nf_state)
            if packet is None:
                return
        self.ns.delivered += 1
        protocol = packet[IP_PROTOCOL]
        if protocol == PROTO_ICMP:
            self.icmp_input(dev, packet, broadcast)
        elif protocol == PROTO_UDP:
            self.udp_input(dev, packet, broadcast)
        elif protocol == PROTO_TCP and self.tcp is not None and not broadcast:
            self.tcp.input(dev, packet)
        else:
            self.send_error(packet, icmp.DEST_UNREACHABLE, icmp.PROTOCOL_UNREACHABLE,
                            l2_broadcast=broadcast)
            self.ns.drop("IP_NOPROTO")

    def icmp_input(self, dev: "NetDevice", packet: bytes, broadcast: bool) -> None:
        header_len = ipv4.header_length(packet)
        try:
            message = IcmpMessage(packet[header_len:])
        except WireError as error:
            self.ns.drop(wire_reason(error))
            return
        if not message.checksum_ok():
            self.ns.drop("ICMP_CSUM")
            return
        kind = message.type
        if kind == icmp.ECHO_REQUEST:
            if broadcast and self.icmp_echo_ignore_broadcasts:
                self.ns.drop("INVALID_PROTO")
                return
            if self.ns.sim.observer is not None:
                self._hop(dev, "icmp_rcv", "consumed",
                          f"echo request id {message.echo_id} seq {message.echo_seq}: reply")
            self._echo_reply(packet, message)
        elif kind == icmp.ECHO_REPLY:
            handler = self.echo_handlers.get(message.echo_id)
            if handler is None:
                self.ns.drop("NO_SOCKET")
                return
            observer = self.ns.sim.observer
            if observer is not None:
                self._hop(dev, "icmp_rcv", "delivered",
                          f"echo reply id {message.echo_id} seq {message.echo_seq}")
                observer.echo(self, handler, packet, message)
            handler("reply", packet, message)
        elif message.is_error():
            self._icmp_error_input(packet, message)
        else:
            self.ns.drop("ICMP_TYPE_UNHANDLED")

    def _echo_reply(self, packet: bytes, request: IcmpMessage) -> None:
        src = ipv4.dst(packet)
        if not self.ns.is_local_address(src):
            src = None  # the request went to a broadcast address
        reply = IcmpRepr(icmp.ECHO_REPLY, 0, request.rest, bytes(request.payload)).build()
        try:
            self.send(ipv4.src(packet), PROTO_ICMP, reply, src=src, tos=ipv4.tos(packet),
                      pmtudisc="dont")
        except SocketError:
            self.ns.drop("ICMP_REPLY_UNSENDABLE")

    def _icmp_error_input(self, packet: bytes, message: IcmpMessage) -> None:
        try:
            quoted = Ipv4Packet(message.payload, allow_truncated=True)
        except WireError:
            self.ns.drop("PKT_TOO_SMALL")
            return
        if (message.type == icmp.DEST_UNREACHABLE and message.code == icmp.FRAGMENTATION_NEEDED
                and self.ns.is_local_address(quoted.src)):
            self.learn_pmtu(quoted.dst, message.next_hop_mtu)
        if (quoted.protocol == PROTO_UDP and not quoted.frag_offset and len(quoted.payload) >= 4
                and self.ns.is_local_address(quoted.src)):
            sport, dport = udp.ports(quoted.payload)
            sock = self.udp_socket_for((quoted.src, sport), (quoted.dst, dport))
            if sock is not None:
                self._hop(None, "udp_rcv", "error", f"icmp type {message.type} code {message.code} "
                          f"to the socket of {ip_to_str(quoted.src)}:{sport}")
                sock.icmp_error(message.type, message.code)
                return
        if (quoted.protocol == PROTO_TCP and self.tcp is not None
                and self.tcp.icmp_error(bytes(message.payload), message.type, message.code)):
            return
        if quoted.protocol == PROTO_ICMP and len(quoted.payload) >= 8:
            inner = IcmpMessage(quoted.payload)
            if inner.type == icmp.ECHO_REQUEST:
                handler = self.echo_handlers.get(inner.echo_id)
                if handler is not None:
                    self._hop(None, "icmp_rcv", "delivered", f"icmp type {message.type} code {message.code}")
                    handler("error", packet, message)
                    return
        self.ns.drop("NO_SOCKET")

    def udp_socket_for(self, local: tuple[bytes, int], remote: tuple[bytes, int]):
        """__udp4_lib_lookup: the socket bound to the local address (else to
        any address) on the port, if it takes datagrams from `remote`."""
        for key in (local, (None, local[1])):
            sock = self.udp_sockets.get(key)
            if sock is not None and sock.accepts(remote):
                return sock
        return None

    def learn_pmtu(self, dst: bytes, mtu: int) -> None:
        """Record a path MTU from ICMP fragmentation needed (min 552, 10 min)."""
        route = self.ns.routes.lookup(dst)
        if route is None or mtu >= route.dev.mtu or mtu < 68:
            return
        self.pmtu[dst] = (max(mtu, MIN_PMTU), self.ns.sim.now_ns + PMTU_EXPIRES_NS)
        self.ns.changed()

    def udp_input(self, dev: "NetDevice", packet: bytes, broadcast: bool) -> None:
        header_len = ipv4.header_length(packet)
        src, dst = packet[IP_SRC], packet[IP_DST]
        try:
            datagram = UdpDatagram(packet[header_len:])
        except WireError as error:
            self.ns.drop(wire_reason(error))
            return
        if not datagram.checksum_ok(src, dst):
            self.ns.drop("UDP_CSUM")
            return
        port = datagram.dst_port
        sock = self.udp_socket_for((dst, port), (src, datagram.src_port))
        if sock is None:
            self.send_error(packet, icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE,
                            l2_broadcast=broadcast)
            self.ns.drop("NO_SOCKET")
            return
        if self.ns.sim.observer is not None:
            self._hop(dev, "udp_rcv", "delivered",
                      f"{ip_to_str(dst)}:{port} from {ip_to_str(src)}:{datagram.src_port}")
        sock.deliver(bytes(datagram.payload), (src, datagram.src_port), packet, dev)
