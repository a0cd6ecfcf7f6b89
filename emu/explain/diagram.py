"""Topology diagrams as text: Graphviz dot and Mermaid flowcharts.

`emu diagram SCENARIO --format dot|mermaid` prints them for docs; the HTML
report renders the dot one with `dot -Tsvg` and inlines the SVG. Both are
written from the same `Topology`, so they show the same devices and links:
nodes and pods as nested boxes, devices inside, veth pairs and bridge ports
as solid lines, the underlay switch outside, flannel's tunnels dashed.
Element ids are stable (`node-n1`, `pod-p1a`, `dev-n1/eth0`) so the report's
tests and stylesheet can find them in the SVG.
"""

from __future__ import annotations

import re

from emu.explain.topology import Group, Topology

FORMATS = ("mermaid", "dot")

_COLOURS = {"node": "#eef4fb", "pod": "#fdf6e3"}
_DEVICE_FILL = {"bridge": "#d7e8d0", "vxlan": "#f3d9d9", "tun": "#f3d9d9", "switch": "#e4e4e4"}


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_group(group: Group, depth: int) -> list[str]:
    pad = "  " * depth
    lines = [f"{pad}subgraph {_dot_string('cluster_' + group.id)} {{",
             f"{pad}  id={_dot_string(group.kind + '-' + group.id)}; label={_dot_string(group.label)};",
             f"{pad}  style=\"rounded,filled\"; fillcolor=\"{_COLOURS[group.kind]}\"; color=\"#7a8ca3\";"]
    for device in reversed(group.devices):  # dot lays siblings out right to left
        fill = _DEVICE_FILL.get(device.kind, "white")
        lines.append(f"{pad}  {_dot_string(device.id)} [id={_dot_string('dev-' + device.id)}, "
                     f"label={_dot_string(device.label)}, fillcolor=\"{fill}\"];")
    for inner in reversed(group.groups):
        lines.extend(_dot_group(inner, depth + 1))
    lines.append(f"{pad}}}")
    return lines


def to_dot(topology: Topology) -> str:
    """A Graphviz `graph` (undirected): `dot -Tsvg` lays it out."""
    lines = ["graph topology {",
             f"  label={_dot_string(topology.title)}; labelloc=t; fontname=\"Helvetica\"; fontsize=16;",
             "  rankdir=TB; compound=true; nodesep=0.3; ranksep=0.5;",
             "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=11];",
             "  edge [fontname=\"Helvetica\", fontsize=10, color=\"#55657a\"];"]
    for group in reversed(topology.groups):
        lines.extend(_dot_group(group, 1))
    for device in topology.devices:
        lines.append(f"  {_dot_string(device.id)} [id={_dot_string('dev-' + device.id)}, shape=box, "
                     f"label={_dot_string(device.label)}, fillcolor=\"{_DEVICE_FILL.get(device.kind, 'white')}\"];")
    for link in topology.links:
        style = {"tunnel": ", style=dashed, penwidth=1.5, color=\"#b03a2e\", fontcolor=\"#b03a2e\", constraint=false",
                 "stack": ", style=dotted"}.get(link.kind, "")
        label = f", label={_dot_string(link.label)}" if link.label and link.kind != "wire" else ""
        lines.append(f"  {_dot_string(link.a)} -- {_dot_string(link.b)} [id={_dot_string('link-' + link.a + '-' + link.b)}"
                     f"{label}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _mermaid_label(text: str) -> str:
    return '"' + text.replace('"', "#quot;").replace("\n", "<br/>") + '"'


def _mermaid_group(group: Group, depth: int) -> list[str]:
    pad = "  " * depth
    lines = [f"{pad}subgraph {_mermaid_id(group.kind + '_' + group.id)}[{_mermaid_label(group.label)}]"]
    for device in group.devices:
        lines.append(f"{pad}  {_mermaid_id(device.id)}[{_mermaid_label(device.label)}]")
    for inner in group.groups:
        lines.extend(_mermaid_group(inner, depth + 1))
    lines.append(f"{pad}end")
    return lines


def to_mermaid(topology: Topology) -> str:
    """A Mermaid flowchart (GitHub and most doc tools render it)."""
    lines = ["---", f"title: {topology.title}", "---", "flowchart TB"]
    for group in topology.groups:
        lines.extend(_mermaid_group(group, 1))
    for device in topology.devices:
        lines.append(f"  {_mermaid_id(device.id)}[({_mermaid_label(device.label)})]")
    for link in topology.links:
        a, b = _mermaid_id(link.a), _mermaid_id(link.b)
        if link.kind != "wire":
            lines.append(f"  {a} -. {_mermaid_label(link.label)} .- {b}")
        else:
            lines.append(f"  {a} --- {b}")
    for group in topology.all_groups():
        lines.append(f"  style {_mermaid_id(group.kind + '_' + group.id)} fill:{_COLOURS[group.kind]}")
    return "\n".join(lines) + "\n"


def render(topology: Topology, fmt: str) -> str:
    """`topology` in `fmt` ("mermaid" or "dot")."""
    if fmt == "dot":
        return to_dot(topology)
    if fmt == "mermaid":
        return to_mermaid(topology)
    raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
