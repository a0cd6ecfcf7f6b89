"""The one seam between the network model and whoever watches it.

Why: the stack, devices, bridge, neighbours and sockets must read as a plain
model of Linux, yet two upper layers need to follow a packet through them:
a tracer (`emu trace`: one line per hop, with the decision and its evidence)
and the flow cache (record a walk once, replay it). Both hear
the same events through this interface; emu.net knows neither of them.

Where: the simulation's `Scheduler.observer` (None by default). A hook site
costs one attribute check when nobody listens:

    obs = self.sim.observer
    if obs is not None:
        obs.hop(ns, dev, "ip_forward", "forwarded", f"route {route}")

`Observer` does nothing in every method; an observer overrides what it
needs. `attach` / `detach` let several observers listen at once (a `Fanout`
calls each in order). This module imports nothing, so any module of emu.net
may import it without a circle.

Events (names and arguments are stable; new ones may be added):

- ``frame(dev, frame, outgoing)``: `frame` is shown to `dev`'s taps,
  exactly what tcpdump on that device sees, in order (bytes or a buffer;
  copy it to keep); `outgoing` when the device sends it (PACKET_OUTGOING).
- ``hop(ns, dev, stage, verdict, evidence)``: one stage of the kernel took a
  decision about the packet in hand. `ns` is the Namespace, `dev` the device
  it concerns (or None), `stage` one of STAGES, `verdict` one of
  "forwarded", "delivered", "flooded", "sent", "queued", "consumed", "checked", "error",
  "accepted" (a netfilter hook let the packet go on) or
  "dropped:REASON" (REASON as in stats.json), `evidence` a string in
  iproute2's words (``route 10.244.2.0/24 via 10.244.2.0 dev flannel.1
  onlink``, ``fdb 0a:58:0a:f4:02:02 dev flannel.1 dst 172.18.0.12 self
  permanent``, ``flood: unknown unicast``).
- ``drop(ns, dev, reason)``: a counted drop (`dev` None for a stack drop).
  Every drop is counted where it happens, so this comes with or without a
  hop event.
- ``ident(stack, ident)``: the IPv4 stack of a namespace handed out an IP
  identifier.
- ``fdb_learn(fdb, mac, port)``, ``fdb_lookup(fdb, mac, found)``: a bridge
  FDB was taught `mac` on `port` / asked for `mac`.
- ``neigh_use(table, neighbour, confirm)``: a packet goes out through a
  neighbour entry (None: there was none yet); `confirm` is MSG_CONFIRM.
- ``deliver(sock, data, source, packet, dev)`` then ``delivered(sock)``:
  a datagram is handed to a socket (around the socket's own handling, which
  may itself send: a userspace proxy).
- ``echo(stack, handler, packet, message)``: an ICMP echo reply or error is
  handed to a ping process's handler (the end of a ping's walk).

Stages (Linux's function or subsystem names): see STAGES.
"""

STAGES = (
    "bridge",        # br_handle_frame_finish / br_dev_xmit: learn, look up, forward/flood/up
    "ip_rcv",        # ip_rcv: header checks, then local / forward / drop
    "ip_forward",    # ip_forward: route, TTL, MTU, redirect
    "ip_output",     # ip_queue_xmit for a local send: route and source chosen
    "ip_fragment",   # ip_fragment: the packet leaves in several fragments
    "pmtu",          # a learned path MTU applies to a local send
    "neigh",         # neigh_output / neigh_resolve_output
    "arp_rcv",       # arp_process
    "icmp_rcv",      # icmp_rcv: echo request answered, reply or error handed to ping
    "icmp_send",     # icmp_send: an ICMP error is generated
    "udp_rcv",       # udp_rcv: demultiplexed to a socket
    "vxlan_xmit",    # vxlan_xmit: FDB lookup, encapsulation
    "vxlan_rcv",     # vxlan_rcv: VNI demultiplexing, decapsulation
    "tun",           # a TUN device handed a packet to its program / got one written
    "flanneld",      # flanneld's udp-backend proxy (above emu.net)
    "fault",         # an injected fault (emu.net.fault) looked at the frame
    "netfilter",     # an NF_HOOK: conntrack, nat and filter chains (evidence: hook, rule, NAT)
)


class Observer:
    """Hears what the network model does. Every method does nothing."""

    def frame(self, dev, frame, outgoing: bool) -> None:
        pass

    def hop(self, ns, dev, stage: str, verdict: str, evidence: str) -> None:
        pass

    def drop(self, ns, dev, reason: str) -> None:
        pass

    def ident(self, stack, ident: int) -> None:
        pass

    def fdb_learn(self, fdb, mac: bytes, port) -> None:
        pass

    def fdb_lookup(self, fdb, mac: bytes, found: bool) -> None:
        pass

    def neigh_use(self, table, neighbour, confirm: bool) -> None:
        pass

    def deliver(self, sock, data: bytes, source: tuple, packet: bytes, dev) -> None:
        pass

    def delivered(self, sock) -> None:
        pass

    def echo(self, stack, handler, packet: bytes, message) -> None:
        pass


EVENTS = tuple(name for name in vars(Observer) if not name.startswith("_"))


class Fanout(Observer):
    """Several observers listening at once, called in the order attached."""

    def __init__(self, observers: list) -> None:
        self.observers = observers


def _fan(name: str):
    def call(self, *args) -> None:
        for observer in self.observers:
            getattr(observer, name)(*args)
    call.__name__ = name
    return call


for _name in EVENTS:
    setattr(Fanout, _name, _fan(_name))


def attach(sim, observer) -> None:
    """Start `observer` listening to simulation `sim` (next to any other)."""
    current = sim.observer
    if current is None:
        sim.observer = observer
    elif isinstance(current, Fanout):
        current.observers.append(observer)
    else:
        sim.observer = Fanout([current, observer])


def detach(sim, observer) -> None:
    """Stop `observer` listening to `sim` (no effect if it was not)."""
    current = sim.observer
    if current is observer:
        sim.observer = None
    elif isinstance(current, Fanout) and observer in current.observers:
        current.observers.remove(observer)
        if len(current.observers) == 1:
            sim.observer = current.observers[0]
