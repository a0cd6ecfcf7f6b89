"""Run a scenario on the real kernel and hold the emulator against it.

``run_kernel`` brings the exported cluster up, opens a capture on every
interface of every node and pod namespace, plays the scenario's commands
with the real iputils ping and netcat-openbsd in their namespaces (``at:``
times, sequencing and background processes as in the scenario, see
``emu.kernel.processes``), lets the last frames arrive, and tears
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

Cluster events run as the export's ``event_N`` functions at their ``at``
times, on the same clock as the traffic. Before a function deletes a
namespace, its captures take what is queued and close (an open capture
socket would keep the namespace, and its veth to the switch, alive); the
devices a function creates are captured as soon as it returns (nothing is
sent unprompted in between: no IPv6, no gratuitous ARP).

Network safety: every command runs inside a namespace the run created, the
namespaces are only linked to each other, and ``down`` removes them with
every process still inside them.
"""

from __future__ import annotations

import ctypes
import os
import queue
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from emu.capture import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapWriter
from emu.kernel.export import ExportedEvent, NetnsExport, export_netns
from emu.kernel.processes import REALTIME, Background, CommandRun, run_foreground
from emu.kernel.schedule import ScheduleCancelled, WallSchedule
from emu.scenario.model import Scenario, TrafficSpec
from emu.verify import Report, compare_dirs
from emu.verify.netfilter import compare_netfilter
from emu.verify.ports import NAT_RANDOM_RANGE

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
CAPTURE_REQUEST_TIMEOUT_S = 5.0
REQUIRED_TOOLS = ("ip", "bridge", "ping", "nc", "setsid", "sysctl", "tc")


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
    namespace: str
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
    """One AF_PACKET capture per interface, written to `<ns>_<ifname>.pcap`.

    Points can be opened and closed while the loop runs (cluster events):
    the loop thread owns the poller, so changes are handed to it and applied
    between two polls.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.points: list[_Point] = []
        self._open: dict[int, _Point] = {}  # fd -> point still capturing
        self._poller = select.poll()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
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
        point = _Point(point_ns, name, sock, ifname == "lo", linktype, self.out_dir / f"{name}.pcap")
        self.points.append(point)
        self._in_loop(self._register, [point])

    def close_namespace(self, point_ns: str) -> None:
        """Take what the points of namespace `point_ns` still have queued and
        close them (before the namespace is deleted)."""
        self._in_loop(self._close, [p for p in self._open.values() if p.namespace == point_ns])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="emu-captures", daemon=True)
        self._thread.start()

    def _in_loop(self, change: Callable[[list[_Point]], None], points: list[_Point]) -> None:
        """Apply `change` in the loop thread (here, when no loop runs) and wait for it."""
        if self._thread is None or not self._thread.is_alive():
            change(points)
            return
        done = threading.Event()
        self._requests.put((change, points, done))
        if not done.wait(CAPTURE_REQUEST_TIMEOUT_S):
            raise KernelError("the capture loop did not answer")

    def _register(self, points: list[_Point]) -> None:
        for point in points:
            self._open[point.sock.fileno()] = point
            self._poller.register(point.sock.fileno(), select.POLLIN)

    def _close(self, points: list[_Point]) -> None:
        for point in points:
            self._drain(point)
            self._poller.unregister(point.sock.fileno())
            del self._open[point.sock.fileno()]
            point.sock.close()
            if point.writer is not None:
                point.writer.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for fd, _ in self._poller.poll(50):
                self._drain(self._open[fd])
            while not self._requests.empty():
                change, points, done = self._requests.get()
                change(points)
                done.set()

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
            self._thread = None
        self._close(list(self._open.values()))

    def counts(self) -> dict[str, int]:
        """Frames per capture point that saw traffic."""
        return {point.name: point.frames for point in self.points if point.frames}


@dataclass
class EventRun:
    """One cluster event as the kernel ran it: its function ran from
    `started_s` to `ended_s` (wall-clock seconds after time 0)."""

    function: str
    at: float
    started_s: float
    ended_s: float
    scheduled_s: float | None = None  # `at` plus the schedule's shift


@dataclass
class KernelRun:
    """The result of a scenario on the kernel: captures in `out_dir`."""

    out_dir: Path
    prefix: str
    commands: list[CommandRun] = field(default_factory=list)
    events: list[EventRun] = field(default_factory=list)
    capture_counts: dict[str, int] = field(default_factory=dict)
    # node -> {"iptables_save": `iptables-save -c`, "conntrack": `conntrack -L` lines}
    # after the traffic, for the nodes with rules
    netfilter: dict[str, dict] = field(default_factory=dict)


def _script(export: NetnsExport, action: str) -> subprocess.CompletedProcess:
    """Run one action of the export's script: up, down or an event function."""
    env = dict(os.environ, EMU=f"{shlex.quote(sys.executable)} -m emu.cli")
    return subprocess.run([*REALTIME, "bash", "-s", action], input=export.script, capture_output=True,
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


def play_traffic(prefix: str, traffic: tuple[TrafficSpec, ...], hosts: dict[str, str] | None = None,
                 schedule: WallSchedule | None = None) -> list[CommandRun]:
    """Run every command in its namespace on `schedule` (default: one without
    events, starting now); results in file order. `hosts` maps node and pod
    names to addresses for name destinations (read when a command starts:
    events may change it). Background commands still running when every
    chain is over are stopped (SIGTERM)."""
    hosts = hosts if hosts is not None else {}
    chains = _chains(traffic)
    schedule = schedule if schedule is not None else WallSchedule([at for at, _ in chains], [])
    results: dict[int, CommandRun] = {}
    scheduled_at: dict[int, float] = {}  # the first command of each chain: its shifted time
    background: list[Background] = []

    def run_chain(at: float, specs: list[TrafficSpec]) -> None:
        try:
            started, scheduled_at[id(specs[0])] = schedule.begin_chain(at)
            for index, spec in enumerate(specs):
                if index:
                    started = schedule.begin_chained()
                if spec.background:
                    process = Background(prefix, spec, hosts, started)
                    background.append(process)
                    process.wait_blocked()
                else:
                    results[id(spec)] = run_foreground(prefix, spec, hosts, started)
        except ScheduleCancelled:
            return

    threads = [threading.Thread(target=run_chain, args=chain) for chain in chains]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for process in background:
            results[id(process.spec)] = process.stop()
    for key, scheduled in scheduled_at.items():
        if key in results:
            results[key].scheduled_s = scheduled
    return [results[id(spec)] for spec in traffic if id(spec) in results]


def _open_captures(captures: PacketCaptures, prefix: str, interfaces: dict[str, list[str]]) -> None:
    for ns, ifnames in interfaces.items():
        for ifname in ifnames:
            captures.open(prefix + ns, ns, ifname)


def _run_event(export: NetnsExport, event: ExportedEvent, captures: PacketCaptures,
               hosts: dict[str, str]) -> None:
    """One event function, with the captures of the namespaces it deletes
    closed first and those of the devices it creates opened after."""
    for ns in event.removed:
        captures.close_namespace(ns)
    done = _script(export, event.function)
    if done.returncode != 0:
        raise KernelError(f"{event.function} (t={event.at:g}s) failed: {done.stderr.strip()}")
    _open_captures(captures, export.prefix, event.added)
    hosts.clear()
    hosts.update(event.hosts)


class _EventThread(threading.Thread):
    """The export's events on `schedule`, beside the traffic, each appended to
    `done` once it ran; stops at the first that fails (`error`, and the
    schedule is cancelled so no command waits for it) or when the schedule
    is cancelled."""

    def __init__(self, export: NetnsExport, captures: PacketCaptures, hosts: dict[str, str],
                 schedule: WallSchedule, done: list[EventRun]) -> None:
        super().__init__(name="emu-events")
        self.export = export
        self.captures = captures
        self.hosts = hosts
        self.schedule = schedule
        self.done = done
        self.error: KernelError | None = None

    def run(self) -> None:
        try:
            for event in self.export.events:
                started, scheduled = self.schedule.begin_event(event.at)
                try:
                    _run_event(self.export, event, self.captures, self.hosts)
                finally:
                    ended = self.schedule.end_event(event.at)
                self.done.append(EventRun(event.function, event.at, started, ended, scheduled))
        except ScheduleCancelled:
            return
        except KernelError as error:
            self.error = error
        except OSError as error:  # opening a capture on an added device
            self.error = KernelError(f"capturing a device of an added node failed: {error}")
        if self.error is not None:
            self.schedule.cancel()


def check_event_timing(run: KernelRun) -> None:
    """KernelError when a command started while an event function was still
    changing the cluster: the emulator changes it in an instant, so such a
    run shows a half-built state (move the traffic further from the event)."""
    for event in run.events:
        for command in run.commands:
            if event.started_s <= command.started_s < event.ended_s:
                raise KernelError(
                    f"{event.function} (t={event.at:g}s) took until t={event.ended_s:.2f}s, past the "
                    f"start of `{command.command}` from {command.source} at "
                    f"t={command.started_s:.2f}s: leave more time after the event")


def run_kernel(scenario: Scenario, out_dir: str | Path, prefix: str | None = None) -> KernelRun:
    """Build `scenario` in namespaces, capture everything while its traffic runs,
    tear it down; the captures land in `out_dir` (`<ns>_<ifname>.pcap`)."""
    if scenario.faults and shutil.which("nft") is None:
        raise KernelError("faults: need nft in the kernel run (Debian: apt-get install nftables)")
    missing = [tool for tool in ("iptables-restore", "iptables-save", "conntrack") if shutil.which(tool) is None]
    if scenario.netfilter.enabled and missing:
        raise KernelError(f"netfilter: needs {', '.join(missing)} in the kernel run "
                          "(Debian: apt-get install iptables conntrack)")
    export = export_netns(scenario, prefix)
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.pcap"):
        old.unlink()
    run = KernelRun(target, export.prefix)
    captures = PacketCaptures(target)
    events: _EventThread | None = None
    try:
        built = _script(export, "up")
        if built.returncode != 0:
            raise KernelError(f"building the cluster failed: {built.stderr.strip()}")
        _open_captures(captures, export.prefix, export.interfaces)
        captures.start()
        hosts = dict(export.hosts)
        schedule = WallSchedule([at for at, _ in _chains(scenario.traffic)],
                                [event.at for event in export.events])
        events = _EventThread(export, captures, hosts, schedule, run.events)
        events.start()
        run.commands = play_traffic(export.prefix, scenario.traffic, hosts, schedule)
        events.join()
        if events.error is not None:
            raise events.error
        check_event_timing(run)
        time.sleep(SETTLE_S + scenario.linger)  # the emulator keeps running `linger` too
        run.netfilter = read_netfilter(export.prefix, export.netfilter_nodes)
    finally:
        if events is not None:  # no event may build anything after `down`
            events.schedule.cancel()
            events.join()
        captures.stop()
        _script(export, "down")
    run.capture_counts = captures.counts()
    return run


def read_netfilter(prefix: str, nodes: list[str]) -> dict[str, dict]:
    """`iptables-save -c` and `conntrack -L` of each node namespace still there."""
    state = {}
    for node in nodes:
        namespace = f"{prefix}{node}"
        if not Path(f"/run/netns/{namespace}").exists():
            continue
        saved = subprocess.run(["ip", "netns", "exec", namespace, "iptables-save", "-c"], capture_output=True,
                               text=True)
        listed = subprocess.run(["ip", "netns", "exec", namespace, "conntrack", "-L"], capture_output=True,
                                text=True)
        if saved.returncode != 0 or listed.returncode != 0:
            raise KernelError(f"reading netfilter of {namespace} failed: {(saved.stderr or listed.stderr).strip()}")
        state[node] = {"iptables_save": saved.stdout, "conntrack": listed.stdout.splitlines()}
    return state


def shifted_scenario(scenario: Scenario, run: KernelRun) -> Scenario:
    """`scenario` with the times the kernel run kept (each scheduled item's
    `at` plus the shift its schedule had reached, see emu/kernel/schedule.py):
    the same scenario when nothing overran."""
    traffic = tuple(replace(spec, at=command.scheduled_s) if spec.at is not None
                    and command.scheduled_s is not None else spec
                    for spec, command in zip(scenario.traffic, run.commands))
    events = tuple(replace(spec, at=done.scheduled_s) if done.scheduled_s is not None else spec
                   for spec, done in zip(scenario.events, run.events))
    return replace(scenario, traffic=traffic + scenario.traffic[len(traffic):],
                   events=events + scenario.events[len(events):])


def scenario_ports(scenario: Scenario) -> dict[str, object]:
    """The UDP ports `compare_dirs` must decode as VXLAN / flannel udp, and
    the ports the kernel draws at random (wider where netfilter may
    translate ports at random, see emu.verify.ports)."""
    backend = scenario.net_conf.backend
    ports: dict[str, object] = {"vxlan_ports": (8472,), "udp_ports": (8285,)}
    if backend.type == "vxlan":
        ports["vxlan_ports"] = (backend.port,)
    elif backend.type == "udp":
        ports["udp_ports"] = (backend.port,)
    if scenario.netfilter.enabled:
        ports["random_ports"] = (NAT_RANDOM_RANGE, named_ports(scenario))
    return ports


def named_ports(scenario: Scenario) -> frozenset[int]:
    """The ports a scenario names: flannel's, nc's listening and source
    ports, every Service's port, target port and node port."""
    named = {scenario.net_conf.backend.port}
    for spec in scenario.traffic:
        options = getattr(spec.program, "options", None)
        named.update(port for port in (getattr(options, "port", None), getattr(options, "source_port", None))
                     if port)
    for service in scenario.netfilter.services:
        for port in service.ports:
            named.update(p for p in (port.port, port.target_port, port.node_port) if p)
    return frozenset(named)


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
        result = run_scenario(shifted_scenario(scenario, run), emu_dir)
        report = compare_dirs(kernel_dir, emu_dir, **scenario_ports(scenario))
        report.points.extend(compare_netfilter(run.netfilter, result.stats))
        return report, run
