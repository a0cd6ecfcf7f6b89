"""Random topologies against the real kernel, and the regressions they left.

`test_random_topologies_match_the_kernel` (root) runs RANDOM_SCENARIOS random
valid scenarios (emu.testing.strategies.scenarios) in real namespaces and in the
emulator and requires every capture point to match. It prints its seed
(replay with EMU_RANDOM_SEED=<seed>). A failing scenario is shrunk by
hypothesis and saved as tests/regressions/random-<seed>.yaml with its kernel
captures in tests/regressions/random-<seed>/; from then on
`test_saved_regressions_match_their_kernel_capture` (no root) keeps the
emulator matching that capture, and tests/test_kernel_live.py replays the
scenario on the kernel too.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from emu.kernel import kernel_unavailable, verify_kernel
from emu.kernel.live import scenario_ports
from emu.testing.topologies import MAX_COMMANDS, MAX_NODES, MAX_PODS, scenario_documents, scenario_yaml
from emu.scenario import load_scenario, load_scenario_text
from emu.scenario.run import run_scenario
from emu.verify import compare_dirs

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
SAVED = sorted(REGRESSIONS.glob("*.yaml"))
RANDOM_SCENARIOS = 30
# CI runs a fixed seed whose 30 scenarios (pings and nc UDP exchanges) are known to match, so a red CI
# means a regression, not a newly explored corner; elsewhere every run
# explores a fresh seed (and saves what it finds). EMU_RANDOM_SEED overrides.
CI_SEED = 20261203
SEED = int(os.environ.get("EMU_RANDOM_SEED")
           or (CI_SEED if os.environ.get("CI") == "true" else random.randrange(2**32)))
# A failing live scenario is shrunk (each step is a live run); past this
# budget the remaining shrink steps are skipped and the smallest failure
# found so far is the one saved and reported.
SHRINK_BUDGET_S = 180
UNAVAILABLE = kernel_unavailable()


@settings(max_examples=25, deadline=None, database=None)
@given(scenario_documents())
def test_strategy_draws_valid_scenarios(document):
    scenario = load_scenario_text(scenario_yaml(document))
    assert 1 <= len(scenario.nodes) <= MAX_NODES
    assert all(len(node.pods) <= MAX_PODS for node in scenario.nodes)
    assert 576 <= scenario.underlay.mtu <= 9000
    foreground = [item for item in scenario.traffic if not item.background]
    assert 1 <= len(foreground) <= MAX_COMMANDS  # an nc exchange may add a background listener
    names = {node.name for node in scenario.nodes} | {pod.name for n in scenario.nodes for pod in n.pods}
    for item in scenario.traffic:
        assert item.source in names
        if item.ping is not None:
            assert 1 <= item.ping.count <= 3 and item.ping.interval <= 0.1 and item.ping.timeout == 1
        elif item.background:
            assert item.program.options.listen and not item.stdin
        else:
            assert item.program.options.quit_after == 0 and 1 <= len(item.stdin) <= 200_000


@pytest.mark.parametrize("path", SAVED, ids=lambda p: p.stem)
def test_saved_regressions_match_their_kernel_capture(path, tmp_path):
    scenario = load_scenario(path)
    run_scenario(scenario, tmp_path)
    report = compare_dirs(path.with_suffix(""), tmp_path, **scenario_ports(scenario))
    assert report.ok, "\n".join(report.lines())


def _save_regression(text: str, kernel_dir: Path) -> Path:
    """Keep a failing scenario with its kernel captures (each shrink step
    overwrites the last, so the smallest failing one stays)."""
    name = f"random-{SEED}"
    target = REGRESSIONS / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(kernel_dir, target)
    path = REGRESSIONS / f"{name}.yaml"
    path.write_text(f"# Found by tests/test_random_topologies.py with EMU_RANDOM_SEED={SEED}.\n"
                    + text.replace("name: random", f"name: {name}", 1))
    return path


@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"kernel runs: {UNAVAILABLE}")
def test_random_topologies_match_the_kernel(capsys):
    with capsys.disabled():
        print(f"\nrandom topologies: EMU_RANDOM_SEED={SEED}, {RANDOM_SCENARIOS} scenarios")
    ran = []
    first_failure: list[float] = []

    @seed(SEED)
    @settings(max_examples=RANDOM_SCENARIOS, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(scenario_documents())
    def scenario_matches(document):
        if first_failure and time.monotonic() - first_failure[0] > SHRINK_BUDGET_S:
            return  # out of shrinking budget: keep the failure already saved
        text = scenario_yaml(document)
        scenario = load_scenario_text(text)
        with tempfile.TemporaryDirectory(prefix="emu-random-") as scratch:
            report, _ = verify_kernel(scenario, Path(scratch) / "kernel")
            ran.append(report.total)
            if report.total and not report.ok:  # 0 points: nothing was sent on either side
                first_failure[:] = first_failure or [time.monotonic()]
                saved = _save_regression(text, Path(scratch) / "kernel")
                raise AssertionError(f"saved as {saved}\n" + "\n".join(report.lines()))

    scenario_matches()
    assert len(ran) >= RANDOM_SCENARIOS and sum(map(bool, ran)) >= RANDOM_SCENARIOS // 2
