"""TCP sequence numbers, which the kernel starts at random, compared relative.

Each connection's initial sequence number is random on Linux and a seeded
draw in the emulator, so ``tcp.seq`` and ``tcp.ack`` are compared as
offsets from the first sequence number seen in each direction of each flow
within one capture (as Wireshark's "relative sequence numbers"), on each
side separately. A flow is its addresses and ports as the frame shows them
(after the ephemeral-port renaming), whatever the field prefix (``inner.``,
``icmp.quote.``): a segment quoted in an ICMP error is numbered as its flow. An ACK
number is relative to the other direction's start; without the ACK flag it
is compared as it is. When the other direction never shows under the
reverse tuple (a capture point between a NAT's two sides: cni0 of a node
with br_netfilter sees a pod's segments to a ClusterIP already DNATed and
the answers already un-NATed, so one connection shows as two flows), the
flow coming back to the same ephemeral endpoint is the other direction
(`peer_flows`: an ephemeral port, renamed by emu.verify.ports, belongs to
one connection); without one, an ACK is relative to the first ACK number
of its own flow ("a+N").
"""

from __future__ import annotations

from emu.verify.fields import Field

_MASK = 0xFFFFFFFF


class TcpSequences:
    """The relative numbering of one capture's TCP flows (see the module docstring)."""

    def __init__(self) -> None:
        self.starts: dict[tuple, int] = {}
        self.ack_starts: dict[tuple, int] = {}

    def relative(self, fields: list[Field]) -> list[Field]:
        out: list[Field] = []
        seen: dict[str, object] = {}
        for name, value in fields:
            prefix, _, leaf = name.rpartition("tcp.") if "tcp." in name else ("", "", "")
            if leaf in ("seq", "ack") and isinstance(value, int):
                key = self._flow(prefix, seen)
                if leaf == "seq":
                    start = self.starts.setdefault(key, value)
                    value = f"+{(value - start) & _MASK}"
                else:
                    start = self._peer_start(key)
                    acked = int(str(seen.get(prefix + "tcp.flags", "0x0")), 16) & 0x10
                    if start is not None and acked:
                        value = f"+{(value - start) & _MASK}"
                    elif acked:
                        start = self.ack_starts.setdefault(key, value)
                        value = f"a+{(value - start) & _MASK}"
            seen[name] = value
            out.append((name, value))
        return out

    def _peer_start(self, key: tuple) -> int | None:
        """The other direction's first sequence number (see the module docstring)."""
        exact = self.starts.get((key[0], key[3], key[4], key[1], key[2]))
        if exact is not None:
            return exact
        peers = [start for flow, start in self.starts.items() if flow[0] == key[0] and peer_flows(key[1:], flow[1:])]
        return peers[0] if len(peers) == 1 else None

    @staticmethod
    def _flow(prefix: str, seen: dict[str, object]) -> tuple:
        return ("", seen.get(prefix + "ip.src"), seen.get(prefix + "tcp.sport"),
                seen.get(prefix + "ip.dst"), seen.get(prefix + "tcp.dport"))


def peer_flows(flow: tuple, other: tuple) -> bool:
    """Whether flows (src, sport, dst, dport) are the two directions of one
    connection: each other's reverse, or, across a NAT, one going to the
    ephemeral endpoint the other comes from (a renamed port: a string)."""
    if other == (flow[2], flow[3], flow[0], flow[1]):
        return True
    if other == flow:
        return False
    return ((other[2:] == flow[:2] and isinstance(flow[1], str))
            or (other[:2] == flow[2:] and isinstance(flow[3], str)))
