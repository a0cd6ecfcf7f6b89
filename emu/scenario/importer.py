"""`emu import`: a scenario file written from a real cluster's own state.

Three sources, as flannel itself learns the cluster:
- a live etcd (flannel's etcd subnet manager): the net-conf at
  <prefix>/config and one lease per node under <prefix>/subnets/;
- `kubectl get nodes -o json` (flannel's kube subnet manager): each node's
  `spec.podCIDR` and the annotations flanneld writes
  (`flannel.alpha.coreos.com/backend-type`, `backend-data` with VtepMAC,
  `public-ip`), plus flannel's net-conf.json (the file, or the kube-flannel
  ConfigMap as YAML); `kubectl get pods -A -o json` optionally adds the pods;
- one node's /run/flannel/subnet.env.

The written file is a normal scenario (it loads, or the import fails with one
line naming the file and the field). What the source holds that the
emulator cannot use is named in a comment at the top, field by field; what
the source does not say (MACs, veth names, the underlay MTU) takes the
emulator's defaults, and the comment says so too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path

import yaml

from emu.flannel.subnet_env import ENCAP_OVERHEAD, parse_subnet_env
from emu.scenario.errors import ScenarioError
from emu.scenario.model import is_object_name

FLANNEL_ANNOTATION = "flannel.alpha.coreos.com/"
MAPPED_ANNOTATIONS = ("backend-type", "backend-data", "public-ip")
SUPPORTED_NET_CONF = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend")
SUPPORTED_BACKEND = {"vxlan": ("Type", "VNI", "Port", "DirectRouting"), "udp": ("Type", "Port"),
                     "host-gw": ("Type",)}


class ImportFailed(ScenarioError):
    """Bad input to `emu import`: one line naming the file and the field."""


@dataclass
class ImportedPod:
    name: str
    ip: IPv4Address


@dataclass
class ImportedNode:
    name: str
    ip: IPv4Address
    subnet: IPv4Network
    vtep_mac: str | None = None
    pods: list[ImportedPod] = field(default_factory=list)
    source_name: str = ""


@dataclass
class Imported:
    """What a source told about a cluster, before it is written as a scenario."""

    source: str
    net_conf: dict
    nodes: list[ImportedNode]
    unmapped: list[str] = field(default_factory=list)
    defaults: list[str] = field(default_factory=list)
    underlay_mtu: int = 1500
    hairpin_mode: bool | None = None


def _fail(where: str, problem: str) -> None:
    raise ImportFailed(where, problem)


def _read_document(path: str | Path, what: str):
    """A JSON or YAML file (kubectl writes either) as Python data."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        _fail(str(path), f"cannot read {what}: {error.strerror or error}")
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        _fail(str(path), f"is neither JSON nor YAML{where}")


# -- net-conf --------------------------------------------------------------


def read_net_conf(path: str | Path) -> tuple[dict, str, bool | None]:
    """flannel's net-conf.json, or the kube-flannel ConfigMap holding it under
    data["net-conf.json"]; returns (net-conf, where it was found, the CNI
    delegate's hairpinMode from the ConfigMap's cni-conf.json, None if absent)."""
    document = _read_document(path, "the net-conf")
    where = str(path)
    hairpin = None
    if isinstance(document, dict) and document.get("kind") == "ConfigMap":
        hairpin = _cni_hairpin((document.get("data") or {}).get("cni-conf.json"), f"{path}: data.cni-conf.json")
        text = (document.get("data") or {}).get("net-conf.json")
        if not isinstance(text, str):
            _fail(f"{path}: data.net-conf.json", "missing: the kube-flannel ConfigMap holds net-conf.json there")
        try:
            document = json.loads(text)
        except ValueError as error:
            _fail(f"{path}: data.net-conf.json", f"is not valid JSON: {error}")
        where = f"{path}: data.net-conf.json"
    if not isinstance(document, dict):
        _fail(where, "net-conf must be a JSON object")
    if "Network" not in document:
        _fail(f"{where}: Network", "required but missing")
    return document, where, hairpin


def _cni_hairpin(text: object, where: str) -> bool | None:
    """hairpinMode of the flannel plugin's delegate (the bridge plugin) in cni-conf.json."""
    if not isinstance(text, str):
        return None
    try:
        conf = json.loads(text)
    except ValueError:
        _fail(where, "is not valid JSON")
    plugins = conf.get("plugins", [conf]) if isinstance(conf, dict) else []
    for plugin in plugins:
        if isinstance(plugin, dict) and plugin.get("type") == "flannel":
            value = (plugin.get("delegate") or {}).get("hairpinMode")
            if value is not None and not isinstance(value, bool):
                _fail(f"{where}: delegate.hairpinMode", f"expected true or false, got {value!r}")
            return value
    return None


def _supported_net_conf(raw: dict, where: str, unmapped: list[str]) -> dict:
    """The net-conf keys emu models; the rest are named in `unmapped`."""
    conf = {}
    for key, value in raw.items():
        if key in SUPPORTED_NET_CONF:
            conf[key] = value
        else:
            unmapped.append(f"{where}: {key} = {json.dumps(value)} (not modelled by emu)")
    backend = conf.get("Backend")
    if isinstance(backend, dict):
        kind = backend.get("Type", "udp")
        allowed = SUPPORTED_BACKEND.get(kind)
        if allowed is None:
            _fail(f"{where}: Backend.Type", f"{kind!r} is not supported by emu (vxlan, host-gw, udp)")
        kept = {}
        for key, value in backend.items():
            if key in allowed:
                kept[key] = value
            else:
                unmapped.append(f"{where}: Backend.{key} = {json.dumps(value)} (not modelled by emu)")
        conf["Backend"] = kept
    return conf


def backend_type(net_conf: dict) -> str:
    backend = net_conf.get("Backend")
    return backend.get("Type", "udp") if isinstance(backend, dict) else "udp"


# -- sources ---------------------------------------------------------------


def from_kube(nodes_path: str | Path, net_conf_path: str | Path, pods_path: str | Path | None = None) -> Imported:
    """`kubectl get nodes -o json` + net-conf.json (+ `kubectl get pods -A -o json`)."""
    raw_conf, conf_where, hairpin = read_net_conf(net_conf_path)
    unmapped: list[str] = []
    net_conf = _supported_net_conf(raw_conf, conf_where, unmapped)
    document = _read_document(nodes_path, "the node list")
    items = document.get("items") if isinstance(document, dict) and document.get("kind") in ("List", "NodeList") \
        else [document] if isinstance(document, dict) and document.get("kind") == "Node" else None
    if not isinstance(items, list) or not items:
        _fail(f"{nodes_path}: items", "expected the output of `kubectl get nodes -o json` (a List of Nodes)")
    nodes = [_kube_node(item, f"{nodes_path}: items[{index}]", unmapped) for index, item in enumerate(items)]
    imported = Imported(f"kubectl nodes {Path(nodes_path).name}, net-conf {Path(net_conf_path).name}",
                        net_conf, nodes, unmapped, hairpin_mode=hairpin)
    _fit_lease_range(imported)
    if pods_path is not None:
        _add_kube_pods(imported, pods_path)
    imported.defaults.append("node MACs 02:42 + the node IP, VTEP MACs from backend-data where given, "
                             "underlay MTU 1500 (the Node API does not say)")
    return imported


def _kube_node(item: object, where: str, unmapped: list[str]) -> ImportedNode:
    if not isinstance(item, dict):
        _fail(where, "expected a Node object")
    metadata = item.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        _fail(f"{where}.metadata.name", "required but missing")
    annotations = metadata.get("annotations") or {}
    for key, value in sorted(annotations.items()):
        if key.startswith(FLANNEL_ANNOTATION) and key[len(FLANNEL_ANNOTATION):] not in MAPPED_ANNOTATIONS:
            unmapped.append(f"{where}.metadata.annotations[{key}] = {json.dumps(value)}")
    spec = item.get("spec") or {}
    pod_cidr = spec.get("podCIDR")
    if not isinstance(pod_cidr, str):
        _fail(f"{where}.spec.podCIDR", "missing: flannel's kube subnet manager needs every node's podCIDR")
    subnet = _ipv4_network(pod_cidr, f"{where}.spec.podCIDR")
    for extra in spec.get("podCIDRs") or []:
        if extra != pod_cidr:
            unmapped.append(f"{where}.spec.podCIDRs: {extra} (emu models IPv4 only)")
    addresses = (item.get("status") or {}).get("addresses") or []
    internal = next((entry.get("address") for entry in addresses
                     if isinstance(entry, dict) and entry.get("type") == "InternalIP"
                     and _is_ipv4(entry.get("address"))), None)
    public = annotations.get(FLANNEL_ANNOTATION + "public-ip") or internal
    if public is None:
        _fail(f"{where}.status.addresses", "no InternalIP and no flannel public-ip annotation")
    ip = _ipv4_address(public, f"{where}.metadata.annotations[{FLANNEL_ANNOTATION}public-ip]")
    vtep_mac = None
    data = annotations.get(FLANNEL_ANNOTATION + "backend-data")
    if data:
        try:
            parsed = json.loads(data)
        except ValueError:
            _fail(f"{where}.metadata.annotations[{FLANNEL_ANNOTATION}backend-data]", "is not valid JSON")
        if isinstance(parsed, dict) and isinstance(parsed.get("VtepMAC"), str):
            vtep_mac = parsed["VtepMAC"].lower()
    node_name = _object_name(name, f"{where}.metadata.name", unmapped)
    return ImportedNode(node_name, ip, subnet, vtep_mac, source_name=name)


def _add_kube_pods(imported: Imported, pods_path: str | Path) -> None:
    document = _read_document(pods_path, "the pod list")
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        _fail(f"{pods_path}: items", "expected the output of `kubectl get pods -A -o json` (a List of Pods)")
    by_name = {node.source_name: node for node in imported.nodes}
    taken = {node.name for node in imported.nodes}
    for index, item in enumerate(items):
        where = f"{pods_path}: items[{index}]"
        spec, status = (item.get("spec") or {}), (item.get("status") or {})
        name = (item.get("metadata") or {}).get("name")
        if spec.get("hostNetwork"):
            imported.unmapped.append(f"{where} ({name}): hostNetwork pod, it is its node")
            continue
        node = by_name.get(spec.get("nodeName"))
        pod_ip = status.get("podIP")
        if node is None or not _is_ipv4(pod_ip):
            imported.unmapped.append(f"{where} ({name}): not running on a listed node with an IPv4 podIP")
            continue
        ip = _ipv4_address(pod_ip, f"{where}.status.podIP")
        if ip not in node.subnet:
            _fail(f"{where}.status.podIP", f"{ip} is outside node {node.name}'s podCIDR {node.subnet}")
        pod_name = _object_name(name, f"{where}.metadata.name", imported.unmapped)
        if pod_name in taken:
            imported.unmapped.append(f"{where}: pod {name} skipped, its name is taken in the scenario")
            continue
        taken.add(pod_name)
        node.pods.append(ImportedPod(pod_name, ip))


def from_etcd(endpoint: str, prefix: str = "/coreos.com/network") -> Imported:
    """flannel's config and leases from a live etcd (nodes named after their subnets)."""
    from emu.flannel.etcd_store import EtcdStore, StoreUnavailable
    from emu.flannel.leases import CONFIG_KEY, SUBNETS_PREFIX, decode_lease

    try:
        store = EtcdStore([endpoint], prefix)
    except (StoreUnavailable, ValueError) as error:
        _fail("--etcd", str(error))
    try:
        config = store.get(CONFIG_KEY, 0)
        if config is None:
            _fail(f"etcd {prefix}/config", "missing: no flannel config under this prefix")
        try:
            raw = json.loads(config.value)
        except ValueError:
            _fail(f"etcd {prefix}/config", "is not valid JSON")
        if not isinstance(raw, dict) or "Network" not in raw:
            _fail(f"etcd {prefix}/config", "must be a JSON object with a Network")
        unmapped: list[str] = []
        net_conf = _supported_net_conf(raw, f"etcd {prefix}/config", unmapped)
        nodes = []
        for entry in store.list(SUBNETS_PREFIX, 0):
            lease = decode_lease(entry)
            if lease is None:
                unmapped.append(f"etcd {store.remote_key(entry.key)}: malformed lease, skipped")
                continue
            data = lease.backend_data or {}
            vtep = data.get("VtepMAC") if isinstance(data.get("VtepMAC"), str) else None
            name = "lease-" + str(lease.subnet).replace(".", "-").replace("/", "-")
            nodes.append(ImportedNode(name, lease.public_ip, lease.subnet, vtep.lower() if vtep else None))
    finally:
        store.close()
    if not nodes:
        _fail(f"etcd {prefix}/subnets", "holds no lease: nothing to emulate")
    imported = Imported(f"etcd {endpoint} {prefix}", net_conf, nodes, unmapped)
    imported.defaults.append("node names from their subnets (etcd leases carry none), node MACs "
                             "02:42 + the node IP, underlay MTU 1500")
    return imported


def from_subnet_env(path: str | Path, public_ip: str | None = None) -> Imported:
    """One node's /run/flannel/subnet.env: its Network, its subnet, and an MTU
    from which the backend is inferred (underlay 1500 minus flannel's overhead)."""
    try:
        values = parse_subnet_env(Path(path).read_text())
    except OSError as error:
        _fail(str(path), f"cannot read the subnet.env: {error.strerror or error}")
    except ValueError as error:
        _fail(str(path), str(error))
    for key in ("FLANNEL_NETWORK", "FLANNEL_SUBNET"):
        if key not in values:
            _fail(f"{path}: {key}", "required but missing")
    network = _ipv4_network(values["FLANNEL_NETWORK"], f"{path}: FLANNEL_NETWORK")
    try:
        gateway = ip_network(values["FLANNEL_SUBNET"], strict=False)
    except ValueError:
        _fail(f"{path}: FLANNEL_SUBNET", f"{values['FLANNEL_SUBNET']!r} is not like 10.244.1.1/24")
    subnet = IPv4Network(gateway)
    unmapped: list[str] = []
    kind, underlay_mtu = "vxlan", 1500
    if "FLANNEL_MTU" in values:
        try:
            mtu = int(values["FLANNEL_MTU"])
        except ValueError:
            _fail(f"{path}: FLANNEL_MTU", f"{values['FLANNEL_MTU']!r} is not an integer")
        matches = [name for name, overhead in sorted(ENCAP_OVERHEAD.items()) if mtu + overhead == 1500]
        kind = matches[0] if matches else "vxlan"
        underlay_mtu = mtu + ENCAP_OVERHEAD[kind]
    for key, value in sorted(values.items()):
        if key not in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU"):
            unmapped.append(f"{path}: {key}={value}" + (" (flannel's masquerade is not modelled)"
                                                        if key == "FLANNEL_IPMASQ" else ""))
    ip = _ipv4_address(public_ip, "--public-ip") if public_ip else IPv4Address("172.18.0.11")
    imported = Imported(f"subnet.env {Path(path).name}", {"Network": str(network), "SubnetLen": subnet.prefixlen,
                        "Backend": {"Type": kind}}, [ImportedNode("node", ip, subnet)], unmapped,
                        underlay_mtu=underlay_mtu)
    imported.defaults.append(f"backend {kind} and underlay MTU {underlay_mtu} inferred from FLANNEL_MTU "
                             "(subnet.env does not name the backend)")
    if not public_ip:
        imported.defaults.append("node address 172.18.0.11 (give --public-ip for the real one)")
    _fit_lease_range(imported)
    return imported


def _fit_lease_range(imported: Imported) -> None:
    """The kube subnet manager takes podCIDRs as the controller-manager
    allocates them, from the Network's first subnet on; emu's etcd-style
    leases start at SubnetMin (flannel's default skips the first subnet), so
    SubnetMin and SubnetLen follow the podCIDRs when they need to."""
    lengths = {node.subnet.prefixlen for node in imported.nodes}
    if len(lengths) != 1:
        _fail("nodes", f"podCIDRs of different sizes ({', '.join(f'/{n}' for n in sorted(lengths))}): "
              "flannel leases one SubnetLen")
    (length,) = lengths
    conf = imported.net_conf
    network = _ipv4_network(conf["Network"], "net-conf: Network")
    for node in imported.nodes:
        if not node.subnet.subnet_of(network):
            _fail(f"node {node.name}", f"subnet {node.subnet} is outside the flannel Network {network}")
    if conf.get("SubnetLen", 24 if network.prefixlen <= 22 else network.prefixlen + 2) != length:
        conf["SubnetLen"] = length
        imported.defaults.append(f"SubnetLen set to /{length}, the size of the nodes' subnets")
    lowest = min(node.subnet for node in imported.nodes)
    default_min = IPv4Network((int(network.network_address) + lowest.num_addresses, length))
    current_min = conf.get("SubnetMin")
    bound = ip_address(current_min) if current_min else default_min.network_address
    if lowest.network_address < bound:
        conf["SubnetMin"] = str(lowest.network_address)
        imported.defaults.append(f"SubnetMin set to {lowest.network_address}: a node holds it")


# -- writing ---------------------------------------------------------------


def underlay_for(nodes: list[ImportedNode], network: IPv4Network) -> IPv4Network:
    """The smallest subnet (/24 or larger) holding every node address: emu puts
    the nodes on one L2 segment."""
    first = nodes[0].ip
    for prefix in range(24, 7, -1):
        candidate = IPv4Network((first, prefix), strict=False)
        if all(node.ip in candidate for node in nodes):
            if candidate.overlaps(network):
                _fail("nodes", f"the node addresses share {candidate}, which overlaps the flannel Network")
            return candidate
    _fail("nodes", "the node addresses are not on one /8: emu models one underlay segment")


def render(imported: Imported, name: str = "imported") -> str:
    """The scenario file: header comments, then the scenario as YAML."""
    network = _ipv4_network(imported.net_conf["Network"], "net-conf: Network")
    underlay = underlay_for(imported.nodes, network)
    lines = [f"# Imported by `emu import` from {imported.source}.",
             "# Defaults where the source says nothing: " + "; ".join(imported.defaults) + "."
             if imported.defaults else "# Every field came from the source."]
    if imported.unmapped:
        lines.append("# Not mapped (present in the source, not used by emu):")
        lines.extend(f"#   {item}" for item in imported.unmapped)
    lines.append("# Fields outside pod networking (labels, capacity, conditions, taints) are ignored.")
    document = {
        "name": name,
        "net-conf": imported.net_conf,
        "underlay": {"subnet": str(underlay), "mtu": imported.underlay_mtu},
        **({"cni": {"hairpinMode": imported.hairpin_mode}} if imported.hairpin_mode is not None else {}),
        "nodes": [_node_document(node) for node in imported.nodes],
        "traffic": [],
    }
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=120)
    example = _example_traffic(imported)
    return "\n".join(lines) + "\n" + body + example


def _node_document(node: ImportedNode) -> dict:
    document: dict = {"name": node.name, "ip": str(node.ip), "subnet": str(node.subnet)}
    if node.vtep_mac:
        document["vtep-mac"] = node.vtep_mac
    if node.pods:
        document["pods"] = [{"name": pod.name, "ip": str(pod.ip)} for pod in node.pods]
    return document


def _example_traffic(imported: Imported) -> str:
    pods = [pod.name for node in imported.nodes for pod in node.pods]
    if len(pods) >= 2:
        example = f"{{from: {pods[0]}, run: ping -c 2 {pods[-1]}}}"
    elif len(imported.nodes) >= 2:
        example = f"{{from: {imported.nodes[0].name}, run: ping -c 2 {imported.nodes[-1].subnet.network_address}}}"
    else:
        example = f"{{from: {imported.nodes[0].name}, run: ping -c 2 {imported.nodes[0].subnet.network_address + 1}}}"
    return f"# Add traffic to run, e.g.:\n#   - {example}\n"


def import_scenario(imported: Imported, name: str = "imported") -> str:
    """Render and prove the result loads (a scenario emu would refuse is an import error)."""
    from emu.scenario.loader import load_scenario_text

    text = render(imported, name)
    try:
        load_scenario_text(text, source=f"{name}.yaml")
    except ScenarioError as error:
        raise ImportFailed(f"written scenario: {error.path}", error.problem) from None
    return text


# -- small readers ---------------------------------------------------------


def _is_ipv4(value: object) -> bool:
    try:
        return isinstance(value, str) and isinstance(ip_address(value), IPv4Address)
    except ValueError:
        return False


def _ipv4_address(value: object, where: str) -> IPv4Address:
    if not _is_ipv4(value):
        _fail(where, f"{value!r} is not an IPv4 address")
    return IPv4Address(value)


def _ipv4_network(value: object, where: str) -> IPv4Network:
    try:
        network = ip_network(value)
    except (ValueError, TypeError):
        _fail(where, f"{value!r} is not an IPv4 CIDR like 10.244.1.0/24")
    if not isinstance(network, IPv4Network):
        _fail(where, f"{value} is IPv6: emu models IPv4 only")
    return network


def _object_name(name: str, where: str, unmapped: list[str]) -> str:
    """A Kubernetes name as a scenario name (a DNS label): dots of a DNS
    subdomain become dashes, noted in the comments."""
    if is_object_name(name):
        return name
    fixed = "".join(char if char.isalnum() or char == "-" else "-" for char in name.lower()).strip("-")[:63]
    if not is_object_name(fixed):
        _fail(where, f"{name!r} cannot be made a DNS label")
    unmapped.append(f"{where}: name {name!r} written as {fixed!r} (scenario names are DNS labels)")
    return fixed
