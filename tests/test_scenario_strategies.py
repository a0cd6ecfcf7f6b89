"""The public scenario strategies (emu.testing.strategies.scenarios): every
argument bounds what is drawn, and arguments no scenario fits are refused
naming the argument."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from emu.scenario import load_scenario_text
from emu.testing.strategies import scenario_yaml, scenarios


@settings(max_examples=15, deadline=None, database=None)
@given(scenarios(backends=["host-gw", "udp"], min_nodes=2, max_nodes=3, min_pods=1, max_pods=2,
                 mtu=(1400, 1500), traffic=()))
def test_arguments_bound_the_draws(document):
    scenario = load_scenario_text(scenario_yaml(document))
    assert scenario.net_conf.backend.type in ("host-gw", "udp")
    assert 2 <= len(scenario.nodes) <= 3
    assert all(1 <= len(node.pods) <= 2 for node in scenario.nodes)
    assert 1400 <= scenario.underlay.mtu <= 1500
    assert scenario.cni.mtu is None or 1400 <= scenario.cni.mtu <= 1500
    assert scenario.traffic == ()


@settings(max_examples=10, deadline=None, database=None)
@given(scenarios(backends=["vxlan"], max_nodes=2, max_commands=1))
def test_ping_traffic_is_drawn(document):
    scenario = load_scenario_text(scenario_yaml(document))
    assert scenario.net_conf.backend.type == "vxlan"
    assert len(scenario.traffic) == 1 and scenario.traffic[0].ping.command.startswith("ping ")


@pytest.mark.parametrize("arguments, named", [
    ({"backends": ["geneve"]}, "backends"),
    ({"backends": []}, "backends"),
    ({"min_nodes": 0}, "min_nodes"),
    ({"min_nodes": 3, "max_nodes": 2}, "min_nodes"),
    ({"min_pods": 3, "max_pods": 1}, "min_pods"),
    ({"mtu": (1500, 1400)}, "mtu"),
    ({"mtu": (100, 1500)}, "mtu"),
    ({"traffic": ["telnet"]}, "traffic"),
    ({"max_commands": 0}, "max_commands"),
    ({"netfilter": True, "traffic": []}, "netfilter"),
])
def test_impossible_arguments_are_refused(arguments, named):
    with pytest.raises(ValueError, match=f"^{named}"):
        scenarios(**arguments)


@settings(max_examples=10, deadline=None, database=None)
@given(scenarios(backends=["host-gw"], max_nodes=2, traffic=["udp", "tcp"], max_commands=2))
def test_nc_exchanges_are_drawn(document):
    scenario = load_scenario_text(scenario_yaml(document))
    clients = [t for t in scenario.traffic if not t.background]
    assert clients and all(t.program.command.startswith("nc ") and 1 <= len(t.stdin) <= 200_000
                           for t in clients)
    assert all(t.program.options.listen for t in scenario.traffic if t.background)


@settings(max_examples=15, deadline=None, database=None)
@given(scenarios(backends=["vxlan", "host-gw"], min_pods=1, traffic=["ping"], max_commands=1, netfilter=True))
def test_services_are_drawn_with_their_traffic(document):
    """Each drawn Service has one endpoint (a pod), a listener on its target
    port there and a client aiming at its name or a node's node port."""
    scenario = load_scenario_text(scenario_yaml(document))
    commands = [t.program.command for t in scenario.traffic]
    for service in scenario.netfilter.services:
        (port,), (endpoint,) = service.ports, service.endpoints
        assert port.protocol == "UDP" and endpoint in {p.name for n in scenario.nodes for p in n.pods}
        assert f"nc -u -l {port.target_port}" in commands
        target = f"{service.name} {port.port}" if port.node_port is None else f" {port.node_port}"
        assert any(command.startswith("nc -u -q 0 ") and command.endswith(target) for command in commands)
    assert scenario.netfilter.enabled == ("kube-proxy" in document)
