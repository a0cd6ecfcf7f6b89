"""Ephemeral ports, which the kernel picks at random, compared by role.

A client socket's port comes from ``ip_local_port_range`` at random on
Linux and from a seeded draw in the emulator, so the two runs of a scenario
never agree on its value; what they must agree on is which frames carry the
same port. Within one capture, every UDP/TCP port in the ephemeral range is
renamed by the order in which it first appears (``ephemeral#1``,
``ephemeral#2``, ...), on each side separately, so a port that changes
mid-flow, or two flows sharing a port where the kernel's have two, still
shows as a difference. Ports outside the range (listeners, flannel's) are
compared as they are.

Where netfilter translates ports at random (MASQUERADE/SNAT --random-fully,
as kube-proxy and flanneld run it: nf_nat picks any port from 1024 up) the
range widens to 1024..65535, and the ports the scenario itself names
(listeners, Service, target and node ports) stay exact (``fixed``).
"""

from __future__ import annotations

from emu.verify.fields import Field

LINUX_EPHEMERAL_RANGE = (32768, 60999)  # net.ipv4.ip_local_port_range's default
NAT_RANDOM_RANGE = (1024, 65535)  # nf_nat_l4proto_unique_tuple's range for a port >= 1024
_PORT_FIELDS = ("udp.sport", "udp.dport", "tcp.sport", "tcp.dport")


class EphemeralPorts:
    """The renaming of one capture's ephemeral ports (see the module docstring)."""

    def __init__(self, port_range: tuple[int, int] = LINUX_EPHEMERAL_RANGE,
                 fixed: frozenset[int] = frozenset()) -> None:
        self.low, self.high = port_range
        self.fixed = fixed
        self.names: dict[int, str] = {}

    def rename(self, fields: list[Field]) -> list[Field]:
        """`fields` with every ephemeral port value replaced by its name."""
        return [(name, self._name(value)) if name.endswith(_PORT_FIELDS) else (name, value)
                for name, value in fields]

    def _name(self, value: object) -> object:
        if not isinstance(value, int) or not self.low <= value <= self.high or value in self.fixed:
            return value
        if value not in self.names:
            self.names[value] = f"ephemeral#{len(self.names) + 1}"
        return self.names[value]
