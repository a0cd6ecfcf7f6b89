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
"""

from __future__ import annotations

import re
import secrets
import shlex
from dataclasses import dataclass
from ipaddress import IPv4Address

from emu.flannel.host_gw import HostGwBackend
from emu.flannel.udp_backend import UdpBackend
from emu.flannel.vxlan_backend import VxlanBackend
from emu.k8s.cluster import UNDERLAY_NAMESPACE, Node
from emu.net.neighbour import NeighbourParams
from emu.sim import NS_PER_SECOND
from emu.scenario.build import EmulatedCluster, build_cluster
from emu.scenario.errors import ScenarioError
from emu.scenario.model import Scenario
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
class NetnsExport:
    """The script plus what a runner needs to know about the namespaces.

    ``namespaces``: every namespace the script creates (logical names, the
    switch first); ``interfaces``: the capture points, per node or pod
    namespace the devices the emulator captures, lo included.
    """

    prefix: str
    script: str
    namespaces: list[str]
    interfaces: dict[str, list[str]]


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
    """The bash script (``up`` / ``down``) that builds `scenario` in namespaces.

    Raises ScenarioError for what real namespaces cannot replay (cluster
    events) and for run-time errors of the scenario itself.
    """
    if scenario.events:
        raise ScenarioError(scenario.events[0].path, "export builds the cluster at time 0; "
                            "add-node / remove-node events cannot be exported")
    prefix = check_prefix(prefix) if prefix is not None else default_prefix()
    emulated = build_cluster(scenario)
    cluster = emulated.cluster
    nodes = list(cluster.nodes.values())
    namespaces = [UNDERLAY_NAMESPACE] + [ns.name for ns in cluster.namespaces()]
    interfaces = {ns.name: list(ns.devices) for ns in cluster.namespaces()}

    body = _Script()
    body.comment("namespaces: IPv6 and link-local IGMP reports off before any device exists")
    for name in namespaces:
        body.line(f"ip netns add {_netns(name)}")
        body.exec(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.igmp_link_local_mcast_reports=0")
        body.ip(name, "link", "set", "lo", "up")
    body.comment(f"the underlay switch ({scenario.underlay.subnet}, MTU {scenario.underlay.mtu})")
    switch = cluster.switch
    body.ip(UNDERLAY_NAMESPACE, "link", "add", switch.name, "address", mac_to_str(switch.mac), "mtu",
            switch.mtu, "type", "bridge")
    body.ip(UNDERLAY_NAMESPACE, "link", "set", switch.name, "up")
    for index, node in enumerate(nodes):
        _node(body, emulated, node, f"ul{index}")
    for node in nodes:
        _remotes(body, emulated, node)
    _wait_ready(body, emulated)
    body.comment("ARP parameters: the emulator's, whatever the host's defaults")
    for ns in cluster.namespaces():
        _neighbour_params(body, ns.name, list(ns.devices))
    return NetnsExport(prefix, _render(scenario, prefix, namespaces, body), namespaces,
                       interfaces)


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
    flanneld = emulated.flanneld[node.name]
    backend = flanneld.backend
    leases = list(flanneld.remotes.values())
    if isinstance(backend, VxlanBackend):
        dev = backend.device.name
        for lease in leases:
            gateway = lease.subnet.network_address
            vtep_mac = lease.backend_data["VtepMAC"]
            body.comment(f"node {node.name}: lease {lease.subnet} of {lease.public_ip}")
            if lease.subnet in backend.direct:  # DirectRouting: a plain route, as host-gw
                body.ip(node.name, "route", "add", lease.subnet, "via", lease.public_ip, "dev",
                        backend.external.name)
                continue
            body.ip(node.name, "neigh", "add", gateway, "lladdr", vtep_mac, "dev", dev,
                    "nud", "permanent")
            body.line(f"bridge -n {_netns(node.name)} {_words(('fdb', 'append', vtep_mac, 'dev', dev, 'dst', lease.public_ip))}")
            body.ip(node.name, "route", "add", lease.subnet, "via", gateway, "dev", dev, "onlink")
    elif isinstance(backend, HostGwBackend):
        for lease in leases:
            body.comment(f"node {node.name}: lease {lease.subnet} of {lease.public_ip}")
            body.ip(node.name, "route", "add", lease.subnet, "via", lease.public_ip, "dev",
                    backend.external.name)
    elif isinstance(backend, UdpBackend):
        routes = " ".join(f"--route {subnet}={IPv4Address(ip)}" for subnet, ip in backend.routes.items())
        body.comment(f"node {node.name}: flanneld's udp proxy on {backend.device.name}, port "
                     f"{backend.port}")
        body.line(f'start_flanneld_udp {node.name} {backend.device.name} {backend.port} {routes}')


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


def _wait_ready(body: _Script, emulated: EmulatedCluster) -> None:
    """Wait for every udp proxy started in parallel by `_remotes`."""
    for node in emulated.cluster.nodes.values():
        backend = emulated.flanneld[node.name].backend
        if isinstance(backend, UdpBackend):
            body.line(f"wait_flanneld_udp {node.name} {backend.device.name}")


def _render(scenario: Scenario, prefix: str, namespaces: list[str], body: _Script) -> str:
    names = " ".join(namespaces)
    return f"""#!/usr/bin/env bash
# Generated by `emu export --netns` from scenario {scenario.name} ({scenario.source}).
# Builds the emulator's cluster in network namespaces named {prefix}<name>.
# Usage: bash THIS_SCRIPT up|down   (needs root; EMU names the emu command, default `emu`)
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

# Wait until the proxy of node $1 is ready: it binds its socket first and then attaches
# TUN $2, whose carrier then comes up.
wait_flanneld_udp() {{
    local node=$1 tun=$2
    for _ in $(seq {READY_TIMEOUT_S * 20}); do
        if ip -n "$P$node" -o link show dev "$tun" | grep -q LOWER_UP; then
            return 0
        fi
        sleep 0.05
    done
    echo "emu: flanneld-udp in $P$node did not start:" >&2
    cat "$LOG_DIR/$P$node-flanneld-udp.log" >&2
    return 1
}}

# Remove every namespace of this cluster and every process still running in one.
down() {{
    local ns pids
    for ns in "${{NAMESPACES[@]}}"; do
        if [ -e "/run/netns/$P$ns" ]; then
            pids=$(ip netns pids "$P$ns" 2>/dev/null || true)
            if [ -n "$pids" ]; then
                kill $pids 2>/dev/null || true
                # an exited process leaves the namespace at once (even while it waits,
                # a zombie, to be reaped), so ask the namespace rather than `kill -0`
                for _ in $(seq 40); do
                    [ -z "$(ip netns pids "$P$ns" 2>/dev/null)" ] && break
                    sleep 0.05
                done
                pids=$(ip netns pids "$P$ns" 2>/dev/null || true)
                [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
            fi
            ip netns del "$P$ns" 2>/dev/null || true
        fi
        rm -f "$LOG_DIR/$P$ns-flanneld-udp.log"
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

case "${{1:-}}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
"""
