"""The scenario's netfilter keys: kube-proxy, Services, flannel's own rules,
the FORWARD policy, br_netfilter and a node's raw iptables.

    kube-proxy: {mode: iptables, service-cidr: 10.96.0.0/12, cluster-cidr: 10.244.0.0/16, masquerade-all: false}
    services:
      - {name: web, type: NodePort, cluster-ip: 10.96.0.10,
         ports: [{port: 80, target-port: 8080, protocol: TCP, node-port: 30080}], endpoints: [p2a]}
    flannel: {ip-masq: true, iptables-forward-rules: true}
    forward-policy: DROP              # or per node
    bridge-nf-call-iptables: true
    nodes: [{name: n1, iptables: "*filter\\n-A INPUT -p udp --dport 9 -j DROP\\nCOMMIT\\n", ...}]

Defaults. A scenario without any of these keys has nodes without a single
rule, exactly as the kernel reference captures were taken (and no
netfilter work on its data path). Once any of them is given the nodes run
what a kube-flannel cluster runs: flanneld with --ip-masq (the manifest's
argument) and its default --iptables-forward-rules, and kube-proxy when
`kube-proxy` or `services` is given (service-cidr 10.96.0.0/12, kubeadm's;
cluster-cidr net-conf.Network; masquerade-all false). A Service without
`cluster-ip` gets the first free address of service-cidr in file order,
a NodePort port without `node-port` the first free port from 30000; a
port's `target-port` defaults to its `port`, `protocol` to TCP.

Each check raises one ScenarioError naming the field, as the API server
would refuse the object (port ranges, node-port range, duplicates) or as
the rules could not exist (an endpoint that is no pod, a ClusterIP outside
service-cidr or taken twice, an iptables-restore line that does not parse).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from emu.net.netfilter.rules import RulesError, parse_rules
from emu.scenario.errors import ScenarioError
from emu.scenario.model import KubeProxySpec, NetfilterSpec, NodeSpec, ServicePortSpec, ServiceSpec

TOP_KEYS = ("kube-proxy", "services", "flannel", "forward-policy", "bridge-nf-call-iptables")
NODE_KEYS = ("forward-policy", "iptables")
_KUBE_PROXY_KEYS = ("mode", "service-cidr", "cluster-cidr", "masquerade-all")
_FLANNEL_KEYS = ("ip-masq", "iptables-forward-rules")
_SERVICE_KEYS = ("name", "type", "cluster-ip", "ports", "endpoints")
_PORT_KEYS = ("name", "port", "target-port", "protocol", "node-port")
_SERVICE_TYPES = ("ClusterIP", "NodePort")
_PROTOCOLS = ("TCP", "UDP")
_POLICIES = ("ACCEPT", "DROP")
DEFAULT_SERVICE_CIDR = IPv4Network("10.96.0.0/12")
NODE_PORT_RANGE = (30000, 32767)  # the API server's --service-node-port-range default


def _readers():
    """The loader's typed readers (imported late: the loader imports this module)."""
    from emu.scenario import loader
    return loader


def forward_policy(value: object, path: str) -> str:
    """`forward-policy`: ACCEPT or DROP (the filter FORWARD chain's policy)."""
    if value not in _POLICIES:
        raise ScenarioError(path, f"expected ACCEPT or DROP, got {_readers()._describe(value)}")
    return value


def iptables_text(value: object, path: str) -> str:
    """A node's `iptables:`: iptables-restore text, parsed now so a bad line
    is named before anything runs."""
    text = _readers()._string(value, path)
    try:
        parse_rules(text)
    except RulesError as error:
        raise ScenarioError(path, str(error)) from None
    return text


def read_netfilter(top, network: IPv4Network, underlay: IPv4Network, nodes: list[NodeSpec],
                   initial: list[NodeSpec]) -> NetfilterSpec:
    """The top-level netfilter keys of `top` (the loader's mapping), checked
    against the pods of the nodes present at time 0 (`initial`)."""
    r = _readers()
    given = any(top.has(key) for key in TOP_KEYS) or any(node.forward_policy or node.iptables for node in nodes)
    if not given:
        return NetfilterSpec()
    kube_proxy = None
    if top.has("kube-proxy") or top.has("services"):
        value = top.value.get("kube-proxy")
        kube_proxy = _kube_proxy({} if value is None else value, top.path_of("kube-proxy"), network, underlay)
    flannel = r._Mapping({} if top.value.get("flannel") is None else top.value["flannel"], top.path_of("flannel"),
                         _FLANNEL_KEYS)
    services = _services(top, kube_proxy, nodes, initial)
    return NetfilterSpec(
        enabled=True, kube_proxy=kube_proxy, services=services,
        ip_masq=flannel.read("ip-masq", r._boolean, default=True),
        forward_rules=flannel.read("iptables-forward-rules", r._boolean, default=True),
        forward_policy=top.read("forward-policy", forward_policy, default="ACCEPT"),
        bridge_nf_call_iptables=top.read("bridge-nf-call-iptables", r._boolean, default=True))


def _kube_proxy(value: object, path: str, network: IPv4Network, underlay: IPv4Network) -> KubeProxySpec:
    r = _readers()
    fields = r._Mapping(value, path, _KUBE_PROXY_KEYS)
    mode = fields.read("mode", r._string, default="iptables")
    if mode != "iptables":
        raise ScenarioError(fields.path_of("mode"), f"{r._shorten(mode)!r} is not modelled (emu has iptables)")
    service_cidr = fields.read("service-cidr", r._network, default=DEFAULT_SERVICE_CIDR)
    for other, name in ((network, "net-conf.Network"), (underlay, "underlay.subnet")):
        if service_cidr.overlaps(other):
            raise ScenarioError(fields.path_of("service-cidr"), f"{service_cidr} overlaps {name} {other}")
    if service_cidr.num_addresses < 4:
        raise ScenarioError(fields.path_of("service-cidr"), f"{service_cidr} has no room for Services")
    return KubeProxySpec(service_cidr, fields.read("cluster-cidr", r._network, default=network),
                         fields.read("masquerade-all", r._boolean, default=False), mode)


def _services(top, kube_proxy: KubeProxySpec | None, nodes: list[NodeSpec],
              initial: list[NodeSpec]) -> tuple[ServiceSpec, ...]:
    r = _readers()
    items = top.items("services")
    if not items:
        return ()
    pods = {pod.name for node in initial for pod in node.pods}
    later = {pod.name for node in nodes for pod in node.pods} - pods
    hosts = {node.name for node in nodes} | pods | later
    drafts = [_service(value, path, pods, later, hosts) for value, path in items]
    names = r._Unique("Service name")
    for draft in drafts:
        names.claim(draft["name"], draft["name"], f"{draft['path']}.name")
    cluster_ips = _allocate_cluster_ips(drafts, kube_proxy.service_cidr)
    node_ports = _allocate_node_ports(drafts)
    services = []
    for draft, cluster_ip in zip(drafts, cluster_ips):
        ports = tuple(ServicePortSpec(p["port"], p["target-port"], p["protocol"], node_ports.get(p["path"]),
                                      p["name"], p["path"]) for p in draft["ports"])
        services.append(ServiceSpec(draft["name"], draft["type"], cluster_ip, ports, draft["endpoints"],
                                    draft["path"]))
    return tuple(services)


def _service(value: object, path: str, pods: set[str], later: set[str], hosts: set[str]) -> dict:
    r = _readers()
    fields = r._Mapping(value, path, _SERVICE_KEYS)
    name = fields.read("name", r._object_name)
    if name in hosts:
        raise ScenarioError(fields.path_of("name"), f"{name} is already a node or pod name (names resolve as "
                            "traffic destinations)")
    kind = fields.read("type", r._string, default="ClusterIP")
    if kind not in _SERVICE_TYPES:
        raise ScenarioError(fields.path_of("type"), f"{r._shorten(kind)!r} is not modelled "
                            f"(emu has {', '.join(_SERVICE_TYPES)})")
    port_items = fields.items("ports")
    if not port_items:
        raise ScenarioError(fields.path_of("ports"), "at least one port is required")
    ports = [_port(item, item_path, kind, len(port_items) > 1) for item, item_path in port_items]
    seen_ports, seen_names = r._Unique("port"), r._Unique("port name")
    for port in ports:
        seen_ports.claim((port["port"], port["protocol"]), f"{port['port']}/{port['protocol']}",
                         f"{port['path']}.port")
        seen_names.claim(port["name"], port["name"], f"{port['path']}.name")
    endpoints = []
    seen_endpoints = r._Unique("endpoint")
    for item, item_path in fields.items("endpoints"):
        pod = r._string(item, item_path)
        if pod in later:
            raise ScenarioError(item_path, f"pod {pod} joins with an add-node event; endpoints are pods "
                                "of the nodes present at time 0")
        if pod not in pods:
            raise ScenarioError(item_path, f"no pod named {r._shorten(pod)!r}")
        seen_endpoints.claim(pod, pod, item_path)
        endpoints.append(pod)
    return {"name": name, "type": kind, "ports": ports, "endpoints": tuple(endpoints), "path": path,
            "cluster-ip": fields.read("cluster-ip", r._address, default=None),
            "cluster-ip-path": fields.path_of("cluster-ip")}


def _port(value: object, path: str, kind: str, several: bool) -> dict:
    r = _readers()
    fields = r._Mapping(value, path, _PORT_KEYS)
    port = fields.read("port", r._integer, 1, 65535)
    protocol = fields.read("protocol", r._string, default="TCP")
    if protocol not in _PROTOCOLS:
        raise ScenarioError(fields.path_of("protocol"), f"expected TCP or UDP, got {r._shorten(protocol)!r}")
    if fields.has("node-port") and kind != "NodePort":
        raise ScenarioError(fields.path_of("node-port"), f"only a NodePort Service has node ports (type is {kind})")
    name = fields.read("name", r._object_name, default="")
    if several and not name:
        raise ScenarioError(fields.path_of("name"), "required when a Service has several ports")
    return {"port": port, "protocol": protocol, "name": name, "path": path,
            "target-port": fields.read("target-port", r._integer, 1, 65535, default=port),
            "node-port": fields.read("node-port", r._integer, *NODE_PORT_RANGE, default=None),
            "node-port-path": fields.path_of("node-port")}


def _allocate_cluster_ips(drafts: list[dict], service_cidr: IPv4Network) -> list[IPv4Address]:
    """Given ClusterIPs checked (inside service-cidr, a host address, once
    each), then the others in file order from the first free host address."""
    r = _readers()
    taken = r._Unique("cluster-ip")
    for draft in drafts:
        address, path = draft["cluster-ip"], draft["cluster-ip-path"]
        if address is None:
            continue
        if address not in service_cidr:
            raise ScenarioError(path, f"{address} is outside kube-proxy.service-cidr {service_cidr}")
        if address in (service_cidr.network_address, service_cidr.broadcast_address):
            raise ScenarioError(path, f"{address} is not a host address of service-cidr {service_cidr}")
        taken.claim(address, str(address), path)
    free = (host for host in service_cidr.hosts() if host not in taken.places)
    result = []
    for draft in drafts:
        address = draft["cluster-ip"] if draft["cluster-ip"] is not None else next(free, None)
        if address is None:
            raise ScenarioError(draft["cluster-ip-path"], f"service-cidr {service_cidr} has no free address left")
        result.append(address)
    return result


def _allocate_node_ports(drafts: list[dict]) -> dict[str, int]:
    """Node ports by port path: given ones once each per protocol (the API
    server's rule), the others from 30000 in file order."""
    r = _readers()
    ports = [port for draft in drafts if draft["type"] == "NodePort" for port in draft["ports"]]
    taken = r._Unique("node-port")
    for port in ports:
        if port["node-port"] is not None:
            taken.claim((port["node-port"], port["protocol"]), f"{port['node-port']}/{port['protocol']}",
                        port["node-port-path"])
    result = {}
    for port in ports:
        number = port["node-port"]
        if number is None:
            number = next((n for n in range(NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] + 1)
                           if (n, port["protocol"]) not in taken.places), None)
            if number is None:
                raise ScenarioError(port["node-port-path"], "no free node port left in 30000-32767")
            taken.places[(number, port["protocol"])] = port["node-port-path"]
        result[port["path"]] = number
    return result
