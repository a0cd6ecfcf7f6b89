"""emu.net is a plain model of Linux: no import circle, no reference to the
fast path, and the seam module (emu.net.observe) imports nothing.

The import graph is read from the source (ast), so the test sees every
import, including those inside functions (imports only for type hints, under
`if TYPE_CHECKING:`, are not dependencies); each module is also imported
alone in a fresh interpreter, which fails on a circle that only bites in
some import orders.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NET = ROOT / "emu" / "net"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            hidden.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return hidden


def _imports(path: Path, type_hints: bool = True) -> set[str]:
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    hidden = set() if type_hints else _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _net_graph() -> dict[str, set[str]]:
    modules = {_module(path): path for path in NET.glob("*.py")}
    return {name: {m for m in _imports(path, type_hints=False) if m in modules and m != name}
            for name, path in modules.items()}


def test_emu_net_never_refers_to_the_fast_path():
    for path in NET.glob("*.py"):
        text = path.read_text()
        assert "fastpath" not in text, path.name
        assert not any(name.startswith("emu.fastpath") for name in _imports(path)), path.name


def test_emu_net_has_no_import_circle():
    graph = _net_graph()
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, " -> ".join([*trail, name])
        state[name] = 1
        for dep in sorted(graph[name]):
            visit(dep, [*trail, name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


def test_the_observer_seam_imports_nothing():
    assert _imports(NET / "observe.py") == set()


def test_each_net_module_imports_alone_without_the_fast_path():
    """Each module of emu.net imports in a fresh interpreter where emu.fastpath
    cannot be imported at all (the package `emu` itself pulls in the layers
    above, which must then run without it)."""
    names = sorted(_module(path) for path in NET.glob("*.py"))
    code = ("import importlib, importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.startswith('emu.fastpath'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"for name in {names!r}:\n"
            "    for loaded in [m for m in sys.modules if m.startswith('emu')]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_a_scenario_runs_without_the_fast_path():
    """EMU_FASTPATH=off (what `EMU_FASTPATH=off python -m pytest` runs the
    whole suite with): a scenario is built and played with emu.fastpath
    unimportable, no flow cache installed, every ping answered."""
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.startswith('emu.fastpath'):\n"
            "            raise ModuleNotFoundError('blocked: ' + name, name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from emu.scenario import load_scenario_text\n"
            "from emu.scenario.build import build_cluster\n"
            "from emu.scenario.run import run_scenario\n"
            "from tests.helpers_net import two_nodes_yaml\n"
            "text = two_nodes_yaml('vxlan', traffic='  - {from: p1a, run: ping -c 3 -i 0.2 10.244.2.2}')\n"
            "scenario = load_scenario_text(text)\n"
            "assert build_cluster(scenario).sim.offload is None\n"
            "result = run_scenario(scenario, None)\n"
            "assert result.traffic[0].ping.received == 3, result.traffic[0].ping\n"
            "assert not [m for m in sys.modules if m.startswith('emu.fastpath')]\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "EMU_FASTPATH": "off"})
