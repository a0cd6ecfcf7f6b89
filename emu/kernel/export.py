"""Export a scenario to real Linux network namespaces, as a bash script.

The script builds exactly the cluster the emulator models, so the kernel can
be held against the emulator on any scenario: the underlay switch, the
nodes, the CNI bridge and veths, flannel's device, leases and per-node
entries. Every value that the emulator decides at run time (leased subnets,
VTEP MACs, pod IPs and MACs, MTUs) is read from the emulated cluster built
by ``build_cluster``, never derived a second time, so the two can only
differ where the packet paths differ.

Namespaces are ``<prefix><name>`` (``ul`` is the switch); capture files keep
the plain ``<name>_<ifname>.pcap`` names of the emulator's. IPv6 is off in
every namespace before any device exists, so no router or neighbour
solicitation, MLD report or DAD probe appears on a wire. One more sender of
unsolicited frames remains in IPv4: a bridge with multicast snooping (the
default, so every cni0) joins the all-snoopers group 224.0.0.106 when it
comes up and sends IGMPv3 reports for it during its first seconds; the
sysctl igmp_link_local_mcast_reports=0 silences reports for 224.0.0.0/24
groups, so, as in the kernel reference captures (taken once the cluster
had settled), only the scenario's own traffic appears. Nothing else is
sent unprompted: no gratuitous ARP (arp_notify is off), no IGMP for the
all-hosts group, no STP (off on a new bridge).

A device in a new namespace takes its ARP parameters from the host's
defaults (net.ipv4.neigh.default of the initial namespace), so every device
gets the emulator's own values (``NeighbourParams``) written explicitly:
a host with tuned neighbour timers still replays a long scenario's probes
like the emulator. What stays random on Linux is the reachable time drawn
within [base/2, 3*base/2) and the timer wheel's slack.

Cluster events (``add-node`` / ``remove-node``) become one bash function
each (``event_1``, ``event_2``, ... in time order), run by the caller at the
event's time: the emulator applies the events one by one, and each
function does what changed, read from the emulated state before and after
the event: a joining node's namespaces, devices, pods and full set of
remote leases; on every other node the entries flanneld adds or removes
for the leases that came or went (its udp proxy restarted with the new
route table: the real one learns routes while running, this one only at
start); a leaving node's namespaces deleted with everything in them.
"""

from __future__ import annotations

import itertools
import re
import secrets
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from emu.flannel.host_gw import HostGwBackend
from emu.flannel.udp_backend import UdpBackend
from emu.flannel.vxlan_backend import VxlanBackend
from emu.k8s.cluster import UNDERLAY_NAMESPACE, Node
from emu.net import Namespace
from emu.net.neighbour import NeighbourParams
from emu.net.tcp_params import TcpSysctls
from emu.scenario.build import EmulatedCluster, add_node_later, build_cluster, remove_node_later
from emu.scenario.errors import ScenarioError
from emu.scenario.model import EventSpec, Scenario
from emu.sim import NS_PER_SECOND, seconds
from emu.wire.addr import mac_to_str

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,23}")
READY_TIMEOUT_S = 10


def default_prefix() -> str:
    """A fresh prefix (`emu<hex>-`), so that runs never share a namespace."""
    return f"emu{secrets.token_hex(3)}-"


def check_prefix(prefix: str) -> str:
    """The prefix, or a ValueError saying what a prefix may be."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"--prefix {prefix!r}: expected 1-24 characters of A-Z a-z 0-9 _ . - "
                         "starting with a letter or digit")
    return prefix


@dataclass
class ExportedEvent:
    """One cluster event of the script: bash function `function`, to run
    `at` seconds into the traffic. ``removed``: the namespaces it deletes (a
    runner stops capturing them first: an open capture socket would keep a
    deleted namespace, and its devices, alive); ``added``: the capture points
    it creates, as ``NetnsExport.interfaces``; ``hosts``: node and pod names
    -> addresses once it has run."""

    at: float
    function: str
    removed: list[str]
    added: dict[str, list[str]]
    hosts: dict[str, str]


@dataclass
class NetnsExport:
    """The script plus what a runner needs to know about the namespaces.

    ``namespaces``: every namespace the script may create (logical names,
    the switch first, then the cluster at time 0, then those of events);
    ``interfaces``: the capture points at time 0, per node or pod
    namespace the devices the emulator captures, lo included; ``hosts``:
    node and pod names -> addresses at time 0; ``events``: the event
    functions in time order.
    """

    prefix: str
    script: str
    namespaces: list[str]
    interfaces: dict[str, list[str]]
    hosts: dict[str, str] = field(default_factory=dict)
    events: list[ExportedEvent] = field(default_factory=list)
    # nodes whose namespace gets iptables rules (at time 0 or by an event)
    netfilter_nodes: list[str] = field(default_factory=list)


class _Shell(str):
    """A word written into the script as is (not quoted): a namespace reference."""


def _netns(name: str) -> _Shell:
    """The real name of logical namespace `name`, as a shell word."""
    return _Shell(f'"${{P}}{name}"')


def _words(words: tuple[object, ...]) -> str:
    return " ".join(w if isinstance(w, _Shell) else shlex.quote(str(w)) for w in words)


class _Script:
    """Lines of bash, with `ip -n` and `ip netns exec` written for a logical namespace."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str) -> None:
        self.lines.append(f"    # {text}")

    def line(self, text: str) -> None:
        self.lines.append(f"    {text}")

    def ip(self, ns: str, *words: object) -> None:
        self.line(f"ip -n {_netns(ns)} {_words(words)}")

    def exec(self, ns: str, *words: object) -> None:
        self.line(f"ip netns exec {_netns(ns)} {_words(words)}")


def export_netns(scenario: Scenario, prefix: str | None = None) -> NetnsExport:
    """The bash script (``up`` / ``down`` / one function per event) that
    builds `scenario` in namespaces.

    Raises ScenarioError for run-time errors of the scenario itself.
    """
    prefix = check_prefix(prefix) if prefix is not None else default_prefix()
    emulated = build_cluster(scenario)
    cluster = emulated.cluster
    nodes = list(cluster.nodes.values())
    switch_ports = itertools.count()  # ul0, ul1, ...: one per node ever added
    namespaces = [UNDERLAY_NAMESPACE] + [ns.name for ns in cluster.namespaces()]
    interfaces = _interfaces(nodes)

    body = _Script()
    body.comment("namespaces: IPv6 and link-local IGMP reports off before any device exists")
    for name in namespaces:
        _namespace(body, name)
    body.comment(f"the underlay switch ({scenario.underlay.subnet}, MTU {scenario.underlay.mtu})")
    switch = cluster.switch
    body.ip(UNDERLAY_NAMESPACE, "link", "add", switch.name, "address", mac_to_str(switch.mac), "mtu",
            switch.mtu, "type", "bridge")
    body.ip(UNDERLAY_NAMESPACE, "link", "set", switch.name, "up")
    for node in nodes:
        _node(body, emulated, node, f"ul{next(switch_ports)}")
    for node in nodes:
        _remotes(body, emulated, node)
    for node in nodes:
        _netfilter(body, emulated, node)
    _wait_ready(body, emulated, nodes)
    _all_neighbour_params(body, emulated, nodes)
    _faults(body, scenario)
    hosts = _hosts(emulated)

    events: list[ExportedEvent] = []
    functions: list[tuple[str, _Script]] = []
    for number, event in enumerate(scenario.events, start=1):
        function = _Script()
        exported = _event(function, emulated, event, f"event_{number}", switch_ports)
        namespaces.extend(ns for ns in exported.added if ns not in namespaces)
        events.append(exported)
        functions.append((exported.function, function))
    script = _render(scenario, prefix, namespaces, body, functions)
    return NetnsExport(prefix, script, namespaces, interfaces, hosts, events, list(emulated.iptables))


def _interfaces(nodes: list[Node]) -> dict[str, list[str]]:
    """The capture points of `nodes` and their pods: every device, lo included."""
    return {ns.name: list(ns.devices) for node in nodes for ns in _namespaces_of(node)}


def _namespaces_of(node: Node) -> list[Namespace]:
    return [node.ns] + [pod.ns for pod in node.pods.values()]


def _hosts(emulated: EmulatedCluster) -> dict[str, str]:
    """Node and pod names -> addresses, as the emulated cluster has them now."""
    cluster = emulated.cluster
    hosts = {name: str(node.ip) for name, node in cluster.nodes.items()}
    hosts.update({name: str(pod.ip) for name, pod in cluster.pods.items()})
    hosts.update({service.name: str(service.cluster_ip) for service in emulated.scenario.netfilter.services})
    return hosts


def _namespace(body: _Script, name: str) -> None:
    body.line(f"ip netns add {_netns(name)}")
    body.exec(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
              "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.igmp_link_local_mcast_reports=0")
    # TCP as the emulator runs it (Reno, not the host's default congestion control)
    body.exec(name, "sysctl", "-qw", *TcpSysctls().exported())
    body.ip(name, "link", "set", "lo", "up")


def _all_neighbour_params(body: _Script, emulated: EmulatedCluster, nodes: list[Node]) -> None:
    body.comment("ARP parameters: the emulator's, whatever the host's defaults")
    for node in nodes:
        for ns in _namespaces_of(node):
            _neighbour_params(body, ns.name, list(ns.devices))


# What flanneld on one node has programmed: remote subnet -> (lease, routed
# directly), and the udp proxy's route table (None for the other backends).
_Programmed = tuple[dict, dict | None]


def _programmed(emulated: EmulatedCluster) -> dict[str, _Programmed]:
    """Per node, what its flanneld has programmed now (a copy)."""
    state = {}
    for name, flanneld in emulated.flanneld.items():
        backend = flanneld.backend
        direct = getattr(backend, "direct", set())
        remotes = {lease.subnet: (lease, lease.subnet in direct) for lease in flanneld.remotes.values()}
        routes = dict(backend.routes) if isinstance(backend, UdpBackend) else None
        state[name] = (remotes, routes)
    return state


def _programming(entry: tuple) -> tuple:
    """What a remote entry makes flanneld program (a renewal changes none of it)."""
    lease, direct = entry
    return lease.public_ip, lease.backend_data, direct


def _event(body: _Script, emulated: EmulatedCluster, event: EventSpec, function: str,
           switch_ports: Iterator[int]) -> ExportedEvent:
    """Apply `event` to the emulated cluster and write what changed as `function`."""
    before_nodes = dict(emulated.cluster.nodes)
    before = _programmed(emulated)
    emulated.sim.run(until_ns=seconds(event.at))
    if event.add_node is not None:
        add_node_later(emulated, event.add_node)
        body.comment(f"{event.path} at {event.at:g} s: node {event.add_node.name} joins")
    else:
        remove_node_later(emulated, event.remove_node)
        body.comment(f"{event.path} at {event.at:g} s: node {event.remove_node} leaves")
    after = _programmed(emulated)
    cluster = emulated.cluster
    joined = [node for name, node in cluster.nodes.items() if name not in before_nodes]
    left = [node for name, node in before_nodes.items() if name not in cluster.nodes]

    for node in joined:
        for ns in _namespaces_of(node):
            _namespace(body, ns.name)
        _node(body, emulated, node, f"ul{next(switch_ports)}")
        _remotes(body, emulated, node)
        _netfilter(body, emulated, node)
    stayed = [node for name, node in cluster.nodes.items() if name in before_nodes]
    restarted = [node for node in stayed if isinstance(emulated.flanneld[node.name].backend, UdpBackend)
                 and before[node.name][1] != after[node.name][1]]
    if restarted:
        body.comment("the udp proxies of the other nodes restart with the new route tables")
        body.line("stop_processes " + " ".join(node.name for node in restarted))
    for node in stayed:
        _changed_remotes(body, emulated, node, before[node.name], after[node.name])
    _wait_ready(body, emulated, joined + restarted)
    if joined:
        _all_neighbour_params(body, emulated, joined)
    removed = [ns.name for node in left for ns in _namespaces_of(node)]
    for name in removed:
        body.line(f"remove_netns {name}")
    return ExportedEvent(event.at, function, removed, _interfaces(joined), _hosts(emulated))


def _changed_remotes(body: _Script, emulated: EmulatedCluster, node: Node, before: _Programmed,
                     after: _Programmed) -> None:
    """On a node that stays: undo the leases flanneld dropped, program the new
    ones; a udp proxy (stopped by the caller) starts again with its new routes."""
    (old, old_routes), (new, new_routes) = before, after
    backend = emulated.flanneld[node.name].backend
    if isinstance(backend, UdpBackend):
        if old_routes != new_routes:
            _start_udp_proxy(body, node, backend)
        return
    changed = {subnet for subnet in old.keys() & new.keys()
               if _programming(old[subnet]) != _programming(new[subnet])}
    for subnet, (lease, direct) in old.items():
        if subnet not in new or subnet in changed:
            _remove_remote(body, node, backend, lease, direct)
    for subnet, (lease, direct) in new.items():
        if subnet not in old or subnet in changed:
            _remote(body, node, backend, lease, direct)


def _node(body: _Script, emulated: EmulatedCluster, node: Node, switch_port: str) -> None:
    name = node.name
    eth0 = node.ns.devices["eth0"]
    port = eth0.peer
    prefixlen = emulated.cluster.underlay_subnet.prefixlen
    body.comment(f"node {name}: eth0 {node.ip}/{prefixlen} on the switch, ip_forward on")
    body.exec(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    body.ip(name, "link", "add", "eth0", "address", mac_to_str(eth0.mac), "mtu", eth0.mtu,
            "type", "veth", "peer", "name", switch_port, "address", mac_to_str(port.mac),
            "mtu", port.mtu, "netns", _netns(UNDERLAY_NAMESPACE))
    if port.delay_ns:
        # the emulator's underlay latency: frames from the switch reach the node that much
        # later. A second veth pair's far end is the switch port; frames from the node are
        # redirected onto it in the kernel (tc mirred), frames towards the node are relayed
        # by emu underlay-wire after the delay (netem's delay, which the kernel may lack)
        wire, switch_end = f"{switch_port}w", f"{switch_port}s"
        body.ip(UNDERLAY_NAMESPACE, "link", "add", wire, "mtu", port.mtu, "type", "veth", "peer", "name",
                switch_end, "mtu", port.mtu)
        body.ip(UNDERLAY_NAMESPACE, "link", "set", switch_end, "master", emulated.cluster.switch.name, "up")
        body.ip(UNDERLAY_NAMESPACE, "link", "set", wire, "up")
        body.ip(UNDERLAY_NAMESPACE, "link", "set", switch_port, "up")
        body.line(f"tc -n {_netns(UNDERLAY_NAMESPACE)} qdisc add dev {switch_port} ingress")
        body.line(f"tc -n {_netns(UNDERLAY_NAMESPACE)} filter add dev {switch_port} parent ffff: protocol all "
                  f"u32 match u32 0 0 action mirred egress redirect dev {wire}")
        body.line(f"start_underlay_wire {switch_port} {wire} {port.delay_ns}")
    else:
        body.ip(UNDERLAY_NAMESPACE, "link", "set", switch_port, "master", emulated.cluster.switch.name,
                "up")
    body.ip(name, "addr", "add", f"{node.ip}/{prefixlen}", "dev", "eth0")
    body.ip(name, "link", "set", "eth0", "up")
    _backend_device(body, emulated, node)
    plugin = node.cni
    if plugin is None or plugin.bridge is None:
        return
    bridge = plugin.bridge
    body.comment(f"node {name}: {bridge.name} {plugin.gateway}/{plugin.subnet.prefixlen}, "
                 f"MTU {bridge.mtu}, hairpin {'on' if plugin.hairpin else 'off'}")
    body.ip(name, "link", "add", bridge.name, "address", mac_to_str(bridge.mac), "mtu", bridge.mtu,
            "type", "bridge")
    body.ip(name, "addr", "add", f"{plugin.gateway}/{plugin.subnet.prefixlen}", "dev", bridge.name)
    body.ip(name, "link", "set", bridge.name, "up")
    for pod in node.pods.values():
        host_end = node.ns.devices[pod.host_veth]
        pod_end = pod.ns.devices["eth0"]
        body.comment(f"pod {pod.name}: eth0 {pod.ip}/{plugin.subnet.prefixlen}, "
                     f"{pod.host_veth} on {bridge.name}")
        body.ip(name, "link", "add", pod.host_veth, "address", mac_to_str(host_end.mac), "mtu",
                host_end.mtu, "type", "veth", "peer", "name", "eth0", "address",
                mac_to_str(pod_end.mac), "mtu", pod_end.mtu, "netns", _netns(pod.name))
        body.ip(name, "link", "set", pod.host_veth, "master", bridge.name)
        body.ip(name, "link", "set", pod.host_veth, "type", "bridge_slave", "hairpin",
                "on" if plugin.hairpin else "off")
        body.ip(name, "link", "set", pod.host_veth, "up")
        body.ip(pod.name, "addr", "add", f"{pod.ip}/{plugin.subnet.prefixlen}", "dev", "eth0")
        body.ip(pod.name, "link", "set", "eth0", "up")
        body.ip(pod.name, "route", "add", "default", "via", plugin.gateway, "dev", "eth0")


def _netfilter(body: _Script, emulated: EmulatedCluster, node: Node) -> None:
    """The node's iptables, the very text the emulator loaded, through
    iptables-restore; br_netfilter's bridge-nf-call-iptables as the scenario
    says (a new namespace has 1 once the module is loaded)."""
    netfilter = emulated.scenario.netfilter
    if not netfilter.enabled:
        return
    body.comment(f"node {node.name}: netfilter (br_netfilter, then iptables-restore)")
    body.line('[ -e /proc/sys/net/bridge ] || { echo "emu: br_netfilter is not loaded (modprobe br_netfilter)" >&2; '
              "false; }")
    body.exec(node.name, "sysctl", "-qw",
              f"net.bridge.bridge-nf-call-iptables={int(netfilter.bridge_nf_call_iptables)}")
    text = emulated.iptables.get(node.name)
    if text:
        body.line(f"ip netns exec {_netns(node.name)} iptables-restore <<'EMU_IPTABLES'")
        body.lines.extend(text.rstrip("\n").split("\n"))
        body.lines.append("EMU_IPTABLES")


def _backend_device(body: _Script, emulated: EmulatedCluster, node: Node) -> None:
    flanneld = emulated.flanneld[node.name]
    backend = flanneld.backend
    address = f"{flanneld.lease.subnet.network_address}/32"
    if isinstance(backend, VxlanBackend):
        dev = backend.device
        body.comment(f"node {node.name}: flannel.1, VNI {dev.vni}, port {dev.port}, lease "
                     f"{flanneld.lease.subnet}")
        body.ip(node.name, "link", "add", dev.name, "address", mac_to_str(dev.mac), "mtu", dev.mtu,
                "type", "vxlan", "id", dev.vni, "local", node.ip, "dstport", dev.port,
                "nolearning")
        body.ip(node.name, "addr", "add", address, "dev", dev.name)
        body.ip(node.name, "link", "set", dev.name, "up")
    elif isinstance(backend, UdpBackend):
        dev = backend.device
        body.comment(f"node {node.name}: flannel0 TUN (no packet info), lease {flanneld.lease.subnet}")
        body.ip(node.name, "tuntap", "add", "dev", dev.name, "mode", "tun")
        body.ip(node.name, "link", "set", dev.name, "mtu", dev.mtu, "up")
        body.ip(node.name, "addr", "add", address, "dev", dev.name)
        body.ip(node.name, "route", "add", str(backend.network), "dev", dev.name, "scope", "global")
    elif not isinstance(backend, HostGwBackend):
        raise ScenarioError("net-conf.Backend.Type", f"export does not know backend {backend.type}")


def _remotes(body: _Script, emulated: EmulatedCluster, node: Node) -> None:
    """What flanneld programs for every remote lease, and the udp proxy."""
    backend = emulated.flanneld[node.name].backend
    if isinstance(backend, UdpBackend):
        _start_udp_proxy(body, node, backend)
        return
    for lease in emulated.flanneld[node.name].remotes.values():
        _remote(body, node, backend, lease, lease.subnet in getattr(backend, "direct", ()))


def _remote(body: _Script, node: Node, backend, lease, direct: bool) -> None:
    """flanneld's entries on `node` for one remote lease (vxlan or host-gw)."""
    body.comment(f"node {node.name}: lease {lease.subnet} of {lease.public_ip}")
    if isinstance(backend, HostGwBackend) or direct:  # DirectRouting: a plain route, as host-gw
        body.ip(node.name, "route", "add", lease.subnet, "via", lease.public_ip, "dev",
                backend.external.name)
        return
    dev = backend.device.name
    gateway = lease.subnet.network_address
    vtep_mac = lease.backend_data["VtepMAC"]
    body.ip(node.name, "neigh", "add", gateway, "lladdr", vtep_mac, "dev", dev, "nud", "permanent")
    _bridge(body, node.name, "fdb", "append", vtep_mac, "dev", dev, "dst", lease.public_ip)
    body.ip(node.name, "route", "add", lease.subnet, "via", gateway, "dev", dev, "onlink")


def _remove_remote(body: _Script, node: Node, backend, lease, direct: bool) -> None:
    """What flanneld on `node` removes when a remote lease goes away."""
    body.comment(f"node {node.name}: lease {lease.subnet} of {lease.public_ip} gone")
    if isinstance(backend, HostGwBackend) or direct:
        body.ip(node.name, "route", "del", lease.subnet, "via", lease.public_ip, "dev",
                backend.external.name)
        return
    dev = backend.device.name
    gateway = lease.subnet.network_address
    body.ip(node.name, "route", "del", lease.subnet, "via", gateway, "dev", dev)
    body.ip(node.name, "neigh", "del", gateway, "dev", dev)
    _bridge(body, node.name, "fdb", "del", lease.backend_data["VtepMAC"], "dev", dev, "dst",
            lease.public_ip)


def _bridge(body: _Script, ns: str, *words: object) -> None:
    body.line(f"bridge -n {_netns(ns)} {_words(words)}")


def _start_udp_proxy(body: _Script, node: Node, backend: UdpBackend) -> None:
    """Start flanneld's udp proxy with the node's current route table."""
    routes = " ".join(f"--route {subnet}={IPv4Address(ip)}" for subnet, ip in backend.routes.items())
    body.comment(f"node {node.name}: flanneld's udp proxy on {backend.device.name}, port "
                 f"{backend.port}")
    body.line(f"start_flanneld_udp {node.name} {backend.device.name} {backend.port} {routes}")


def _neighbour_params(body: _Script, ns: str, devices: list[str]) -> None:
    """One sysctl per namespace setting every device's ARP timers and counts
    to the emulator's (slash-separated keys: device names may hold a dot).
    The multicast re-probes and application probes, which the emulator does
    not model, are pinned to their default 0."""
    params = NeighbourParams()
    ms = NS_PER_SECOND // 1000
    values = {
        "base_reachable_time_ms": params.base_reachable_ns // ms,
        "retrans_time_ms": params.retrans_ns // ms,
        "delay_first_probe_time": params.delay_first_probe_ns // NS_PER_SECOND,
        "mcast_solicit": params.mcast_solicit,
        "ucast_solicit": params.ucast_solicit,
        "mcast_resolicit": 0,
        "app_solicit": 0,
        "locktime": params.locktime_ns // (10 * ms),  # USER_HZ ticks
        "unres_qlen_bytes": params.unres_qlen_bytes,
    }
    settings = [f"net/ipv4/neigh/{dev}/{key}={value}" for dev in devices for key, value in values.items()]
    body.exec(ns, "sysctl", "-qw", *settings)


NUMGEN_MODULUS = 2**31 - 1  # numgen's period: far beyond any run


def _faults(body: _Script, scenario: Scenario) -> None:
    """The `faults:` as nftables netdev rules (emu.net.fault): an ingress
    chain sees every frame arriving on the device after AF_PACKET captures
    (so the dropped frame is captured, as in the emulator), an egress chain
    every frame leaving it before them; `numgen inc` counts them from 0."""
    tables: set[str] = set()
    for number, fault in enumerate(scenario.faults):
        if fault.namespace not in tables:
            body.comment(f"faults in {fault.namespace}: nftables netdev rules")
            body.exec(fault.namespace, "nft", "add", "table", "netdev", "emu_faults")
            tables.add(fault.namespace)
        hook = "ingress" if fault.direction == "in" else "egress"
        chain = f"fault{number}"
        body.exec(fault.namespace, "nft", "add", "chain", "netdev", "emu_faults", chain,
                  f'{{ type filter hook {hook} device "{fault.device}" priority 0; }}')
        body.exec(fault.namespace, "nft", "add", "rule", "netdev", "emu_faults", chain, "numgen", "inc",
                  "mod", NUMGEN_MODULUS, "==", fault.nth - 1, "counter", "drop")


def _wait_ready(body: _Script, emulated: EmulatedCluster, nodes: list[Node]) -> None:
    """Wait for every udp proxy of `nodes`, started in parallel by `_remotes`."""
    for node in nodes:
        backend = emulated.flanneld[node.name].backend
        if isinstance(backend, UdpBackend):
            body.line(f"wait_flanneld_udp {node.name} {backend.device.name}")


def _render(scenario: Scenario, prefix: str, namespaces: list[str], body: _Script,
            functions: list[tuple[str, _Script]]) -> str:
    names = " ".join(namespaces)
    actions = "|".join(["up", "down", *(name for name, _ in functions)])
    event_functions = "".join(f"{name}() {{\n{chr(10).join(lines.lines)}\n}}\n\n"
                              for name, lines in functions)
    event_case = (f"    {'|'.join(name for name, _ in functions)})\n"
                  "        trap 'echo \"emu: $1 failed at line $LINENO\" >&2' ERR\n"
                  "        \"$1\" ;;\n") if functions else ""
    return f"""#!/usr/bin/env bash
# Generated by `emu export --netns` from scenario {scenario.name} ({scenario.source}).
# Builds the emulator's cluster in network namespaces named {prefix}<name>; each
# event_N function does what the scenario's Nth event (in time order) changes.
# Usage: bash THIS_SCRIPT {actions}
#   (needs root; EMU names the emu command, default `emu`)
set -eEuo pipefail
P=${{EMU_PREFIX:-{prefix}}}
EMU=${{EMU:-emu}}
LOG_DIR=${{EMU_LOG_DIR:-/tmp}}
NAMESPACES=({names})

# Start flanneld's udp proxy in node $1 on TUN $2, port $3, routes $4... in the background.
start_flanneld_udp() {{
    local node=$1 tun=$2 port=$3
    shift 3
    # $EMU is unquoted on purpose: it may be a command with arguments (python -m emu.cli)
    ip netns exec "$P$node" setsid $EMU flanneld-udp --tun "$tun" --port "$port" "$@" \
        </dev/null >"$LOG_DIR/$P$node-flanneld-udp.log" 2>&1 &
}}

# Relay frames between $1 (a node's veth peer) and $2 (towards the switch), those
# towards the node $3 ns later, in the switch's namespace; wait until it is ready.
start_underlay_wire() {{
    local log="$LOG_DIR/$P$1-underlay-wire.log"
    # $EMU is unquoted on purpose: it may be a command with arguments (python -m emu.cli)
    ip netns exec "$P"ul setsid $EMU underlay-wire "$1" "$2" --delay-ns "$3" </dev/null >"$log" 2>&1 &
    for _ in $(seq {READY_TIMEOUT_S * 50}); do
        grep -q ready "$log" 2>/dev/null && return 0
        sleep 0.02
    done
    echo "emu: underlay-wire $1 did not start:" >&2
    cat "$log" >&2
    return 1
}}

# Wait until the proxy of node $1 is ready: it binds its socket first and then attaches
# TUN $2, whose carrier then comes up.
wait_flanneld_udp() {{
    local node=$1 tun=$2
    for _ in $(seq {READY_TIMEOUT_S * 50}); do
        if ip -n "$P$node" -o link show dev "$tun" | grep -q LOWER_UP; then
            return 0
        fi
        sleep 0.02
    done
    echo "emu: flanneld-udp in $P$node did not start:" >&2
    cat "$LOG_DIR/$P$node-flanneld-udp.log" >&2
    return 1
}}

# Stop every process running in namespaces $1... (a udp proxy closes its TUN on
# exit, so flannel0 has no carrier once this returns).
stop_processes() {{
    local ns pids
    for ns in "$@"; do
        pids=$(ip netns pids "$P$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill $pids 2>/dev/null || true
    done
    for ns in "$@"; do
        # an exited process leaves the namespace at once (even while it waits,
        # a zombie, to be reaped), so ask the namespace rather than `kill -0`
        for _ in $(seq 40); do
            [ -z "$(ip netns pids "$P$ns" 2>/dev/null)" ] && break
            sleep 0.02
        done
        pids=$(ip netns pids "$P$ns" 2>/dev/null || true)
        if [ -n "$pids" ]; then
            kill -9 $pids 2>/dev/null || true
            for _ in $(seq 40); do
                [ -z "$(ip netns pids "$P$ns" 2>/dev/null)" ] && break
                sleep 0.02
            done
        fi
    done
}}

# Remove namespace $1 with every process still running in it.
remove_netns() {{
    local ns=$1
    if [ -e "/run/netns/$P$ns" ]; then
        stop_processes "$ns"
        ip netns del "$P$ns" 2>/dev/null || true
    fi
    rm -f "$LOG_DIR/$P$ns-flanneld-udp.log"
}}

# Remove every namespace of this cluster, those of events included.
down() {{
    local ns
    for ns in "${{NAMESPACES[@]}}"; do
        remove_netns "$ns"
    done
}}

up() {{
    local ns
    for ns in "${{NAMESPACES[@]}}"; do
        if [ -e "/run/netns/$P$ns" ]; then
            echo "emu: namespace $P$ns exists already; choose another prefix" >&2
            exit 1
        fi
    done
    trap 'status=$?; echo "emu: export script failed at line $LINENO; removing the cluster" >&2; trap - ERR; down; exit $status' ERR
    trap 'trap - ERR; down; exit 130' INT TERM
{chr(10).join(body.lines)}
    trap - ERR INT TERM
}}

{event_functions}case "${{1:-}}" in
    up) up ;;
    down) down ;;
{event_case}    *) echo "usage: $0 {actions}" >&2; exit 2 ;;
esac
"""
