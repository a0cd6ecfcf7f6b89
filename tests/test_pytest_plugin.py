"""The pytest plugin, exercised for real with pytester: the `cluster`
fixture from a marker or the ini option, and a failing test's pcaps written
to the folder its report names."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vxlan-cross-node.yaml"
# Installed (pip install -e .), the entry point loads the plugin; otherwise name it.
INSTALLED = any(ep.value == "emu.pytest_plugin" for ep in entry_points(group="pytest11"))
PLUGIN = [] if INSTALLED else ["-p", "emu.pytest_plugin"]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", *args)


def test_marker_builds_the_cluster_and_a_failure_keeps_its_pcaps(pytester):
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "cross.yaml").write_text(EXAMPLE.read_text())
    pytester.makepyfile(test_user="""
        import pytest

        @pytest.mark.emu_scenario("scenarios/cross.yaml", traffic=False)
        def test_passes(cluster):
            assert cluster.ping("p1a", "p2a").received == 1

        @pytest.mark.emu_scenario("scenarios/cross.yaml")
        def test_fails(cluster):
            cluster.run()
            assert cluster.stats()["traffic"][0]["received"] == 99
    """)
    pcaps = pytester.path / "evidence"
    result = run(pytester, "--emu-pcaps", str(pcaps))
    result.assert_outcomes(passed=1, failed=1)
    folder = pcaps / "test_user.py_test_fails"
    result.stdout.fnmatch_lines(["*emu pcaps*", f"pcaps of this test's cluster: {folder}", "*n1/eth0 (*"])
    written = sorted(p.name for p in folder.iterdir())
    assert "all.pcapng" in written and "p2a_eth0.pcap" in written and "stats.json" in written
    assert not (pcaps / "test_user.py_test_passes").exists()


def test_ini_option_names_the_scenario_and_pcaps_default_to_the_temp_folder(pytester):
    pytester.makeini(f"[pytest]\nemu_scenario = {EXAMPLE}\n")
    pytester.makepyfile(test_ini="""
        def test_fails(cluster):
            assert cluster.ping("p1a", "10.244.9.9").received == 1
    """)
    result = run(pytester, "--basetemp", str(pytester.path / "tmp"))
    result.assert_outcomes(failed=1)
    folder = pytester.path / "tmp" / "emu-pcaps" / "test_ini.py_test_fails"
    result.stdout.fnmatch_lines([f"pcaps of this test's cluster: {folder}"])
    assert (folder / "p1a_eth0.pcap").stat().st_size > 24


def test_without_marker_or_ini_the_fixture_says_what_it_needs(pytester):
    pytester.makepyfile(test_bare="""
        def test_x(cluster):
            pass
    """)
    result = run(pytester)
    result.stdout.fnmatch_lines(["*the cluster fixture needs @pytest.mark.emu_scenario(PATH)*"])
    assert result.ret != 0
