"""Scenario files: load and validate a YAML/JSON cluster + traffic description.

``load_scenario(path)`` / ``load_scenario_text(text, fmt)`` /
``load_scenario_document(mapping)`` / ``load_default()``
return a frozen :class:`Scenario` or raise :class:`ScenarioError` with a
one-line "field.path: problem" message; nothing here builds a cluster.
"""

from emu.scenario.errors import ScenarioError
from emu.scenario.loader import load_default, load_scenario, load_scenario_document, load_scenario_text
from emu.scenario.model import (
    Backend,
    Cni,
    EventSpec,
    NetConf,
    NodeSpec,
    PingSpec,
    PodSpec,
    Scenario,
    TrafficSpec,
    Underlay,
)
from emu.scenario.ping import parse_ping

__all__ = [
    "Backend",
    "Cni",
    "EventSpec",
    "NetConf",
    "NodeSpec",
    "PingSpec",
    "PodSpec",
    "Scenario",
    "ScenarioError",
    "TrafficSpec",
    "Underlay",
    "load_default",
    "load_scenario",
    "load_scenario_document",
    "load_scenario_text",
    "parse_ping",
]
