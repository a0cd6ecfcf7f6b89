"""What every emulated program (ping, nc) is to the run: a process.

A scenario's traffic commands are processes in a namespace: they start,
may read a standard input given by the scenario, write a standard output,
and end with an exit status, by themselves or because the run ends (then
they are stopped as SIGTERM stops them: no handler, no last words). The
run summary and stats.json show every process the same way, whatever the
program.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

SIGTERM = 15


@dataclass
class ProcessResult:
    """What one process printed and how it ended.

    ``stdout``: the bytes it wrote to its standard output; ``stderr``: its
    diagnostic lines; ``exit_status`` None while running or once stopped
    (``stopped`` then says the run ended it, as a kill does).
    """

    command: str
    stdout: bytearray = field(default_factory=bytearray)
    stderr: list[str] = field(default_factory=list)
    exit_status: int | None = None
    stopped: bool = False
    started_ns: int = 0
    finished_ns: int = 0

    @property
    def lines(self) -> list[str]:
        """What a terminal would show: stdout as text lines, then stderr."""
        text = bytes(self.stdout).decode("utf-8", errors="backslashreplace")
        return text.splitlines() + self.stderr

    def summary(self) -> str:
        """One line: how it ended and what it wrote."""
        ended = "stopped at the end of the run" if self.stopped else f"exit status {self.exit_status}"
        return f"{ended}, {len(self.stdout)} bytes on stdout"


class Program(Protocol):
    """The life cycle the run drives: start once, maybe stop at the end."""

    def start(self, on_exit: Callable[..., None]) -> None: ...

    def stop(self) -> None: ...


def stdin_pattern(size: int) -> bytes:
    """`stdin: {bytes: N}`: N bytes of the repeating pattern 0x00, 0x01, ... 0xff."""
    whole, rest = divmod(size, 256)
    return bytes(range(256)) * whole + bytes(range(rest))
