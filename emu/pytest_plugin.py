"""emu's pytest plugin (registered as the `pytest11` entry point "emu").

Why: a failing network test is understood in Wireshark, not in an assert
message. The plugin gives tests a ready `cluster` fixture (an `emu.Cluster`)
and, when a test that used it fails, writes that cluster's captures (every
interface's pcap, all.pcapng, stats.json, as `emu run` writes them) to a
folder named in the failure report.

Usage::

    import pytest

    @pytest.mark.emu_scenario("examples/vxlan-cross-node.yaml")
    def test_cross_node(cluster):
        assert cluster.ping("p1a", "p2a").received == 1

The marker takes a scenario file (relative paths are tried from the test
file's folder, then pytest's rootdir) and the `Cluster.from_file` keywords
(`traffic=False` for the topology only, `capture=False`). Without a marker
the ini option `emu_scenario` names the file. Pcaps of failures go under
`--emu-pcaps DIR` (default: `emu-pcaps` in pytest's base temporary folder),
one folder per test.

The plugin imports only pytest at load time, so having emu installed never
breaks a pytest run that does not use it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

MARKER = "emu_scenario"
_CLUSTER_KEY = pytest.StashKey["object"]()
_TEMP_KEY = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("emu", "emu pod-network emulator")
    group.addoption("--emu-pcaps", metavar="DIR", default=None,
                    help="where the pcaps of failing tests that used the cluster fixture are written "
                         "(default: emu-pcaps in pytest's base temporary folder)")
    parser.addini(MARKER, "scenario file for the cluster fixture of tests without an emu_scenario marker",
                  default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(path, traffic=True, capture=True): build the `cluster` fixture from this scenario file")


def _scenario_path(request: pytest.FixtureRequest) -> tuple[Path, dict]:
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if len(marker.args) != 1:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes one scenario path, got {marker.args!r}")
        name, options = marker.args[0], dict(marker.kwargs)
    else:
        name, options = request.config.getini(MARKER), {}
        if not name:
            raise pytest.UsageError(f"the cluster fixture needs @pytest.mark.{MARKER}(PATH) on the test "
                                    f"or `{MARKER} = PATH` in the pytest ini file")
    path = Path(name)
    if not path.is_absolute():
        candidates = [Path(request.node.path).parent / path, Path(request.config.rootpath) / path]
        path = next((c for c in candidates if c.exists()), candidates[-1])
    return path, options


@pytest.fixture
def cluster(request: pytest.FixtureRequest):
    """An `emu.Cluster` built from the test's `emu_scenario` marker (or the
    `emu_scenario` ini option); on failure its pcaps are kept (see module)."""
    from emu.api import Cluster

    path, options = _scenario_path(request)
    built = Cluster.from_file(path, **options)
    request.node.stash[_CLUSTER_KEY] = built
    request.node.stash[_TEMP_KEY] = request.getfixturevalue("tmp_path_factory").getbasetemp()
    return built


def _pcaps_dir(item: pytest.Item) -> Path:
    config = item.config
    chosen = config.getoption("--emu-pcaps")
    if chosen:
        base = Path(chosen)
        if not base.is_absolute():
            base = Path(config.invocation_params.dir) / base
    else:
        base = item.stash[_TEMP_KEY] / "emu-pcaps"
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    built = item.stash.get(_CLUSTER_KEY, None)
    if built is None:
        return
    folder = _pcaps_dir(item)
    try:
        counts = built.write_pcaps(folder)
    except Exception as error:  # the test's failure stays the news; say why there are no pcaps
        report.sections.append(("emu pcaps", f"could not write the pcaps to {folder}: {error}"))
        return
    points = ", ".join(f"{name} ({count})" for name, count in sorted(counts.items())) or "no frames"
    report.sections.append(("emu pcaps", f"pcaps of this test's cluster: {folder}\n{points}\n"
                                         f"wireshark {folder / 'all.pcapng'}"))
    item.user_properties.append(("emu_pcaps", str(folder)))
