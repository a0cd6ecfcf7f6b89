"""Load a scenario file (YAML or JSON) into a validated :class:`Scenario`.

A scenario is written by hand, so every mistake must come back as one line
naming the field (``nodes[1].pods[0].ip: ...``) before anything is built:
unknown keys at every level, wrong types, bad names, addresses outside their
subnets, duplicate names/IPs/MACs (naming both places), traffic from nobody,
events that remove a node that is not there. Checks that depend on run-time
choices (IPAM exhaustion, flannel leases) belong to the cluster builder.

A key set to null counts as not given. Defaults that are pure functions of
the file are resolved here and documented on the model classes; the
underlay defaults to 172.18.0.0/24 with MTU 1500, and a missing SubnetLen
follows flannel (24, or the Network prefix + 2 for networks smaller than a
/22).
"""

import copy
import dataclasses
import datetime
import hashlib
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path

import yaml

from emu.flannel.etcd_store import FLANNEL_PREFIX as ETCD_DEFAULT_PREFIX, parse_endpoint
from emu.flannel.subnet_env import ENCAP_OVERHEAD
from emu.scenario.errors import ScenarioError
from emu.scenario.model import (
    Backend,
    Cni,
    EtcdSpec,
    EventSpec,
    NetConf,
    NodeSpec,
    PodSpec,
    Scenario,
    TrafficSpec,
    Underlay,
    is_interface_name,
    is_object_name,
)
from emu.scenario.faults import check_faults, read_fault
from emu.scenario.netfilter import NODE_KEYS as NODE_NETFILTER_KEYS, TOP_KEYS as NETFILTER_KEYS
from emu.scenario.netfilter import forward_policy, iptables_text, read_netfilter
from emu.scenario.traffic import check_listeners, parse_command, read_stdin
from emu.scenario.yamlsafe import load_yaml
from emu.wire.addr import is_multicast_mac, local_unicast_mac

_TOP_KEYS = ("name", "seed", "start", "net-conf", "underlay", "cni", "nodes", "traffic", "events", "linger",
             "etcd", "faults", *NETFILTER_KEYS)
_NET_CONF_KEYS = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend")
_NET_CONF_FLANNEL_ONLY = (
    "EnableIPv4", "EnableIPv6", "IPv6Network", "IPv6SubnetLen",
    "IPv6SubnetMin", "IPv6SubnetMax", "EnableNFTables",
)
_BACKEND_KEYS = ("Type", "VNI", "Port", "DirectRouting")
_BACKEND_FLANNEL_ONLY = ("GBP", "Learning", "MTU", "MacPrefix", "PSK")
_BACKEND_TYPES = ("vxlan", "host-gw", "udp")
_UNDERLAY_KEYS = ("subnet", "mtu", "latency")
_ETCD_KEYS = ("endpoints", "prefix")
_CNI_KEYS = ("bridge", "mtu", "hairpinMode")
_NODE_KEYS = ("name", "ip", "mac", "subnet", "cni-mac", "vtep-mac", "pods", *NODE_NETFILTER_KEYS)
_NODES_FORM_KEYS = ("count", "pods-per-node")
_MAX_GENERATED_NODES = 65536
_POD_KEYS = ("name", "ip", "mac", "host-veth", "host-veth-mac", "containers")
_TRAFFIC_KEYS = ("from", "run", "at", "stdin")
_EVENT_KEYS = ("at", "add-node", "remove-node")

_DEFAULT_UNDERLAY = IPv4Network("172.18.0.0/24")
_DEFAULT_MTU = 1500
_MTU_RANGE = (68, 65535)
_VXLAN_DEFAULTS = (1, 8472)  # VNI, port
_UDP_DEFAULT_PORT = 8285
_MAX_VNI = 2**24 - 1
_MAX_SUBNET_LEN = 30
_MIN_NETWORK_PREFIX = 28
_NODE_DEVICES = ("eth0", "lo", "flannel.1", "flannel0")
_DEFAULT_NAME = "scenario"
_SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_REQUIRED = object()


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file: ``.json`` is JSON, anything else YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScenarioError("", f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ScenarioError("", f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ScenarioError("", f"{path}: cannot read ({error.strerror})") from None
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    return load_scenario_text(text, fmt, str(path))


def load_scenario_text(text: str, fmt: str = "yaml", source: str = "<string>") -> Scenario:
    """Validate scenario ``text`` in ``fmt`` ("yaml" or "json"); ``source``
    names it in messages and gives the default scenario name (its stem)."""
    if fmt not in ("yaml", "json"):
        raise ValueError(f"fmt must be 'yaml' or 'json', not {fmt!r}")
    document = _parse_json(text, source) if fmt == "json" else _parse_yaml(text, source)
    return load_scenario_document(document, source)


def load_scenario_document(document: object, source: str = "<dict>") -> Scenario:
    """Validate an already parsed scenario (the mapping a YAML or JSON file
    holds, e.g. built in Python): same schema and errors as a file."""
    if not isinstance(document, dict):
        raise ScenarioError("", f"{source}: top level must be a mapping, got {_describe(document)}")
    return _Builder(document, source).scenario()


def load_default() -> Scenario:
    """The built-in scenario (package data default.yaml): the reference
    vxlan cluster with pod-to-pod and node-to-pod pings."""
    text = resources.files("emu.scenario").joinpath("default.yaml").read_text(encoding="utf-8")
    return load_scenario_text(text, "yaml", "default.yaml")


# Parsing the text.


def _parse_yaml(text: str, source: str) -> object:
    try:
        return load_yaml(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ScenarioError("", f"{where}: invalid YAML: {error.problem or error.context}") from None
    except yaml.reader.ReaderError as error:
        raise ScenarioError("", f"{source}: invalid YAML: {error.reason} at character {error.position}") from None
    except yaml.YAMLError as error:
        raise ScenarioError("", f"{source}: invalid YAML: {error}") from None
    except RecursionError:
        raise ScenarioError("", f"{source}: invalid YAML: nested too deeply") from None


def _parse_json(text: str, source: str) -> object:
    def no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
        mapping = {}
        for key, value in pairs:
            if key in mapping:
                raise ScenarioError("", f"{source}: invalid JSON: duplicate key {_shorten(key)!r}")
            mapping[key] = value
        return mapping

    try:
        return json.loads(text, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ScenarioError("", f"{source}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from None
    except ValueError:  # the one non-syntax failure: an integer beyond Python's digit limit
        raise ScenarioError("", f"{source}: invalid JSON: a number has too many digits") from None
    except RecursionError:
        raise ScenarioError("", f"{source}: invalid JSON: nested too deeply") from None


# Typed readers: each takes a parsed value and its field path.


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}" if abs(value) < 10**20 else "a huge integer"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {_shorten(value)!r}"
    return "a list" if isinstance(value, list) else "a mapping"


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ScenarioError(path, f"expected a string, got {_describe(value)}")
    return value


def _integer(value: object, path: str, low: int, high: int | None = None) -> int:
    allowed = f"an integer {low}..{high}" if high is not None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(path, f"expected {allowed}, got {_describe(value)}")
    if value < low or (high is not None and value > high):
        raise ScenarioError(path, f"{_describe(value)} is out of range (expected {allowed})")
    return value


def _seconds(value: object, path: str) -> float:
    """A virtual time: a finite number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(path, f"expected a number of seconds, got {_describe(value)}")
    if not math.isfinite(value) or value < 0:
        raise ScenarioError(path, f"{value} is not a time (expected a number of seconds >= 0)")
    return float(value)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s)")
_DURATION_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_MAX_LATENCY_NS = 10 * 1_000_000_000
_LAST_START = datetime.datetime(2106, 1, 1, tzinfo=datetime.timezone.utc)  # pcap ts_sec is 32-bit


def _duration_ns(value: object, path: str) -> int:
    """A duration as tc writes it ("200us", "1.5ms", "0s"; a bare number is
    seconds), in whole microseconds (tc's resolution, what the kernel
    oracle can mirror), returned in nanoseconds; at most 10 s."""
    if isinstance(value, bool):
        raise ScenarioError(path, f"expected a duration such as 200us, got {_describe(value)}")
    if isinstance(value, (int, float)):
        ns = _seconds(value, path) * 1e9
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        ns = float(match.group(1)) * _DURATION_UNIT_NS[match.group(2)]
    else:
        raise ScenarioError(path, f"expected a duration such as 200us, 1.5ms or 0 (ns, us, ms, s), "
                                  f"got {_describe(value)}")
    if ns > _MAX_LATENCY_NS:
        raise ScenarioError(path, f"{value} is longer than 10s")
    if ns != round(ns, -3):
        raise ScenarioError(path, f"{value} is not a whole number of microseconds")
    return round(ns)


def _start_ns(value: object, path: str) -> int:
    """An ISO 8601 date and time ("2026-03-01T12:00:00Z", "...+02:00"; no
    offset means UTC) as Unix nanoseconds, 1970 .. 2105."""
    if not isinstance(value, str):
        raise ScenarioError(path, f"expected an ISO 8601 time such as 2026-01-01T00:00:00Z, got {_describe(value)}")
    try:
        when = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ScenarioError(path, f"{_shorten(value)} is not an ISO 8601 time "
                                  "(such as 2026-01-01T00:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    if not datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) <= when < _LAST_START:
        raise ScenarioError(path, f"{_shorten(value)} is outside 1970-01-01 .. 2105-12-31 (pcap timestamps)")
    delta = when - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(path, f"expected true or false, got {_describe(value)}")
    return value


def _list(value: object, path: str) -> list:
    if not isinstance(value, list):
        raise ScenarioError(path, f"expected a list, got {_describe(value)}")
    return value


def _mtu(value: object, path: str) -> int:
    return _integer(value, path, *_MTU_RANGE)


def _address(value: object, path: str) -> IPv4Address:
    text = _string(value, path)
    try:
        return IPv4Address(text)
    except ValueError:
        raise ScenarioError(path, f"{_shorten(text)} is not an IPv4 address") from None


def _network(value: object, path: str) -> IPv4Network:
    text = _string(value, path)
    try:
        network = ip_network(text, strict=False) if "/" in text else None
    except ValueError:
        network = None
    if not isinstance(network, IPv4Network):
        raise ScenarioError(path, f"{_shorten(text)} is not an IPv4 network")
    if network.network_address != IPv4Address(text.partition("/")[0]):
        raise ScenarioError(path, f"{text} has host bits set (did you mean {network}?)")
    return network


def _mac(value: object, path: str) -> bytes:
    if not isinstance(value, str):
        raise ScenarioError(path, f"expected a MAC address string like 0a:58:0a:f4:01:02, got {_describe(value)}")
    if not _MAC.fullmatch(value):
        raise ScenarioError(path, f"{_shorten(value)} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    mac = bytes.fromhex(value.replace(":", ""))
    if is_multicast_mac(mac):
        raise ScenarioError(path, f"{value} is a multicast MAC (must be unicast)")
    if mac == bytes(6):
        raise ScenarioError(path, f"{value} is the all-zero MAC")
    return mac


def _object_name(value: object, path: str) -> str:
    text = _string(value, path)
    if not is_object_name(text):
        raise ScenarioError(
            path,
            f"{_shorten(text)!r} is not a valid name (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)",
        )
    return text


def _interface_name(value: object, path: str) -> str:
    text = _string(value, path)
    if not is_interface_name(text):
        raise ScenarioError(
            path, f"{_shorten(text)!r} is not a valid interface name (1-15 characters, no '/', ':' or whitespace)"
        )
    return text


def _scenario_name(value: object, path: str) -> str:
    text = _string(value, path)
    if not _SCENARIO_NAME.fullmatch(text):
        raise ScenarioError(
            path,
            f"{_shorten(text)!r} is not a valid folder name (letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 100 characters)",
        )
    return text


def _mac_text(mac: bytes) -> str:
    return mac.hex(":")


class _Mapping:
    """A mapping at a known field path whose keys have been checked."""

    def __init__(self, value: object, path: str, allowed: tuple[str, ...], flannel_only: tuple[str, ...] = ()):
        if not isinstance(value, dict):
            raise ScenarioError(path, f"expected a mapping, got {_describe(value)}")
        for key in value:
            if key in allowed:
                continue
            key_path = self._join(path, _shorten(str(key)))
            if key in flannel_only:
                raise ScenarioError(key_path, f"not supported by emu (emu models {', '.join(allowed)})")
            raise ScenarioError(key_path, f"unknown key (allowed: {', '.join(allowed)})")
        self.value = value
        self.path = path

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def path_of(self, key: str) -> str:
        return self._join(self.path, key)

    def has(self, key: str) -> bool:
        return self.value.get(key) is not None

    def read(self, key: str, reader, *args, default=_REQUIRED):
        """``reader(value, path, *args)`` for a given key, else ``default``."""
        value = self.value.get(key)
        if value is None:
            if default is _REQUIRED:
                raise ScenarioError(self.path_of(key), "required but missing")
            return default
        return reader(value, self.path_of(key), *args)

    def items(self, key: str) -> list[tuple[object, str]]:
        """The elements of an optional list, each with its path."""
        values = self.read(key, _list, default=[])
        return [(value, f"{self.path_of(key)}[{index}]") for index, value in enumerate(values)]


# Validation of the sections.


def _net_conf(value: object, path: str) -> NetConf:
    fields = _Mapping(value, path, _NET_CONF_KEYS, _NET_CONF_FLANNEL_ONLY)
    network = fields.read("Network", _network)
    if network.prefixlen > _MIN_NETWORK_PREFIX:
        problem = f"{network} is too small (flannel needs /{_MIN_NETWORK_PREFIX} or larger)"
        raise ScenarioError(fields.path_of("Network"), problem)
    smallest = network.prefixlen + 2  # flannel: the Network must hold at least four subnets
    subnet_len = fields.read("SubnetLen", _integer, smallest, _MAX_SUBNET_LEN, default=max(24, smallest))
    subnet_min = fields.read("SubnetMin", _lease_bound, network, subnet_len, default=None)
    subnet_max = fields.read("SubnetMax", _lease_bound, network, subnet_len, default=None)
    if subnet_min and subnet_max and subnet_min.network_address > subnet_max.network_address:
        raise ScenarioError(fields.path_of("SubnetMax"), f"{subnet_max} is below SubnetMin {subnet_min}")
    backend = fields.read("Backend", _backend, default=Backend("udp", 0, _UDP_DEFAULT_PORT, True))
    return NetConf(network, subnet_len, subnet_min, subnet_max, backend, raw=copy.deepcopy(value))


def _lease_bound(value: object, path: str, network: IPv4Network, subnet_len: int) -> IPv4Network:
    """SubnetMin/SubnetMax: flannel writes an address ("10.244.10.0"); a
    CIDR with the SubnetLen prefix is accepted too."""
    text = _string(value, path)
    if "/" in text:
        bound = _network(text, path)
    else:
        address = _address(text, path)
        bound = ip_network(f"{address}/{subnet_len}", strict=False)
        if bound.network_address != address:
            problem = f"{text} is not on a /{subnet_len} boundary (did you mean {bound.network_address}?)"
            raise ScenarioError(path, problem)
    if bound.prefixlen != subnet_len:
        raise ScenarioError(path, f"{text} must be a /{subnet_len} (net-conf.SubnetLen)")
    if not bound.subnet_of(network):
        raise ScenarioError(path, f"{text} is outside net-conf.Network {network}")
    return bound


def _backend(value: object, path: str) -> Backend:
    fields = _Mapping(value, path, _BACKEND_KEYS, _BACKEND_FLANNEL_ONLY)
    kind = fields.read("Type", _string)
    if kind not in _BACKEND_TYPES:
        problem = f"{_shorten(kind)} is not supported by emu ({', '.join(_BACKEND_TYPES)})"
        raise ScenarioError(fields.path_of("Type"), problem)
    if kind != "vxlan" and fields.has("VNI"):
        raise ScenarioError(fields.path_of("VNI"), f"only the vxlan backend has a VNI, not {kind}")
    if kind == "host-gw" and fields.has("Port"):
        raise ScenarioError(fields.path_of("Port"), "the host-gw backend has no Port")
    if kind != "vxlan" and fields.has("DirectRouting"):
        raise ScenarioError(fields.path_of("DirectRouting"),
                            f"only the vxlan backend has DirectRouting, not {kind}")
    if kind == "vxlan":
        vni, port = _VXLAN_DEFAULTS
        return Backend(
            kind,
            fields.read("VNI", _integer, 0, _MAX_VNI, default=vni),
            fields.read("Port", _integer, 1, 65535, default=port),
            defaulted=False,
            direct_routing=fields.read("DirectRouting", _boolean, default=False),
        )
    if kind == "udp":
        return Backend(kind, 0, fields.read("Port", _integer, 1, 65535, default=_UDP_DEFAULT_PORT), defaulted=False)
    return Backend(kind, 0, 0, defaulted=False)


def _underlay(value: object, path: str, network: IPv4Network) -> Underlay:
    fields = _Mapping(value, path, _UNDERLAY_KEYS)
    subnet = fields.read("subnet", _network, default=_DEFAULT_UNDERLAY)
    if subnet.prefixlen > 30:
        raise ScenarioError(fields.path_of("subnet"), f"{subnet} has no room for nodes (at most /30)")
    if subnet.overlaps(network):
        raise ScenarioError(fields.path_of("subnet"), f"{subnet} overlaps net-conf.Network {network}")
    return Underlay(subnet, fields.read("mtu", _mtu, default=_DEFAULT_MTU),
                    fields.read("latency", _duration_ns, default=0))


def _etcd(value: object, path: str) -> EtcdSpec:
    """`etcd: {endpoints: [http://127.0.0.1:2379], prefix: /coreos.com/network}`."""
    fields = _Mapping(value, path, _ETCD_KEYS)
    endpoints = []
    for item, item_path in fields.items("endpoints"):
        try:
            parse_endpoint(item)
        except ValueError as error:
            raise ScenarioError(item_path, str(error)) from None
        endpoints.append(item)
    if not endpoints:
        raise ScenarioError(fields.path_of("endpoints"), "at least one etcd endpoint is required")
    prefix = fields.read("prefix", _string, default=ETCD_DEFAULT_PREFIX)
    if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise ScenarioError(fields.path_of("prefix"), f"{prefix!r} must be a key path like /coreos.com/network")
    return EtcdSpec(tuple(endpoints), prefix)


def override_etcd(scenario: Scenario, endpoints: list[str], prefix: str | None) -> Scenario:
    """`scenario` with its leases in the etcd at `endpoints` (the command line's --etcd)."""
    document: dict = {"endpoints": endpoints}
    if prefix is not None:
        document["prefix"] = prefix
    elif scenario.etcd is not None:
        document["prefix"] = scenario.etcd.prefix
    return dataclasses.replace(scenario, etcd=_etcd(document, "etcd"))


def _check_backend_fits(underlay_mtu: int, backend: str) -> None:
    """flannel's device gets the underlay MTU minus the encapsulation; Linux
    refuses a vxlan or TUN device below the IPv4 minimum MTU (68), so
    flanneld could not start: an impossible cluster."""
    device_mtu = underlay_mtu - ENCAP_OVERHEAD[backend]
    if device_mtu < _MTU_RANGE[0]:
        raise ScenarioError("underlay.mtu", f"{underlay_mtu} leaves the {backend} backend's device an MTU of "
                            f"{device_mtu}, below the IPv4 minimum {_MTU_RANGE[0]} (needs at least "
                            f"{_MTU_RANGE[0] + ENCAP_OVERHEAD[backend]})")


def _cni_mtu(value: object, path: str) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, str):
        low, high = _MTU_RANGE
        raise ScenarioError(path, f"expected an integer {low}..{high} or auto, got {_describe(value)}")
    return _mtu(value, path)


def _cni(value: object, path: str) -> Cni:
    fields = _Mapping(value, path, _CNI_KEYS)
    bridge = fields.read("bridge", _interface_name, default="cni0")
    if bridge in _NODE_DEVICES:
        raise ScenarioError(fields.path_of("bridge"), f"{bridge} is already a device of every node")
    return Cni(bridge, fields.read("mtu", _cni_mtu, default=None), fields.read("hairpinMode", _boolean, default=True))


@dataclass
class _NodeDraft:
    """A node read from the file before its ip/mac defaults are known."""

    name: str
    ip: IPv4Address | None
    mac: bytes | None
    subnet: IPv4Network | None
    cni_mac: bytes | None
    vtep_mac: bytes | None
    pods: tuple[PodSpec, ...]
    path: str
    forward_policy: str | None = None
    iptables: str = ""

    def finish(self, ip: IPv4Address) -> NodeSpec:
        mac = self.mac if self.mac is not None else bytes.fromhex("0242") + ip.packed
        return NodeSpec(self.name, ip, mac, self.subnet, self.cni_mac, self.vtep_mac, self.pods, self.path,
                        self.forward_policy, self.iptables)


class _Unique:
    """Where each value was first claimed, so a duplicate names both places;
    a place in ``defaulted`` is marked "(default)" since the file does not
    show its value."""

    def __init__(self, what: str, defaulted: frozenset[str] = frozenset()):
        self.what = what
        self.defaulted = defaulted
        self.places: dict[object, str] = {}

    def claim(self, value: object, shown: str, place: str) -> None:
        note = " (default)" if place in self.defaulted else ""
        if value in self.places:
            raise ScenarioError(place, f"duplicate {self.what} {shown}{note} (also {self.places[value]})")
        self.places[value] = place + note


class _Builder:
    """Validates one parsed document section by section."""

    def __init__(self, document: dict, source: str):
        self.top = _Mapping(document, "", _TOP_KEYS)
        self.source = source
        self.defaulted: set[str] = set()  # field paths whose value is a default
        self._known: tuple[set[str], dict[str, PodSpec]] | None = None

    def scenario(self) -> Scenario:
        top = self.top
        stem = Path(self.source).stem
        name = top.read("name", _scenario_name, default=stem if _SCENARIO_NAME.fullmatch(stem) else _DEFAULT_NAME)
        seed = top.read("seed", _integer, 0, default=0)
        self.net_conf = top.read("net-conf", _net_conf)
        underlay, cni = top.value.get("underlay"), top.value.get("cni")
        self.underlay = _underlay({} if underlay is None else underlay, "underlay", self.net_conf.network)
        _check_backend_fits(self.underlay.mtu, self.net_conf.backend.type)
        self.cni = _cni({} if cni is None else cni, "cni")
        nodes_value = top.value.get("nodes")
        if isinstance(nodes_value, dict) and "count" not in nodes_value:
            raise ScenarioError("nodes", "expected a list, or {count: N, pods-per-node: P}, "
                                "got a mapping without count")
        node_items = self._generated_nodes() if isinstance(nodes_value, dict) else top.items("nodes")
        if not node_items:
            raise ScenarioError("nodes", "at least one node is required")
        drafts = [self._node(value, path) for value, path in node_items]
        event_fields = [(_Mapping(value, path, _EVENT_KEYS), path) for value, path in top.items("events")]
        added = [
            self._node(fields.value["add-node"], fields.path_of("add-node"))
            for fields, _ in event_fields
            if fields.has("add-node")
        ]
        nodes = self._resolve_ips(drafts + added)
        self._check_unique(nodes)
        initial = tuple(nodes[: len(drafts)])
        events = self._events(event_fields, {node.path: node for node in nodes}, [node.name for node in initial])
        netfilter = read_netfilter(top, self.net_conf.network, self.underlay.subnet, nodes, list(initial))
        self.services = {service.name for service in netfilter.services}
        traffic = tuple(self._traffic(value, path, nodes) for value, path in top.items("traffic"))
        backend = self.net_conf.backend
        check_listeners(traffic, nodes, backend.type, backend.port)
        linger = top.read("linger", _seconds, default=0.0)
        etcd = top.read("etcd", _etcd, default=None)
        start = top.read("start", _start_ns, default=Scenario.start_ns)
        faults = tuple(read_fault(value, path, nodes) for value, path in top.items("faults"))
        check_faults(faults)
        return Scenario(name, seed, self.net_conf, self.underlay, self.cni, initial, traffic, events, self.source,
                        linger, etcd, start, faults, netfilter)

    # Nodes and pods.

    def _generated_nodes(self) -> list[tuple[dict, str]]:
        """`nodes: {count: N, pods-per-node: P}`: nodes n1..nN, each with pods
        nI-p1..nI-pP, every other field defaulted (as if listed by name only);
        a generated node's field path is nodes(nI), its pods' nodes(nI).pods[J-1]."""
        fields = _Mapping(self.top.value["nodes"], "nodes", _NODES_FORM_KEYS)
        count = fields.read("count", _integer, 1, _MAX_GENERATED_NODES)
        pods = fields.read("pods-per-node", _integer, 0, 1 << 16, default=0)
        hosts = self.underlay.subnet.num_addresses - 2
        if count > hosts:
            raise ScenarioError("nodes.count", f"{count} nodes do not fit underlay.subnet "
                                f"{self.underlay.subnet} ({hosts} addresses)")
        net = self.net_conf
        size = 1 << (32 - net.subnet_len)
        low = int(net.subnet_min.network_address) if net.subnet_min else int(net.network.network_address) + size
        high = int(net.subnet_max.network_address) if net.subnet_max else int(net.network.broadcast_address) + 1 - size
        leases = (high - low) // size + 1  # flannel's SubnetMin..SubnetMax
        if count > leases:
            raise ScenarioError("nodes.count", f"{count} nodes need {count} flannel subnets; net-conf.Network "
                                f"{net.network} has {leases} /{net.subnet_len} leases (SubnetMin..SubnetMax)")
        usable = size - 3  # without network, gateway (cni0) and broadcast
        if pods > usable:
            raise ScenarioError("nodes.pods-per-node", f"{pods} pods do not fit a node's /{net.subnet_len} "
                                f"subnet ({usable} usable addresses)")
        return [({"name": f"n{i}", "pods": [{"name": f"n{i}-p{j}"} for j in range(1, pods + 1)]}, f"nodes(n{i})")
                for i in range(1, count + 1)]

    def _node(self, value: object, path: str) -> _NodeDraft:
        fields = _Mapping(value, path, _NODE_KEYS)
        name = fields.read("name", _object_name)
        ip = fields.read("ip", _address, default=None)
        if ip is not None:
            self._check_node_ip(ip, fields.path_of("ip"))
        subnet = fields.read("subnet", _network, default=None)
        if subnet is not None:
            self._check_node_subnet(subnet, fields.path_of("subnet"))
        backend = self.net_conf.backend.type
        if fields.has("vtep-mac") and backend != "vxlan":
            raise ScenarioError(fields.path_of("vtep-mac"), f"only the vxlan backend has a VTEP (backend is {backend})")
        pods = tuple(self._pod(pod, pod_path, name, subnet) for pod, pod_path in fields.items("pods"))
        return _NodeDraft(
            name=name,
            ip=ip,
            mac=fields.read("mac", _mac, default=None),
            subnet=subnet,
            cni_mac=fields.read("cni-mac", _mac, default=None),
            vtep_mac=fields.read("vtep-mac", _mac, default=None),
            pods=pods,
            path=path,
            forward_policy=fields.read("forward-policy", forward_policy, default=None),
            iptables=fields.read("iptables", iptables_text, default=""),
        )

    def _check_node_ip(self, ip: IPv4Address, path: str) -> None:
        subnet = self.underlay.subnet
        if ip not in subnet:
            raise ScenarioError(path, f"{ip} is outside underlay.subnet {subnet}")
        if ip in (subnet.network_address, subnet.broadcast_address):
            role = "network" if ip == subnet.network_address else "broadcast"
            raise ScenarioError(path, f"{ip} is the {role} address of underlay.subnet {subnet}")

    def _check_node_subnet(self, subnet: IPv4Network, path: str) -> None:
        net_conf = self.net_conf
        if subnet.prefixlen != net_conf.subnet_len:
            raise ScenarioError(path, f"{subnet} must be a /{net_conf.subnet_len} (net-conf.SubnetLen)")
        if not subnet.subnet_of(net_conf.network):
            raise ScenarioError(path, f"{subnet} is outside net-conf.Network {net_conf.network}")

    def _pod(self, value: object, path: str, node: str, node_subnet: IPv4Network | None) -> PodSpec:
        fields = _Mapping(value, path, _POD_KEYS)
        name = fields.read("name", _object_name)
        ip = fields.read("ip", _address, default=None)
        if ip is not None:
            self._check_pod_ip(ip, fields.path_of("ip"), node, node_subnet)
        digest = hashlib.sha256(f"{node}/{name}".encode()).digest()
        for key in ("host-veth", "host-veth-mac"):
            if not fields.has(key):
                self.defaulted.add(fields.path_of(key))
        host_veth = fields.read("host-veth", _interface_name, default="veth" + digest.hex()[:8])
        if host_veth in _NODE_DEVICES + (self.cni.bridge,):
            problem = f"{host_veth} clashes with node {node}'s own device of that name"
            raise ScenarioError(fields.path_of("host-veth"), problem)
        unique_containers = _Unique("container")
        containers = []
        for container, container_path in fields.items("containers"):
            unique_containers.claim(_object_name(container, container_path), container, container_path)
            containers.append(container)
        return PodSpec(
            name=name,
            ip=ip,
            mac=fields.read("mac", _mac, default=None),
            host_veth=host_veth,
            host_veth_mac=fields.read("host-veth-mac", _mac, default=local_unicast_mac(digest)),
            containers=tuple(containers),
            path=path,
        )

    def _check_pod_ip(self, ip: IPv4Address, path: str, node: str, node_subnet: IPv4Network | None) -> None:
        network = self.net_conf.network
        if node_subnet is None:
            if ip not in network:
                raise ScenarioError(path, f"{ip} is outside net-conf.Network {network}")
            lease = ip_network(f"{ip}/{self.net_conf.subnet_len}", strict=False)
            owner = f"the /{lease.prefixlen} {lease} node {node} would lease"
        else:
            if ip not in node_subnet:
                raise ScenarioError(path, f"{ip} is outside node {node}'s subnet {node_subnet}")
            lease = node_subnet
            owner = f"node {node}'s subnet {lease}"
        roles = {
            lease.network_address: "network",
            lease.network_address + 1: f"gateway ({self.cni.bridge})",
            lease.broadcast_address: "broadcast",
        }
        if ip in roles:
            raise ScenarioError(path, f"{ip} is the {roles[ip]} address of {owner}")

    def _resolve_ips(self, drafts: list[_NodeDraft]) -> list[NodeSpec]:
        """Give each node without an ip the next underlay host address that
        no node sets explicitly, in file order."""
        taken = {draft.ip for draft in drafts}
        free = (host for host in self.underlay.subnet.hosts() if host not in taken)
        nodes = []
        for draft in drafts:
            if draft.ip is None:
                self.defaulted.add(f"{draft.path}.ip")
            if draft.mac is None:
                self.defaulted.add(f"{draft.path}.mac")
            ip = draft.ip if draft.ip is not None else next(free, None)
            if ip is None:
                problem = f"not given, and underlay.subnet {self.underlay.subnet} has no free address left"
                raise ScenarioError(f"{draft.path}.ip", problem)
            nodes.append(draft.finish(ip))
        return nodes

    def _check_unique(self, nodes: list[NodeSpec]) -> None:
        defaulted = frozenset(self.defaulted)
        names, subnets = _Unique("name"), _Unique("subnet")
        ips, macs = _Unique("IP", defaulted), _Unique("MAC", defaulted)
        for node in nodes:
            names.claim(node.name, node.name, f"{node.path}.name")
            ips.claim(node.ip, str(node.ip), f"{node.path}.ip")
            macs.claim(node.mac, _mac_text(node.mac), f"{node.path}.mac")
            for key, mac in (("cni-mac", node.cni_mac), ("vtep-mac", node.vtep_mac)):
                if mac is not None:
                    macs.claim(mac, _mac_text(mac), f"{node.path}.{key}")
            if node.subnet is not None:
                subnets.claim(node.subnet, str(node.subnet), f"{node.path}.subnet")
            veths = _Unique(f"interface name on node {node.name}:", defaulted)
            for pod in node.pods:
                names.claim(pod.name, pod.name, f"{pod.path}.name")
                if pod.ip is not None:
                    ips.claim(pod.ip, str(pod.ip), f"{pod.path}.ip")
                if pod.mac is not None:
                    macs.claim(pod.mac, _mac_text(pod.mac), f"{pod.path}.mac")
                macs.claim(pod.host_veth_mac, _mac_text(pod.host_veth_mac), f"{pod.path}.host-veth-mac")
                veths.claim(pod.host_veth, pod.host_veth, f"{pod.path}.host-veth")

    # Events and traffic.

    def _events(
        self, event_fields: list[tuple[_Mapping, str]], by_path: dict[str, NodeSpec], initial: list[str]
    ) -> tuple[EventSpec, ...]:
        events = []
        for fields, path in event_fields:
            at = fields.read("at", _seconds)
            if fields.has("add-node") == fields.has("remove-node"):
                raise ScenarioError(path, "needs exactly one of add-node, remove-node")
            added = by_path.get(fields.path_of("add-node"))
            removed = fields.read("remove-node", _string, default=None)
            events.append(EventSpec(at, added, removed, path))
        events.sort(key=lambda event: event.at)
        alive = set(initial)
        for event in events:
            if event.add_node is not None:
                alive.add(event.add_node.name)
            elif event.remove_node in alive:
                alive.remove(event.remove_node)
            else:
                raise ScenarioError(
                    f"{event.path}.remove-node", f"no node {_shorten(event.remove_node)} exists at t={event.at:g} s"
                )
        return tuple(events)

    def _traffic(self, value: object, path: str, nodes: list[NodeSpec]) -> TrafficSpec:
        fields = _Mapping(value, path, _TRAFFIC_KEYS)
        source, container = self._traffic_source(fields.read("from", _string), fields.path_of("from"), nodes)
        program, background = parse_command(fields.read("run", _string), fields.path_of("run"))
        if isinstance(program.destination, str):
            node_names, pods = self._names(nodes)
            if program.destination not in node_names and program.destination not in pods \
                    and program.destination not in self.services:
                raise ScenarioError(fields.path_of("run"), f"destination {_shorten(program.destination)!r} "
                                    "is not an IPv4 address, node" +
                                    (", pod or Service" if self.services else " or pod"))
        stdin = fields.read("stdin", read_stdin, self.source, default=b"")
        return TrafficSpec(source, container, program, fields.read("at", _seconds, default=None), path,
                           background, stdin)

    def _names(self, nodes: list[NodeSpec]) -> tuple[set[str], dict[str, PodSpec]]:
        """Node names and pods by name, made once (a large cluster has 150,000 pods)."""
        if self._known is None:
            self._known = ({node.name for node in nodes}, {pod.name: pod for node in nodes for pod in node.pods})
        return self._known

    def _traffic_source(self, text: str, path: str, nodes: list[NodeSpec]) -> tuple[str, str | None]:
        name, slash, container = text.partition("/")
        node_names, pods = self._names(nodes)
        if name in node_names:
            if slash:
                raise ScenarioError(path, f"{name} is a node; only pods have containers")
            return name, None
        if name not in pods:
            raise ScenarioError(path, f"no node or pod named {_shorten(name)!r}")
        if not slash:
            return name, None
        declared = pods[name].containers
        if container not in declared:
            raise ScenarioError(
                path, f"pod {name} has no container {_shorten(container)!r} (declared: {', '.join(declared) or 'none'})"
            )
        return name, container
