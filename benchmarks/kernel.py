"""The Linux kernel on the benchmark topology: real veth, bridge and vxlan.

Setup builds the benchmark cluster (VXLAN backend) in network namespaces
with `emu.kernel.export` (the same script `emu export --netns` writes, so
the kernel gets exactly the emulator's devices, addresses, MTUs and flannel
entries), under a fresh `h6b<hex>-` prefix, and compiles the C sender /
receiver `benchmarks/c/udpblast.c` with gcc. A round runs the receiver in
the destination pod and one sender per CPU in p1a, each pinned to its CPU,
for the round's budget (sendmmsg batches of 64-byte UDP payloads; one
sender alone leaves a core idle, since the kernel forwards each packet in
its sender's context); the frames/s are what the receiver counted over the
senders' time, and what the senders sent is reported beside it. Traffic
stays inside the namespaces created here; `close` removes them (and any
process left in them), also after a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import topology
from benchmarks.case import Case, CaseUnavailable
from emu.kernel.export import NetnsExport, export_netns
from emu.kernel.live import kernel_unavailable

SOURCE = Path(__file__).parent / "c" / "udpblast.c"
IDLE_MS = 200  # the receiver stops this long after the last datagram
PRIME_S = 0.05  # a first blast that resolves ARP along the path
PROCESS_MARGIN_S = 15.0


def compile_udpblast(out_dir: Path) -> Path:
    """Build udpblast into `out_dir`; CaseUnavailable when gcc is missing or fails."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise CaseUnavailable("gcc not found (needed to build benchmarks/c/udpblast.c)")
    binary = out_dir / "udpblast"
    built = subprocess.run([gcc, "-O2", "-o", str(binary), str(SOURCE)], capture_output=True,
                           text=True)
    if built.returncode != 0:
        first = (built.stderr.strip().splitlines() or ["no output"])[0]
        raise CaseUnavailable(f"gcc could not build udpblast: {first}")
    return binary


def _script(export: NetnsExport, action: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EMU_PREFIX=export.prefix, EMU=f"{sys.executable} -m emu.cli")
    return subprocess.run(["bash", "-s", action], input=export.script, capture_output=True,
                          text=True, env=env)


def sender_cpus(cpus: int) -> tuple[int, ...]:
    """Where the senders run: one pinned to each CPU. The kernel forwards each
    packet in its sender's context, so one sender per core keeps every core
    forwarding; the receiver is left to the scheduler (it only counts)."""
    return tuple(range(max(cpus, 1)))


class KernelCase(Case):
    """Pod p1a -> `destination` UDP frames/s through the kernel's own path.

    A round's fps is what the receiver counted over the senders' time; the
    senders' own count over the same time is reported beside it (`sent`), so
    packets the kernel dropped on the way (a full socket buffer, backlog
    overflow) show as the gap between the two."""

    def __init__(self, name: str, destination: str, cpus: tuple[int, ...] | None = None,
                 receiver_cpu: int = -1) -> None:
        cpus = sender_cpus(os.cpu_count() or 1) if cpus is None else cpus
        super().__init__(name, "kernel", backend="vxlan", destination=destination,
                         frame_size=42 + topology.PAYLOAD_LEN, senders=len(cpus),
                         sender_cpus=list(cpus), receiver_cpu=receiver_cpu)
        self.export: NetnsExport | None = None
        self.work_dir: Path | None = None
        self._sent_rate = 0.0

    def describe(self) -> str:
        pinned = ", ".join(map(str, self.params["sender_cpus"]))
        receiver = self.params["receiver_cpu"]
        return (f"Linux, {topology.SOURCE_POD}->{self.params['destination']}, "
                f"{self.params['senders']} sendmmsg senders pinned to CPU {pinned}, receiver "
                f"{'unpinned' if receiver < 0 else f'on CPU {receiver}'}, fps = received")

    def setup(self) -> None:
        reason = kernel_unavailable()
        if reason is not None:
            raise CaseUnavailable(reason)
        self.work_dir = Path(tempfile.mkdtemp(prefix="emu-bench-kernel-"))
        self.binary = compile_udpblast(self.work_dir)
        scenario = topology.scenario("vxlan")
        self.destination_ip = topology.pod_ip(scenario, self.params["destination"])
        self.export = export_netns(scenario, prefix=f"h6b{secrets.token_hex(3)}-")
        built = _script(self.export, "up")
        if built.returncode != 0:
            self.export = None  # `up` removed what it had built
            first = (built.stderr.strip().splitlines() or ["no output"])[-1]
            raise CaseUnavailable(f"building the namespaces failed: {first}")
        self.measure(PRIME_S)

    def _in_pod(self, pod: str, *args: object) -> list[str]:
        return ["ip", "netns", "exec", f"{self.export.prefix}{pod}", str(self.binary),
                *map(str, args)]

    def measure(self, budget_s: float) -> tuple[int, float]:
        receiver = subprocess.Popen(
            self._in_pod(self.params["destination"], "recv", topology.RECEIVER_PORT, IDLE_MS,
                         self.params["receiver_cpu"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        senders: list[subprocess.Popen] = []
        try:
            if receiver.stdout.readline().strip() != "ready":
                raise RuntimeError(f"udpblast recv did not start: {receiver.stderr.read().strip()}")
            senders = [subprocess.Popen(
                self._in_pod(topology.SOURCE_POD, "send", self.destination_ip,
                             topology.RECEIVER_PORT, topology.PAYLOAD_LEN, budget_s, cpu),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for cpu in self.params["sender_cpus"]]
            sent = [sender.communicate(timeout=budget_s + PROCESS_MARGIN_S) for sender in senders]
            received, errors = receiver.communicate(timeout=PROCESS_MARGIN_S)
        finally:
            for process in (receiver, *senders):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        words = received.split()
        if len(words) != 2 or any(len(out.split()) != 3 for out, _ in sent):
            problems = " ".join(err.strip() for _, err in sent) + " " + errors.strip()
            raise RuntimeError(f"udpblast failed: {problems.strip()}")
        seconds = max(float(out.split()[2]) for out, _ in sent)
        self._sent_rate = sum(int(out.split()[1]) for out, _ in sent) / seconds
        return int(words[1]), seconds

    def side_rates(self) -> dict[str, float]:
        return {"sent": self._sent_rate}

    def close(self) -> None:
        if self.export is not None:
            _script(self.export, "down")
            self.export = None
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None
