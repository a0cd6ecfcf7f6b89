"""Small builders shared by the node-local tests (bridge, pods, ARP, ICMP, IPAM, drops).

Why: each test should state only what it checks, so the topologies
("two pods on one node", "a bare bridge with N wired ports") and the frame
collector (a capture tap that keeps what it sees) live here once. Expected
values are never computed by this module: the tests decode collected frames
with scapy and compare them with numbers they write down themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scapy.layers.inet import ICMP
from scapy.layers.l2 import ARP, Ether

from emu.net import Bridge, Namespace, NetDevice, Ping, PingResult, Veth, veth_pair
from emu.scenario import load_scenario_text
from emu.scenario.build import EmulatedCluster, build_cluster
from emu.sim import Scheduler, seconds


class Collector:
    """A capture tap: keeps (virtual time ns, frame bytes) for every frame seen."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def __call__(self, time_ns: int, frame: bytes) -> None:
        self.frames.append((time_ns, bytes(frame)))

    def __len__(self) -> int:
        return len(self.frames)

    def raw(self) -> list[bytes]:
        return [frame for _, frame in self.frames]

    def ether(self) -> list[Ether]:
        """Every frame decoded by scapy (the independent reference decoder)."""
        return [Ether(frame) for _, frame in self.frames]

    def clear(self) -> None:
        self.frames.clear()


def collect(dev: NetDevice) -> Collector:
    """Attach a new Collector to `dev` (like tcpdump -i DEV) and return it."""
    collector = Collector()
    dev.taps.append(collector)
    return collector


def arp_frames(collector: Collector) -> list[Ether]:
    return [f for f in collector.ether() if ARP in f]


def icmp_frames(collector: Collector) -> list[Ether]:
    return [f for f in collector.ether() if ICMP in f]


def run_ping(ns: Namespace, destination: str, count: int, interval_s: float = 1.0, **options) -> PingResult:
    """Run one iputils-like ping to completion on the namespace's scheduler."""
    results: list[PingResult] = []
    Ping(ns, destination, count, interval_s, **options).start(results.append)
    ns.sim.run(stop=lambda: bool(results))
    assert results, "ping never finished"
    return results[0]


def advance(sim: Scheduler, seconds_: float) -> None:
    """Let virtual time pass (and every event due in it run)."""
    sim.run(until_ns=sim.now_ns + seconds(seconds_))


# -- a bare bridge with wired ports -------------------------------------------------

MAC_BRIDGE = bytes.fromhex("0a580a000001")


def host_mac(index: int) -> bytes:
    """MAC of the host on the far end of port `index` (02:00:00:00:00:1N)."""
    return bytes.fromhex(f"0200000000{0x10 + index:02x}")


@dataclass
class BridgeLab:
    """A bridge `br0` with ports port0..portN-1; each port's veth peer (the
    "host" end, left without a namespace) has a Collector, so `seen[i]` is
    exactly what left the bridge through port i."""

    sim: Scheduler
    ns: Namespace
    bridge: Bridge
    ports: list[Veth]
    hosts: list[Veth]
    seen: list[Collector] = field(default_factory=list)

    def send_from(self, index: int, frame: bytes) -> None:
        """`frame` arrives on port `index` from its wire (as if host `index` sent it)."""
        self.ports[index].receive(frame)
        self.sim.run()

    def clear(self) -> None:
        for collector in self.seen:
            collector.clear()


def bridge_lab(n_ports: int = 3, hairpin: tuple[int, ...] = (), ageing_s: float | None = None) -> BridgeLab:
    sim = Scheduler()
    ns = Namespace(sim, "lab")
    options = {} if ageing_s is None else {"ageing_ns": seconds(ageing_s)}
    bridge = Bridge(sim, "br0", MAC_BRIDGE, **options)
    ns.add_device(bridge)
    ports, hosts, seen = [], [], []
    for index in range(n_ports):
        host, port = veth_pair(sim, f"host{index}", host_mac(index), f"port{index}",
                               bytes.fromhex(f"0200000000{0xa0 + index:02x}"))
        ns.add_device(port)
        bridge.add_port(port, hairpin=index in hairpin)
        ports.append(port)
        hosts.append(host)
        seen.append(collect(host))
    return BridgeLab(sim, ns, bridge, ports, hosts, seen)


def ether_frame(dst: bytes, src: bytes, ethertype: int = 0x88B5, payload: bytes = b"x" * 46) -> bytes:
    """A minimal Ethernet frame (0x88b5 is the IEEE local experimental type)."""
    return dst + src + ethertype.to_bytes(2, "big") + payload


# -- clusters from scenario text ---------------------------------------------------

TWO_NODES = """
name: lab
net-conf: {{Network: 10.244.0.0/16, SubnetLen: {subnet_len}, Backend: {{Type: {backend}}}}}
underlay: {{subnet: 172.18.0.0/24, mtu: 1500}}
cni: {{bridge: cni0, mtu: {mtu}, hairpinMode: {hairpin}}}
nodes:
  - name: n1
    ip: 172.18.0.11
    mac: 02:42:ac:12:00:0b
    subnet: 10.244.1.0/{subnet_len}
    pods:
      - {{name: p1a, ip: 10.244.1.2, host-veth: veth1a, host-veth-mac: ee:ee:00:00:01:0a}}
      - {{name: p1b, ip: 10.244.1.3, host-veth: veth1b, host-veth-mac: ee:ee:00:00:01:0b,
         containers: [app, sidecar]}}
  - name: n2
    ip: 172.18.0.12
    mac: 02:42:ac:12:00:0c
    subnet: 10.244.2.0/{subnet_len}
    pods:
      - {{name: p2a, ip: 10.244.2.2, host-veth: veth2a, host-veth-mac: ee:ee:00:00:02:0a}}
traffic:
{traffic}
"""


def two_nodes_yaml(backend: str = "host-gw", hairpin: str = "true", mtu: str = "auto",
                   subnet_len: int = 24, traffic: str = "  - {from: p1a, run: ping -c 1 10.244.1.3}") -> str:
    """The reference cluster shape (n1 with p1a, p1b; n2 with p2a) as scenario text."""
    return TWO_NODES.format(backend=backend, hairpin=hairpin, mtu=mtu, subnet_len=subnet_len,
                            traffic=traffic)


def two_nodes(**options) -> EmulatedCluster:
    """The cluster of `two_nodes_yaml(**options)`, built and idle at time zero."""
    return build_cluster(load_scenario_text(two_nodes_yaml(**options)))
