"""The benchmark suite: which cases run, how rounds interleave, what is reported.

Every case is set up once, then measured in rounds that go round-robin over
all cases (case A, B, C, A, B, C, ...), so a slow drift of the machine (a
noisy neighbour, thermal limits) spreads over every case instead of landing
on whichever ran last. Each case reports the median of its rounds and their
min and max. Output: a rich table, a JSON document (`cases`: name ->
`{"fps", "min", "max", "rounds", ...}`, fps null where a case cannot run;
`peak_rss_mb`; `ratios`: the median of per-round ratios, `ratio_rounds`
their range), a PNG plot, and the ratios printed last.

Like work only: every end-to-end case that reports frames/s builds every
frame at every capture point it passes (slow path, a `FrameSink`, or pcap
files); the ratios divide the emulator building frames by the kernel
forwarding every packet, and the slow path by naive chains checked to build
the same frames at the same points. The flow cache's counters-only replays
(`*_replay_counters_only`: no frame built after a flow's first) are in their
own group and in no ratio.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

from benchmarks.baseline import ChainCase
from benchmarks.baseline_dpkt import DpktChain
from benchmarks.baseline_scapy import ScapyChain
from benchmarks.case import Case, CaseUnavailable
from benchmarks.cases_emu import BridgeCase, PodToPodCase, VxlanDecapCase, VxlanEncapCase
from benchmarks.cases_scenario import PingScenarioCase
from benchmarks.kernel import KernelCase

REQUIRED_CASES = (
    "bridge_1k_macs", "bridge_1m_macs", "vxlan_encap_batch", "vxlan_decap_batch", "same_node",
    "cross_node_vxlan", "cross_node_hostgw", "cross_node_udp", "cross_node_vxlan_capture",
    "scapy_cross_node_vxlan", "dpkt_cross_node_vxlan", "kernel_cross_node_vxlan",
    "kernel_same_node", "cross_node_vxlan_slow_path", "cross_node_vxlan_replay_counters_only",
    "emu_run_ping_capture",
)
NAMED_FDB_SIZES = (1_000, 1_000_000)  # bridge_1k_macs, bridge_1m_macs
NAMED_FRAME_SIZE = 100  # vxlan_encap_batch / vxlan_decap_batch: 100-byte inner frames
# Like work only: the emulator building (and capturing) every frame at every
# point vs the kernel forwarding every packet; the slow path vs the naive
# chains that build the same frames at the same points. Each ratio is the
# median of per-round ratios (rounds interleave, so both sides of a round saw
# the same load). The counters-only replays are in no ratio.
RATIOS = (
    ("emulator (every frame built and captured)/kernel cross-node vxlan",
     "cross_node_vxlan_capture", "kernel_cross_node_vxlan"),
    ("emulator (every frame built)/kernel cross-node vxlan", "cross_node_vxlan",
     "kernel_cross_node_vxlan"),
    ("emulator (every frame built)/kernel same-node", "same_node", "kernel_same_node"),
    ("slow path/dpkt cross-node vxlan", "cross_node_vxlan_slow_path", "dpkt_cross_node_vxlan"),
    ("slow path/scapy cross-node vxlan", "cross_node_vxlan_slow_path", "scapy_cross_node_vxlan"),
)


@dataclass(frozen=True)
class Settings:
    """How much to measure. `batch`: frames handed over per call where the API
    takes batches (end-to-end today), and the loop size elsewhere."""

    rounds: int
    budget_s: float
    fdb_sizes: tuple[int, ...]
    frame_sizes: tuple[int, ...]
    batch: int = 256
    kernel: bool = True
    bridge_batches: tuple[int, ...] = (64, 256, 1024)
    pings: int = 20_000  # the emu_run_ping_capture scenario's ping -c

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds: must be at least 1, got {self.rounds}")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s: must be positive, got {self.budget_s}")


QUICK = Settings(rounds=5, budget_s=0.4, fdb_sizes=(10, 1_000, 100_000, 1_000_000),
                 frame_sizes=(64, 100, 512, 1450))
FULL = Settings(rounds=7, budget_s=1.0,
                fdb_sizes=(10, 100, 1_000, 10_000, 100_000, 1_000_000),
                frame_sizes=(64, 100, 256, 512, 1024, 1450))


class _Disabled(Case):
    """A case the settings turned off: reported with fps null."""

    def setup(self) -> None:
        raise CaseUnavailable("turned off by the settings")


def count_label(count: int) -> str:
    """1000 -> '1k', 1000000 -> '1m', 250 -> '250': case-name spelling."""
    for unit, suffix in ((1_000_000, "m"), (1_000, "k")):
        if count >= unit and count % unit == 0:
            return f"{count // unit}{suffix}"
    return str(count)


# The vectorised codec and bridge pay off over big batches (numpy per-call
# overhead); 4,096 frames is the batch the issue's own sketch measured. The
# named bridge cases take packed batches (`PackedFrames`); `bridge_1k_macs_list`
# shows the same with list[bytes], `bridge_1k_macs_batch_N` other batch sizes.
CODEC_BATCH = 4096
BRIDGE_BATCH = 4096


def build_cases(settings: Settings) -> list[Case]:
    """Every case of one run, in reporting order; the required names always."""
    cases: list[Case] = []
    for macs in sorted(set(settings.fdb_sizes) | set(NAMED_FDB_SIZES)):
        cases.append(BridgeCase(f"bridge_{count_label(macs)}_macs", macs, BRIDGE_BATCH))
    for batch in settings.bridge_batches:
        cases.append(BridgeCase(f"bridge_1k_macs_batch_{batch}", 1_000, batch, group="bridge_batch"))
    cases.append(BridgeCase("bridge_1k_macs_list", 1_000, BRIDGE_BATCH, packed=False,
                            group="bridge_batch"))
    for codec, kind in ((VxlanEncapCase, "encap"), (VxlanDecapCase, "decap")):
        for size in sorted(set(settings.frame_sizes) | {NAMED_FRAME_SIZE}):
            name = f"vxlan_{kind}_batch" if size == NAMED_FRAME_SIZE else f"vxlan_{kind}_{size}b"
            cases.append(codec(name, size, max(settings.batch, CODEC_BATCH)))
    batch = settings.batch
    paths = (("same_node", "vxlan", "p1b"), ("cross_node_vxlan", "vxlan", "p2a"),
             ("cross_node_hostgw", "host-gw", "p2a"), ("cross_node_udp", "udp", "p2a"))
    cases += [PodToPodCase(name, backend, pod, batch) for name, backend, pod in paths]
    cases += [
        PodToPodCase("cross_node_vxlan_capture", "vxlan", "p2a", batch, taps="capture"),
        PodToPodCase("same_node_slow_path", "vxlan", "p1b", batch, taps="none", fast=False),
        PodToPodCase("cross_node_vxlan_slow_path", "vxlan", "p2a", batch, taps="none", fast=False),
        PodToPodCase("cross_node_vxlan_capture_slow_path", "vxlan", "p2a", batch, taps="capture",
                     fast=False),
        PingScenarioCase("emu_run_ping_capture", settings.pings),
        ChainCase("scapy_cross_node_vxlan", "scapy", ScapyChain),
        ChainCase("dpkt_cross_node_vxlan", "dpkt", DpktChain),
    ]
    cases += [PodToPodCase(f"{name}_replay_counters_only", backend, pod, batch, taps="none",
                           group="counters_only") for name, backend, pod in paths]
    for name, destination in (("kernel_cross_node_vxlan", "p2a"), ("kernel_same_node", "p1b")):
        cases.append(KernelCase(name, destination) if settings.kernel
                     else _Disabled(name, "kernel", destination=destination))
    return cases


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def measure_cases(cases: list[Case], settings: Settings, console: Console) -> dict[str, dict]:
    """Set every case up, run the interleaved rounds, close every case.

    Returns name -> {"samples": [frames/s per round], "side": {name: [rate
    per round]} (a case's `side_rates`, e.g. the kernel senders' packets/s),
    "note": why it did not run or None}. Cases are closed even when a round
    fails or is interrupted.
    """
    outcome = {case.name: {"samples": [], "side": {}, "note": None} for case in cases}
    live: list[Case] = []
    try:
        with _progress(console) as progress:
            task = progress.add_task("setup", total=len(cases) * (1 + settings.rounds))
            for case in cases:
                progress.update(task, description=f"setup {case.name}")
                try:
                    case.setup()
                    live.append(case)
                except CaseUnavailable as reason:
                    outcome[case.name]["note"] = str(reason)
                    progress.advance(task, settings.rounds)
                progress.advance(task)
            for round_index in range(settings.rounds):
                for case in live:
                    progress.update(task, description=f"round {round_index + 1}/{settings.rounds} "
                                                      f"{case.name}")
                    frames, seconds = case.measure(settings.budget_s)
                    outcome[case.name]["samples"].append(frames / seconds)
                    for key, rate in case.side_rates().items():
                        outcome[case.name]["side"].setdefault(key, []).append(rate)
                    progress.advance(task)
    finally:
        for case in cases:
            case.close()
    return outcome


def machine_info() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "kernel": platform.release()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def build_document(cases: list[Case], outcome: dict[str, dict], settings: Settings) -> dict:
    """The JSON document of one run."""
    entries = {}
    for case in cases:
        samples = outcome[case.name]["samples"]
        entry = {"fps": round(statistics.median(samples)) if samples else None,
                 "min": round(min(samples)) if samples else None,
                 "max": round(max(samples)) if samples else None,
                 "rounds": len(samples), "group": case.group, "params": case.params,
                 "description": case.describe()}
        if case.extra:
            entry["extra"] = case.extra
        side = outcome[case.name].get("side")
        if side:
            entry["side_fps"] = {key: round(statistics.median(rates)) for key, rates in side.items()}
        if outcome[case.name]["note"]:
            entry["note"] = outcome[case.name]["note"]
        entries[case.name] = entry
    ratios, ratio_rounds = {}, {}
    for label, numerator, denominator in RATIOS:
        per_round = [top / bottom for top, bottom in zip(outcome[numerator]["samples"],
                                                         outcome[denominator]["samples"])]
        ratios[label] = round(statistics.median(per_round), 3) if per_round else None
        ratio_rounds[label] = ({"min": round(min(per_round), 3), "max": round(max(per_round), 3)}
                               if per_round else None)
    return {"machine": machine_info(), "settings": asdict(settings), "cases": entries,
            "ratios": ratios, "ratio_rounds": ratio_rounds, "peak_rss_mb": peak_rss_mb()}


def _fps(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def render_table(document: dict) -> Table:
    """One row per case: median, min and max frames/s, and what it measures."""
    rounds = document["settings"]["rounds"]
    table = Table(title=f"frames per second: median, min and max of {rounds} interleaved rounds",
                  show_edge=False)
    table.add_column("case", no_wrap=True)
    for column in ("fps", "min", "max"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("what")
    for name, entry in document["cases"].items():
        what = entry.get("note") or entry["description"]
        for key, rate in entry.get("side_fps", {}).items():
            what += f"; {key} {_fps(rate)}/s"
        table.add_row(name, _fps(entry["fps"]), _fps(entry["min"]), _fps(entry["max"]), what)
    return table


def ratio_lines(document: dict) -> list[str]:
    """The closing lines: how the emulator compares with the kernel and the
    naive chains (median of the per-round ratios, their range in brackets)."""
    lines = []
    for label, value in document["ratios"].items():
        spread = document["ratio_rounds"][label]
        lines.append(f"{label}: " + ("n/a (a case did not run)" if value is None else
                                      f"{value:,.3f}x, per round {spread['min']:,.2f}x to {spread['max']:,.2f}x"))
    return lines


def write_plot(document: dict, path: Path) -> None:
    """PNG: frames/s vs inner frame size (codec), vs FDB size and vs batch
    size (bridge), and the pod->pod paths side by side (emulator building
    every frame, `emu run`, baselines, kernel; not the counters-only
    replays); log scales, bars from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    cases = document["cases"]
    figure, (sizes, fdb, batches, paths) = pyplot.subplots(
        1, 4, figsize=(22, 5.5), gridspec_kw={"width_ratios": [1, 1, 1, 1.4]})
    for group, label in (("vxlan_encap", "encap"), ("vxlan_decap", "decap")):
        _line(sizes, [e for e in cases.values() if e["group"] == group], "frame_size", label)
    sizes.set(title="VXLAN codec", xlabel="inner frame bytes", ylabel="frames/s", yscale="log")
    sizes.legend()
    _line(fdb, [e for e in cases.values() if e["group"] == "bridge"], "macs", "bridge")
    fdb.set(title="learning bridge", xlabel="MACs in the FDB", ylabel="frames/s",
            xscale="log", yscale="log")
    packed = [e for e in cases.values() if e["group"] in ("bridge", "bridge_batch")
              and e["params"]["macs"] == 1_000 and e["params"]["packed"]]
    _line(batches, packed, "batch", "1,000 MACs, packed")
    batches.set(title="learning bridge", xlabel="frames per batch", ylabel="frames/s",
                xscale="log", yscale="log")
    ran = [(name, e) for name, e in cases.items()
           if e["group"] in ("end_to_end", "scenario", "baseline", "kernel") and e["fps"]]
    colours = {"end_to_end": "tab:blue", "scenario": "tab:purple", "baseline": "tab:orange",
               "kernel": "tab:green"}
    positions = range(len(ran))
    paths.bar(positions, [e["fps"] for _, e in ran], color=[colours[e["group"]] for _, e in ran],
              yerr=[[e["fps"] - e["min"] for _, e in ran], [e["max"] - e["fps"] for _, e in ran]])
    paths.set_xticks(list(positions), [name for name, _ in ran], rotation=60, ha="right",
                     fontsize=8)
    paths.set(title="pod -> pod UDP (64-byte payload)", ylabel="frames/s", yscale="log")
    machine = document["machine"]
    figure.suptitle(f"emu benchmarks: {machine['cpu']}, {machine['nproc']} CPUs, "
                    f"{machine['implementation']} {machine['python']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _line(axes, entries: list[dict], param: str, label: str) -> None:
    points = sorted((e["params"][param], e) for e in entries if e["fps"])
    if not points:
        return
    xs = [x for x, _ in points]
    axes.errorbar(xs, [e["fps"] for _, e in points], marker="o", label=label, capsize=3,
                  yerr=[[e["fps"] - e["min"] for _, e in points],
                        [e["max"] - e["fps"] for _, e in points]])


def run(settings: Settings, json_path: Path, plot_path: Path, console: Console) -> dict:
    """Measure everything, print the table and ratios, write the JSON and the plot.

    Raises ValueError before measuring if an output's directory does not exist.
    """
    for path in (json_path, plot_path):
        if not path.resolve().parent.is_dir():
            raise ValueError(f"{path}: directory {path.parent} does not exist")
    cases = build_cases(settings)
    outcome = measure_cases(cases, settings, console)
    document = build_document(cases, outcome, settings)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    write_plot(document, plot_path)
    machine = document["machine"]
    console.print(render_table(document))
    console.print(f"machine: {machine['cpu']}, {machine['nproc']} CPUs, {machine['implementation']} "
                  f"{machine['python']}, Linux {machine['kernel']}; peak RSS "
                  f"{document['peak_rss_mb']:.0f} MiB", markup=False)
    console.print(f"wrote {json_path} and {plot_path}", markup=False)
    for line in ratio_lines(document):
        console.print(line, markup=False)
    return document


def wide_console() -> Console:
    """The terminal, or 120 columns when output goes to a file or pipe (rich
    would assume 80 there and wrap the table)."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=120)
