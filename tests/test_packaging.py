"""Packaging that fits: `pip install emu` (no extras) is enough for the `emu`
command and the Python API, and what only some users need is an extra
whose absence is named in one line.

The proof runs emu in a fresh interpreter where every module outside the
standard library, emu itself and the distributions pyproject.toml lists as
dependencies (with what they depend on) cannot be imported: a
`sys.meta_path` finder raises ModuleNotFoundError for them, as if they were
not installed. So scapy, matplotlib, hypothesis, pytest, etcd3gw, and any
dependency someone adds to a module without declaring it, are absent there,
even though this machine has them.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's; pyproject.toml cannot be read")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Installed in the child before anything of emu: only these top-level modules import.
BLOCKER = """
import sys
ALLOWED = set({allowed!r}) | set(sys.modules)

class NotInstalled:
    '''Every module outside ALLOWED behaves as if it were not installed.'''
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in ALLOWED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0)


def _base_distributions() -> set[str]:
    """The distributions of pyproject's `dependencies` and, transitively,
    theirs (requirements of their extras left out), normalised names."""
    todo = [_name(r) for r in PYPROJECT["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        for requirement in metadata.requires(name) or []:
            if "extra ==" not in requirement.partition(";")[2]:
                todo.append(_name(requirement))
    return seen


def _allowed_modules() -> set[str]:
    """Top-level modules the base install provides: stdlib, emu, and those of the base distributions."""
    base = _base_distributions()
    provided = {module for module, dists in metadata.packages_distributions().items()
                if any(re.sub(r"[-_.]+", "-", d).lower() in base for d in dists)}
    return set(sys.stdlib_module_names) | {"emu"} | provided


def _run_without_extras(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = BLOCKER.format(allowed=sorted(_allowed_modules())) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})


def test_the_blocker_blocks_what_is_not_a_dependency(tmp_path):
    """The finder is what makes the other tests able to fail: scapy and
    hypothesis are on this machine, yet cannot be imported behind it."""
    done = _run_without_extras(
        "for name in ('scapy', 'hypothesis', 'matplotlib', 'pytest', 'etcd3gw'):\n"
        "    try:\n        __import__(name)\n    except ModuleNotFoundError:\n        print('blocked', name)\n"
        "import yaml, click, rich, numpy, dpkt\nprint('base ok')\n", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [f"blocked {n}" for n in ("scapy", "hypothesis", "matplotlib", "pytest",
                                                               "etcd3gw")] + ["base ok", ""]


def test_the_emu_command_needs_no_extra(tmp_path):
    example, kernel = ROOT / "examples" / "vxlan-cross-node.yaml", ROOT / "tests" / "kernel-captures"
    commands = [["run", "--out", "default"], ["check", str(example)], ["run", str(example), "--out", "vx"],
                ["verify", str(kernel / "vxlan-cross-node"), "vx"], ["trace", str(example), "--flow", "0"],
                ["diagram", str(example)]]
    code = ("import json\nfrom emu.cli import main\nstatus = []\n"
            f"for args in {commands!r}:\n"
            "    try:\n        main(args)\n    except SystemExit as end:\n        status.append(end.code)\n"
            "print(json.dumps(status))\n")
    done = _run_without_extras(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [0] * len(commands), done.stdout + done.stderr
    assert (tmp_path / "default" / "stats.json").is_file() and list((tmp_path / "default").glob("*.pcap"))
    assert "fidelity: " in done.stdout and "points match" in done.stdout


def test_the_python_api_needs_no_extra_but_scapy_interop_names_its_extra(tmp_path):
    code = f"""
import emu
from emu import Cluster
cluster = Cluster.from_file({str(ROOT / "examples" / "vxlan-cross-node.yaml")!r}, traffic=False)
print("received", cluster.ping("p1a", "p2a", "-c 2").received)
cluster.send("p1a/eth0", bytes(14))
cluster.run_until_idle()
print("frames", len(cluster.captures("n1/flannel.1")))
print("files", sorted(cluster.write_pcaps("out"))[:1])
try:
    cluster.captures("p2a/eth0").scapy()
except ImportError as error:
    print("scapy:", error)
"""
    done = _run_without_extras(code, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["received 2", "frames 4"], done.stdout
    assert lines[3] == ("scapy: emu's scapy interop (Capture.scapy()) needs the [scapy] extra (scapy is missing): "
                        "pip install 'emu[scapy]' (from a source checkout: pip install -e '.[scapy]')")


def test_emu_testing_without_hypothesis_names_the_test_extra(tmp_path):
    done = _run_without_extras("import emu.testing.strategies\n", tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: emu.testing (hypothesis strategies) needs the [test] extra (hypothesis is missing): "
        "pip install 'emu[test]' (from a source checkout: pip install -e '.[test]')")
    assert "Traceback" in done.stderr and done.stderr.count("Error:") == 1  # one error, not a chain


def test_etcd_without_its_extra_is_one_line_naming_it(tmp_path):
    code = ("from emu.cli import main\ntry:\n    main(['run', '--etcd', 'http://127.0.0.1:9'])\n"
            "except SystemExit as end:\n    print('exit', end.code)\n")
    done = _run_without_extras(code, tmp_path)
    assert done.stdout.strip() == "exit 2", done.stderr
    assert done.stderr.strip() == ("emu: error: etcd.endpoints: the etcd lease store needs the [etcd] extra "
                                   "(etcd3gw is missing): pip install 'emu[etcd]' (from a source checkout: "
                                   "pip install -e '.[etcd]')")


def test_extras_hold_what_their_users_import():
    """Each optional module emu imports is in the extra its error names, and
    no module-level import of emu outside emu.testing and the pytest plugin
    needs more than the base dependencies (read from the source, so modules
    the tests above do not load are covered too)."""
    extras = {name: {_name(r).lower() for r in reqs} for name, reqs in PYPROJECT["optional-dependencies"].items()}
    assert {"hypothesis", "pytest", "scapy"} <= extras["test"]
    assert {"matplotlib", "scapy"} <= extras["bench"]
    assert extras["scapy"] == {"scapy"} and extras["etcd"] == {"etcd3gw"}
    allowed = _allowed_modules()
    for path in sorted((ROOT / "emu").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("emu/testing/") or relative == "emu/pytest_plugin.py":
            continue
        for node in ast.parse(path.read_text()).body:  # module level only: lazy imports are in functions
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.partition(".")[0] in allowed, f"{relative}: imports {name} at module level"
