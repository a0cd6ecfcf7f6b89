"""Run a scenario on the real kernel and hold the emulator against it.

``run_kernel`` brings the exported cluster up, opens a capture on every
interface of every node and pod namespace, plays the scenario's ping
commands with the real iputils ping in their namespaces (``at:`` times and
sequencing as in the scenario), lets the last frames arrive, and tears
everything down again, also on failure or interrupt. ``verify_kernel`` then
runs the same scenario in the emulator and compares the two folders with
``compare_dirs``, the comparison of ``emu verify``.

Captures are AF_PACKET sockets opened inside each namespace (setns), not
tcpdump processes: a socket is capturing the moment it is bound, so traffic
can start without waiting for anyone to say "listening", and the last frame
is in its queue when ping exits. They behave like tcpdump's: every frame in
both directions, the interface in promiscuous mode (so a bridge device shows
the frames it forwards), outgoing copies on loopback skipped (libpcap does
that, each packet is also seen coming in), Ethernet or raw-IP linktype by
device type. A point that saw nothing gets no file, like the kernel
reference captures.

Network safety: every command runs inside a namespace the run created, the
namespaces are only linked to each other, and ``down`` removes them with
every process still inside them.
"""

from __future__ import annotations

import ctypes
import os
import select
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from emu.capture import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapWriter
from emu.kernel.export import NetnsExport, export_netns
from emu.scenario.build import build_cluster
from emu.scenario.model import Scenario, TrafficSpec
from emu.verify import Report, compare_dirs

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
ARPHRD_NONE = 0xFFFE  # TUN devices: raw IP, no link header
CLONE_NEWNET = 0x40000000
SNAPLEN = 262144
RECEIVE_BUFFER = 4 << 20
SETTLE_S = 0.3  # quiet time after the last command, for frames still on their way
COMMAND_MARGIN_S = 30.0
REQUIRED_TOOLS = ("ip", "bridge", "ping", "setsid", "sysctl")


class KernelError(Exception):
    """The real cluster could not be built or run (one line, for the user)."""


def kernel_unavailable() -> str | None:
    """Why this machine cannot run scenarios on the kernel (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if not os.path.exists("/dev/net/tun"):
        return "missing /dev/net/tun"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace `name` (sockets
    created inside stay in it), then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


@dataclass
class _Point:
    name: str
    sock: socket.socket
    loopback: bool
    linktype: int
    path: Path
    writer: PcapWriter | None = None
    frames: int = 0

    def record(self, frame: bytes, pkttype: int) -> None:
        if self.loopback and pkttype == PACKET_OUTGOING:
            return
        if self.writer is None:
            self.writer = PcapWriter(self.path, self.linktype)
        self.writer.write(time.time_ns(), frame[:SNAPLEN])
        self.frames += 1


class PacketCaptures:
    """One AF_PACKET capture per interface, written to `<ns>_<ifname>.pcap`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.points: list[_Point] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self, real_ns: str, point_ns: str, ifname: str) -> None:
        """Start capturing `ifname` of namespace `real_ns` (file named after `point_ns`)."""
        with in_netns(real_ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                sock.bind((ifname, ETH_P_ALL))
                index = socket.if_nametoindex(ifname)
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                                struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
            except OSError:
                sock.close()
                raise
        hatype = sock.getsockname()[3]
        linktype = LINKTYPE_RAW if hatype == ARPHRD_NONE else LINKTYPE_ETHERNET
        sock.setblocking(False)
        name = f"{point_ns}_{ifname}"
        self.points.append(_Point(name, sock, ifname == "lo", linktype,
                                  self.out_dir / f"{name}.pcap"))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="emu-captures", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        by_fd = {point.sock.fileno(): point for point in self.points}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            for fd, _ in poller.poll(50):
                self._drain(by_fd[fd])

    @staticmethod
    def _drain(point: _Point) -> None:
        while True:
            try:
                frame, address = point.sock.recvfrom(SNAPLEN)
            except BlockingIOError:
                return
            point.record(frame, address[2])

    def stop(self) -> None:
        """Stop the loop, take what is still queued, close everything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for point in self.points:
            self._drain(point)
            point.sock.close()
            if point.writer is not None:
                point.writer.close()

    def counts(self) -> dict[str, int]:
        """Frames per capture point that saw traffic."""
        return {point.name: point.frames for point in self.points if point.frames}


@dataclass
class CommandRun:
    """One traffic command as the kernel ran it."""

    source: str
    command: str
    returncode: int
    output: str


@dataclass
class KernelRun:
    """The result of a scenario on the kernel: captures in `out_dir`."""

    out_dir: Path
    prefix: str
    commands: list[CommandRun] = field(default_factory=list)
    capture_counts: dict[str, int] = field(default_factory=dict)


def _script(export: NetnsExport, action: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EMU=f"{shlex.quote(sys.executable)} -m emu.cli")
    return subprocess.run(["bash", "-s", action], input=export.script, capture_output=True,
                          text=True, env=env)


def _chains(traffic: tuple[TrafficSpec, ...]) -> list[tuple[float, list[TrafficSpec]]]:
    """Commands grouped as they start: an entry with `at` opens a chain at that
    time, an entry without one runs after the previous entry ends."""
    chains: list[tuple[float, list[TrafficSpec]]] = []
    for spec in traffic:
        if spec.at is not None or not chains:
            chains.append((spec.at or 0.0, [spec]))
        else:
            chains[-1][1].append(spec)
    return chains


def _command_words(spec: TrafficSpec, hosts: dict[str, str]) -> list[str]:
    """The command as argv; a node/pod name as destination becomes its
    address (the real ping cannot resolve cluster names)."""
    words = shlex.split(spec.ping.command)
    name = spec.ping.destination
    if isinstance(name, str) and name in hosts:
        words = [hosts[name] if word == name and (i == 0 or words[i - 1] != "-I") else word
                 for i, word in enumerate(words)]
    return words


def _run_command(prefix: str, spec: TrafficSpec, hosts: dict[str, str]) -> CommandRun:
    ping = spec.ping
    budget = ping.count * ping.interval + (ping.timeout or 10.0) + COMMAND_MARGIN_S
    argv = ["ip", "netns", "exec", f"{prefix}{spec.source}", *_command_words(spec, hosts)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return CommandRun(spec.source, ping.command, -1, f"timed out after {budget:.0f} s")
    return CommandRun(spec.source, ping.command, done.returncode, done.stdout + done.stderr)


def play_traffic(prefix: str, traffic: tuple[TrafficSpec, ...],
                 hosts: dict[str, str] | None = None) -> list[CommandRun]:
    """Run every command in its namespace on the wall clock; results in file order.
    `hosts` maps node and pod names to addresses for name destinations."""
    hosts = hosts or {}
    results: dict[int, CommandRun] = {}
    start = time.monotonic()

    def run_chain(at: float, specs: list[TrafficSpec]) -> None:
        time.sleep(max(0.0, start + at - time.monotonic()))
        for spec in specs:
            results[id(spec)] = _run_command(prefix, spec, hosts)

    threads = [threading.Thread(target=run_chain, args=chain) for chain in _chains(traffic)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[id(spec)] for spec in traffic]


def cluster_hosts(scenario: Scenario) -> dict[str, str]:
    """Node and pod names -> addresses, as the emulator (and so the export) chose them."""
    cluster = build_cluster(scenario).cluster
    hosts = {name: str(node.ip) for name, node in cluster.nodes.items()}
    hosts.update({name: str(pod.ip) for name, pod in cluster.pods.items()})
    return hosts


def run_kernel(scenario: Scenario, out_dir: str | Path, prefix: str | None = None) -> KernelRun:
    """Build `scenario` in namespaces, capture everything while its traffic runs,
    tear it down; the captures land in `out_dir` (`<ns>_<ifname>.pcap`)."""
    export = export_netns(scenario, prefix)
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.pcap"):
        old.unlink()
    run = KernelRun(target, export.prefix)
    captures = PacketCaptures(target)
    try:
        built = _script(export, "up")
        if built.returncode != 0:
            raise KernelError(f"building the cluster failed: {built.stderr.strip()}")
        for ns, ifnames in export.interfaces.items():
            for ifname in ifnames:
                captures.open(export.prefix + ns, ns, ifname)
        captures.start()
        run.commands = play_traffic(export.prefix, scenario.traffic, cluster_hosts(scenario))
        time.sleep(SETTLE_S + scenario.linger)  # the emulator keeps running `linger` too
    finally:
        captures.stop()
        _script(export, "down")
    run.capture_counts = captures.counts()
    return run


def scenario_ports(scenario: Scenario) -> dict[str, tuple[int, ...]]:
    """The UDP ports `compare_dirs` must decode as VXLAN / flannel udp."""
    backend = scenario.net_conf.backend
    ports = {"vxlan_ports": (8472,), "udp_ports": (8285,)}
    if backend.type == "vxlan":
        ports["vxlan_ports"] = (backend.port,)
    elif backend.type == "udp":
        ports["udp_ports"] = (backend.port,)
    return ports


def verify_kernel(scenario: Scenario, kernel_out: str | Path | None = None,
                  prefix: str | None = None) -> tuple[Report, KernelRun]:
    """Run `scenario` on the kernel and in the emulator; compare every capture point.

    The kernel captures stay in `kernel_out` when given (else in a
    temporary folder that is removed).
    """
    from emu.scenario.run import run_scenario

    with tempfile.TemporaryDirectory(prefix="emu-verify-") as scratch:
        kernel_dir = Path(kernel_out) if kernel_out is not None else Path(scratch) / "kernel"
        run = run_kernel(scenario, kernel_dir, prefix)
        emu_dir = Path(scratch) / "emu"
        run_scenario(scenario, emu_dir)
        return compare_dirs(kernel_dir, emu_dir, **scenario_ports(scenario)), run
