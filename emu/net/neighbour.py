"""Neighbour tables and ARP, following Linux's NUD state machine.

Per device, like Linux. The states and timers mirror net/core/neighbour.c
with the default ARP parameters: a first packet to an unknown neighbour is
queued while INCOMPLETE and a broadcast request goes out at once, then every
`retrans` (1 s) up to `mcast_solicit` (3) requests before FAILED (queued
packets then get ICMP host unreachable). A reply makes the entry REACHABLE
for a random time in [base/2, 3*base/2) (base 30 s, from the namespace's
seeded generator); after that it is STALE, a STALE entry that is used goes to
DELAY, and after `delay_first_probe` (5 s) without confirmation to PROBE,
which sends up to `ucast_solicit` (3) unicast requests. A request addressed
to us teaches us its sender (STALE), which is why the reply to a first ping
needs no ARP of its own. PERMANENT entries (flannel's VTEP neighbours) never
change.

Only the slow output path marks an entry used (Linux's neigh_event_send_probe,
reached from neigh_resolve_output): a REACHABLE entry is sent through by
neigh_output's cached-header fast path, which leaves `used` alone. So when a
REACHABLE entry times out, traffic since the last confirmation does not
count: the entry goes STALE, and only the next packet starts DELAY (5 s to
the unicast probe). The reachable time itself is random on Linux, so runs
long enough to reach it are compared on the kernel only where it does not
change the frames. Timers fire when the kernel's timer wheel gets to them
(emu.sim.timer_wheel): a little after their nominal time, as on Linux.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable

from emu.net.drops import wire_reason
from emu.sim import NS_PER_SECOND, Event
from emu.sim.timer_wheel import fire_time_ns
import emu.wire.ipv4 as ipv4
from emu.wire.addr import (BROADCAST_MAC, ZERO_MAC, ip_to_str, ipv4_is_class_d_or_e, ipv4_is_loopback,
                           is_multicast_mac, mac_to_str)
from emu.wire.arp import OP_REPLY, OP_REQUEST, ArpRepr
from emu.wire.ethernet import ETHERTYPE_ARP, ethernet_header

if TYPE_CHECKING:
    from emu.net.device import NetDevice
    from emu.net.namespace import Namespace


class Nud(Enum):
    INCOMPLETE = "INCOMPLETE"
    REACHABLE = "REACHABLE"
    STALE = "STALE"
    DELAY = "DELAY"
    PROBE = "PROBE"
    FAILED = "FAILED"
    PERMANENT = "PERMANENT"


VALID = {Nud.REACHABLE, Nud.STALE, Nud.DELAY, Nud.PROBE, Nud.PERMANENT}
CONNECTED = {Nud.REACHABLE, Nud.PERMANENT}


@dataclass
class NeighbourParams:
    """Linux defaults of /proc/sys/net/ipv4/neigh/default/*."""

    base_reachable_ns: int = 30 * NS_PER_SECOND
    retrans_ns: int = 1 * NS_PER_SECOND
    delay_first_probe_ns: int = 5 * NS_PER_SECOND
    mcast_solicit: int = 3
    ucast_solicit: int = 3
    locktime_ns: int = 1 * NS_PER_SECOND
    unres_qlen_bytes: int = 212992


@dataclass(slots=True)
class Neighbour:
    ip: bytes
    mac: bytes | None
    state: Nud
    updated_ns: int = 0
    confirmed_ns: int = 0
    used_ns: int = 0
    probes: int = 0
    queue: list[tuple[bytes, Callable[[], None] | None]] = field(default_factory=list)
    timer: Event | None = None

    def note_use(self, now_ns: int, confirm: bool) -> None:
        """What sending one packet through this entry records, before the
        state machine looks at it: `used` only while the entry is not
        connected (neigh_event_send_probe is on neigh_resolve_output's path;
        neigh_output sends REACHABLE and PERMANENT entries without it), and
        `confirmed` for a MSG_CONFIRM send (dst_confirm_neigh)."""
        if self.state not in CONNECTED:
            self.used_ns = now_ns
        if confirm and self.state in VALID and self.state is not Nud.PERMANENT:
            self.confirmed_ns = now_ns


_PERMANENT_ENTRIES = "neighbour.permanent"  # Scheduler.services key


def _permanent_entry(sim, ip: bytes, mac: bytes, now_ns: int) -> Neighbour:
    """The PERMANENT entry for `ip` -> `mac` made at `now_ns`, one per
    simulation, shared by every table that adds it then.

    Why: flannel's vxlan backend gives every node a permanent neighbour per
    remote node (25 million entries at 5,000 nodes), and a PERMANENT entry
    never changes: it has no timer and no queue, `learn` leaves it alone and
    `note_use` records nothing for it, so equal ones can be one object.
    """
    entries = sim.services.setdefault(_PERMANENT_ENTRIES, {})
    key = (ip, mac, now_ns)
    entry = entries.get(key)
    if entry is None:
        entry = entries[key] = Neighbour(ip, mac, Nud.PERMANENT, now_ns, now_ns)
    return entry


# Callback used when a queued packet can never be sent (resolution failed).
ErrorReport = Callable[[bytes], None]


class NeighbourTable:
    """The ARP table of one device in one namespace."""

    def __init__(self, namespace: "Namespace", dev: "NetDevice",
                 params: NeighbourParams | None = None) -> None:
        self.ns = namespace
        self.dev = dev
        self.params = params or NeighbourParams()
        self.entries: dict[bytes, Neighbour] = {}
        self.reachable_ns = self._random_reachable()
        # Bumped on every entry created, removed or changing state or address.
        self.generation = 0

    # -- helpers --------------------------------------------------------------
    @property
    def now(self) -> int:
        return self.ns.sim.now_ns

    def _random_reachable(self) -> int:
        base = self.params.base_reachable_ns
        return self.ns.rng.randrange(base) + base // 2

    def _set_timer(self, n: Neighbour, at_ns: int) -> None:
        """mod_timer: the timer runs when the kernel's timer wheel gets to it.
        It is housekeeping while firing it cannot send anything (see
        `_timer_is_quiet`), so an idle cluster settles."""
        if n.timer is not None:
            n.timer.cancel()
        fire_ns = fire_time_ns(self.now, at_ns)
        n.timer = self.ns.sim.call_housekeeping_at(fire_ns, self._timer, n,
                                                   quiet_if=lambda: self._timer_is_quiet(n, fire_ns))

    def _timer_is_quiet(self, n: Neighbour, fire_ns: int) -> bool:
        """Whether `_timer` firing at `fire_ns` can only change the entry's
        state, never send an ARP request or fail queued packets: a REACHABLE
        entry that will go STALE (not used within delay_first_probe of its
        expiry, which is at least `fire_ns` and its reachable time), a DELAY
        entry confirmed recently enough to go back to REACHABLE, or an entry
        that is gone or has no timer work. INCOMPLETE and PROBE send."""
        if self.entries.get(n.ip) is not n:
            return True
        delay = self.params.delay_first_probe_ns
        if n.state is Nud.REACHABLE:
            return max(fire_ns, n.confirmed_ns + self.reachable_ns) > n.used_ns + delay
        if n.state is Nud.DELAY:
            return fire_ns <= n.confirmed_ns + delay
        return n.state not in (Nud.INCOMPLETE, Nud.PROBE)

    def _cancel_timer(self, n: Neighbour) -> None:
        if n.timer is not None:
            n.timer.cancel()
            n.timer = None

    def _changed(self) -> None:
        self.generation += 1

    def _new_entry(self, ip: bytes, state: Nud) -> Neighbour:
        """neigh_alloc: a new entry is used now and counts as confirmed
        2 * base_reachable_time ago, so an entry that was never confirmed
        cannot pass the "confirmed recently" checks of the DELAY state (with
        a zero default, an entry created near time 0 went DELAY -> REACHABLE
        without any probe)."""
        now = self.now
        return Neighbour(ip, None, state, now, confirmed_ns=now - 2 * self.params.base_reachable_ns,
                         used_ns=now)

    # -- configuration ------------------------------------------------------
    def add_permanent(self, ip: bytes, mac: bytes) -> None:
        """`ip neigh replace IP lladdr MAC dev DEV nud permanent`."""
        old = self.entries.get(ip)
        if old is not None:
            self._cancel_timer(old)
        self.entries[ip] = _permanent_entry(self.ns.sim, ip, mac, self.now)
        self._changed()
        if old is not None and old.queue:
            self._flush_queue(self.entries[ip], old.queue)

    def remove(self, ip: bytes) -> None:
        n = self.entries.pop(ip, None)
        if n is not None:
            self._cancel_timer(n)
            self._changed()

    def show(self) -> list[str]:
        """Lines like `ip neigh show dev DEV`."""
        return [self.describe(self.entries[ip]) for ip in sorted(self.entries)]

    def lookup(self, ip: bytes) -> Neighbour | None:
        return self.entries.get(ip)

    # -- output ---------------------------------------------------------------
    def output(self, nexthop: bytes, packet: bytes, on_error: ErrorReport | None = None,
               confirm: bool = False) -> None:
        """Send an IPv4 packet to `nexthop` on our device, resolving it first.

        `on_error(packet)` is called if resolution fails; `confirm` is the
        MSG_CONFIRM hint a sender gives when it knows the path works.
        """
        n = self.entries.get(nexthop)
        now = self.now
        observer = self.ns.sim.observer
        if observer is not None:
            observer.neigh_use(self, n, confirm)
        if n is None:
            n = self._new_entry(nexthop, Nud.INCOMPLETE)
            self.entries[nexthop] = n
            self._changed()
            self._hop(observer, n, "queued")
            self._start_resolution(n, packet, on_error)
            return
        n.note_use(now, confirm)
        state = n.state
        if state is Nud.INCOMPLETE:
            self._hop(observer, n, "queued")
            self._enqueue(n, packet, on_error)
        elif state is Nud.FAILED:
            n.state = Nud.INCOMPLETE
            n.updated_ns = now
            self._changed()
            self._hop(observer, n, "queued")
            self._start_resolution(n, packet, on_error)
        else:
            if state is Nud.STALE:
                n.state = Nud.DELAY
                n.updated_ns = now
                self._changed()
                self._set_timer(n, now + self.params.delay_first_probe_ns)
            self._hop(observer, n, "sent")
            self._send_packet(n.mac, packet)

    def _hop(self, observer, n: Neighbour, verdict: str) -> None:
        if observer is not None:
            observer.hop(self.ns, self.dev, "neigh", verdict, self.describe(n))

    def describe(self, n: Neighbour) -> str:
        """The entry as `ip neigh show` prints it."""
        mac = f" lladdr {mac_to_str(n.mac)}" if n.mac is not None and n.state is not Nud.INCOMPLETE else ""
        return f"{ip_to_str(n.ip)} dev {self.dev.name}{mac} {n.state.value}"

    def _start_resolution(self, n: Neighbour, packet: bytes, on_error: ErrorReport | None) -> None:
        n.probes = self.params.ucast_solicit
        self._enqueue(n, packet, on_error)
        self._set_timer(n, self.now + self.params.retrans_ns)
        self._solicit(n, packet)

    def _enqueue(self, n: Neighbour, packet: bytes, on_error: ErrorReport | None) -> None:
        n.queue.append((packet, on_error))
        while sum(len(p) for p, _ in n.queue) > self.params.unres_qlen_bytes:
            n.queue.pop(0)
            self.dev.drop("NEIGH_QUEUEFULL")

    def _send_packet(self, mac: bytes, packet: bytes) -> None:
        self.dev.transmit(ethernet_header(mac, self.dev.mac, 0x0800) + packet)

    def _flush_queue(self, n: Neighbour, queue: list) -> None:
        for packet, _ in queue:
            self._send_packet(n.mac, packet)

    # -- ARP requests -------------------------------------------------------
    def _solicit(self, n: Neighbour, packet: bytes | None) -> None:
        """arp_solicit: broadcast while unresolved, unicast when probing."""
        n.probes += 1
        saddr = None
        if packet is not None and len(packet) >= ipv4.MIN_HEADER_LEN:
            candidate = ipv4.src(packet)
            if self.ns.is_local_address(candidate):
                saddr = candidate
        if saddr is None:
            saddr = self.ns.select_source(self.dev, n.ip, link_scope=True) or bytes(4)
        unicast = n.state is Nud.PROBE and n.mac is not None
        dst_mac = n.mac if unicast else BROADCAST_MAC
        arp = ArpRepr(OP_REQUEST, self.dev.mac, saddr, ZERO_MAC, n.ip).build()
        self.dev.transmit(ethernet_header(dst_mac, self.dev.mac, ETHERTYPE_ARP) + arp)

    def _max_probes(self, n: Neighbour) -> int:
        if n.state is Nud.PROBE:
            return self.params.ucast_solicit
        return self.params.ucast_solicit + self.params.mcast_solicit

    def _timer(self, n: Neighbour) -> None:
        """neigh_timer_handler."""
        n.timer = None
        if self.entries.get(n.ip) is not n:
            return
        now = self.now
        p = self.params
        if n.state is Nud.REACHABLE:
            if now < n.confirmed_ns + self.reachable_ns:
                self._set_timer(n, n.confirmed_ns + self.reachable_ns)
            elif now <= n.used_ns + p.delay_first_probe_ns:
                n.state, n.updated_ns = Nud.DELAY, now
                self._changed()
                self._set_timer(n, now + p.delay_first_probe_ns)
            else:
                n.state, n.updated_ns = Nud.STALE, now
                self._changed()
            return
        if n.state is Nud.DELAY:
            if now <= n.confirmed_ns + p.delay_first_probe_ns:
                n.state, n.updated_ns = Nud.REACHABLE, now
                self._changed()
                self._set_timer(n, n.confirmed_ns + self.reachable_ns)
                return
            n.state, n.updated_ns, n.probes = Nud.PROBE, now, 0
            self._changed()
        if n.state in (Nud.INCOMPLETE, Nud.PROBE):
            if n.probes >= self._max_probes(n):
                self._fail(n)
                return
            self._set_timer(n, now + p.retrans_ns)
            self._solicit(n, n.queue[0][0] if n.queue else None)

    def _fail(self, n: Neighbour) -> None:
        n.state = Nud.FAILED
        n.updated_ns = self.now
        self._changed()
        queue, n.queue = n.queue, []
        for packet, on_error in queue:
            self.dev.drop("NEIGH_FAILED")
            if on_error is not None:
                on_error(packet)

    # -- ARP input ------------------------------------------------------------
    def learn(self, ip: bytes, mac: bytes, reachable: bool, create: bool, override: bool) -> None:
        """__neigh_update with the flags arp_process uses. As there, the timer
        and `updated` change only with the state or the address: an update
        that leaves a REACHABLE entry as it is (a request from the neighbour,
        which would make it STALE) does not restart its reachable time."""
        now = self.now
        n = self.entries.get(ip)
        if n is None:
            if not create:
                return
            n = self._new_entry(ip, Nud.FAILED)
            self.entries[ip] = n
        old = n.state
        if old is Nud.PERMANENT:
            return
        new_state = Nud.REACHABLE if reachable else Nud.STALE
        if new_state is Nud.REACHABLE:
            n.confirmed_ns = now  # even when the address check below refuses the update
        if old in VALID:
            if n.mac != mac and not override:
                return
            if n.mac == mac and new_state is Nud.STALE:
                new_state = old
        mac_changed = n.mac != mac
        if new_state is old and not mac_changed:
            return
        n.updated_ns = now
        if new_state is not old:
            n.state = new_state
            if new_state is Nud.REACHABLE:
                self._set_timer(n, now + self.reachable_ns)
            else:
                self._cancel_timer(n)
        if mac_changed:
            n.mac = mac
            if new_state is not Nud.REACHABLE:
                n.confirmed_ns = now - 2 * self.params.base_reachable_ns
        self._changed()
        if old not in VALID and n.queue:
            queue, n.queue = n.queue, []
            self._flush_queue(n, queue)


def arp_input(ns: "Namespace", dev: "NetDevice", payload: bytes, to_us: bool) -> None:
    """arp_process for one received ARP packet (Ethernet/IPv4 only).

    `to_us` is true when the frame was unicast to our MAC (PACKET_HOST).
    """
    try:
        arp = ArpRepr.parse(payload)
    except ValueError as error:
        dev.drop(wire_reason(error))
        return
    if arp.htype != 1 or arp.ptype != 0x0800:
        dev.drop("ARP_UNSUPPORTED_TYPE")
        return
    if arp.op not in (OP_REQUEST, OP_REPLY):
        dev.drop("ARP_UNKNOWN_OP")
        return
    if ipv4_is_class_d_or_e(arp.tpa) or ipv4_is_loopback(arp.tpa) or ipv4_is_class_d_or_e(arp.spa):
        dev.drop("ARP_BAD_ADDRESS")
        return
    if is_multicast_mac(arp.sha):
        dev.drop("ARP_BAD_SENDER_MAC")
        return
    table = ns.neighbours(dev)
    if arp.op == OP_REQUEST and arp.spa == bytes(4):
        # Duplicate address detection probe: answer if the target is ours.
        if ns.is_local_address(arp.tpa):
            _send_reply(dev, arp)
        return
    if arp.op == OP_REQUEST and ns.is_local_address(arp.tpa):
        table.learn(arp.spa, arp.sha, reachable=False, create=True, override=True)
        _send_reply(dev, arp)
        return
    n = table.lookup(arp.spa)
    if n is None:
        return
    reachable = arp.op == OP_REPLY and to_us
    override = ns.sim.now_ns > n.updated_ns + table.params.locktime_ns or n.state is Nud.INCOMPLETE
    table.learn(arp.spa, arp.sha, reachable=reachable, create=False, override=override)


def _send_reply(dev: "NetDevice", request: ArpRepr) -> None:
    reply = ArpRepr(OP_REPLY, dev.mac, request.tpa, request.sha, request.spa).build()
    dev.transmit(ethernet_header(request.sha, dev.mac, ETHERTYPE_ARP) + reply)
