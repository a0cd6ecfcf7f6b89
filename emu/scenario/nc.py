"""Parse a netcat-openbsd ``nc`` command line into an :class:`NcSpec`.

The forms nc 1.219 (Debian) accepts, checked the way its main() checks
them: ``nc -l [-u] [-k] [-q SECS] [-w SECS] PORT`` (also ``nc -l HOST
PORT`` and ``nc -l [-s ADDR] -p PORT``; Debian's nc refuses ``nc -l -s
ADDR PORT`` with its usage text, and so does this parser) and ``nc [-u]
[-N] [-q SECS] [-w SECS] [-p SPORT] [-s ADDR] HOST PORT``, options anywhere
(glibc getopt permutes). -n and -4 change nothing here (no name service,
IPv4 only) and are accepted; every other option is refused naming it.
Ports are numbers 1..65535 (no service names, no ranges). Without -u nc
speaks TCP (emu.net.tcp); a UDP nc in the foreground must be able to end
by itself (-q SECS >= 0 or -w SECS), or the run would never end.
"""

from ipaddress import IPv4Address

from emu.net.nc import NcOptions
from emu.scenario.model import NcSpec
from emu.scenario.ping import address_or_name, integer_option, split_command

# nc 1.219's own option string (no TLS), so a refused option's argument is
# consumed the way nc would consume it.
_OPTIONS = "46bCDdFhI:i:klM:m:NnO:P:p:q:rSs:T:tUuV:vW:w:X:x:Zz"
_SUPPORTED = "-l -u -k -N -q -w -p -s -n -4"
_PORT_MAX = 65535
_INT_MAX = 2**31 - 1
_INT_MIN = -(2**31)


def parse_nc(command: str, background: bool) -> NcSpec:
    """Parse ``command`` (e.g. "nc -u -q 1 10.244.2.2 5000"), run in the
    background or not."""
    options, operands = split_command(command, "nc", _OPTIONS, _SUPPORTED, {})
    values = dict(options)
    listen, keep = "-l" in values, "-k" in values
    quit_after = _signed("-q", values["-q"]) if "-q" in values else -1
    timeout = integer_option("-w", values["-w"], 0, _INT_MAX // 1000) if "-w" in values else None
    source = _address("-s", values["-s"]) if "-s" in values else None
    pflag = values.get("-p")
    if keep and not listen:
        raise ValueError("-k: nc says \"must use -l with -k\"")
    host: str | None = None
    if listen:
        if not operands:
            if pflag is None:
                raise ValueError("nc -l needs a PORT (nc says \"missing port number\")")
            port_text, host = pflag, source
        elif len(operands) == 1 and pflag is None and source is None:
            port_text = operands[0]
        elif len(operands) == 2 and pflag is None and source is None:
            host, port_text = str(_address("HOST", operands[0])), operands[1]
        else:
            raise ValueError("nc -l takes PORT, HOST PORT or -p PORT [-s ADDR] (nc 1.219 answers "
                             "other forms, such as -l -s ADDR PORT, with its usage text)")
    else:
        if len(operands) != 2:
            raise ValueError(f"nc needs HOST and PORT, got {len(operands)} operand(s)")
        port_text = operands[1]
    port = _port("PORT", port_text)
    udp = "-u" in values
    if udp and not background and quit_after < 0 and timeout is None:
        raise ValueError("nc -u never exits by itself: give -q SECS (>= 0) or -w SECS, "
                         "or run it in the background (end the line with &)")
    nc_options = NcOptions(
        port=port, listen=listen, udp=udp, keep=keep,
        address=host if listen else None,
        source=str(source) if source is not None and not listen else None,
        source_port=_port("-p", pflag) if pflag is not None and not listen else None,
        shutdown="-N" in values or quit_after >= 0,
        quit_after=quit_after, timeout=timeout,
    )
    destination = None if listen else address_or_name(operands[0], "HOST")
    return NcSpec(command=command, options=nc_options, destination=destination)


def _port(what: str, text: str) -> int:
    """strtoport: a number 1..65535."""
    if text.isascii() and text.isdigit():
        value = int(text)
        if 1 <= value <= _PORT_MAX:
            return value
        problem = "too large" if value > _PORT_MAX else "too small"
        raise ValueError(f"{what}: port number {problem}: {text} (1..{_PORT_MAX})")
    raise ValueError(f"{what}: expected a port number 1..{_PORT_MAX}, got {text!r} "
                     "(service names and ranges are not emulated)")


def _signed(option: str, text: str) -> int:
    """strtonum(INT_MIN, INT_MAX)."""
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit()) or not _INT_MIN <= int(text) <= _INT_MAX:
        raise ValueError(f"{option}: expected an integer, got {text!r}")
    return int(text)


def _address(what: str, text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise ValueError(f"{what}: expected an IPv4 address, got {text!r}") from None
