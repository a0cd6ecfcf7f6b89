"""The `emu` command line: run scenarios, verify pcaps against the kernel's.

Exit codes: 0 success (a scenario that ran, even with lost pings; a verify
with every point matching), 1 a verify mismatch, 2 bad input (scenario
file, arguments). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from emu import __version__
from emu.scenario import ScenarioError, load_default, load_scenario
from emu.scenario.model import Scenario

EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2

console = Console(highlight=False, soft_wrap=True)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emu")
def main() -> None:
    """A Kubernetes pod-network emulator on raw frames (flannel vxlan, host-gw, udp)."""


@main.command()
@click.argument("scenario", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for the pcaps and stats.json (default: pcaps/<scenario name>).")
@click.option("--quiet", "-q", is_flag=True, help="Only print the per-command summaries.")
def run(scenario: str | None, out_dir: str | None, quiet: bool) -> None:
    """Run SCENARIO (a YAML/JSON file; default: the built-in reference cluster)
    and write a pcap per interface, all.pcapng and stats.json."""
    from emu.scenario.run import run_scenario

    loaded = _load(scenario)
    target = Path(out_dir) if out_dir else Path("pcaps") / loaded.name
    try:
        result = run_scenario(loaded, target)
    except ScenarioError as error:
        fail(str(error))
    except OSError as error:
        fail(f"{target}: {error.strerror or error}")
    console.print(f"scenario [bold]{loaded.name}[/bold] ({loaded.net_conf.backend.type} backend), "
                  f"{len(loaded.nodes)} nodes, virtual time {result.end_ns / 1e9:.3f} s")
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    for item in result.traffic:
        console.print(f"\n[bold]{item.spec.source}$ {item.ping.command}[/bold]")
        lines = item.ping.lines if not quiet else item.ping.lines[-1:]
        for line in lines:
            console.print(f"  {line}", markup=False)
    table = Table(title=f"capture points in {target}", show_edge=False)
    table.add_column("capture point")
    table.add_column("frames", justify="right")
    for name, count in result.capture_counts.items():
        table.add_row(name, str(count))
    console.print()
    console.print(table)
    drops = {f"{ns}/{dev}:{reason}": n for ns, entry in result.stats["namespaces"].items()
             for dev, counters in entry["devices"].items()
             for reason, n in counters["drops"].items() if reason != "otherhost"}
    drops.update({f"{ns}:{reason}": n for ns, entry in result.stats["namespaces"].items()
                  for reason, n in entry["stack"]["drops"].items()})
    if drops:
        console.print("drops: " + ", ".join(f"{k}={v}" for k, v in sorted(drops.items())), markup=False)
    console.print(f"wrote {len(result.capture_counts)} pcaps, all.pcapng and stats.json to {target}")


@main.command()
@click.argument("kernel_dir", type=click.Path())
@click.argument("out_dir", type=click.Path())
@click.option("--vxlan-port", "vxlan_ports", type=int, multiple=True,
              help="UDP port carrying VXLAN (default 8472).")
@click.option("--udp-port", "udp_ports", type=int, multiple=True,
              help="UDP port of flannel's udp backend (default 8285).")
def verify(kernel_dir: str, out_dir: str, vxlan_ports: tuple[int, ...], udp_ports: tuple[int, ...]) -> None:
    """Compare the pcaps in OUT_DIR with the kernel's in KERNEL_DIR, point by point."""
    from emu.verify import compare_dirs

    for name, path in (("KERNEL_DIR", kernel_dir), ("OUT_DIR", out_dir)):
        if not Path(path).is_dir():
            fail(f"{name}: {path} is not a directory")
    report = compare_dirs(kernel_dir, out_dir, vxlan_ports=vxlan_ports or (8472,),
                          udp_ports=udp_ports or (8285,))
    for line in report.lines():
        console.print(line, markup=False)
    sys.exit(0 if report.ok else EXIT_MISMATCH)


@main.command()
@click.argument("scenario")
def check(scenario: str) -> None:
    """Validate SCENARIO without running it."""
    loaded = _load(scenario)
    console.print(f"{scenario}: ok ({loaded.name}: {len(loaded.nodes)} nodes, "
                  f"{sum(len(n.pods) for n in loaded.nodes)} pods, {len(loaded.traffic)} commands)",
                  markup=False)


if __name__ == "__main__":
    main()
