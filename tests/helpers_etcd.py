"""A real etcd server for tests: started on free loopback ports in a temporary
data directory, stopped (and its directory removed) afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator

ETCD = shutil.which("etcd")
UNAVAILABLE = None if ETCD else "etcd is not installed (Debian: apt-get install etcd-server)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EtcdServer:
    """One etcd process; `url` is its client endpoint."""

    def __init__(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="emu-etcd-")
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = subprocess.Popen(
            [ETCD, "--name", "emu-test", "--data-dir", self.data_dir,
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"emu-test={peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Readiness, not a timed assertion: poll /health until etcd answers
        (a generous bound only guards against an etcd that never starts)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                    if b"true" in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("etcd did not become healthy within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextmanager
def etcd_server() -> Iterator[EtcdServer]:
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()
