"""The scenario's traffic commands as real processes in the namespaces.

Each command runs with ``ip netns exec`` (which execs the program, so the
process keeps its pid), its standard input a regular file holding the
scenario's ``stdin:`` bytes (/dev/null when there are none), exactly what
the emulated program reads. A node or pod name given as destination becomes
its address: the real tools cannot resolve cluster names.

A background command (``&``) is started and then watched until it blocks
(sleeping in a system call, no CPU time used between two looks) or exits,
before the next command starts: the emulator starts the next command once
the background process waits, so both runs see the same order on the wire
(a listener is bound before its client sends). At the end of the traffic
every background process still running is stopped with SIGTERM, as the
emulator stops them, and its output collected.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from emu.scenario.model import NcSpec, TrafficSpec

COMMAND_MARGIN_S = 30.0
BLOCKED_POLL_S = 0.005
BLOCKED_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


@dataclass
class CommandRun:
    """One traffic command as the kernel ran it. ``output``: stdout then
    stderr as text; ``stdout``: the raw bytes; ``returncode`` -15 for a
    background process stopped at the end (SIGTERM)."""

    source: str
    command: str
    returncode: int
    output: str
    started_s: float = 0.0  # wall-clock seconds after time 0
    stdout: bytes = b""
    stderr: str = ""
    background: bool = False
    scheduled_s: float | None = None  # the first of a chain: its `at` plus the schedule's shift

    @property
    def stopped(self) -> bool:
        return self.background and self.returncode == -signal.SIGTERM


def command_words(spec: TrafficSpec, hosts: dict[str, str]) -> list[str]:
    """The command as argv; a node/pod name as destination becomes its address."""
    program = spec.program
    words = shlex.split(program.command)
    name = program.destination
    if isinstance(name, str) and name in hosts:
        words = [hosts[name] if word == name and (i == 0 or words[i - 1] not in ("-I", "-s", "-p"))
                 else word for i, word in enumerate(words)]
    return words


def _budget(spec: TrafficSpec) -> float:
    """Wall-clock seconds a foreground command may take before it counts as hung."""
    program = spec.program
    if isinstance(program, NcSpec):
        options = program.options
        return max(options.quit_after, 0) + (options.timeout or 0) + COMMAND_MARGIN_S
    budget = program.count * program.interval + (program.timeout or 10.0) + COMMAND_MARGIN_S
    if program.deadline is not None:  # -w: ping runs until its deadline at most
        budget = max(budget, program.deadline + COMMAND_MARGIN_S)
    return budget


class _Stdin:
    """The command's standard input as an open regular file (or /dev/null)."""

    def __init__(self, data: bytes) -> None:
        if data:
            self.file = tempfile.TemporaryFile(prefix="emu-stdin-")
            self.file.write(data)
            self.file.seek(0)
        else:
            self.file = open(os.devnull, "rb")

    def close(self) -> None:
        self.file.close()


# The cluster's script actions (and the udp proxies they start) run real-time
# (SCHED_FIFO), so a busy machine does not stretch an event function. The
# traffic commands do not: a real-time nc changes how the kernel coalesces a
# TCP exchange (tcp-host-gw: a 1970-byte segment where an ACK came first).
REALTIME = ("chrt", "--fifo", "10")


def _argv(prefix: str, spec: TrafficSpec, hosts: dict[str, str]) -> list[str]:
    return ["ip", "netns", "exec", f"{prefix}{spec.source}", *command_words(spec, hosts)]


def _result(spec: TrafficSpec, returncode: int, stdout: bytes, stderr: bytes,
            started: float) -> CommandRun:
    out, err = stdout.decode("utf-8", errors="replace"), stderr.decode("utf-8", errors="replace")
    return CommandRun(spec.source, spec.program.command, returncode, out + err, started, stdout, err,
                      spec.background)


def run_foreground(prefix: str, spec: TrafficSpec, hosts: dict[str, str], started: float) -> CommandRun:
    """Run one command to its end (or kill it past its budget)."""
    stdin = _Stdin(spec.stdin)
    budget = _budget(spec)
    try:
        done = subprocess.run(_argv(prefix, spec, hosts), stdin=stdin.file, capture_output=True,
                              timeout=budget)
    except subprocess.TimeoutExpired:
        return CommandRun(spec.source, spec.program.command, -1, f"timed out after {budget:.0f} s", started)
    finally:
        stdin.close()
    return _result(spec, done.returncode, done.stdout, done.stderr, started)


class Background:
    """A command started with `&`: running until it exits or `stop()`."""

    def __init__(self, prefix: str, spec: TrafficSpec, hosts: dict[str, str], started: float) -> None:
        self.spec = spec
        self.started = started
        self._stdin = _Stdin(spec.stdin)
        self._out = tempfile.TemporaryFile(prefix="emu-stdout-")
        self._err = tempfile.TemporaryFile(prefix="emu-stderr-")
        self.process = subprocess.Popen(_argv(prefix, spec, hosts), stdin=self._stdin.file,
                                        stdout=self._out, stderr=self._err)
        self.program = Path(shlex.split(spec.program.command)[0]).name

    def wait_blocked(self) -> None:
        """Return once the program sleeps in a system call without using CPU
        between two looks, or has exited."""
        deadline = time.monotonic() + BLOCKED_TIMEOUT_S
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return
            sample = _sleeping_sample(self.process.pid, self.program)
            if sample is not None and sample == last:
                return
            last = sample
            time.sleep(BLOCKED_POLL_S)

    def stop(self) -> CommandRun:
        """SIGTERM it if it still runs; its result."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stdin.close()
        outputs = []
        for handle in (self._out, self._err):
            handle.seek(0)
            outputs.append(handle.read())
            handle.close()
        return _result(self.spec, self.process.returncode, outputs[0], outputs[1], self.started)


def _sleeping_sample(pid: int, program: str) -> tuple[int, int] | None:
    """(utime, stime) when `pid` runs `program` and sleeps (state S), else None."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if comm != program or fields[0] != "S":
        return None
    return int(fields[11]), int(fields[12])
