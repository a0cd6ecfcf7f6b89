"""What a validated scenario file says, as frozen values.

The loader produces these and the cluster builder consumes them, so every
field is already checked and typed (addresses are ``ipaddress`` objects, MACs
are 6-byte ``bytes``) and every default that is a pure function of the file is
already resolved. Values decided only while the cluster runs (pod IPs from
host-local IPAM, pod and cni0 MACs derived from IPs, flannel leases and VTEP
MACs) stay ``None``. Every spec keeps its field ``path`` so run-time errors
can point at the line of the file that caused them. The name rules for
nodes, pods, containers and interfaces live here too, as they are part of
what a valid value is.
"""

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from emu.net.nc import NcOptions


@dataclass(frozen=True)
class Backend:
    """flannel's Backend: ``type`` is "vxlan", "host-gw" or "udp".

    vxlan: ``vni`` (default 1) and ``port`` (default 8472), and
    ``direct_routing`` (flannel's DirectRouting, default false: a remote node
    its host reaches without a gateway gets a plain route via its address
    instead of the tunnel); udp: ``port`` (default 8285), ``vni`` 0;
    host-gw: both 0. ``defaulted`` is True when net-conf had no Backend key,
    which flannel reads as udp.
    """

    type: str
    vni: int
    port: int
    defaulted: bool
    direct_routing: bool = False


@dataclass(frozen=True)
class NetConf:
    """flannel's net-conf.json; ``raw`` is the mapping exactly as written."""

    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Network | None
    subnet_max: IPv4Network | None
    backend: Backend
    raw: dict


@dataclass(frozen=True)
class Underlay:
    """The L2 segment joining every node's eth0. ``latency_ns``: the wire
    delay of every frame the switch hands to a node (one way; a round trip
    between two nodes crosses it twice); 0, the default, is the reference
    captures' instantaneous segment."""

    subnet: IPv4Network
    mtu: int
    latency_ns: int = 0


@dataclass(frozen=True)
class Cni:
    """The bridge CNI plugin's settings; ``mtu`` None means flannel's MTU."""

    bridge: str
    mtu: int | None
    hairpin_mode: bool


@dataclass(frozen=True)
class PodSpec:
    """A pod: its eth0 inside the pod and the veth peer on the node.

    ``ip``/``mac`` None: decided at run time (host-local IPAM; MAC 0a:58 +
    the IP's 4 bytes). ``containers`` () means the pause container plus one
    unnamed container. Loader defaults, from h = sha256("<node>/<pod>"):
    ``host_veth`` = "veth" + first 8 hex digits of h (CNI's vethXXXXXXXX
    shape); ``host_veth_mac`` = the first 6 bytes of h with the first byte
    made locally administered unicast (| 0x02, & ~0x01).
    """

    name: str
    ip: IPv4Address | None
    mac: bytes | None
    host_veth: str
    host_veth_mac: bytes
    containers: tuple[str, ...]
    path: str


@dataclass(frozen=True)
class NodeSpec:
    """A node: eth0 on the underlay, cni0, flannel's device and its pods.

    Loader defaults: ``ip`` = the next host address of the underlay subnet,
    counting from the first one, that no node in the file (nodes and
    add-node events) sets explicitly, handed out in file order; ``mac`` =
    02:42 + the 4 bytes of ``ip`` (docker's convention). ``subnet`` None:
    leased by flannel at run time; ``cni_mac`` None: 0a:58 + the gateway
    IP's bytes; ``vtep_mac`` None: chosen by flannel (seeded).
    """

    name: str
    ip: IPv4Address
    mac: bytes
    subnet: IPv4Network | None
    cni_mac: bytes | None
    vtep_mac: bytes | None
    pods: tuple[PodSpec, ...]
    path: str
    # The node's netfilter: `forward-policy` (None: the scenario's) and the
    # raw `iptables:` text (iptables-restore, appended after kube-proxy's and
    # flannel's rules).
    forward_policy: str | None = None
    iptables: str = ""


@dataclass(frozen=True)
class PingSpec:
    """An iputils ping command line; ``command`` is the line as written.

    Defaults: interval 1.0 s, size 56, ttl/timeout None (system default /
    wait for ever), pmtudisc "want" (Linux's socket default), no interface,
    not quiet. A destination that is a node or pod name (the loader checks it
    exists) is resolved to its address when the command starts, since
    leased subnets make addresses hard to know in advance. ``count`` 0 means
    no -c (then ``deadline``, -w in whole seconds, ends the run); ``preload``
    -l, ``tos`` -Q, ``pattern`` -p (the bytes parsed, None: iputils' 0, 1,
    2, ... fill), ``timestamps`` -D, ``outstanding`` -O, ``verbose`` -v.
    """

    destination: IPv4Address | str  # an address, or the name of a node or pod
    count: int
    interval: float
    size: int
    ttl: int | None
    timeout: float | None
    pmtudisc: str
    interface: str | None
    quiet: bool
    command: str
    deadline: int | None = None
    preload: int = 1
    tos: int = 0
    pattern: bytes | None = None
    timestamps: bool = False
    outstanding: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class NcSpec:
    """A netcat-openbsd command line; ``command`` is the line as written
    (without a trailing ``&``). ``destination``: the client's HOST (an
    address, or a node/pod name resolved when the command starts), None for
    a listener."""

    command: str
    options: NcOptions
    destination: IPv4Address | str | None


@dataclass(frozen=True)
class TrafficSpec:
    """A command run in a node's or pod's namespace.

    ``source`` is a node or pod name, ``container`` a declared container of
    that pod (None: the pod's default container). ``at`` None: starts when
    the previous traffic entry ends (at once when that one runs in the
    ``background``: its line ended in ``&``). ``stdin``: the bytes of the
    process's standard input (a regular file; empty: /dev/null).
    """

    source: str
    container: str | None
    program: PingSpec | NcSpec
    at: float | None
    path: str
    background: bool = False
    stdin: bytes = b""

    @property
    def ping(self) -> PingSpec | None:
        """The ping command, when this entry is one."""
        return self.program if isinstance(self.program, PingSpec) else None

    @property
    def command(self) -> str:
        """The command line as written in ``run:``."""
        return self.program.command + (" &" if self.background else "")


@dataclass(frozen=True)
class EventSpec:
    """A cluster change at virtual time ``at`` seconds: exactly one of
    ``add_node`` and ``remove_node`` (a node name) is set."""

    at: float
    add_node: NodeSpec | None
    remove_node: str | None
    path: str


@dataclass(frozen=True)
class EtcdSpec:
    """Where flannel's leases live when they live in a real etcd (flanneld's
    --etcd-endpoints and --etcd-prefix); None in a Scenario: the embedded store."""

    endpoints: tuple[str, ...]
    prefix: str = "/coreos.com/network"


@dataclass(frozen=True)
class FaultSpec:
    """`faults: [{at: NS/IFNAME, drop: {direction: in|out, nth: N}}]`: drop
    the Nth frame entering (in) or leaving (out) that device."""

    namespace: str
    device: str
    direction: str
    nth: int
    path: str


@dataclass(frozen=True)
class ServicePortSpec:
    """One port of a Service: ``port`` on the ClusterIP, ``target_port`` on
    the endpoints, ``node_port`` (NodePort Services) on every node."""

    port: int
    target_port: int
    protocol: str          # TCP or UDP
    node_port: int | None
    name: str
    path: str


@dataclass(frozen=True)
class ServiceSpec:
    """A Service: ``cluster_ip`` given or allocated in order from
    kube-proxy's service-cidr; ``endpoints`` are pod names."""

    name: str
    type: str              # ClusterIP or NodePort
    cluster_ip: IPv4Address
    ports: tuple[ServicePortSpec, ...]
    endpoints: tuple[str, ...]
    path: str


@dataclass(frozen=True)
class NetfilterSpec:
    """Every node's iptables as the scenario asks for it.

    ``enabled`` False (no netfilter key at all): nodes without any rule, as
    the kernel reference captures were taken. ``kube_proxy`` None: no
    kube-proxy rules. ``ip_masq`` / ``forward_rules``: flanneld's --ip-masq
    and --iptables-forward-rules. ``forward_policy``: the filter FORWARD
    policy of nodes that do not set their own. ``bridge_nf_call_iptables``:
    net.bridge.bridge-nf-call-iptables of the nodes (br_netfilter).
    """

    enabled: bool = False
    kube_proxy: "KubeProxySpec | None" = None
    services: tuple[ServiceSpec, ...] = ()
    ip_masq: bool = False
    forward_rules: bool = False
    forward_policy: str = "ACCEPT"
    bridge_nf_call_iptables: bool = True


@dataclass(frozen=True)
class KubeProxySpec:
    """kube-proxy's settings (iptables mode)."""

    service_cidr: IPv4Network
    cluster_cidr: IPv4Network
    masquerade_all: bool = False
    mode: str = "iptables"


@dataclass(frozen=True)
class Scenario:
    """A whole scenario file. ``traffic`` is in file order; ``events`` are
    sorted by ``at`` (file order among equal times); ``source`` names the
    file it came from."""

    name: str
    seed: int
    net_conf: NetConf
    underlay: Underlay
    cni: Cni
    nodes: tuple[NodeSpec, ...]
    traffic: tuple[TrafficSpec, ...]
    events: tuple[EventSpec, ...]
    source: str
    # Seconds the cluster keeps running after the last command ends (timers
    # such as ARP probes then still reach the captures); 0: stop at once.
    linger: float = 0.0
    # A real etcd for the lease store (None: the embedded, in-process store).
    etcd: EtcdSpec | None = None
    # `start:` as Unix nanoseconds: the wall-clock time of virtual time 0
    # (capture timestamps, ping's timevals and -D). A fixed default keeps
    # runs byte-identical.
    start_ns: int = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
    faults: tuple[FaultSpec, ...] = ()
    netfilter: NetfilterSpec = NetfilterSpec()


# Name rules, shared by the loader and the ping parser.

_OBJECT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_MAX_OBJECT_NAME = 63
_MAX_INTERFACE_NAME = 15  # IFNAMSIZ - 1


def is_object_name(text: str) -> bool:
    """A Kubernetes DNS label (node, pod and container names): it also names
    the node's or pod's network namespace and its capture files."""
    return len(text) <= _MAX_OBJECT_NAME and _OBJECT_NAME.fullmatch(text) is not None


def is_interface_name(text: str) -> bool:
    """A name Linux accepts for a network device (dev_valid_name)."""
    return (
        0 < len(text) <= _MAX_INTERFACE_NAME
        and text not in (".", "..")
        and not any(c == "/" or c == ":" or c.isspace() for c in text)
    )
