"""Zero-copy codecs for the headers our devices exchange.

One module per header: a view class that parses (`EthernetFrame`,
`ArpRepr.parse`, `Ipv4Packet`, `IcmpMessage`, `UdpDatagram`, `VxlanHeader`)
and a frozen `*Repr` value that emits. Parsing arbitrary bytes raises only
`WireError` (`Truncated`, `Malformed`).
"""

from emu.wire.errors import Malformed, Truncated, WireError

__all__ = ["WireError", "Truncated", "Malformed"]
