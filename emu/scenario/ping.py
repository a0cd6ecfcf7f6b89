"""Parse an iputils ``ping`` command line into a :class:`PingSpec`.

Scenarios say what traffic to send the way a person would type it in a
pod's shell, so the emulated ping takes the same options as iputils ping
(GNU getopt: clustered and attached forms such as ``-nqc2`` and ``-s1400``,
options after the destination), each argument checked the way iputils
20221126 checks it (ping/ping.c main, ``parsetos``, ping_common.c ``fill``).
Options that only change what ping prints or how its socket buffers (``-n
-D -O -v -U -4 -a -B -L -m -S``) are accepted as well. The options whose
behaviour depends on real round-trip times or on IP options are refused
with the reason, since a run that pretends to honour them would mislead.
Either ``-c`` or ``-w`` is required so that every scenario ends.
"""

import getopt
import math
import shlex
from ipaddress import IPv4Address

from emu.scenario.model import PingSpec, is_interface_name, is_object_name

# iputils' own option string (IPv4 and common options), so that a refused
# option's argument is consumed the way ping would consume it.
_OPTIONS = "4bRT:aABc:CdDe:fhi:I:l:Lm:M:nOp:qQ:rs:S:t:UvVw:W:"
_SUPPORTED = "-c -w -i -l -s -p -Q -t -W -M -I -q -n -D -O -v -U -4 -a -B -L -m -S"
_NOT_EMULATED = {
    "-f": "flood timing depends on the real round-trip time",
    "-A": "the adaptive interval depends on the real round-trip time",
    "-b": "broadcast pings",
    "-R": "the record-route IP option",
    "-T": "the timestamp IP option",
    "-r": "bypassing the routing table (SO_DONTROUTE)",
}
_PMTUDISC = ("do", "dont", "want")
_MAX_PAYLOAD = 65507  # 65535 - 20 (IPv4 header) - 8 (ICMP header)
_INT_MAX = 2**31 - 1
_UINT_MAX = 2**32 - 1
_MAX_DUP_CHK = 0x10000  # the largest -l iputils takes
_PATTERN_BYTES = 16


def parse_ping(command: str) -> PingSpec:
    """Parse ``command`` (e.g. "ping -c 2 -i 0.2 -W 1 10.244.2.2")."""
    options, operands = split_command(command, "ping", _OPTIONS, _SUPPORTED, _NOT_EMULATED)
    values = dict(options)  # the last of a repeated option wins, as in ping
    deadline = integer_option("-w", values["-w"], 0, _INT_MAX) if "-w" in values else 0
    if "-c" not in values and not deadline:
        raise ValueError("ping needs -c COUNT or -w DEADLINE")
    pmtudisc = values.get("-M", "want")
    if pmtudisc not in _PMTUDISC:
        raise ValueError(f"-M: expected do, dont or want, got {pmtudisc!r}")
    interval = _seconds("-i", values.get("-i", "1"))
    preload = integer_option("-l", values["-l"], 1, _MAX_DUP_CHK) if "-l" in values else 1
    if int(interval * 1000) >= _INT_MAX // preload:  # ping_common.c setup()
        raise ValueError(f"-l: illegal preload and/or interval: {preload} and {values.get('-i', '1')}")
    if "-m" in values:
        integer_option("-m", values["-m"], 0, _UINT_MAX)
    if "-S" in values:
        integer_option("-S", values["-S"], 1, _INT_MAX)
    size = integer_option("-s", values.get("-s", "56"), 0, _MAX_PAYLOAD)
    pattern = _pattern(values["-p"]) if "-p" in values else None
    if pattern is not None and _unwritten(pattern, size):
        raise ValueError(f"-p: with -s {size}, iputils leaves data bytes {_unwritten(pattern, size)} of "
                         "the pattern uninitialized (heap garbage on the wire); not emulated")
    return PingSpec(
        destination=_destination(operands),
        count=integer_option("-c", values["-c"], 1, None) if "-c" in values else 0,
        interval=interval,
        size=size,
        ttl=integer_option("-t", values["-t"], 1, 255) if "-t" in values else None,
        timeout=_seconds("-W", values["-W"]) if "-W" in values else None,
        pmtudisc=pmtudisc,
        interface=_interface(values["-I"]) if "-I" in values else None,
        quiet="-q" in values,
        command=command,
        deadline=deadline or None,
        preload=preload,
        tos=_tos(values["-Q"]) if "-Q" in values else 0,
        pattern=pattern,
        timestamps="-D" in values,
        outstanding="-O" in values,
        verbose="-v" in values,
    )


def split_command(command: str, program: str, optstring: str, supported: str,
                  not_emulated: dict[str, str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Options and operands of `program`'s command line, read as GNU getopt
    reads them (with the program's own option string, so that a refused
    option takes its argument along); options outside `supported` are
    refused naming them (with the reason, for those in `not_emulated`)."""
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise ValueError(f"cannot split the command line: {error}") from None
    if not words or words[0] != program:
        first = words[0] if words else ""
        raise ValueError(f"only {program} commands are supported, got {first!r}")
    try:
        options, operands = getopt.gnu_getopt(words[1:], optstring)
    except getopt.GetoptError as error:
        if "requires argument" in error.msg:
            raise ValueError(f"option -{error.opt} needs a value") from None
        raise ValueError(f"unsupported option -{error.opt} (supported: {supported})") from None
    for option, _ in options:
        if option in not_emulated:
            raise ValueError(f"{option}: {not_emulated[option]}; not emulated")
        if option not in supported.split():
            raise ValueError(f"unsupported option {option} (supported: {supported})")
    return options, operands


def _destination(operands: list[str]) -> IPv4Address | str:
    """An IPv4 address, or a node/pod name (checked against the scenario by
    the loader, resolved to an address at run time)."""
    if len(operands) != 1:
        raise ValueError(f"ping needs exactly one destination, got {len(operands)}")
    return address_or_name(operands[0], "destination")


def address_or_name(text: str, what: str) -> IPv4Address | str:
    """A command line's host operand: an IPv4 address or a node/pod name."""
    try:
        return IPv4Address(text)
    except ValueError:
        if is_object_name(text):
            return text
        raise ValueError(f"{what} {text!r} is not an IPv4 address or a node/pod name") from None


def integer_option(option: str, text: str, low: int, high: int | None) -> int:
    """A decimal option value within [low, high] (ValueError naming the option)."""
    value = int(text) if text.isascii() and text.isdigit() else None
    if value is None or value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{option}: expected an integer {allowed}, got {text!r}")
    return value


def _seconds(option: str, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{option}: expected a number of seconds > 0, got {text!r}")
    return seconds


def _interface(text: str) -> str:
    try:
        return str(IPv4Address(text))
    except ValueError:
        pass
    if not is_interface_name(text):
        raise ValueError(f"-I: {text!r} is neither an IPv4 address nor an interface name")
    return text


def _tos(text: str) -> int:
    """iputils ``parsetos``: decimal, or hexadecimal after 0x/0X; 0..255
    (strtol of nothing is 0, so "" and "0x" mean TOS 0 there too)."""
    hexadecimal = text[:2] in ("0x", "0X")
    digits = text[2:] if hexadecimal else text
    allowed = "0123456789abcdefABCDEF" if hexadecimal else "0123456789"
    if any(char not in allowed for char in digits):
        raise ValueError(f"-Q: bad TOS value: {text!r} (expected 0..255, decimal or 0x hex)")
    value = int(digits, 16 if hexadecimal else 10) if digits else 0
    if value > 255:
        raise ValueError(f"-Q: the decimal value of TOS bits must be in range 0-255, got {value}")
    return value


def _pattern(text: str) -> bytes:
    """iputils ``fill``: hex digits read two at a time (``%2x``, so an odd
    last digit is a byte of its own), at most 16 bytes, the rest ignored."""
    bad = next((i for i, char in enumerate(text) if char not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise ValueError(f"-p: patterns must be specified as hex digits, got {text!r}")
    return bytes(int(text[i:i + 2], 16) for i in range(0, min(len(text), 2 * _PATTERN_BYTES), 2))


def _unwritten(pattern: bytes, size: int) -> str:
    """The data bytes iputils' ``fill`` leaves as malloc gave them ("" if
    none): it copies whole patterns up to index size - len + 8, so a size
    below len + 8 gets one copy only; the timestamp covers bytes 0..15."""
    written = size if size >= len(pattern) + 8 and pattern else len(pattern)
    first = max(written, 16 if size >= 16 else 0)
    if first >= size:
        return ""
    return f"{first}..{size - 1}"
