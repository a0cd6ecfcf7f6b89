"""Ask tshark whether a capture is clean: no malformed frames, no bad checksums.

Wireshark is the reader the emulator's pcaps are made for, so its dissectors
are the judge: a frame they call malformed, or a checksum they call bad, is a
bug in the emulator even if our own parsers accept it. Checksum validation is
off by default in tshark; the options below switch it on for IPv4 and UDP
(ICMP checksums are always verified and have no preference to set).

The problems come from tshark's PDML output, filtered to the frames that have
any, so each finding can name the frame and the protocol that complained.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from pathlib import Path

CHECKSUM_OPTIONS = ("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE")

# Wireshark's expert-info encoding (epan/proto.h, PI_* constants).
SEVERITY_WARN = 0x00600000
SEVERITY_ERROR = 0x00800000
GROUP_CHECKSUM = 0x01000000

MALFORMED_PROTOCOL = "_ws.malformed"
PROBLEM_FILTER = f"{MALFORMED_PROTOCOL} || _ws.expert.severity >= {SEVERITY_WARN}"

TSHARK_TIMEOUT_SECONDS = 300
ROOT_WARNING = "Running as user"  # tshark's notice when run as root, not a problem of the file


def tshark_available() -> bool:
    """True when a tshark executable is on PATH."""
    return shutil.which("tshark") is not None


def tshark_findings(path: str | Path, decode_as: Sequence[str] = ()) -> list[str]:
    """Return one line per problem tshark sees in the capture at ``path``; [] if clean.

    Reported: every malformed frame, every checksum expert info of severity
    warning or error, and any other expert info of severity error. A file
    tshark cannot read (missing, not a capture, cut short) is a finding too.
    ``decode_as`` entries are passed as ``-d`` options, e.g.
    ``"udp.port==8472,vxlan"``. Raises RuntimeError if tshark is not installed.
    """
    if isinstance(decode_as, str):
        raise ValueError(f"decode_as: expected a list of strings, got the string {decode_as!r}")
    for rule in decode_as:
        if not isinstance(rule, str) or "," not in rule:
            raise ValueError(f"decode_as: expected entries like 'udp.port==8472,vxlan', got {rule!r}")
    tshark = shutil.which("tshark")
    if tshark is None:
        raise RuntimeError("tshark: not installed (apt-get install tshark)")
    command = [tshark, "-r", str(path), *CHECKSUM_OPTIONS]
    for rule in decode_as:
        command += ["-d", rule]
    command += ["-Y", PROBLEM_FILTER, "-T", "pdml"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TSHARK_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return [f"{path}: tshark did not finish within {TSHARK_TIMEOUT_SECONDS} s"]
    findings = list(_pdml_findings(result.stdout))
    if result.returncode != 0:
        findings.append(f"{path}: tshark failed (exit {result.returncode}): {_error_text(result.stderr)}")
    return findings


def _error_text(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and ROOT_WARNING not in line]
    return " ".join(lines) or "no message"


def _pdml_findings(pdml: str) -> Iterator[str]:
    if not pdml.strip():
        return
    try:
        root = ElementTree.fromstring(pdml)
    except ElementTree.ParseError:
        # tshark stopped mid-output (e.g. a file cut short): the exit status says why.
        return
    for packet in root.iter("packet"):
        number = packet.find(".//field[@name='frame.number']")
        frame = number.get("show") if number is not None else "?"
        for protocol, element in _walk(packet, "packet"):
            if protocol == MALFORMED_PROTOCOL:
                continue  # the malformed marker's own expert info and hidden copy
            if element.tag == "proto" and element.get("name") == MALFORMED_PROTOCOL:
                yield f"frame {frame}: malformed packet: {element.get('showname', '')}"
            elif element.get("name") == "_ws.expert":
                finding = _expert_finding(element)
                if finding:
                    yield f"frame {frame}: {protocol}: {finding}"


def _walk(element: ElementTree.Element, protocol: str) -> Iterator[tuple[str, ElementTree.Element]]:
    """Yield every descendant with the name of the innermost protocol holding it."""
    for child in element:
        yield protocol, child
        inner = child.get("name", protocol) if child.tag == "proto" else protocol
        yield from _walk(child, inner)


def _expert_finding(expert: ElementTree.Element) -> str | None:
    """The expert info's text if it is a problem we report, else None."""
    values = {child.get("name"): child.get("show", "") for child in expert}
    try:
        severity = int(values.get("_ws.expert.severity", "0"))
        group = int(values.get("_ws.expert.group", "0"))
    except ValueError:
        return None
    bad_checksum = group == GROUP_CHECKSUM and severity >= SEVERITY_WARN
    if not (bad_checksum or severity >= SEVERITY_ERROR):
        return None
    return expert.get("showname") or values.get("_ws.expert.message", "expert info")
