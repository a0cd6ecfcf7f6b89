"""The one cluster every end-to-end benchmark uses, and its addresses.

The emulator cases, the scapy and dpkt re-implementations and the kernel
cases must all move the same frames through the same topology, or their
ratios mean nothing. So the topology is written once, as an inline scenario
(two nodes on one underlay switch, pods p1a and p1b on n1, p2a on n2, fixed
subnets and addresses), and the naive baselines read every address they need
from the cluster the emulator builds from it, never a second copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.net import Ping, PingResult, UdpSocket
from emu.scenario import load_scenario_text
from emu.scenario.build import EmulatedCluster, build_cluster
from emu.scenario.model import Scenario
from emu.sim import seconds

BACKENDS = ("vxlan", "host-gw", "udp")
SOURCE_POD = "p1a"
SAME_NODE_POD = "p1b"
REMOTE_POD = "p2a"
RECEIVER_PORT = 5001
PAYLOAD_LEN = 64  # UDP payload bytes, as the kernel's sendmmsg sender sends

_SCENARIO = """
name: bench-{backend}
net-conf:
  Network: 10.244.0.0/16
  SubnetLen: 24
  Backend: {{Type: {backend}}}
underlay: {{subnet: 172.18.0.0/24, mtu: 1500}}
nodes:
  - name: n1
    ip: 172.18.0.11
    subnet: 10.244.1.0/24
    pods:
      - {{name: p1a, ip: 10.244.1.2}}
      - {{name: p1b, ip: 10.244.1.3}}
  - name: n2
    ip: 172.18.0.12
    subnet: 10.244.2.0/24
    pods:
      - {{name: p2a, ip: 10.244.2.2}}
traffic: []
"""


def scenario_text(backend: str) -> str:
    """The benchmark cluster's scenario file with flannel's `backend` (no traffic)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    return _SCENARIO.format(backend=backend)


def scenario(backend: str) -> Scenario:
    """The benchmark cluster with flannel's `backend` (vxlan, host-gw or udp)."""
    return load_scenario_text(scenario_text(backend))


def build(backend: str) -> EmulatedCluster:
    """The benchmark cluster, built and running at virtual time 0."""
    return build_cluster(scenario(backend))


@dataclass(frozen=True)
class VxlanChain:
    """Every address a pod->pod frame meets on its way across the VXLAN
    backend: the hop-by-hop baselines rewrite frames with exactly these."""

    pod_mac: bytes          # p1a eth0
    gateway1_mac: bytes     # n1 cni0, the pod's default gateway
    vtep1_mac: bytes        # n1 flannel.1
    vtep2_mac: bytes        # n2 flannel.1
    node1_mac: bytes        # n1 eth0
    node2_mac: bytes        # n2 eth0
    node1_ip: bytes
    node2_ip: bytes
    gateway2_mac: bytes     # n2 cni0
    remote_pod_mac: bytes   # p2a eth0
    remote_pod_ip: bytes
    vni: int
    port: int
    vtep1_mtu: int          # n1 flannel.1: the route to p2a's subnet
    gateway2_mtu: int       # n2 cni0: the route to p2a
    node1_next_ident: int   # the IPv4 identifier n1's stack gives its next packet


def vxlan_chain(emulated: EmulatedCluster) -> VxlanChain:
    """Read the chain's addresses (and n1's next IPv4 identifier) from a
    cluster built by `build("vxlan")`."""
    nodes = emulated.cluster.nodes
    pods = emulated.cluster.pods
    n1, n2 = nodes["n1"], nodes["n2"]
    vtep1, vtep2 = n1.ns.device("flannel.1"), n2.ns.device("flannel.1")
    return VxlanChain(
        pod_mac=pods[SOURCE_POD].mac, gateway1_mac=n1.cni.bridge.mac,
        vtep1_mac=vtep1.mac, vtep2_mac=vtep2.mac,
        node1_mac=n1.mac, node2_mac=n2.mac, node1_ip=n1.ip.packed, node2_ip=n2.ip.packed,
        gateway2_mac=n2.cni.bridge.mac, remote_pod_mac=pods[REMOTE_POD].mac,
        remote_pod_ip=pods[REMOTE_POD].ip.packed, vni=vtep1.vni, port=vtep1.port,
        vtep1_mtu=vtep1.mtu, gateway2_mtu=n2.cni.bridge.mtu,
        node1_next_ident=n1.ns.stack.reserve_idents(0))


@dataclass
class RecordedTraffic:
    """What `record_traffic` saw: the frames the source pod's eth0 sent and
    the frames the destination pod's eth0 received, in order."""

    sent: list[bytes]
    delivered: list[bytes]


def record_traffic(emulated: EmulatedCluster, destination: str, count: int,
                   settle_s: float = 2.0) -> RecordedTraffic:
    """Prime ARP with one ping from p1a to `destination`, then send `count`
    UDP datagrams (PAYLOAD_LEN bytes each, to RECEIVER_PORT) from a socket
    in p1a and record both pods' eth0 frames while the scheduler drains.

    The frames to replay are then exactly what the pod's stack puts on the
    wire. The caller binds the receiving socket first, if it wants one.
    Raises RuntimeError when the ping gets no reply.
    """
    sim = emulated.sim
    pods = emulated.cluster.pods
    source, target = pods[SOURCE_POD], pods[destination]
    done: list[PingResult] = []
    Ping(source.ns, str(target.ip), 1, timeout_s=1).start(done.append)
    sim.run(until_ns=sim.now_ns + seconds(settle_s), stop=lambda: bool(done))
    if not done or done[0].received != 1:
        raise RuntimeError(f"the priming ping from {SOURCE_POD} to {destination} got no reply")
    recorded = RecordedTraffic([], [])
    source_eth0, target_eth0 = source.ns.device("eth0"), target.ns.device("eth0")
    source_eth0.taps.append(lambda _now, frame: recorded.sent.append(bytes(frame)))
    target_eth0.taps.append(lambda _now, frame: recorded.delivered.append(bytes(frame)))
    sender = UdpSocket(source.ns)
    for index in range(count):
        payload = index.to_bytes(4, "big") * (PAYLOAD_LEN // 4)
        sender.sendto(payload, (target.ip.packed, RECEIVER_PORT))
    sim.run(until_ns=sim.now_ns)
    source_eth0.taps.pop()
    target_eth0.taps.pop()
    return recorded


def frames_at_every_point(emulated: EmulatedCluster, frame: bytes) -> list[tuple[str, bytes]]:
    """Send `frame` out of p1a's eth0 on the slow path and return every frame
    every device's taps were shown while the instant drains, in order, as
    ("namespace/device", bytes): the reference for what a case or a baseline
    must build for one datagram. Taps already attached see it too."""
    seen: list[tuple[str, bytes]] = []
    tapped = []
    for ns in emulated.cluster.namespaces():
        for dev in ns.devices.values():
            def tap(_now: int, data: bytes, name: str = f"{ns.name}/{dev.name}") -> None:
                seen.append((name, bytes(data)))
            dev.taps.append(tap)
            tapped.append((dev, tap))
    sim = emulated.sim
    try:
        emulated.cluster.pods[SOURCE_POD].ns.device("eth0").transmit(frame)
        sim.run(until_ns=sim.now_ns)
    finally:
        for dev, tap in tapped:
            dev.taps.remove(tap)
    return seen


def pod_ip(scenario: Scenario, pod: str) -> str:
    """The address the scenario gives `pod` (every benchmark pod has a fixed one)."""
    for node in scenario.nodes:
        for spec in node.pods:
            if spec.name == pod:
                return str(spec.ip)
    raise ValueError(f"pod: {pod!r} is not in scenario {scenario.name}")
