"""The data path reads and writes header fields through the codecs (emu.wire).

Issue 11, item 5: outside emu/wire no code indexes a header by a literal
offset (`packet[9]`, `frame[12:14]`, `(packet[0] & 0x0F) * 4`,
`int.from_bytes(quoted[2:4], "big")`) or packs one with `struct`: the field
layout lives in one place, the benchmarks measure the code the emulator runs,
and a codec fix reaches every caller. Hot paths may subscript with the
codec's named fields (`packet[ipv4.DST]`, `frame[ethernet.TYPE]`), which cost
no call; everything else uses the accessor functions (`ipv4.header_length`,
`ipv4.set_total_length`, `udp.ports`, `tcp.seq`, ...).

The scan covers the packages that carry frames: emu/net (netfilter
included), emu/flannel, emu/fastpath, emu/k8s, emu/sim, emu/scenario. Not
scanned, on purpose: emu/wire (the codecs), emu/capture (pcap/pcapng file
formats, not packet headers), emu/verify (the oracle decodes frames itself so
that it can catch a codec bug), emu/explain (decodes with dpkt), emu/kernel
(ioctl structures of the live kernel runs), emu/testing (builds malformed
frames on purpose).

It finds, by AST:
- `struct` imported;
- a literal integer index or slice on a value named like a buffer
  (packet, frame, data, header, ...), e.g. `frame[0:6]`, `packet[9]`;
- a literal integer index on anything used in a shift or bitwise and/or
  (`x[6] << 8`, `mac[0] & 1`), whatever its name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "emu"
SCANNED = ["net", "flannel", "fastpath", "k8s", "sim", "scenario"]
BUFFER_NAMES = {
    "packet", "frame", "frames", "data", "buf", "header", "segment", "inner", "inner_frame", "quoted",
    "offender", "transport", "ip", "payload", "message", "datagram", "raw", "tcp_header", "dst",
    "src", "mac", "sha", "spa", "tha", "tpa", "addr", "address", "first_fragment", "reply", "request",
}
# (file relative to emu/, what the line holds): why it is not a header access.
ALLOWED = {
    ("net/ping.py", "import struct"): "float32 rounding of the loss percentage (iputils casts a double "
                                      "to float before printing it): no header",
}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literal_int(node: ast.AST | None) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int


def _literal_offset(subscript: ast.Subscript) -> bool:
    index = subscript.slice
    if isinstance(index, ast.Slice):
        return _literal_int(index.lower) or _literal_int(index.upper)
    return _literal_int(index)


def _findings(source: str, relative: str) -> list[tuple[int, str]]:
    """(line, code) of every raw-offset access in `source` (file `relative` to emu/)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name == "struct" for alias in node.names):
            found.append((node.lineno, "import struct"))
        elif isinstance(node, ast.ImportFrom) and node.module == "struct":
            found.append((node.lineno, "from struct import"))
        elif isinstance(node, ast.Subscript) and _literal_offset(node) and _name(node.value) in BUFFER_NAMES:
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.RShift, ast.BitAnd, ast.BitOr)):
            for side in (node.left, node.right):
                if isinstance(side, ast.Subscript) and _literal_int(side.slice):
                    found.append((node.lineno, ast.unparse(node)))
    return [(line, what) for line, what in found
            if (relative, lines[line - 1].strip()) not in ALLOWED]


def _scanned_files() -> list[Path]:
    return sorted(file for package in SCANNED for file in (ROOT / package).rglob("*.py"))


def test_no_header_field_read_by_raw_offset_outside_emu_wire():
    problems = [f"emu/{path.relative_to(ROOT)}:{line}: {what}"
                for path in _scanned_files()
                for line, what in _findings(path.read_text(), str(path.relative_to(ROOT)))]
    assert not problems, ("header fields by raw offset outside emu/wire (use the codec's accessors, "
                          "see emu/wire/ipv4.py):\n" + "\n".join(problems))


def test_allow_list_entries_still_exist():
    """An allow-list entry whose line is gone must go too (it would hide a new one)."""
    for relative, line in ALLOWED:
        assert any(text.strip() == line for text in (ROOT / relative).read_text().splitlines()), relative


@pytest.mark.parametrize("snippet", [
    "x = packet[9]",
    "x = frame[12:14]",
    "x = (packet[0] & 0x0F) * 4",
    "x = (thing[6] << 8) | thing[7]",
    "x = int.from_bytes(quoted[2:4], 'big')",
    "header[10:12] = b'00'",
    "import struct",
    "x = arp.tpa[0]",
])
def test_the_scan_finds_each_pattern(snippet):
    """The check can fail: each pattern of the issue is reported."""
    assert _findings(snippet + "\n", "net/probe.py"), snippet


def test_named_fields_and_tuples_pass():
    source = "x = packet[ipv4.DST]\ny = found[0]\nz = ipv4.header_length(packet)\n"
    assert not _findings(source, "net/probe.py")


def test_the_hot_path_fragment_test_agrees_with_the_accessor():
    """`buf[ipv4.FLAGS_OFFSET] in ipv4.UNFRAGMENTED` (call-free, local delivery)
    is `not ipv4.is_fragment(buf)` for every value of the field."""
    import emu.wire.ipv4 as ipv4

    for value in range(0x10000):
        header = bytes(6) + value.to_bytes(2, "big")
        assert (header[ipv4.FLAGS_OFFSET] in ipv4.UNFRAGMENTED) == (not ipv4.is_fragment(header)), value
