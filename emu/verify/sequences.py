"""TCP sequence numbers, which the kernel starts at random, compared relative.

Each connection's initial sequence number is random on Linux and a seeded
draw in the emulator, so ``tcp.seq`` and ``tcp.ack`` are compared as
offsets from the first sequence number seen in each direction of each flow
within one capture (as Wireshark's "relative sequence numbers"), on each
side separately. A flow is its addresses and ports as the frame shows them
(after the ephemeral-port renaming), whatever the field prefix (``inner.``,
``icmp.quote.``): a segment quoted in an ICMP error is numbered as its flow. An ACK
number is relative to the other direction's start; before that direction
has been seen, or without the ACK flag, it is compared as it is.
"""

from __future__ import annotations

from emu.verify.fields import Field

_MASK = 0xFFFFFFFF


class TcpSequences:
    """The relative numbering of one capture's TCP flows (see the module docstring)."""

    def __init__(self) -> None:
        self.starts: dict[tuple, int] = {}

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
                    start = self.starts.get((key[0], key[3], key[4], key[1], key[2]))
                    acked = int(str(seen.get(prefix + "tcp.flags", "0x0")), 16) & 0x10
                    if start is not None and acked:
                        value = f"+{(value - start) & _MASK}"
            seen[name] = value
            out.append((name, value))
        return out

    @staticmethod
    def _flow(prefix: str, seen: dict[str, object]) -> tuple:
        return ("", seen.get(prefix + "ip.src"), seen.get(prefix + "tcp.sport"),
                seen.get(prefix + "ip.dst"), seen.get(prefix + "tcp.dport"))
