"""Parse an iputils ``ping`` command line into a :class:`PingSpec`.

Scenarios say what traffic to send the way a person would type it in a
pod's shell, so the emulated ping takes the same options as iputils ping
(GNU getopt: clustered and attached forms such as ``-qc2`` and ``-s1400``,
options after the destination). Only the options that change the packets or
the run are accepted, ``-c`` is required so that every scenario ends, and
anything else is a ``ValueError`` with a one-line reason naming the option.
"""

import getopt
import math
import shlex
from ipaddress import IPv4Address

from emu.scenario.model import PingSpec, is_interface_name, is_object_name

_OPTIONS = "c:i:s:t:W:M:I:q"
_SUPPORTED = "-c -i -s -t -W -M -I -q"
_PMTUDISC = ("do", "dont", "want")
_MAX_PAYLOAD = 65507  # 65535 - 20 (IPv4 header) - 8 (ICMP header)


def parse_ping(command: str) -> PingSpec:
    """Parse ``command`` (e.g. "ping -c 2 -i 0.2 -W 1 10.244.2.2")."""
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise ValueError(f"cannot split the command line: {error}") from None
    if not words or words[0] != "ping":
        first = words[0] if words else ""
        raise ValueError(f"only ping commands are supported, got {first!r}")
    try:
        options, operands = getopt.gnu_getopt(words[1:], _OPTIONS)
    except getopt.GetoptError as error:
        if "requires argument" in error.msg:
            raise ValueError(f"option -{error.opt} needs a value") from None
        raise ValueError(f"unsupported option -{error.opt} (supported: {_SUPPORTED})") from None
    values = dict(options)  # the last of a repeated option wins, as in ping
    if "-c" not in values:
        raise ValueError("ping needs -c COUNT")
    pmtudisc = values.get("-M", "want")
    if pmtudisc not in _PMTUDISC:
        raise ValueError(f"-M: expected do, dont or want, got {pmtudisc!r}")
    return PingSpec(
        destination=_destination(operands),
        count=_integer("-c", values["-c"], 1, None),
        interval=_seconds("-i", values.get("-i", "1")),
        size=_integer("-s", values.get("-s", "56"), 0, _MAX_PAYLOAD),
        ttl=_integer("-t", values["-t"], 1, 255) if "-t" in values else None,
        timeout=_seconds("-W", values["-W"]) if "-W" in values else None,
        pmtudisc=pmtudisc,
        interface=_interface(values["-I"]) if "-I" in values else None,
        quiet="-q" in values,
        command=command,
    )


def _destination(operands: list[str]) -> IPv4Address | str:
    """An IPv4 address, or a node/pod name (checked against the scenario by
    the loader, resolved to an address at run time)."""
    if len(operands) != 1:
        raise ValueError(f"ping needs exactly one destination, got {len(operands)}")
    try:
        return IPv4Address(operands[0])
    except ValueError:
        if is_object_name(operands[0]):
            return operands[0]
        raise ValueError(f"destination {operands[0]!r} is not an IPv4 address or a node/pod name") from None


def _integer(option: str, text: str, low: int, high: int | None) -> int:
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
