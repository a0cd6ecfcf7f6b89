"""Traffic entries of a scenario: the command line, its standard input and
the ports its listeners take.

A ``run:`` line is what a person types in a pod's shell: ``ping ...`` or
``nc ...``, with a trailing `` &`` to run it in the background (the next
entry starts at once). ``stdin:`` is the process's standard input, a
regular file: text (``stdin: "hello\\n"``), ``{bytes: N}`` (N bytes of the
pattern 0x00..0xff repeating) or ``{file: PATH}`` (read at load time,
relative to the scenario file).

Listeners are checked here because the real outcome would be worse than an
error: two ``nc -l`` on one port of one namespace both bind (nc sets
SO_REUSEPORT) and the kernel spreads datagrams between them by a random
hash, which no emulator can replay; a node's listener on its flannel
backend's UDP port cannot bind at all (flannel's socket holds it).
"""

from __future__ import annotations

from pathlib import Path

from emu.net.process import stdin_pattern
from emu.scenario.errors import ScenarioError
from emu.scenario.model import NcSpec, NodeSpec, PingSpec, TrafficSpec
from emu.scenario.nc import parse_nc
from emu.scenario.ping import parse_ping

MAX_STDIN = 64 << 20
_PROGRAMS = ("ping", "nc")


def parse_command(text: str, path: str) -> tuple[PingSpec | NcSpec, bool]:
    """The parsed command of a ``run:`` line and whether it ends in `` &``."""
    line = text.strip()
    background = line.endswith(" &") or line == "&"
    if background:
        line = line[:-1].rstrip()
    program = line.split(None, 1)[0] if line else ""
    try:
        if program == "ping":
            return parse_ping(line), background
        if program == "nc":
            return parse_nc(line, background), background
    except ValueError as error:
        raise ScenarioError(path, str(error)) from None
    raise ScenarioError(path, f"unknown program {program!r} (supported: {', '.join(_PROGRAMS)})")


def read_stdin(value: object, path: str, scenario_source: str) -> bytes:
    """The bytes of a ``stdin:`` value (see the module docstring)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("bytes", "file"):
        raise ScenarioError(path, "expected a string, {bytes: N} or {file: PATH}")
    (key, item), = value.items()
    if key == "bytes":
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= MAX_STDIN:
            raise ScenarioError(f"{path}.bytes", f"expected an integer 0..{MAX_STDIN}, got {item!r}")
        return stdin_pattern(item)
    if not isinstance(item, str) or not item:
        raise ScenarioError(f"{path}.file", f"expected a file path, got {item!r}")
    base = Path(scenario_source).parent if not scenario_source.startswith("<") else Path.cwd()
    target = base / item
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(f"{path}.file", f"{target}: file not found") from None
    except OSError as error:
        raise ScenarioError(f"{path}.file", f"{target}: cannot read ({error.strerror})") from None
    if len(data) > MAX_STDIN:
        raise ScenarioError(f"{path}.file", f"{target}: larger than {MAX_STDIN} bytes")
    return data


def _namespace_of(spec: TrafficSpec) -> str:
    return spec.source  # the containers of a pod share its network namespace


def check_listeners(traffic: tuple[TrafficSpec, ...], nodes: list[NodeSpec], backend_type: str,
                    backend_port: int) -> None:
    """Refuse a listener on a port already taken (see the module docstring)."""
    node_names = {node.name for node in nodes}
    taken: dict[tuple[str, str, int], str] = {}
    if backend_type in ("vxlan", "udp"):
        owner = "flannel.1 (VXLAN)" if backend_type == "vxlan" else "flanneld's udp backend"
        taken.update({(name, "udp", backend_port): f"{owner}'s socket" for name in node_names})
    chain = 0
    ended: dict[tuple[str, str, int], int] = {}  # a foreground listener: over once its chain goes on
    for index, spec in enumerate(traffic):
        if index and spec.at is not None:
            chain += 1
        program = spec.program
        if not isinstance(program, NcSpec) or not program.options.listen:
            continue
        key = (_namespace_of(spec), "udp" if program.options.udp else "tcp", program.options.port)
        if key in taken and ended.get(key) != chain:
            raise ScenarioError(f"{spec.path}.run", f"{key[1].upper()} port {key[2]} in {key[0]} is already "
                                f"taken by {taken[key]}")
        taken[key] = (f"{spec.path} ({spec.command}; nc sets SO_REUSEPORT and the kernel would "
                      "share the traffic between both at random)")
        ended.pop(key, None)
        if not spec.background:
            ended[key] = chain
