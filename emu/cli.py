"""The `emu` command line: run scenarios, verify pcaps against the kernel's.

Exit codes: 0 success (a scenario that ran, even with lost pings; a verify
with every point matching), 1 a verify mismatch, 2 bad input (scenario
file, arguments). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress, TextColumn
from rich.table import Table

from emu import __version__
from emu.extras import missing_extra
from emu.scenario import ScenarioError, load_default, load_scenario
from emu.net.ping import PingResult
from emu.scenario.model import Scenario

EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2

console = Console(highlight=False, soft_wrap=True)
progress_console = Console(stderr=True, highlight=False)
EXIT_SIGNAL_BASE = 128  # a run stopped by SIGINT exits 130, by SIGTERM 143, as a shell reports it
SUMMARY_HEAD = 5  # nodes and capture points a large cluster's run summary shows


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"emu: error: {message}", err=True)
    sys.exit(code)


def _load(scenario_path: str | None) -> Scenario:
    try:
        if scenario_path is None or scenario_path == "default":
            return load_default()
        return load_scenario(scenario_path)
    except ScenarioError as error:
        fail(str(error))


def _with_etcd(scenario: Scenario, endpoints: tuple[str, ...], prefix: str | None) -> Scenario:
    """The scenario with its lease store moved to the etcd given on the command line."""
    if not endpoints:
        if prefix is not None:
            fail("--etcd-prefix needs --etcd URL")
        return scenario
    from emu.scenario.loader import override_etcd

    try:
        return override_etcd(scenario, list(endpoints), prefix)
    except ScenarioError as error:
        fail(re.sub(r"^etcd\.endpoints(\[\d+\])?", "--etcd", str(error)).replace("etcd.prefix", "--etcd-prefix", 1))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emu")
def main() -> None:
    """A Kubernetes pod-network emulator on raw frames (flannel vxlan, host-gw, udp)."""


@main.command()
@click.argument("scenario", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for the pcaps and stats.json (default: pcaps/<scenario name>).")
@click.option("--quiet", "-q", is_flag=True, help="Only print the per-command summaries.")
@click.option("--etcd", "etcd_endpoints", multiple=True, metavar="URL",
              help="Keep flannel's leases in this etcd v3 (e.g. http://127.0.0.1:2379; repeat for "
                   "more endpoints) instead of the embedded store; overrides the scenario's etcd key.")
@click.option("--etcd-prefix", default=None, metavar="PREFIX",
              help="flanneld's --etcd-prefix (default /coreos.com/network).")
@click.option("--report", "with_report", is_flag=True,
              help="Trace the run and write OUT/report.html too (see `emu report`).")
def run(scenario: str | None, out_dir: str | None, quiet: bool, etcd_endpoints: tuple[str, ...],
        etcd_prefix: str | None, with_report: bool) -> None:
    """Run SCENARIO (a YAML/JSON file; default: the built-in reference cluster)
    and write a pcap per interface, all.pcapng and stats.json."""
    from emu.scenario.run import LARGE_CLUSTER_NODES, netfilter_summary, run_scenario

    loaded = _with_etcd(_load(scenario), etcd_endpoints, etcd_prefix)
    target = Path(out_dir) if out_dir else Path("pcaps") / loaded.name
    if with_report:
        _claim_report(target / "report.html")
        traced = _traced(loaded, target)
        result = traced.result
        _write_report(traced, target / "report.html")
    else:
        with _interruptible() as interrupted, _progress_display() as progress:
            try:
                result = run_scenario(loaded, target, interrupted=interrupted, progress=progress)
            except ScenarioError as error:
                fail(str(error))
            except OSError as error:
                fail(f"{target}: {error.strerror or error}")
    console.print(f"scenario [bold]{loaded.name}[/bold] ({loaded.net_conf.backend.type} backend), "
                  f"{len(loaded.nodes)} nodes, virtual time {result.end_ns / 1e9:.3f} s")
    large = len(result.nodes) > LARGE_CLUSTER_NODES
    shown, more = _first_few(result.nodes, "nodes", large)
    for line in shown + more:
        console.print(f"  {line}", markup=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    for item in result.traffic:
        who = item.spec.source + (f"/{item.spec.container}" if item.spec.container else "")
        console.print(f"\n{who}$ {item.spec.command}", style="bold", markup=False)
        lines = _shown_output(item.result)
        failed = isinstance(item.result, PingResult) and item.result.fatal
        for line in (lines if not quiet else lines[-2:] if failed else lines[-1:]):
            console.print(f"  {line}", markup=False)
    table = Table(title=f"capture points in {target}", show_edge=False)
    table.add_column("capture point")
    table.add_column("frames", justify="right")
    counts = [(name, str(count)) for name, count in result.capture_counts.items()]
    shown, more = _first_few(counts, "capture points", large)
    for row in shown:
        table.add_row(*row)
    console.print()
    console.print(table)
    for line in more:
        console.print(f" {line}", markup=False)
    drops = {f"{ns}/{dev}:{reason}": n for ns, entry in result.stats["namespaces"].items()
             for dev, counters in entry["devices"].items()
             for reason, n in counters["drops"].items() if reason != "OTHERHOST"}
    drops.update({f"{ns}:{reason}": n for ns, entry in result.stats["namespaces"].items()
                  for reason, n in entry["stack"]["drops"].items()})
    if drops:
        console.print("drops: " + ", ".join(f"{k}={v}" for k, v in sorted(drops.items())), markup=False)
    for line in netfilter_summary(result.stats):
        console.print(f"netfilter {line} (stats.json)", markup=False)
    pcaps = sum(name.endswith(".pcap") for name in result.written)
    others = [name for name in result.written if not name.endswith(".pcap")]
    console.print(f"wrote {pcaps} pcap{'s' if pcaps != 1 else ''}"
                  f"{''.join(f', {name}' for name in others)} to {target}", markup=False)
    if result.interrupted:
        console.print(f"interrupted by {result.interrupted} at virtual time {result.end_ns / 1e9:.3f} s",
                      markup=False)
        sys.exit(EXIT_SIGNAL_BASE + getattr(signal, result.interrupted))


@contextmanager
def _interruptible():
    """SIGINT and SIGTERM ask the run to stop at the end of its current
    virtual instant (it then writes everything, marked interrupted) instead
    of killing it; a second signal kills as usual."""
    received: list[str] = []

    def handler(number: int, frame) -> None:
        if received:
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
        received.append(signal.Signals(number).name)

    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@contextmanager
def _progress_display():
    """On a terminal, a transient line with the virtual time reached and the
    frames captured (on stderr); nothing when stderr is not a terminal."""
    if not progress_console.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), console=progress_console, transient=True) as shown:
        task = shown.add_task("building the cluster")

        def update(now_ns: int, frames: int) -> None:
            shown.update(task, description=f"virtual time {now_ns / 1e9:.3f} s, {frames} frames captured")

        yield update


@main.command(name="import")
@click.option("--etcd", "etcd_url", metavar="URL", default=None,
              help="Read flannel's config and leases from this live etcd (v3).")
@click.option("--etcd-prefix", default="/coreos.com/network", show_default=True, metavar="PREFIX",
              help="flanneld's --etcd-prefix.")
@click.option("--kube", "kube_nodes", metavar="NODES.json", type=click.Path(dir_okay=False), default=None,
              help="`kubectl get nodes -o json` of a cluster using flannel's kube subnet manager.")
@click.option("--net-conf", "net_conf", metavar="FILE", type=click.Path(dir_okay=False), default=None,
              help="With --kube: flannel's net-conf.json, or the kube-flannel ConfigMap as YAML/JSON.")
@click.option("--pods", "kube_pods", metavar="PODS.json", type=click.Path(dir_okay=False), default=None,
              help="With --kube: `kubectl get pods -A -o json`, to emulate the pods too.")
@click.option("--subnet-env", "subnet_env", metavar="FILE", type=click.Path(dir_okay=False), default=None,
              help="One node's /run/flannel/subnet.env.")
@click.option("--public-ip", default=None, metavar="ADDRESS",
              help="With --subnet-env: the node's address (subnet.env does not hold it).")
@click.option("--name", "scenario_name", default="imported", show_default=True,
              help="The scenario's name (its default output folder).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the scenario here (default: standard output).")
def import_(etcd_url: str | None, etcd_prefix: str, kube_nodes: str | None, net_conf: str | None,
            kube_pods: str | None, subnet_env: str | None, public_ip: str | None, scenario_name: str,
            output: str | None) -> None:
    """Write a scenario file from a real cluster's state: its etcd, its Node
    objects, or one node's subnet.env. Fields emu cannot use are named in
    comments at the top of the file."""
    from emu.scenario import importer

    sources = [name for name, value in (("--etcd", etcd_url), ("--kube", kube_nodes),
                                        ("--subnet-env", subnet_env)) if value]
    if len(sources) != 1:
        fail("import: give exactly one of --etcd URL, --kube NODES.json, --subnet-env FILE")
    if kube_nodes and not net_conf:
        fail("import: --kube needs --net-conf FILE (net-conf.json or the kube-flannel ConfigMap)")
    for flag, value, needs in (("--net-conf", net_conf, kube_nodes), ("--pods", kube_pods, kube_nodes),
                               ("--public-ip", public_ip, subnet_env)):
        if value and not needs:
            fail(f"import: {flag} goes with {'--kube' if flag != '--public-ip' else '--subnet-env'}")
    try:
        if etcd_url:
            imported = importer.from_etcd(etcd_url, etcd_prefix)
        elif kube_nodes:
            imported = importer.from_kube(kube_nodes, net_conf, kube_pods)
        else:
            imported = importer.from_subnet_env(subnet_env, public_ip)
        text = importer.import_scenario(imported, scenario_name)
    except ScenarioError as error:
        fail(str(error))
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text)
    except OSError as error:
        fail(f"{output}: {error.strerror or error}")
    click.echo(f"wrote {output}: {len(imported.nodes)} nodes, "
               f"{sum(len(node.pods) for node in imported.nodes)} pods", err=True)


_SHOWN_STDOUT = 2048


def _shown_output(process) -> list[str]:
    """What the run summary prints for a process: ping's lines as ping
    prints them; for other programs their output (a long or binary stdout
    summed up) and how they ended."""
    if isinstance(process, PingResult):  # stdout, then stderr (a fatal error), as ping prints
        failed = [process.fatal] if process.fatal else []
        status = process.exit_status
        return process.lines + failed + ([f"[exit status {status}]"] if status else [])
    stdout = bytes(process.stdout)
    text = stdout.decode("utf-8", errors="replace")
    printable = len(stdout) <= _SHOWN_STDOUT and all(c.isprintable() or c in "\t\n" for c in text)
    lines = text.splitlines() if printable else [f"({len(stdout)} bytes on stdout, sha256 "
                                                 f"{hashlib.sha256(stdout).hexdigest()[:16]}...)"]
    return lines + process.stderr + [f"[{process.summary()}]"]


def _traced(loaded: Scenario, target: Path | None):
    from emu.explain.trace import traced_run

    try:
        return traced_run(loaded, target)
    except ScenarioError as error:
        fail(str(error))
    except OSError as error:
        fail(f"{target}: {error.strerror or error}")


def _claim_report(path: Path) -> None:
    """Refuse, before running, a report.html in the output folder that emu did not write."""
    from emu.scenario.outputs import OutputFolder

    try:
        OutputFolder(path.parent).claim(path.name)
    except ScenarioError as error:
        fail(str(error))


def _write_report(traced, path: Path, in_output_folder: bool = True) -> None:
    """Write the HTML report; as OUT/report.html (claimed by `_claim_report`
    before the run) it is one of emu's outputs, listed in the manifest."""
    from emu.explain.report import ReportError, write_report
    from emu.scenario.outputs import OutputFolder

    folder = OutputFolder(path.parent) if in_output_folder else None
    try:
        write_report(traced, path)
        if folder is not None:
            folder.adopt(path.name)
    except ScenarioError as error:
        fail(str(error))
    except ReportError as error:
        fail(str(error))
    except OSError as error:
        fail(f"{path}: {error.strerror or error}")
    console.print(f"wrote {path}", markup=False)


@main.command()
@click.argument("scenario")
@click.option("--flow", default=None, metavar="FILTER",
              help="Which packets: a filter on the innermost packet (`icmp and host 10.244.2.2`, "
                   "`arp`, `udp port 53`, `src 10.244.1.2`) or a traffic index (0: the first command).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hop (JSON Lines).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also write the pcaps, stats.json and the annotated all.pcapng here.")
def trace(scenario: str, flow: str | None, as_json: bool, out_dir: str | None) -> None:
    """Run SCENARIO and print every packet's walk: one line per hop (virtual
    time, namespace, device, stage, the decision with its evidence, verdict)."""
    from emu.explain.flowfilter import FilterError
    from emu.explain.trace import format_json, format_text

    traced = _traced(_load(scenario), Path(out_dir) if out_dir else None)
    try:
        packets = traced.flow(flow)
    except (FilterError, IndexError) as error:
        fail(f"--flow: {error}" if isinstance(error, FilterError) else str(error))
    lines = format_json(packets) if as_json else format_text(packets)
    click.echo("\n".join(lines) + ("\n" if lines else ""), nl=False)


@main.command()
@click.argument("scenario")
@click.option("-o", "--output", "report_path", type=click.Path(dir_okay=False), default=None,
              help="The HTML file (default: OUT/report.html).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for the pcaps the report links to (default: pcaps/<scenario name>).")
def report(scenario: str, report_path: str | None, out_dir: str | None) -> None:
    """Run SCENARIO traced and write one self-contained HTML page: the cluster
    drawn, a flow graph per command, the tables, links to the pcaps."""
    loaded = _load(scenario)
    target = Path(out_dir) if out_dir else Path("pcaps") / loaded.name
    if report_path is None:
        _claim_report(target / "report.html")
    traced = _traced(loaded, target)
    _write_report(traced, Path(report_path) if report_path else target / "report.html",
                  in_output_folder=report_path is None)


def _first_few(items: list, what: str, large: bool) -> tuple[list, list[str]]:
    """What a summary shows of `items`: all of them, or for a large cluster
    the first SUMMARY_HEAD and a line saying how many more stats.json lists."""
    if not large or len(items) <= SUMMARY_HEAD:
        return items, []
    return items[:SUMMARY_HEAD], [f"... and {len(items) - SUMMARY_HEAD} more {what} "
                                  f"({len(items)} in all, listed in stats.json)"]


@main.command()
@click.argument("kernel_dir", type=click.Path(), required=False)
@click.argument("out_dir", type=click.Path(), required=False)
@click.option("--kernel", "kernel_scenario", metavar="SCENARIO", default=None,
              help="Run SCENARIO on the real kernel (root: network namespaces) and in the "
                   "emulator, and compare the two instead of two folders.")
@click.option("--keep", "keep_dir", type=click.Path(file_okay=False), default=None,
              help="With --kernel: keep the kernel's captures in this directory.")
@click.option("--vxlan-port", "vxlan_ports", type=int, multiple=True,
              help="UDP port carrying VXLAN (default 8472).")
@click.option("--udp-port", "udp_ports", type=int, multiple=True,
              help="UDP port of flannel's udp backend (default 8285).")
def verify(kernel_dir: str | None, out_dir: str | None, kernel_scenario: str | None,
           keep_dir: str | None, vxlan_ports: tuple[int, ...], udp_ports: tuple[int, ...]) -> None:
    """Compare the pcaps in OUT_DIR with the kernel's in KERNEL_DIR, point by point
    (or, with --kernel SCENARIO, run SCENARIO on the kernel and in the emulator first)."""
    from emu.verify import compare_dirs

    if kernel_scenario is not None:
        if kernel_dir is not None:
            fail("verify: give either --kernel SCENARIO or KERNEL_DIR OUT_DIR, not both")
        report = _verify_on_kernel(_load(kernel_scenario), keep_dir)
    else:
        if kernel_dir is None or out_dir is None:
            fail("verify: needs KERNEL_DIR and OUT_DIR (or --kernel SCENARIO)")
        for name, path in (("KERNEL_DIR", kernel_dir), ("OUT_DIR", out_dir)):
            if not Path(path).is_dir():
                fail(f"{name}: {path} is not a directory")
        report = compare_dirs(kernel_dir, out_dir, vxlan_ports=vxlan_ports or (8472,),
                              udp_ports=udp_ports or (8285,))
    for line in report.lines():
        console.print(line, markup=False)
    sys.exit(0 if report.ok else EXIT_MISMATCH)


def _verify_on_kernel(scenario: Scenario, keep_dir: str | None):
    from emu.kernel import KernelError, kernel_unavailable, verify_kernel

    reason = kernel_unavailable()
    if reason is not None:
        fail(f"verify --kernel: {reason}")
    try:
        report, _ = verify_kernel(scenario, keep_dir)
    except ScenarioError as error:
        fail(str(error))
    except KernelError as error:
        fail(f"verify --kernel: {error}")
    return report


@main.command()
@click.argument("scenario")
def check(scenario: str) -> None:
    """Validate SCENARIO without running its traffic: load it, build its
    cluster and apply its events as `emu run` does (exit 2 with the same
    one-line error), and name each command that would fail as the real tool
    does (exit 1)."""
    from emu.scenario.check import check_scenario

    loaded = _load(scenario)
    try:
        warnings = check_scenario(loaded)
    except ScenarioError as error:
        fail(str(error))
    for warning in warnings:
        click.echo(f"emu: warning: {warning}", err=True)
    if warnings:
        sys.exit(EXIT_MISMATCH)
    console.print(f"{scenario}: ok ({loaded.name}: {len(loaded.nodes)} nodes, "
                  f"{sum(len(n.pods) for n in loaded.nodes)} pods, {len(loaded.traffic)} commands)",
                  markup=False)


@main.command()
@click.argument("scenario")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True,
              help="Mermaid flowchart (Markdown, docs) or Graphviz dot (`dot -Tsvg`).")
def diagram(scenario: str, fmt: str) -> None:
    """Print SCENARIO's cluster (nodes, pods, devices, addresses, flannel's
    tunnels) as a diagram, as built at time 0 (leases and IPAM resolved)."""
    from emu.explain.diagram import render
    from emu.explain.topology import topology_of
    from emu.scenario.build import build_cluster

    try:
        emulated = build_cluster(_load(scenario))
    except ScenarioError as error:
        fail(str(error))
    click.echo(render(topology_of(emulated), fmt), nl=False)


@main.command()
@click.argument("scenario")
@click.option("--netns", is_flag=True, help="A bash script for real network namespaces (the only format).")
@click.option("--prefix", default=None, help="Namespace name prefix (default: a fresh emu<hex>-).")
def export(scenario: str, netns: bool, prefix: str | None) -> None:
    """Print a bash script (`up` / `down`) that builds SCENARIO's cluster in real
    network namespaces, exactly as the emulator models it."""
    from emu.kernel import export_netns

    if not netns:
        fail("export: choose the format: --netns")
    try:
        exported = export_netns(_load(scenario), prefix)
    except ScenarioError as error:
        fail(str(error))
    except ValueError as error:
        fail(str(error))
    click.echo(exported.script, nl=False)


@main.command("underlay-wire")
@click.argument("node_side")
@click.argument("switch_side")
@click.option("--delay-ns", type=click.IntRange(0), required=True, help="Delay towards the node.")
def underlay_wire(node_side: str, switch_side: str, delay_ns: int) -> None:
    """The underlay's latency on a real kernel: relay frames between a node's
    veth peer and the switch, those towards the node DELAY later (run in the
    switch's namespace by the `export --netns` script)."""
    from emu.kernel.underlay_wire import run_wire

    try:
        run_wire(node_side, switch_side, delay_ns)
    except OSError as error:
        fail(f"underlay-wire: {node_side}/{switch_side}: {error.strerror or error}")


@main.command("flanneld-udp")
@click.option("--tun", default="flannel0", show_default=True, help="The TUN device to attach to.")
@click.option("--port", type=click.IntRange(1, 65535), default=8285, show_default=True,
              help="UDP port, local and remote.")
@click.option("--route", "routes", multiple=True, metavar="SUBNET=PUBLIC_IP",
              help="A remote lease: its subnet and its node's public IP (repeatable).")
def flanneld_udp(tun: str, port: int, routes: tuple[str, ...]) -> None:
    """flanneld's udp backend on a real TUN and UDP socket (run inside a node's
    namespace; used by the `export --netns` script)."""
    from emu.kernel.flanneld_udp import parse_route, run_flanneld_udp

    try:
        table = dict(parse_route(text) for text in routes)
    except ValueError as error:
        fail(str(error))
    try:
        run_flanneld_udp(tun, port, table)
    except OSError as error:
        fail(f"flanneld-udp: {tun} / port {port}: {error.strerror or error}")


def _import_benchmarks():
    """The `benchmarks` package lives next to `emu` in the source checkout and
    is not installed; an editable install only maps `emu`, so look there.
    What it needs beyond emu's dependencies is the `[bench]` extra."""
    try:
        import benchmarks.suite
    except ModuleNotFoundError as error:
        if error.name not in ("benchmarks", "benchmarks.suite"):
            fail(str(missing_extra("bench", "emu bench", error)))
        checkout = Path(__file__).resolve().parent.parent
        if not (checkout / "benchmarks" / "suite.py").is_file():
            fail("emu bench needs the source checkout (its benchmarks/ directory is not installed)")
        sys.path.insert(0, str(checkout))
        try:
            import benchmarks.suite
        except ModuleNotFoundError as error:
            fail(str(missing_extra("bench", "emu bench", error)))
    try:
        import matplotlib  # noqa: F401  (the plot, drawn at the end: say it now)
    except ModuleNotFoundError as error:
        fail(str(missing_extra("bench", "emu bench", error)))
    return benchmarks.suite


@main.command()
@click.option("--quick", is_flag=True, help="Fewer, shorter rounds (under 3 minutes).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default="bench.json",
              show_default=True, help="Where to write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default="bench.png",
              show_default=True, help="Where to write the PNG plot.")
def bench(quick: bool, json_path: str, plot_path: str) -> None:
    """Measure forwarding frames/s of the emulator, scapy, dpkt and (as root)
    the Linux kernel on the same topology, in interleaved rounds."""
    suite = _import_benchmarks()
    try:
        suite.run(suite.QUICK if quick else suite.FULL, Path(json_path), Path(plot_path),
                  suite.wide_console())
    except ValueError as error:
        fail(f"bench: {error}")
    except OSError as error:
        fail(f"bench: {error.filename or ''}: {error.strerror or error}")


if __name__ == "__main__":
    main()
