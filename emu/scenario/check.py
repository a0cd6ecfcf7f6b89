"""`emu check`: every check `emu run` makes, without running the traffic.

The loader catches what the file alone can show. What only shows once the
cluster exists (flannel's Network out of subnets, a host-local IPAM range
exhausted, a pod address outside its node's lease, a colliding MAC) needs
the cluster built, so `check_scenario` builds it exactly as `emu run` does,
and applies every event at its time (a node that joins later may find no
subnet left): the first problem raises the ScenarioError `emu run` would
raise, word for word.

Commands are not run. Those that would fail the way the real tool fails
(a source that does not exist at that time, a destination name nobody
has, `ping -I` naming no interface of its namespace, an address that is
not local) are returned as warnings with the message the tool prints; `emu
run` runs them and shows exactly that. A chained command (no `at:`) is
checked against the cluster as the events before the next timed command
left it.
"""

from __future__ import annotations

import ipaddress

from emu.scenario.build import EmulatedCluster, add_node_later, build_cluster, remove_node_later
from emu.scenario.model import EventSpec, NcSpec, PingSpec, Scenario, TrafficSpec
from emu.scenario.play import resolve_destination
from emu.sim import seconds


def check_scenario(scenario: Scenario) -> list[str]:
    """Build `scenario`'s cluster and apply its events (ScenarioError on the
    first problem, as `emu run`); the warnings for commands that would fail."""
    emulated = build_cluster(scenario)
    events = list(scenario.events)
    warnings: list[str] = []
    for spec in scenario.traffic:
        if spec.at is not None:
            while events and events[0].at <= spec.at:  # the emulator runs events first
                _apply(emulated, events.pop(0))
        problem = command_problem(emulated, spec)
        if problem is not None:
            warnings.append(f"{spec.path}: {problem}")
    for event in events:
        _apply(emulated, event)
    return warnings


def _apply(emulated: EmulatedCluster, event: EventSpec) -> None:
    emulated.sim.run(until_ns=max(seconds(event.at), emulated.sim.now_ns))  # housekeeping only
    if event.add_node is not None:
        add_node_later(emulated, event.add_node)
    else:
        remove_node_later(emulated, event.remove_node)


def command_problem(emulated: EmulatedCluster, spec: TrafficSpec) -> str | None:
    """What the command would print and die of, in the cluster as it is now."""
    program = spec.program
    ns = emulated.cluster.namespace(spec.source)
    if ns is None:
        return f"emu: {spec.source} does not exist then"
    if program.destination is not None and resolve_destination(emulated, program.destination) is None:
        if isinstance(program, NcSpec):
            return (f'nc: getaddrinfo for host "{program.destination}" port {program.options.port}: '
                    "Name or service not known")
        return f"ping: {program.destination}: Name or service not known"
    if isinstance(program, PingSpec) and program.interface:
        try:
            source = ipaddress.IPv4Address(program.interface)
        except ValueError:
            if program.interface not in ns.devices:
                return f"ping: SO_BINDTODEVICE {program.interface}: No such device"
        else:
            if not ns.is_local_address(source.packed):
                return "ping: bind: Cannot assign requested address"
    return None
