"""Play traffic commands and cluster events on an emulated cluster.

Why a module of its own: `emu run` (run.py) and the Python API
(`emu.Cluster`) play the very same commands the very same way, so the
rules live once: a command without `at` starts when the one before it
ends (in process context at that instant), or once it waits when it runs
in the background (`&`: it lives until it exits or `stop_all()` at the end
of the run), one with `at` starts at its time; a source or destination name is resolved when the command starts;
events (add-node / remove-node) run at their time. `finished()` says when
everything given so far has ended and its instant is fully processed,
which is where `emu run` stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from emu.net import Ping, PingResult
from emu.net.nc import Netcat
from emu.net.process import ProcessResult
from emu.scenario.build import EmulatedCluster, add_node_later, remove_node_later
from emu.scenario.model import EventSpec, NcSpec, Scenario, TrafficSpec
from emu.sim import seconds


@dataclass
class TrafficResult:
    """A traffic entry and what its process did (a PingResult for ping)."""

    spec: TrafficSpec
    result: PingResult | ProcessResult

    @property
    def ping(self) -> PingResult | ProcessResult:
        return self.result


def describe_node(emulated: EmulatedCluster, name: str) -> str:
    """One line per node for the run summary: what flannel and IPAM chose."""
    node = emulated.cluster.nodes[name]
    flanneld = emulated.flanneld.get(name)
    subnet = flanneld.lease.subnet if flanneld is not None and flanneld.lease else "-"
    pods = ", ".join(f"{pod.name} {pod.ip}" for pod in node.pods.values()) or "no pods"
    return f"{name} {node.ip} subnet {subnet}: {pods}"


def describe_services(emulated: EmulatedCluster) -> list[str]:
    """One line per Service for the run summary: the addresses and ports it got."""
    lines = []
    for service in emulated.scenario.netfilter.services:
        ports = ", ".join(f"{port.port}/{port.protocol}" + (f" (node port {port.node_port})" if port.node_port
                                                            else "") + f" -> {port.target_port}"
                          for port in service.ports)
        endpoints = ", ".join(service.endpoints) or "no endpoints"
        lines.append(f"service {service.name} {service.type} {service.cluster_ip} {ports}: {endpoints}")
    return lines


def resolve_destination(emulated: EmulatedCluster, destination) -> str | None:
    """A ping destination as an address: node names give their eth0 address,
    pod names their pod address, Service names their ClusterIP (as a pod's
    DNS lookup would); None for a name that does not exist (now)."""
    if not isinstance(destination, str):
        return str(destination)
    cluster = emulated.cluster
    if destination in cluster.nodes:
        return str(cluster.nodes[destination].ip)
    if destination in cluster.pods:
        return str(cluster.pods[destination].ip)
    for service in emulated.scenario.netfilter.services:
        if service.name == destination:
            return str(service.cluster_ip)
    return None


class Player:
    """Schedules commands and events on `emulated` and keeps what they gave.

    `results` holds one TrafficResult per ended command (in the order they
    ended; `ordered_results()` in the order given), `notes` and `nodes` the
    run summary's lines. `on_nodes_changed` callbacks run after a node
    joined or left (capture points attach to its devices there).
    """

    def __init__(self, emulated: EmulatedCluster) -> None:
        self.emulated = emulated
        self.sim = emulated.sim
        self.commands: list[TrafficSpec] = []
        self.results: list[TrafficResult] = []
        self.notes: list[str] = list(emulated.notes)
        self.nodes: list[str] = [describe_node(emulated, name) for name in emulated.cluster.nodes]
        self.nodes += describe_services(emulated)
        self.on_nodes_changed: list[Callable[[], None]] = []
        self.on_command_done: list[Callable[[TrafficResult], None]] = []
        self._pending_commands = 0
        self._pending_events = 0
        self._running: dict[int, Ping | Netcat] = {}  # index -> a program still running
        emulated.node_listeners.append(self._node_changed)

    # -- what to play ---------------------------------------------------------
    def play(self, scenario: Scenario) -> None:
        """Schedule the scenario's events and traffic (as `emu run` does)."""
        for event in scenario.events:
            self.add_event(event)
        for spec in scenario.traffic:
            self.add_command(spec)

    def add_event(self, event: EventSpec) -> None:
        self._pending_events += 1
        self.sim.call_at(max(seconds(event.at), self.sim.now_ns), self._run_event, event)

    def add_command(self, spec: TrafficSpec) -> None:
        """Schedule `spec`: at its `at`, or after the previous command given
        (now, if every command given so far has ended)."""
        index = len(self.commands)
        self.commands.append(spec)
        self._pending_commands += 1
        chained = spec.at is None and index > 0
        if chained and not self._ended(index - 1):
            return  # started by the previous command's end
        at_ns = self.sim.now_ns if spec.at is None else max(seconds(spec.at), self.sim.now_ns)
        self.sim.call_process_at(at_ns, self._start, index)

    # -- state ------------------------------------------------------------------
    def finished(self) -> bool:
        """Every command and event given has ended, and its instant is fully
        processed (a sending process may still have fragments to send)."""
        if self._pending_commands or self._pending_events:
            return False
        following = self.sim.next_time()
        return following is None or following > self.sim.now_ns

    def ordered_results(self) -> list[TrafficResult]:
        order = {id(spec): k for k, spec in enumerate(self.commands)}
        return sorted(self.results, key=lambda result: order[id(result.spec)])

    # -- internals --------------------------------------------------------------
    def _ended(self, index: int) -> bool:
        spec = self.commands[index]
        return any(result.spec is spec for result in self.results)

    def _node_changed(self, name: str, note: str) -> None:
        self.notes.append(note)
        if name in self.emulated.cluster.nodes:
            self.nodes.append(describe_node(self.emulated, name))
        for callback in self.on_nodes_changed:
            callback()

    def _run_event(self, event: EventSpec) -> None:
        if event.add_node is not None:
            add_node_later(self.emulated, event.add_node)
            self.notes.append(f"t={event.at:g}s: node {event.add_node.name} added")
            self.nodes.append(describe_node(self.emulated, event.add_node.name))
        else:
            remove_node_later(self.emulated, event.remove_node)
            self.notes.append(f"t={event.at:g}s: node {event.remove_node} removed")
        for callback in self.on_nodes_changed:
            callback()
        self._pending_events -= 1

    def _start(self, index: int) -> None:
        spec = self.commands[index]
        released: list[bool] = []

        def release() -> None:
            """The next command may start: this one ended, or it runs in the
            background and now waits (a shell's `&` is followed once the
            process is up; the kernel runner waits for it to block too)."""
            if not released:
                released.append(True)
                following = index + 1
                if following < len(self.commands) and self.commands[following].at is None:
                    self.sim.call_process(self._start, following)

        def done(process_result: PingResult | ProcessResult) -> None:
            self._running.pop(index, None)
            result = TrafficResult(spec, process_result)
            self.results.append(result)
            if not spec.background:
                self._pending_commands -= 1
            release()
            for callback in self.on_command_done:
                callback(result)

        if spec.background:
            self._pending_commands -= 1  # a background command does not hold the run
        program = make_program(self.emulated, spec, self.sim.now_ns)
        if isinstance(program, Netcat):
            self._running[index] = program
            program.start(done, on_blocked=release if spec.background else None)
        elif isinstance(program, Ping):
            self._running[index] = program
            program.start(done)
            if spec.background:
                self.sim.call_process(release)  # after its first request's packets
        else:
            done(program)  # it could not start: its result already

    def stop_all(self, interrupted: bool = False) -> None:
        """The end of the run: what still runs is stopped (SIGTERM) one after
        the other, as the kernel runner kills them, each stop's instant
        played out before the next. `interrupted`: the user stopped the run
        (the commands still waiting are not a scenario that stalled)."""
        if self._pending_commands and not interrupted:
            self.notes.append(f"t={self.sim.now_ns / 1e9:g}s: nothing left to happen while commands "
                              "still waited; stopped them")
        for index in sorted(self._running):
            program = self._running.get(index)
            if program is not None:
                program.stop()
                # as the kernel runner kills one and waits for it before the next: what its
                # end causes (a TCP close's FIN, the peer's answer) plays out in between
                self.sim.run(until_ns=self.sim.now_ns)
        self.sim.run(until_ns=self.sim.now_ns)


def make_program(emulated: EmulatedCluster, spec: TrafficSpec, now_ns: int) -> Ping | Netcat | PingResult | ProcessResult:
    """The Ping or Netcat of a traffic entry, or the result of one that
    cannot start (its namespace is gone, its host name unknown)."""
    ns = emulated.cluster.namespace(spec.source)
    program = spec.program
    destination = (resolve_destination(emulated, program.destination)
                   if program.destination is not None else None)
    if isinstance(program, NcSpec):
        failure = None
        if ns is None:
            failure = f"emu: {spec.source} does not exist at t={now_ns / 1e9:g}s"
        elif program.destination is not None and destination is None:
            failure = (f"nc: getaddrinfo for host \"{program.destination}\" port "
                       f"{program.options.port}: Name or service not known")
        if failure is not None:
            return ProcessResult(program.command, stderr=[failure], exit_status=1,
                                 started_ns=now_ns, finished_ns=now_ns)
        return Netcat(ns, program.options, destination, spec.stdin, program.command)
    if ns is None or destination is None:
        failed = PingResult(program.command, str(program.destination))
        failed.fatal = (f"emu: {spec.source} does not exist at t={now_ns / 1e9:g}s"
                        if ns is None else f"ping: {program.destination}: Name or service not known")
        return failed
    ping = program
    return Ping(ns, destination, ping.count, ping.interval, ping.size, ping.ttl,
                ping.timeout, ping.pmtudisc, ping.interface, ping.quiet, ping.command,
                host_name=ping.destination if isinstance(ping.destination, str) else None,
                tos=ping.tos, pattern=ping.pattern, preload=ping.preload, deadline_s=ping.deadline,
                timestamps=ping.timestamps, outstanding=ping.outstanding, verbose=ping.verbose)
