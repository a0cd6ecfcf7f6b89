"""The Python in the docs runs as written: every ```python block of
docs/python-api.md and of README.md, in order, from the repository's root,
one namespace per file; what a block prints must equal the ```output block
that follows it, and the test_* functions a block defines are called. A block
starting with `# file: NAME.py` is a test file: pytest runs it, with emu's
plugin.

The tutorial's expected lines were written from the kernel's captures, and
are checked against them here: each line naming a capture point is
recomputed, with the doc's own helpers, from the kernel reference capture of
that point (tests/kernel-captures/udp-cross-node/), so the doc states what
the real kernel and flanneld did, and the emulator is held to it.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import scapy.layers.inet  # noqa: F401  (rdpcap decodes Ethernet and raw IP once the layers are loaded)
import scapy.layers.l2  # noqa: F401
from scapy.utils import rdpcap

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "python-api.md"
README = ROOT / "README.md"
KERNEL = ROOT / "tests" / "kernel-captures" / "udp-cross-node"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
PLUGIN = [] if any(ep.value == "emu.pytest_plugin" for ep in entry_points(group="pytest11")) \
    else ["-p", "emu.pytest_plugin"]


@dataclass
class Block:
    line: int
    code: str
    expected: str | None  # the ```output block right after it, if any
    printed: str = ""


def python_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    fences = [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1, m.start(), m.end())
              for m in FENCE.finditer(text)]
    blocks = []
    for k, (kind, body, line, _, end) in enumerate(fences):
        if kind != "python":
            continue
        following = fences[k + 1] if k + 1 < len(fences) else None
        expected = None
        if following and following[0] == "output" and not text[end:following[3]].strip():
            expected = following[1]
        blocks.append(Block(line, body, expected))
    return blocks


def run_doc(path: Path, tmp_path: Path, monkeypatch) -> tuple[list[Block], dict]:
    """Every block of `path`, in order, in one namespace."""
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": f"doc_{path.stem.replace('-', '_')}"}
    blocks = python_blocks(path)
    assert blocks, f"{path.name} has no python block"
    for block in blocks:
        if block.code.startswith("# file: "):
            block.printed = run_test_file(block, tmp_path)
            continue
        before = set(namespace)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block.code, f"{path.name}:{block.line}", "exec"), namespace)
            for name in sorted(set(namespace) - before):
                if name.startswith("test_") and callable(namespace[name]):
                    namespace[name]()
        block.printed = out.getvalue()
    return blocks, namespace


def run_test_file(block: Block, tmp_path: Path) -> str:
    name = block.code.split("\n", 1)[0].removeprefix("# file: ").strip()
    (tmp_path / name).write_text(block.code)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PLUGIN,
                           "--rootdir", str(ROOT), str(tmp_path / name)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"{name} (line {block.line}):\n{done.stdout}{done.stderr}"
    assert re.search(r"\b\d+ passed\b", done.stdout) and "failed" not in done.stdout, done.stdout
    return ""


@pytest.fixture(scope="module")
def doc_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run_doc(DOC, tmp_path_factory.mktemp("doc"), monkeypatch)


def _check_outputs(path: Path, blocks: list[Block]) -> None:
    for block in blocks:
        if block.expected is not None:
            assert block.printed == block.expected, f"{path.name}, block at line {block.line}"


def test_python_api_doc_runs_as_written(doc_run):
    blocks, _ = doc_run
    _check_outputs(DOC, blocks)
    assert sum(b.expected is not None for b in blocks) >= 10  # the tutorial prints at every step


def test_readme_python_runs_as_written(tmp_path, monkeypatch):
    blocks, _ = run_doc(README, tmp_path, monkeypatch)
    _check_outputs(README, blocks)


def test_the_tutorials_packets_are_the_kernels(doc_run):
    """Every tutorial line about a capture point is what the doc's helpers
    print for the first echo request of the kernel's capture at that point."""
    blocks, namespace = doc_run
    describe, first_echo_request = namespace["describe"], namespace["first_echo_request"]
    checked = []
    for block in blocks:
        for line in (block.expected or "").splitlines():
            where = line.split(" ", 1)[0]
            pcap = KERNEL / f"{where.replace('/', '_')}.pcap"
            if "/" not in where or not pcap.is_file() or "ICMP echo-request" not in line:
                continue
            packets = rdpcap(str(pcap))
            for packet in packets:
                packet.sniffed_on = where
            assert describe(first_echo_request(packets)) == line, where
            checked.append(where)
    assert checked == ["p1a/eth0", "n1/veth1a", "n1/cni0", "n1/flannel0", "n1/eth0", "n2/eth0", "n2/flannel0",
                       "n2/cni0", "n2/veth2a", "p2a/eth0"]


def test_the_block_reader_pairs_code_and_output(tmp_path):
    path = tmp_path / "sample.md"
    path.write_text("x\n```python\nprint(1)\n```\n\n```output\n1\n```\n```python\npass\n```\n```bash\nls\n```\n")
    blocks = python_blocks(path)
    assert [(b.line, b.code, b.expected) for b in blocks] == [(2, "print(1)\n", "1\n"), (9, "pass\n", None)]


def test_the_vxlan_reading_example_shows_the_kernels_headers(doc_run):
    """The VTEP MACs of the inner frame flannel.1 sends, and the outer
    addresses, port and VNI on the underlay, as in the kernel's vxlan-cross-node
    captures (the doc sends UDP, the kernel run pinged: the headers are the same)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    blocks, _ = doc_run
    (expected,) = [b.expected for b in blocks if "vx.sent(" in b.code]
    kernel = ROOT / "tests" / "kernel-captures" / "vxlan-cross-node"
    inner = next(p for p in rdpcap(str(kernel / "n1_flannel.1.pcap")) if IP in p)
    outer = next(p for p in rdpcap(str(kernel / "n1_eth0.pcap")) if VXLAN in p)
    first, second = expected.splitlines()
    assert first.startswith(f"{inner[Ether].src} {inner[Ether].dst} ")
    assert second.startswith(f"{outer[IP].src} {outer[IP].dst} {outer[UDP].dport} {outer[VXLAN].vni} ")
