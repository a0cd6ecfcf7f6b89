"""`emu report`: one self-contained HTML page about a traced run.

Why: the pcaps and stats.json hold everything but say it to tools; a person
wants the picture first. The page has the cluster drawn (Graphviz dot ->
inline SVG), one sequence diagram per command in the style of Wireshark's
flow graph (namespaces as columns, every traced hop an arrow with its
decision, packets one after the other), the tables (routes, neighbours,
bridge and VXLAN FDBs, flannel leases, drops) and links to the capture
files. Nothing is fetched at view time: no script, no font, no image that is
not in the file. Element ids and classes (`node-n1`, `pod-p1a`,
`.hop[data-packet]`) are stable for tests and for readers' own styles.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from pathlib import Path

from emu.explain.diagram import to_dot
from emu.explain.topology import topology_of
from emu.explain.trace import TracedPacket, TracedRun

ROW = 22  # px per hop
COLUMN = 124  # px per namespace column
LEFT = 90  # px: the time axis
HEADER = 48


class ReportError(Exception):
    """The report cannot be written (one line for the user)."""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def topology_svg(run: TracedRun) -> str:
    """The cluster laid out by Graphviz, as an inline <svg> element."""
    dot = shutil.which("dot")
    if dot is None:
        raise ReportError("emu report needs Graphviz's dot to draw the cluster (apt install graphviz)")
    done = subprocess.run([dot, "-Tsvg"], input=to_dot(topology_of(run.emulated)), capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise ReportError(f"dot -Tsvg failed: {done.stderr.strip()}")
    svg = done.stdout
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def _columns(packets: list[TracedPacket], cluster) -> list[str]:
    """Namespaces in the order the flow first meets them."""
    order: list[str] = []
    for packet in packets:
        for hop in packet.hops:
            if hop.namespace not in order:
                order.append(hop.namespace)
    return order


def _column_label(name: str, cluster) -> tuple[str, str]:
    if name in cluster.pods:
        return f"pod {name}", str(cluster.pods[name].ip)
    if name in cluster.nodes:
        return f"node {name}", str(cluster.nodes[name].ip)
    if name == "ul":
        return "underlay", "switch br0"
    return name, ""


def sequence_svg(packets: list[TracedPacket], cluster, flow_id: str) -> str:
    """Wireshark-flow-graph style: a column per namespace, a row per hop;
    an arrow from where the packet was to where this hop happened (a short
    loop when it stays in one namespace), labelled with the device, the
    stage and the decision."""
    columns = _columns(packets, cluster)
    x = {name: LEFT + COLUMN * i + COLUMN // 2 for i, name in enumerate(columns)}
    rows = sum(len(p.hops) + 1 for p in packets)
    notes_x = LEFT + COLUMN * max(len(columns), 1)  # the decisions column, as Wireshark's comments
    width = notes_x + 760
    height = HEADER + ROW * rows + 20
    out = [f'<svg class="sequence" id="seq-{_e(flow_id)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           '<defs><marker id="arrow-' + _e(flow_id) + '" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#33506e"/></marker></defs>']
    for name in columns:
        title, detail = _column_label(name, cluster)
        out.append(f'<g class="column" data-ns="{_e(name)}">'
                   f'<rect x="{x[name] - 58}" y="4" width="116" height="36" rx="6" class="col-head"/>'
                   f'<text x="{x[name]}" y="19" class="col-title">{_e(title)}</text>'
                   f'<text x="{x[name]}" y="33" class="col-detail">{_e(detail)}</text>'
                   f'<line x1="{x[name]}" y1="40" x2="{x[name]}" y2="{height - 10}" class="lifeline"/></g>')
    y = HEADER
    marker = f'url(#arrow-{_e(flow_id)})'
    for packet in packets:
        out.append(f'<g class="packet-head" data-packet="{packet.id}"><rect x="4" y="{y - 4}" '
                   f'width="{width - 8}" height="{ROW - 2}" rx="4"/><text x="10" y="{y + 11}">packet '
                   f'{packet.id}: {_e(packet.summary)}</text></g>')
        y += ROW
        where = packet.hops[0].namespace if packet.hops else None
        for hop in packet.hops:
            x1, x2 = x[where], x[hop.namespace]
            verdict_class = "drop" if hop.verdict.startswith(("dropped", "refused")) else \
                "frame" if hop.is_frame else "decision"
            label = f"{hop.device} {hop.stage}: {hop.evidence}" + (f" → {hop.verdict}" if hop.verdict else "")
            mid = y + ROW // 2
            if x1 == x2:
                path = (f'<path d="M{x1},{mid - 6} h18 v12 h-16" class="arrow self" '
                        f'marker-end="{marker}"/>')
            else:
                path = f'<line x1="{x1}" y1="{mid}" x2="{x2}" y2="{mid}" class="arrow" marker-end="{marker}"/>'
            text_x = notes_x + 8
            out.append(f'<g class="hop {verdict_class}" data-packet="{packet.id}" data-stage="{_e(hop.stage)}" '
                       f'data-ns="{_e(hop.namespace)}"><title>{_e(label)}</title>'
                       f'<text x="8" y="{mid + 4}" class="time">{hop.t_ns / 1e6:.3f} ms</text>{path}'
                       f'<line x1="{x2 + (20 if x1 == x2 else 0)}" y1="{mid}" x2="{notes_x}" y2="{mid}" class="guide"/>'
                       f'<text x="{text_x}" y="{mid + 4}" class="label">{_e(label[:118])}</text></g>')
            where = hop.namespace
            y += ROW
    out.append("</svg>")
    return "".join(out)


def _table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    if not rows:
        return '<p class="empty">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _tables(stats: dict) -> str:
    parts = []
    for title, key in (("Routes", "routes"), ("Neighbours", "neighbours")):
        rows = [[ns, line] for ns, entry in stats["namespaces"].items() for line in entry.get(key, [])]
        parts.append(f'<section class="table" id="{key}"><h3>{title}</h3>{_table(["namespace", f"ip {key[:5]}"], rows)}</section>')
    fdb = [[ns, bridge, line] for ns, entry in stats["namespaces"].items()
           for bridge, lines in entry.get("fdb", {}).items() for line in lines]
    parts.append(f'<section class="table" id="fdb"><h3>Bridge FDBs</h3>{_table(["namespace", "bridge", "bridge fdb"], fdb)}</section>')
    vxlan = [[ns, line] for ns, entry in stats["namespaces"].items() for line in entry.get("vxlan_fdb", [])]
    parts.append(f'<section class="table" id="vxlan-fdb"><h3>VXLAN FDBs</h3>{_table(["namespace", "bridge fdb"], vxlan)}</section>')
    leases = [[key.rsplit("/", 1)[-1].replace("-", "/"), value.get("PublicIP", ""), value.get("BackendType", ""),
               ", ".join(f"{k} {v}" for k, v in (value.get("BackendData") or {}).items())]
              for key, value in stats["flannel"]["leases"].items()]
    parts.append(f'<section class="table" id="leases"><h3>flannel leases</h3>{_table(["subnet", "public ip", "backend", "backend data"], leases)}</section>')
    drops = [[ns, dev, reason, str(n)] for ns, entry in stats["namespaces"].items()
             for dev, counters in entry["devices"].items() for reason, n in counters["drops"].items()]
    drops += [[ns, "(stack)", reason, str(n)] for ns, entry in stats["namespaces"].items()
              for reason, n in entry["stack"]["drops"].items()]
    parts.append(f'<section class="table" id="drops"><h3>Drops</h3>{_table(["namespace", "device", "reason", "count"], drops)}</section>')
    return "".join(parts)


STYLE = """
:root { --ink:#1d2733; --muted:#5b6b7d; --line:#d8dee6; --accent:#2f6690; --bad:#b03a2e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--ink);
       margin: 0; background: #f5f7fa; }
header { background: #1f3b57; color: white; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d6e3; }
main { padding: 8px 28px 40px; }
section.card { background: white; border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px;
               margin: 18px 0; overflow-x: auto; }
h2 { font-size: 17px; margin: 0 0 10px; color: var(--accent); }
h3 { font-size: 14px; margin: 14px 0 6px; }
pre { background: #0f1b27; color: #d6e2ee; padding: 10px 12px; border-radius: 6px; overflow-x: auto; margin: 6px 0 10px; }
table { border-collapse: collapse; width: 100%; font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
th { text-align: left; background: #eef2f6; color: var(--muted); font-weight: 600; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; vertical-align: top; }
.empty { color: var(--muted); font-style: italic; margin: 2px 0 8px; }
.tables { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 0 24px; }
ul.summary { margin: 0; padding-left: 18px; }
.topology svg { max-width: 100%; height: auto; }
svg.sequence { font: 11.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
svg.sequence .col-head { fill: #1f3b57; }
svg.sequence .col-title { fill: white; font-weight: 600; text-anchor: middle; }
svg.sequence .col-detail { fill: #c9d6e3; text-anchor: middle; font-size: 10.5px; }
svg.sequence .lifeline { stroke: #b8c4d1; stroke-dasharray: 4 4; }
svg.sequence .packet-head rect { fill: #eef2f6; }
svg.sequence .packet-head text { fill: var(--accent); font-weight: 600; }
svg.sequence .arrow { stroke: #33506e; stroke-width: 1.4; fill: none; }
svg.sequence .time { fill: var(--muted); }
svg.sequence .guide { stroke: #e3e8ee; stroke-width: 1; }
svg.sequence .hop:hover .guide { stroke: var(--accent); }
svg.sequence .hop:hover .label { font-weight: 600; }
svg.sequence .label { fill: var(--ink); }
svg.sequence .hop.decision .label { fill: #44546a; }
svg.sequence .hop.drop .label { fill: var(--bad); font-weight: 600; }
svg.sequence .hop.drop .arrow { stroke: var(--bad); }
details > summary { cursor: pointer; color: var(--accent); margin: 4px 0; }
a { color: var(--accent); }
"""


def _flows(run: TracedRun) -> str:
    cluster = run.emulated.cluster
    parts = []
    for index, item in enumerate(run.result.traffic):
        packets = run.traffic_packets(index)
        hops = sum(len(p.hops) for p in packets)
        output = "\n".join(item.ping.lines)
        parts.append(f'<section class="card flow" id="flow-{index}" data-packets="{len(packets)}" data-hops="{hops}">'
                     f'<h2>traffic[{index}]: {_e(item.spec.source)}$ {_e(item.ping.command)}</h2>'
                     f'<pre>{_e(output)}</pre>'
                     f'<details open><summary>flow graph: {len(packets)} packets, {hops} hops</summary>'
                     f'{sequence_svg(packets, cluster, str(index))}</details></section>')
    return "".join(parts)


def _captures(run: TracedRun, report_path: Path) -> str:
    out_dir = run.result.out_dir
    if out_dir is None:
        return '<p class="empty">not captured</p>'
    rows = []
    for name, count in run.result.capture_counts.items():
        target = os.path.relpath(out_dir / f"{name}.pcap", report_path.parent)
        rows.append(f'<tr><td><a href="{_e(target)}">{_e(name)}.pcap</a></td><td>{count}</td></tr>')
    merged = os.path.relpath(out_dir / "all.pcapng", report_path.parent)
    return (f'<p><a href="{_e(merged)}">all.pcapng</a>: every capture point, each packet with its direction, '
            f'one packet id across every interface it crosses and its decisions as the comment '
            f'(Wireshark: <code>frame.packet_id == N</code>).</p>'
            f'<table><thead><tr><th>capture point</th><th>frames</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def render_report(run: TracedRun, report_path: Path) -> str:
    """The whole page."""
    scenario = run.result.scenario
    stats = run.result.stats
    summary = "".join(f"<li>{_e(line)}</li>" for line in [*run.result.nodes, *run.result.notes])
    title = f"{scenario.name}: flannel {scenario.net_conf.backend.type}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>emu report: {_e(title)}</title><style>{STYLE}</style></head><body>'
            f'<header><h1>{_e(title)}</h1><p>{len(run.emulated.cluster.nodes)} nodes, '
            f'{len(run.emulated.cluster.pods)} pods, virtual time {run.result.end_ns / 1e9:.3f} s, '
            f'{len(run.tracer.packets)} packets traced</p></header><main>'
            f'<section class="card" id="summary"><h2>Cluster</h2><ul class="summary">{summary}</ul></section>'
            f'<section class="card topology" id="topology"><h2>Topology</h2>{topology_svg(run)}</section>'
            f'{_flows(run)}'
            f'<section class="card" id="tables"><h2>Tables at the end of the run</h2>'
            f'<div class="tables">{_tables(stats)}</div></section>'
            f'<section class="card" id="captures"><h2>Captures</h2>{_captures(run, report_path)}</section>'
            f'</main></body></html>\n')


def write_report(run: TracedRun, report_path: str | Path) -> Path:
    """Write the page to `report_path`; return it."""
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(run, path), encoding="utf-8")
    return path
