"""flanneld on one node: lease, subnet.env, and the backend kept in sync.

Start-up is flannel's: acquire (or keep) the node's lease with its public IP
and backend data, program the backend device, write subnet.env, then watch
the lease store and program every remote lease as it is added, changed or
removed; renew the lease one hour before it expires. Problems a real
flanneld would log (a host-gw route it cannot add, a lease with unusable
backend data) go to `log` and to the run summary; they do not stop it.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Iterator, Protocol

from emu.flannel.leases import Lease, LeaseEvent, SubnetManager
from emu.flannel.subnet_env import render_subnet_env
from emu.net import Namespace
from emu.sim import Event


TYPED_BACKENDS = ("vxlan", "host-gw")


class Backend(Protocol):
    type: str
    lease_type: str
    mtu: int
    device: object

    def backend_data(self) -> dict | None: ...
    def setup(self, lease: Lease) -> None: ...
    def add_remote(self, lease: Lease) -> str | None: ...
    def remove_remote(self, lease: Lease) -> None: ...
    def teardown(self) -> None: ...


class FlanneldLog:
    """A flanneld's log lines, rendered when read (iterate, `len`).

    Why: flanneld logs a line per remote lease, so the logs of a 5,000-node
    cluster hold 25 million lines. They are kept as runs of (virtual time,
    items) where an item is a finished text or, for the common "added lease"
    line, the shared Lease itself, and formatted only when read.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._runs: list[tuple[int, list]] = []
        self._count = 0

    def append(self, now_ns: int, item: "str | Lease") -> None:
        if not self._runs or self._runs[-1][0] != now_ns:
            self._runs.append((now_ns, []))
        self._runs[-1][1].append(item)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        return self._lines(with_leases=True)

    def texts(self) -> Iterator[str]:
        """The lines other than "added lease" (warnings, lease changes)."""
        return self._lines(with_leases=False)

    @property
    def leases_added(self) -> int:
        """How many "added lease" lines there are."""
        return sum(not isinstance(item, str) for _, items in self._runs for item in items)

    def _lines(self, with_leases: bool) -> Iterator[str]:
        for now_ns, items in self._runs:
            prefix = f"{now_ns / 1e9:.6f} {self.name}: "
            for item in items:
                if isinstance(item, str):
                    yield prefix + item
                elif with_leases:
                    yield f"{prefix}added lease {item.subnet} ({item.public_ip})"


class Flanneld:
    """The flannel daemon of one node."""

    def __init__(self, ns: Namespace, manager: SubnetManager, backend: Backend, public_ip: str,
                 requested_subnet=None, ipmasq: bool = False) -> None:
        self.ns = ns
        self.manager = manager
        self.backend = backend
        self.public_ip = public_ip
        self.requested_subnet = requested_subnet
        self.ipmasq = ipmasq
        self.lease: Lease | None = None
        self.subnet_env = ""
        self.log = FlanneldLog(ns.name)
        self.remotes: dict[tuple[bytes, int], Lease] = {}  # by Lease.subnet_id (hashed in C, not by ipaddress)
        self._watch: int | None = None
        self._renewal: Event | None = None

    @property
    def now(self) -> int:
        return self.ns.sim.now_ns

    def start(self) -> Lease:
        """Acquire the lease and program everything; raises LeaseError."""
        self.lease = self.manager.acquire_lease(
            IPv4Address(self.public_ip), self.backend.lease_type, self.backend.backend_data(), self.now,
            requested=self.requested_subnet)
        self.backend.setup(self.lease)
        self.subnet_env = render_subnet_env(self.manager.network, self.lease.subnet,
                                            self.backend.mtu, self.ipmasq)
        self._watch = self.manager.watch_leases(self._on_event)
        for lease in self.manager.leases(self.now):
            self._add(lease)
        self._schedule_renewal()
        self._log(f"acquired lease {self.lease.subnet} ({self.backend.type}, MTU {self.backend.mtu})")
        return self.lease

    def stop(self, revoke: bool = True) -> None:
        """Stop watching, remove the backend, and (by default) give the lease back."""
        if self._watch is not None:
            self.manager.unwatch(self._watch)
            self._watch = None
        if self._renewal is not None:
            self._renewal.cancel()
        for lease in list(self.remotes.values()):
            self.backend.remove_remote(lease)
        self.remotes.clear()
        self.backend.teardown()
        if revoke and self.lease is not None:
            self.manager.revoke_lease(self.lease, self.now)

    def _schedule_renewal(self) -> None:
        due = self.manager.renew_due_ns(self.lease)
        # Housekeeping: a renewal changes no frame, so it keeps no run going.
        self._renewal = self.ns.sim.call_housekeeping_at(max(due, self.now), self._renew)

    def _renew(self) -> None:
        self.lease = self.manager.renew_lease(self.lease, self.now)
        self._log(f"renewed lease {self.lease.subnet}")
        self._schedule_renewal()

    def _on_event(self, event: LeaseEvent) -> None:
        if event.kind == "removed":
            lease = self.remotes.pop(event.lease.subnet_id, None)
            if lease is not None:
                self.backend.remove_remote(lease)
                self._log(f"removed lease {event.lease.subnet} ({event.lease.public_ip})")
            return
        if event.kind == "changed" and event.lease.subnet_id in self.remotes:
            self.backend.remove_remote(self.remotes.pop(event.lease.subnet_id))
        self._add(event.lease)

    def _add(self, lease: Lease) -> None:
        if self.lease is not None and lease.subnet_id == self.lease.subnet_id:
            return
        if self.backend.type in TYPED_BACKENDS and lease.backend_type != self.backend.lease_type:
            # flannel's vxlan and host-gw backends skip leases of another type.
            self._log(f"ignoring non-{self.backend.type} subnet {lease.subnet}: "
                      f"type={lease.backend_type or '(none)'}")
            return
        problem = self.backend.add_remote(lease)
        if problem:
            self._log(problem)
            return
        self.remotes[lease.subnet_id] = lease
        self.log.append(self.now, lease)  # "added lease SUBNET (PUBLIC_IP)"

    def _log(self, text: str) -> None:
        self.log.append(self.now, text)
