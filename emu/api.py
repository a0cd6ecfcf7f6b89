"""`emu.Cluster`: build an emulated flannel cluster from Python, send frames
into it, run it on its virtual clock and read what every interface saw.

Why: tests of encapsulation, routing and ARP want to say "send this scapy
packet from pod p1a and show me what came out of p2a/eth0", not assemble
the emulator's internals. This module is that entry point, on top of the
scenario layer: a `Cluster` is exactly the cluster `emu run` builds from
the same scenario (same schema, same one-line `ScenarioError`), with every
interface captured in memory, so `write_pcaps()` gives the files `emu run`
writes.

A quick tour::

    from emu import Cluster
    cluster = Cluster.from_file("examples/vxlan-cross-node.yaml")
    cluster.ping("p1a", "p2a")                 # an iputils ping, run to its end
    frames = cluster.captures("n1/flannel.1")  # [(time_ns, bytes), ...]
    frames.scapy().summary()

Names: a node or pod is addressed by its name ("n1", "p1a"), an interface
as "namespace/ifname" ("n1/cni0", "p2a/eth0"). Time is virtual: nothing
runs until `run()`, `run_until_idle()` or `ping()` is called, and the same
calls always give the same frames, byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from emu.capture import CaptureSet
from emu.extras import missing_extra
from emu.iproute_json import fdb_json, neighbour_json, route_json
from emu.net import Bridge, NetDevice, PingResult
from emu.net.device import LINKTYPE_RAW
from emu.net.raw import send_hdrinc
from emu.net.errors import SocketError
from emu.scenario import ScenarioError, load_scenario, load_scenario_document, load_scenario_text
from emu.scenario.build import EmulatedCluster, add_node_later, add_pods, build_cluster
from emu.scenario.model import NodeSpec, Scenario, TrafficSpec
from emu.net.process import ProcessResult
from emu.scenario.traffic import parse_command
from emu.scenario.play import Player, TrafficResult
from emu.scenario.outputs import OutputFolder
from emu.scenario.run import Captures, RunResult, finish_result
from emu.sim import NS_PER_SECOND, SettleError, seconds
from emu.wire.addr import mac_to_str

if TYPE_CHECKING:
    from scapy.plist import PacketList

__all__ = ["Cluster", "Capture", "Command", "Interface", "Node", "Pod", "ScenarioError", "SocketError",
           "SettleError"]

DEFAULT_SETTLE_LIMIT_S = 3600.0
DEFAULT_SETTLE_EVENTS = 10_000_000


class Capture(list):
    """What one interface saw: a list of ``(time_ns, frame_bytes)`` in the
    order the frames passed (both directions, as tcpdump shows them)."""

    def __init__(self, name: str, linktype: int, frames: list[tuple[int, bytes]]) -> None:
        super().__init__(frames)
        self.name = name
        self.linktype = linktype

    def scapy(self) -> "PacketList":
        """The frames as a scapy PacketList: `Ether` packets (raw `IP` for the
        udp backend's TUN `flannel0`), each with `.time` in seconds of virtual
        time and `.sniffed_on` set to the interface name ("p2a/eth0")."""
        layers = _scapy()
        decode = layers.IP if self.linktype == LINKTYPE_RAW else layers.Ether
        packets = []
        for time_ns, frame in self:
            packet = decode(frame)
            packet.time = time_ns / NS_PER_SECOND
            packet.sniffed_on = self.name
            packets.append(packet)
        return layers.PacketList(packets, name=self.name)


class _MemoryPoint:
    """A capture tap keeping frames in memory, in the cluster's one log too
    (so the pcaps written later interleave exactly as `emu run` writes them),
    with each frame's direction (sent by the device, or arrived at it)."""

    with_direction = True

    def __init__(self, log: list, index: int, name: str, linktype: int) -> None:
        self.log = log
        self.index = index
        self.name = name
        self.linktype = linktype
        self.frames: list[tuple[int, bytes]] = []
        self.outgoing: list[bool] = []

    def __call__(self, time_ns: int, frame: bytes, outgoing: bool = False) -> None:
        frame = bytes(frame)
        self.frames.append((time_ns, frame))
        self.outgoing.append(outgoing)
        self.log.append((time_ns, self.index, frame, outgoing))


class _MemoryCaptures:
    """Stands in for a CaptureSet while the cluster runs: one `_MemoryPoint`
    per interface, declared in the order `emu run` declares its points."""

    def __init__(self) -> None:
        self.log: list[tuple[int, int, bytes, bool]] = []
        self.declared: list[tuple[str, str, int, str]] = []
        self.points: dict[str, _MemoryPoint] = {}

    def point(self, namespace: str, ifname: str, linktype: int, description: str) -> _MemoryPoint:
        name = f"{namespace}/{ifname}"
        point = _MemoryPoint(self.log, len(self.declared), name, linktype)
        self.declared.append((namespace, ifname, linktype, description))
        self.points[name] = point  # a re-created interface (a node that re-joined) takes the name over
        return point

    def write(self, out_dir: Path, epoch_ns: int) -> dict[str, int]:
        """Write every frame seen so far as `emu run` writes its captures
        (stamped with the scenario's wall clock, `epoch_ns` at time 0)."""
        capture_set = CaptureSet(out_dir, buffered=True, epoch_ns=epoch_ns)
        points = [capture_set.point(*declared) for declared in self.declared]
        try:
            for time_ns, index, frame, outgoing in self.log:
                points[index].record(time_ns, frame, outgoing)
        finally:
            capture_set.close()
        return {f"{point.namespace}/{point.ifname}": point.frames for point in points if point.frames}


@dataclass(frozen=True)
class Interface:
    """One network interface, named "namespace/ifname" (e.g. "n1/cni0")."""

    cluster: "Cluster"
    name: str

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def ifname(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def device(self) -> NetDevice:
        return self.cluster._device(self.name)

    @property
    def kind(self) -> str:
        """"veth", "bridge", "vxlan", "tun" or "loopback"."""
        return self.device.kind

    @property
    def mac(self) -> str:
        return mac_to_str(self.device.mac)

    @property
    def mtu(self) -> int:
        return self.device.mtu

    def send(self, frame: Any) -> None:
        """`Cluster.send(self, frame)`."""
        self.cluster.send(self, frame)

    def captures(self) -> Capture:
        """`Cluster.captures(self)`."""
        return self.cluster.captures(self)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """Every frame this interface has seen so far, as (time_ns, bytes)."""
        return iter(self.cluster.captures(self))

    def stats(self) -> dict:
        """This interface's counters (rx/tx packets and bytes, named drops)."""
        return self.device.stats.as_dict()


@dataclass(frozen=True)
class _Member:
    cluster: "Cluster"
    name: str

    def __getitem__(self, ifname: str) -> Interface:
        """The interface `ifname` of this namespace (pod["eth0"])."""
        return self.cluster[f"{self.name}/{ifname}"]

    @property
    def interfaces(self) -> list[Interface]:
        return [Interface(self.cluster, f"{self.name}/{name}")
                for name in self.cluster._namespace(self.name).devices]

    def send(self, packet: Any) -> None:
        """`Cluster.send(self, packet)`: an IP packet through this namespace's stack."""
        self.cluster.send(self, packet)

    def routes(self) -> list[dict]:
        return self.cluster.routes(self.name)

    def neighbours(self) -> list[dict]:
        return self.cluster.neighbours(self.name)


@dataclass(frozen=True)
class Pod(_Member):
    """A pod (its pause container's namespace): `ip`, `mac`, `node`, interfaces."""

    @property
    def ip(self) -> IPv4Address:
        return self.cluster._emulated_now().cluster.pods[self.name].ip

    @property
    def mac(self) -> str:
        return mac_to_str(self.cluster._emulated_now().cluster.pods[self.name].mac)

    @property
    def node(self) -> "Node":
        return Node(self.cluster, self.cluster._emulated_now().cluster.pods[self.name].node.name)

    @property
    def host_veth(self) -> Interface:
        """The node's end of the pod's veth pair (enslaved to the CNI bridge)."""
        pod = self.cluster._emulated_now().cluster.pods[self.name]
        return Interface(self.cluster, f"{pod.node.name}/{pod.host_veth}")


@dataclass(frozen=True)
class Node(_Member):
    """A node (its root namespace): `ip`, `subnet` (flannel's lease), `pods`."""

    @property
    def ip(self) -> IPv4Address:
        return self.cluster._emulated_now().cluster.nodes[self.name].ip

    @property
    def subnet(self) -> IPv4Network | None:
        flanneld = self.cluster._emulated_now().flanneld.get(self.name)
        return flanneld.lease.subnet if flanneld is not None and flanneld.lease is not None else None

    @property
    def pods(self) -> list[Pod]:
        node = self.cluster._emulated_now().cluster.nodes[self.name]
        return [Pod(self.cluster, name) for name in node.pods]

    def fdb(self) -> list[dict]:
        return self.cluster.fdb(self.name)


class Command:
    """A traffic command (the scenario schema's `run:`) given to a cluster:
    `done` once it ended, then `result` (a PingResult: `.lines` as iputils
    printed them, `.transmitted`, `.received`) and `output`."""

    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.result: "PingResult | ProcessResult | None" = None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def output(self) -> str:
        """What the command printed, one line per line (empty until done)."""
        if self.result is None:
            return ""
        fatal = getattr(self.result, "fatal", None)  # ping's; nc's errors are in its lines
        return "\n".join(self.result.lines if fatal is None else [fatal])

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<Command {self.spec.source}: {self.spec.command!r} {state}>"


class Cluster:
    """An emulated Kubernetes cluster with flannel, driven from Python.

    Build it from a scenario (`from_file`, `from_yaml`, `from_dict`: the
    schema of `emu run`'s files, documented in the README and examples/),
    or in code::

        cluster = Cluster(backend="vxlan")
        cluster.add_node("n1")
        cluster.add_pod("p1a", node="n1")

    The cluster is built (flannel leases, CNI, every device) the first time
    it is used; nodes and pods added after that join the running cluster.
    With `capture` (the default) every interface is captured in memory.
    """

    def __init__(self, backend: str = "vxlan", *, name: str = "cluster", seed: int = 0,
                 network: str = "10.244.0.0/16", subnet_len: int = 24, mtu: int = 1500,
                 bridge: str = "cni0", hairpin: bool = True, vni: int | None = None,
                 port: int | None = None, direct_routing: bool | None = None,
                 capture: bool = True) -> None:
        """A cluster with no nodes yet. `backend` is flannel's backend type
        ("vxlan", "host-gw" or "udp"); `network`/`subnet_len` flannel's
        net-conf; `mtu` the underlay MTU (172.18.0.0/24); `bridge` and
        `hairpin` the CNI bridge plugin's; `vni`, `port`, `direct_routing`
        the backend's options (flannel's defaults when None). Every value is
        checked, with the file schema's messages, when the cluster is built."""
        backend_conf: dict[str, Any] = {"Type": backend}
        for key, value in (("VNI", vni), ("Port", port), ("DirectRouting", direct_routing)):
            if value is not None:
                backend_conf[key] = value
        document = {
            "name": name, "seed": seed,
            "net-conf": {"Network": network, "SubnetLen": subnet_len, "Backend": backend_conf},
            "underlay": {"mtu": mtu},
            "cni": {"bridge": bridge, "hairpinMode": hairpin},
            "nodes": [],
        }
        self._setup(None, document, "<Cluster>", capture)

    def _setup(self, scenario: Scenario | None, document: dict | None, source: str, capture: bool,
               traffic: bool = True) -> None:
        self._play_scenario = traffic
        self._scenario = scenario
        self._document = document
        self._source = source
        self._capture = capture
        self._emulated: EmulatedCluster | None = None
        self._player: Player | None = None
        self._memory: _MemoryCaptures | None = None
        self._commands: dict[int, Command] = {}

    # -- construction ----------------------------------------------------------
    @classmethod
    def _from_scenario(cls, scenario: Scenario, capture: bool, traffic: bool) -> "Cluster":
        cluster = cls.__new__(cls)
        cluster._setup(scenario, None, scenario.source, capture, traffic)
        return cluster

    @classmethod
    def from_file(cls, path: str | Path, *, capture: bool = True, traffic: bool = True) -> "Cluster":
        """The cluster of a scenario file (`.json` is JSON, anything else
        YAML); raises ScenarioError ("field.path: problem") as `emu run` does.
        With `traffic` (the default) the file's traffic commands and events
        are played when the cluster runs; without, it is the topology only."""
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path: expected a str or Path, got {type(path).__name__}")
        return cls._from_scenario(load_scenario(path), capture, traffic)

    @classmethod
    def from_yaml(cls, text: str, *, capture: bool = True, traffic: bool = True) -> "Cluster":
        """The cluster of scenario text in YAML (JSON is YAML too); see `from_file`."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        return cls._from_scenario(load_scenario_text(text, "yaml"), capture, traffic)

    @classmethod
    def from_dict(cls, document: Mapping, *, capture: bool = True, traffic: bool = True) -> "Cluster":
        """The cluster of a scenario given as the mapping a file would hold; see `from_file`."""
        if not isinstance(document, Mapping):
            raise TypeError(f"document: expected a mapping, got {type(document).__name__}")
        return cls._from_scenario(load_scenario_document(dict(document)), capture, traffic)

    def add_node(self, name: str, *, ip: str | IPv4Address | None = None, mac: str | None = None,
                 subnet: str | IPv4Network | None = None) -> Node:
        """Add a node (the schema's `nodes[]` entry; `ip` defaults to the next
        free underlay address, `subnet` to the one flannel leases). Before the
        cluster is built it becomes part of it; afterwards it joins now, as
        the scenario's `add-node` event does."""
        entry = _without_none({"name": name, "ip": _text(ip), "mac": mac, "subnet": _text(subnet), "pods": []})
        if self._emulated is None:
            self._edit_document()["nodes"].append(entry)
        else:
            spec = self._validated_node(entry)
            add_node_later(self._emulated, spec)
            self._player.notes.append(f"t={self.now:g}s: node {name} added")
            self._nodes_changed()
        return Node(self, name)

    def add_pod(self, name: str, node: str, *, ip: str | IPv4Address | None = None,
                mac: str | None = None, containers: tuple[str, ...] | list[str] = ()) -> Pod:
        """Add a pod on `node` (the schema's `pods[]` entry; `ip` defaults to
        host-local IPAM's next address). After the cluster is built, the CNI
        plugin wires it into the running node now."""
        if not isinstance(node, str):
            raise TypeError(f"node: expected a node name, got {type(node).__name__}")
        entry = _without_none({"name": name, "ip": _text(ip), "mac": mac,
                               "containers": list(containers) or None})
        if self._emulated is None:
            document = self._edit_document()
            for item in document["nodes"]:
                if isinstance(item, dict) and item.get("name") == node:
                    item.setdefault("pods", []).append(entry)
                    break
            else:
                raise ValueError(f"node: no node {node!r} (add_node it first)")
        else:
            if node not in self._emulated.cluster.nodes:
                raise ValueError(f"node: no node {node!r} in the cluster")
            spec = self._validated_pod(node, entry)
            add_pods(self._emulated, spec)
            self._nodes_changed()
        return Pod(self, name)

    # -- names -------------------------------------------------------------------
    def __getitem__(self, name: str) -> "Pod | Node | Interface":
        """`cluster["p1a"]` (a Pod), `cluster["n1"]` (a Node) or
        `cluster["n1/cni0"]` (an Interface); KeyError for an unknown name."""
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__}")
        if "/" in name:
            self._device(name)
            return Interface(self, name)
        emulated = self._emulated_now()
        if name in emulated.cluster.pods:
            return Pod(self, name)
        if name in emulated.cluster.nodes:
            return Node(self, name)
        raise KeyError(f"no node or pod named {name!r} (nodes: {', '.join(emulated.cluster.nodes)}; "
                       f"pods: {', '.join(emulated.cluster.pods) or 'none'})")

    def pod(self, name: str) -> Pod:
        """The pod `name` (KeyError if there is none)."""
        member = self[name]
        if not isinstance(member, Pod):
            raise KeyError(f"{name!r} is not a pod")
        return member

    def node(self, name: str) -> Node:
        """The node `name` (KeyError if there is none)."""
        member = self[name]
        if not isinstance(member, Node):
            raise KeyError(f"{name!r} is not a node")
        return member

    @property
    def nodes(self) -> list[Node]:
        return [Node(self, name) for name in self._emulated_now().cluster.nodes]

    @property
    def pods(self) -> list[Pod]:
        return [Pod(self, name) for name in self._emulated_now().cluster.pods]

    @property
    def interfaces(self) -> list[Interface]:
        """Every interface of every node and pod, nodes first."""
        return [Interface(self, f"{ns.name}/{dev}") for ns in self._emulated_now().cluster.namespaces()
                for dev in ns.devices]

    @property
    def scenario(self) -> Scenario:
        """The validated scenario the cluster was built from."""
        self._emulated_now()
        return self._scenario

    # -- sending -----------------------------------------------------------------
    def send(self, where: "str | Interface | Pod | Node", frame: Any) -> None:
        """Send `frame` now, from `where`.

        At an interface ("p1a/eth0"): bytes or a scapy `Ether()` packet leave
        through it as written (a packet socket; raw IPv4 for a TUN such as
        flannel0); a scapy `IP()` packet goes through the namespace's stack
        out of that interface. At a node or pod ("p1a"): an IPv4 packet
        (bytes or scapy `IP()`) goes through the stack, routed as any local
        packet. Through the stack the packet gets the Ethernet header the
        namespace's route and neighbour decision gives it (ARP first if the
        next hop is unknown), as a raw IP_HDRINCL socket sends it; its total
        length and header checksum are filled in.

        Nothing moves until the cluster runs (`run`, `run_until_idle`).
        Raises TypeError/ValueError naming the argument, KeyError for an
        unknown name, SocketError for what the kernel refuses (EMSGSIZE,
        ENETUNREACH)."""
        name = _where(where)
        data, ip_level = _frame_bytes(frame)
        if "/" in name:
            dev = self._device(name)
            if ip_level:
                send_hdrinc(dev.namespace, data, oif=dev)
            else:
                dev.transmit(data)
            return
        ns = self._namespace(name)
        if ip_level is False and not isinstance(frame, (bytes, bytearray, memoryview)):
            raise ValueError(f"frame: an Ethernet frame is sent at an interface ({name}/eth0), not at "
                             f"namespace {name}")
        send_hdrinc(ns, data)

    def command(self, source: str, run: str, *, at: float | None = None,
                stdin: bytes | str = b"") -> Command:
        """Give the cluster a traffic command, as the scenario's `traffic:`
        entry `{from: source, run: ..., at: ..., stdin: ...}`: it starts at
        `at` (seconds, absolute), or when the commands given before it have
        ended (a `... &` one runs in the background). `run` is a ping or nc
        line; `stdin` the process's standard input. Returns a Command to
        read once it is done. `source` is a node, pod or "pod/container"; a
        destination name is resolved when it starts."""
        if not isinstance(source, str):
            raise TypeError(f"source: expected a node or pod name, got {type(source).__name__}")
        if not isinstance(run, str):
            raise TypeError(f"run: expected the command text, got {type(run).__name__}")
        if at is not None:
            _check_seconds(at, "at")
        emulated = self._emulated_now()
        pod_name, _, container = source.partition("/")
        if emulated.cluster.namespace(pod_name) is None:
            raise ValueError(f"source: no node or pod named {pod_name!r}")
        if container and (pod_name not in emulated.cluster.pods
                          or container not in emulated.cluster.pods[pod_name].containers):
            raise ValueError(f"source: pod {pod_name} has no container {container!r}")
        if not isinstance(stdin, (bytes, str)):
            raise TypeError(f"stdin: expected bytes or text, got {type(stdin).__name__}")
        program, background = parse_command(run, "run")
        spec = TrafficSpec(pod_name, container or None, program, at, f"command[{len(self._commands)}]",
                           background, stdin.encode() if isinstance(stdin, str) else bytes(stdin))
        command = Command(spec)
        self._commands[id(spec)] = command
        self._player.add_command(spec)
        return command

    def ping(self, source: str, destination: "str | IPv4Address | Pod | Node", options: str = "-c 1") -> PingResult:
        """Run iputils `ping OPTIONS DESTINATION` from `source` to its end
        and return its PingResult (`.lines` as ping printed them,
        `.transmitted`, `.received`). `destination` is an address or a node
        or pod name; `options` any of the ping options the schema accepts."""
        if isinstance(destination, (Pod, Node)):
            destination = destination.name
        target = _text(destination)
        if not isinstance(target, str):
            raise TypeError(f"destination: expected an address or a name, got {type(destination).__name__}")
        if not isinstance(options, str):
            raise TypeError(f"options: expected a str such as '-c 2 -s 100', got {type(options).__name__}")
        command = self.command(source, f"ping {options} {target}".replace("  ", " "))
        self._run_until(lambda: command.done)
        return command.result

    # -- netfilter -----------------------------------------------------------------
    def iptables_restore(self, name: str, rules: str) -> None:
        """`iptables-restore` in node or pod `name`: each `*table ... COMMIT`
        block of `rules` (iptables-save text) replaces that table, and the
        namespace's hooks run from now on. Raises
        emu.net.netfilter.RulesError ("line N: ...") for a line it refuses."""
        if not isinstance(rules, str):
            raise TypeError(f"rules: expected iptables-restore text, got {type(rules).__name__}")
        self._namespace(name).netfilter.load(rules)

    def netfilter(self, name: str) -> dict:
        """What `iptables -L -v -n -x` (per table: chains, policies, rule
        counters) and `conntrack -L` show in node or pod `name` now."""
        return self._namespace(name).netfilter.show(self.now_ns)

    # -- time ----------------------------------------------------------------------
    @property
    def now_ns(self) -> int:
        """Virtual time in nanoseconds."""
        return self._emulated_now().sim.now_ns

    @property
    def now(self) -> float:
        """Virtual time in seconds."""
        return self.now_ns / NS_PER_SECOND

    def run(self, for_: float | None = None) -> None:
        """Run the cluster. With `for_` (seconds), for exactly that much
        virtual time: every event in it runs and the clock ends `for_` later.
        Without, as `emu run` runs a scenario: until every traffic command
        and event given so far has ended and its instant is fully processed,
        then the scenario's `linger`."""
        emulated = self._emulated_now()
        if for_ is not None:
            _check_seconds(for_, "for_")
            emulated.sim.run(until_ns=emulated.sim.now_ns + seconds(for_))
            return
        emulated.sim.run(stop=self._player.finished)
        if self._scenario.linger:
            emulated.sim.run(until_ns=emulated.sim.now_ns + seconds(self._scenario.linger))

    def run_until_idle(self, max_seconds: float = DEFAULT_SETTLE_LIMIT_S,
                       max_events: int | None = DEFAULT_SETTLE_EVENTS) -> None:
        """Run until no event is left that can change a frame: every command
        has ended, every ARP retry and probe, reassembly timeout and
        flanneld message has happened. Timers that only expire state (lease
        renewals, neighbour entries going STALE) do not keep it running;
        they run in their turn when the cluster runs again. Raises
        SettleError, naming the next event, rather than go past
        `max_seconds` of virtual time or `max_events` events (a ping with a
        huge count cannot settle)."""
        _check_seconds(max_seconds, "max_seconds")
        if max_events is not None and (not isinstance(max_events, int) or max_events < 1):
            raise ValueError(f"max_events: expected a positive integer or None, got {max_events!r}")
        self._emulated_now().sim.run_until_settled(seconds(max_seconds), max_events)

    # -- reading -----------------------------------------------------------------
    def captures(self, where: "str | Interface") -> Capture:
        """Every frame interface `where` ("p2a/eth0") has seen so far, in
        order, as a list of (time_ns, bytes); `.scapy()` decodes them."""
        name = _where(where)
        if "/" not in name:
            raise ValueError(f"where: captures are per interface, e.g. {name}/eth0")
        dev = self._device(name)
        point = self._memory.points.get(name) if self._memory is not None else None
        if point is None:
            raise RuntimeError("captures are off: build the cluster with capture=True")
        return Capture(name, dev.linktype, point.frames)

    def received(self, where: "str | Interface") -> Iterator[tuple[int, bytes]]:
        """The frames that arrived at interface `where` (from its wire, its
        peer, or for a VXLAN or TUN device from its tunnel), as (time_ns,
        bytes): the part of `captures(where)` Linux marks incoming."""
        return self._direction(where, received=True)

    def sent(self, where: "str | Interface") -> Iterator[tuple[int, bytes]]:
        """The frames interface `where` sent out, as (time_ns, bytes): the
        part of `captures(where)` Linux marks PACKET_OUTGOING."""
        return self._direction(where, received=False)

    def stats(self) -> dict:
        """The stats.json document `emu run` writes, as a dict: per-device
        counters and named drops, routes, neighbours, FDBs, flannel leases,
        subnet.env, the commands' output."""
        emulated = self._emulated_now()
        result = RunResult(self._scenario, None)
        finish_result(emulated, self._player, result)
        return result.stats

    def fdb(self, where: "str | Interface | Node") -> list[dict]:
        """A forwarding database as `bridge -j fdb show` prints it: of one
        bridge or VXLAN device ("n1/cni0", "n1/flannel.1"), or every one in
        a node ("n1")."""
        name = _where(where)
        if "/" in name:
            devices = [self._device(name)]
        else:
            devices = list(self._namespace(name).devices.values())
        now = self.now_ns
        lines = []
        for dev in devices:
            if isinstance(dev, Bridge):
                lines.extend(dev.fdb.show(dev.name, now))
            elif hasattr(dev, "fdb_show"):
                lines.extend(dev.fdb_show())
            elif "/" in name:
                raise ValueError(f"where: {name} is a {dev.kind}, which has no forwarding database")
        return [fdb_json(line) for line in lines]

    def neighbours(self, where: "str | Interface | Pod | Node") -> list[dict]:
        """A namespace's ARP table ("n1") or one device's ("n1/eth0"), as
        `ip -j neigh show` prints it."""
        name = _where(where)
        if "/" in name:
            dev = self._device(name)
            lines = dev.namespace.neighbours(dev).show()
        else:
            lines = self._namespace(name).show_neighbours()
        return [neighbour_json(line) for line in lines]

    def routes(self, where: "str | Pod | Node") -> list[dict]:
        """A namespace's main routing table as `ip -j route show` prints it."""
        name = _where(where)
        if "/" in name:
            raise ValueError(f"where: routes belong to a namespace, e.g. {name.split('/')[0]}")
        return [route_json(line) for line in self._namespace(name).show_routes()]

    def write_pcaps(self, out_dir: str | Path) -> dict[str, int]:
        """Write what `emu run` writes into `out_dir` (created if needed; the
        files a previous run wrote there are replaced): a pcap per interface
        that saw traffic, all.pcapng, stats.json; a file emu did not write
        is never touched (ScenarioError if a name collides). Returns the frame count per
        capture point ("n1/eth0": 4)."""
        if not isinstance(out_dir, (str, Path)):
            raise TypeError(f"out_dir: expected a str or Path, got {type(out_dir).__name__}")
        stats = self.stats()
        if self._memory is None:
            raise RuntimeError("captures are off: build the cluster with capture=True")
        folder = OutputFolder(out_dir)  # only files emu wrote there are replaced
        staging = folder.open([])
        counts = self._memory.write(staging, self._emulated.sim.epoch_ns)
        (staging / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        folder.commit()
        return counts

    # -- internals -----------------------------------------------------------------
    def _edit_document(self) -> dict:
        if self._document is None:
            raise RuntimeError("this cluster came from a scenario; add nodes and pods once it runs")
        return self._document

    def _emulated_now(self) -> EmulatedCluster:
        """The running cluster, built on first use."""
        if self._emulated is None:
            if self._scenario is None:
                self._scenario = load_scenario_document(self._document, self._source)
            emulated = build_cluster(self._scenario)
            self._player = Player(emulated)
            self._player.on_command_done.append(self._command_done)
            if self._capture:
                self._memory = _MemoryCaptures()
                self._attach = Captures(self._memory, emulated)
                self._attach.attach_all()
                self._player.on_nodes_changed.append(self._attach.attach_all)
            self._emulated = emulated
            if self._play_scenario:
                self._player.play(self._scenario)
        return self._emulated

    def _nodes_changed(self) -> None:
        for callback in self._player.on_nodes_changed:
            callback()

    def _command_done(self, result: TrafficResult) -> None:
        command = self._commands.get(id(result.spec))
        if command is not None:
            command.result = result.ping

    def _run_until(self, condition) -> None:
        sim = self._emulated_now().sim

        def stop() -> bool:
            following = sim.next_time()
            return condition() and (following is None or following > sim.now_ns)

        if not stop():
            sim.run(stop=stop)

    def _namespace(self, name: str):
        ns = self._emulated_now().cluster.namespace(name)
        if ns is None:
            raise KeyError(f"no node or pod named {name!r}")
        return ns

    def _device(self, name: str) -> NetDevice:
        namespace, _, ifname = name.partition("/")
        ns = self._namespace(namespace)
        if ifname not in ns.devices:
            raise KeyError(f"{namespace} has no interface {ifname!r} (it has {', '.join(ns.devices)})")
        return ns.devices[ifname]

    def _validated_node(self, entry: dict) -> NodeSpec:
        """A node entry checked against the running cluster's scenario, as an
        `add-node` event of it would be."""
        document = self._running_document()
        document["events"] = [{"at": 0, "add-node": entry}]
        return load_scenario_document(document, "add_node").events[0].add_node

    def _validated_pod(self, node: str, entry: dict) -> NodeSpec:
        """The node's spec holding just the new pod, checked as part of it."""
        document = self._running_document()
        emulated = self._emulated
        target = next(item for item in document["nodes"] if item["name"] == node)
        target["subnet"] = str(emulated.flanneld[node].lease.subnet)
        target["pods"] = [entry]
        spec = next(n for n in load_scenario_document(document, "add_pod").nodes if n.name == node)
        pod = spec.pods[0]
        if pod.name in emulated.cluster.pods or pod.name in emulated.cluster.nodes:
            raise ScenarioError(pod.path + ".name", f"name {pod.name} is taken")
        return spec

    def _running_document(self) -> dict:
        """The scenario's settings with the nodes that exist now (names,
        addresses), without traffic: the base to validate an addition."""
        scenario = self._scenario
        net = scenario.net_conf
        emulated = self._emulated
        nodes = [{"name": node.name, "ip": str(node.ip), "mac": mac_to_str(node.mac), "pods": []}
                 for node in emulated.cluster.nodes.values()]
        return {"name": scenario.name, "seed": scenario.seed, "net-conf": dict(net.raw),
                "underlay": {"subnet": str(scenario.underlay.subnet), "mtu": scenario.underlay.mtu},
                "cni": {"bridge": scenario.cni.bridge, "hairpinMode": scenario.cni.hairpin_mode,
                        **({"mtu": scenario.cni.mtu} if scenario.cni.mtu is not None else {})},
                "nodes": nodes}

    def _direction(self, where, received: bool) -> Iterator[tuple[int, bytes]]:
        name = _where(where)
        self.captures(name)  # the same checks
        point = self._memory.points[name]
        frames, outgoing = point.frames, point.outgoing
        return (frames[k] for k in range(len(frames)) if outgoing[k] is not received)

    def __repr__(self) -> str:
        if self._emulated is None:
            return f"<Cluster {self._source} (not built yet)>"
        cluster = self._emulated.cluster
        return (f"<Cluster {self._scenario.name}: {len(cluster.nodes)} nodes, {len(cluster.pods)} pods, "
                f"t={self.now:g}s>")


# -- argument checks ---------------------------------------------------------------

def _scapy():
    """scapy's layers, imported on first use: only `.scapy()` and sending
    scapy packets need it, so scapy is the `[scapy]` extra, not a dependency."""
    try:
        from scapy.layers.inet import IP
        from scapy.layers.l2 import Ether
        from scapy.packet import Packet
        from scapy.plist import PacketList
    except ImportError as error:
        raise missing_extra("scapy", "emu's scapy interop (Capture.scapy())", error) from None

    class Layers:
        pass

    layers = Layers()
    layers.IP, layers.Ether, layers.Packet, layers.PacketList = IP, Ether, Packet, PacketList
    return layers


def _frame_bytes(frame: Any) -> tuple[bytes, bool | None]:
    """The frame's bytes, and whether it is an IP-level packet (True), an
    Ethernet one (False), or raw bytes whose meaning the place decides (None)."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame), None
    module = type(frame).__module__ or ""
    if module.startswith("scapy"):
        layers = _scapy()
        if isinstance(frame, layers.Ether):
            return bytes(frame), False
        if isinstance(frame, layers.IP):
            return bytes(frame), True
        if isinstance(frame, layers.Packet):
            raise ValueError(f"frame: a scapy {type(frame).__name__} packet is neither Ether() nor IP(); "
                             "put it in one (Ether()/..., IP()/...)")
    raise TypeError(f"frame: expected bytes or a scapy packet, got {type(frame).__name__}")


def _where(where: Any) -> str:
    if isinstance(where, (Interface, Pod, Node)):
        return where.name
    if isinstance(where, str):
        return where
    raise TypeError(f"where: expected a name such as 'p1a' or 'n1/cni0', got {type(where).__name__}")


def _text(value: Any) -> Any:
    """Addresses may be given as text or ipaddress objects."""
    if isinstance(value, (IPv4Address, IPv4Network)):
        return str(value)
    return value


def _without_none(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if value is not None}


def _check_seconds(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected seconds as a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number of seconds >= 0, got {value!r}")
