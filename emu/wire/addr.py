"""MAC and IPv4 address conversions between text and the 6/4-byte wire form.

Devices keep addresses as `bytes` (hashable, comparable, sliceable straight
out of a frame); text only appears at the edges (scenario files, listings).
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
