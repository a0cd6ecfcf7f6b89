"""`emu report`: the page renders in a real browser, shows every node and pod,
one arrow per traced hop, and logs nothing to the console.

Headless Chromium (Debian's `chromium`, installed by .ci/run) loads the file
with every host name unresolvable (so anything fetched from the network
would fail and be logged), dumps the DOM after load and logs console
messages to stderr (`--enable-logging=stderr`: one `CONSOLE` line per
message, whatever its level); a screenshot is kept in the test's tmp dir.
What must be on the page is counted from the tracer and the cluster, not
from the report code.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from emu.cli import main
from emu.explain.report import write_report
from emu.explain.trace import traced_run
from emu.scenario import load_scenario

EXAMPLES = Path(__file__).parent.parent / "examples"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None or shutil.which("dot") is None,
                                   reason="needs chromium and graphviz (installed by .ci/run)")
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"


class Elements(HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.flow: str | None = None  # the id of the flow section the parser is in

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if (attrs.get("id") or "").startswith("flow-"):
            self.flow = attrs["id"]
        attrs["in-flow"] = self.flow
        self.found.append((tag, attrs))

    def with_class(self, name: str) -> list[dict]:
        return [attrs for _, attrs in self.found if name in (attrs.get("class") or "").split()]

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.found if "id" in attrs}


def browse(page: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(the DOM after load, the console messages) from headless Chromium."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
               OFFLINE, "--window-size=1400,2000"]
    if screenshot is not None:
        subprocess.run([*command, f"--screenshot={screenshot}", page.as_uri()], capture_output=True,
                       text=True, timeout=120, check=True)
    done = subprocess.run([*command, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                          timeout=120, check=True)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


@needs_browser
def test_the_console_check_catches_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><p>x</p><script>console.error("bad"); missing();</script>'
                    '<img src="https://example.invalid/x.png">')
    _, console = browse(page)
    assert any('"bad"' in line for line in console) and any("missing is not defined" in line for line in console)


@needs_browser
@pytest.mark.parametrize("example", ["vxlan-cross-node", "udp-cross-node", "host-gw-same-node"])
def test_report_renders_everything_without_console_errors(tmp_path, example):
    run = traced_run(load_scenario(EXAMPLES / f"{example}.yaml"), tmp_path / "pcaps")
    page = write_report(run, tmp_path / "report.html")
    text = page.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page must not fetch anything"
    screenshot = tmp_path / "report.png"
    dom, console = browse(page, screenshot)
    print(f"report screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    assert console == []
    check_page(dom, run, tmp_path)


def check_page(html: str, run, folder: Path) -> None:
    """Every node and pod, one arrow per traced hop of each flow, the tables
    and a link to every pcap that exists: counted from the tracer and the
    cluster, not from the report code."""
    elements = Elements()
    elements.feed(html)
    ids = elements.ids()
    cluster = run.emulated.cluster
    assert {f"node-{name}" for name in cluster.nodes} <= ids
    assert {f"pod-{name}" for name in cluster.pods} <= ids
    hops = elements.with_class("hop")
    for index in range(len(run.result.traffic)):
        packets = run.traffic_packets(index)
        expected = sum(len(p.hops) for p in packets)
        assert expected > 0
        in_flow = [h for h in hops if h["in-flow"] == f"flow-{index}"]
        assert len(in_flow) == expected, index
        assert {int(h["data-packet"]) for h in in_flow} == {p.id for p in packets if p.hops}
    assert len(hops) == sum(sum(len(p.hops) for p in run.traffic_packets(i)) for i in range(len(run.result.traffic)))
    for key in ("routes", "neighbours", "fdb", "leases", "drops"):
        assert key in ids
    links = [attrs["href"] for tag, attrs in elements.found if tag == "a"]
    assert "pcaps/all.pcapng" in links
    assert {f"pcaps/{name}.pcap" for name in run.result.capture_counts} <= set(links)
    assert all((folder / link).is_file() for link in links)


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot (installed by .ci/run)")
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_reports_every_node_pod_and_hop(tmp_path, path):
    """The page as written (before any script runs) for every example;
    three of them are also rendered in Chromium above."""
    run = traced_run(load_scenario(path), tmp_path / "pcaps")
    page = write_report(run, tmp_path / "report.html")
    check_page(page.read_text(), run, tmp_path)


def test_cli_report_and_run_report(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("needs graphviz's dot (installed by .ci/run)")
    result = CliRunner().invoke(main, ["report", str(EXAMPLES / "vxlan-same-node.yaml"), "--out",
                                       str(tmp_path / "out"), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    result = CliRunner().invoke(main, ["run", str(EXAMPLES / "vxlan-same-node.yaml"), "--out",
                                       str(tmp_path / "run"), "--report", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "p1a_eth0.pcap").is_file()
