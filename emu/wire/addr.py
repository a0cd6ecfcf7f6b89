"""MAC and IPv4 address conversions between text and the 6/4-byte wire form.

Devices keep addresses as `bytes` (hashable, comparable, sliceable straight
out of a frame); text only appears at the edges (scenario files, listings).
Public constructors take addresses however a user holds them and check them
at once (`ipv4_address`, `mac_address`): a wrong type or length fails there,
naming the argument, not later deep inside a checksum.
"""

from __future__ import annotations

import ipaddress
import re

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def mac_from_str(text: str) -> bytes:
    """Parse `aa:bb:cc:dd:ee:ff` (either case) into 6 bytes."""
    if not isinstance(text, str) or not _MAC_RE.match(text):
        raise ValueError(f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return bytes.fromhex(text.replace(":", ""))


def ipv4_address(value: object, name: str) -> bytes:
    """`value` as the 4-byte wire form: text ("10.0.0.1"), an
    ipaddress.IPv4Address, or 4 bytes (bytes, bytearray, memoryview).
    Anything else raises TypeError, a bad value ValueError, both naming
    `name` (the argument)."""
    if type(value) is bytes and len(value) == 4:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) != 4:
            raise ValueError(f"{name}: an IPv4 address is 4 bytes, got {len(raw)}")
        return raw
    if isinstance(value, ipaddress.IPv4Address):
        return value.packed
    if isinstance(value, str):
        try:
            return ipaddress.IPv4Address(value).packed
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an IPv4 address") from None
    raise TypeError(f"{name}: expected an IPv4 address (text, ipaddress.IPv4Address or 4 bytes), "
                    f"got {type(value).__name__}")


def mac_address(value: object, name: str) -> bytes:
    """`value` as 6 bytes: text ("aa:bb:cc:dd:ee:ff") or 6 bytes; TypeError
    or ValueError naming `name` otherwise."""
    if type(value) is bytes and len(value) == 6:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) != 6:
            raise ValueError(f"{name}: a MAC address is 6 bytes, got {len(raw)}")
        return raw
    if isinstance(value, str):
        if not _MAC_RE.match(value):
            raise ValueError(f"{name}: {value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        return bytes.fromhex(value.replace(":", ""))
    raise TypeError(f"{name}: expected a MAC address (text or 6 bytes), got {type(value).__name__}")


def checked_int(value: object, name: str, low: int, high: int) -> int:
    """An integer field in [low, high]; TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}: {value} is outside {low}..{high}")
    return value


def mac_to_str(mac: bytes) -> str:
    """Format 6 bytes as lower-case `aa:bb:cc:dd:ee:ff`."""
    return ":".join(f"{b:02x}" for b in mac)


def is_multicast_mac(mac: bytes) -> bool:
    """True for group addresses (broadcast included): the I/G bit is set."""
    return bool(mac[0] & 1)


def ip_from_str(text: str) -> bytes:
    """Parse a dotted-quad IPv4 address into 4 bytes."""
    return ipaddress.IPv4Address(text).packed


def ip_to_str(ip: bytes) -> str:
    """Format 4 bytes as a dotted quad."""
    return f"{ip[0]}.{ip[1]}.{ip[2]}.{ip[3]}"


def ip_to_int(ip: bytes) -> int:
    """The 32-bit integer value of a 4-byte address (for prefix arithmetic)."""
    return int.from_bytes(ip, "big")


def int_to_ip(value: int) -> bytes:
    """The 4-byte form of a 32-bit integer address."""
    return value.to_bytes(4, "big")


# Bounds for address classes, comparable with 4-byte addresses as they are
# (bytes order is numeric order): the hot path compares without a call.
LOOPBACK_FIRST, LOOPBACK_LAST = b"\x7f\x00\x00\x00", b"\x7f\xff\xff\xff"
CLASS_D_FIRST = b"\xe0\x00\x00\x00"


def ipv4_is_loopback(ip: bytes) -> bool:
    """127.0.0.0/8."""
    return ip[0] == 127


def ipv4_is_class_d_or_e(ip: bytes) -> bool:
    """224.0.0.0 and above: multicast (class D) or reserved (class E, broadcast
    included), never a unicast host (the kernel's martian checks)."""
    return ip[0] >= 224


def ipv4_is_multicast(ip: bytes) -> bool:
    """224.0.0.0/4 (class D)."""
    return 224 <= ip[0] <= 239


def local_unicast_mac(raw: bytes) -> bytes:
    """6 (random) bytes made a locally administered unicast MAC: the U/L bit
    set, the I/G bit clear, as the kernel's eth_random_addr does."""
    return bytes([(raw[0] | 0x02) & 0xFE]) + bytes(raw[1:6])
