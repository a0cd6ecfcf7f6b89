"""Every drop is counted under a name of the one table (emu.net.drops), and
the names Linux has are Linux's (include/net/dropreason-core.h)."""

from __future__ import annotations

import ast
from pathlib import Path

from emu.net.drops import REASONS, errno_reason, wire_reason
from emu.wire.errors import Malformed, Truncated

ROOT = Path(__file__).resolve().parent.parent
# SKB_DROP_REASON_* of include/net/dropreason-core.h that the table uses (copied by hand from the header)
LINUX = {"NOT_SPECIFIED", "NO_SOCKET", "PKT_TOO_SMALL", "UDP_CSUM", "OTHERHOST", "IP_CSUM", "IP_INHDR",
         "UNICAST_IN_L2_MULTICAST", "IP_NOPROTO", "IP_OUTNOROUTES", "NEIGH_FAILED", "NEIGH_QUEUEFULL",
         "UNHANDLED_PROTO", "DEV_READY", "ICMP_CSUM", "INVALID_PROTO", "IP_INADDRERRORS", "IP_INNOROUTES",
         "PKT_TOO_BIG", "DUP_FRAG", "FRAG_REASM_TIMEOUT", "TCP_CSUM", "NETFILTER_DROP"}
DROPPERS = {"drop", "on_drop", "_discard"}


def _literal_drops(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every string literal handed to a drop call in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in DROPPERS:
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((node.lineno, arg.value))
    return found


def test_every_drop_in_the_source_names_a_reason_of_the_table():
    sources = [p for d in ("net", "flannel", "k8s", "fastpath") for p in (ROOT / "emu" / d).glob("*.py")]
    literals = [(path.name, line, name) for path in sources for line, name in _literal_drops(path)]
    assert len(literals) > 40  # the scan sees the drop calls
    unknown = [entry for entry in literals if entry[2] not in REASONS]
    assert not unknown


def test_the_linux_flag_says_whether_the_kernel_has_the_name():
    assert {name for name, reason in REASONS.items() if reason.linux} == LINUX


def test_parse_errors_and_refused_sends_map_to_table_names():
    errors = [Truncated("ipv4", 20, 3), Malformed("ipv4", "ihl", 4), Truncated("udp", 8, 2),
              Malformed("udp", "length", 3), Truncated("arp", 28, 2), Malformed("arp", "hlen", 3),
              Truncated("icmp", 8, 1), Truncated("eth", 14, 9)]
    assert [wire_reason(e) for e in errors] == ["PKT_TOO_SMALL", "IP_INHDR", "PKT_TOO_SMALL", "PKT_TOO_SMALL",
                                                "ARP_TRUNCATED", "ARP_BAD_HEADER", "PKT_TOO_SMALL",
                                                "PKT_TOO_SMALL"]
    assert errno_reason("ENETUNREACH") == "IP_OUTNOROUTES"
    assert all(reason in REASONS for reason in (errno_reason("EMSGSIZE"), errno_reason("EPERM")))
