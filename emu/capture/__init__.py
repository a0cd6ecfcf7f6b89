"""Capture: pcap and pcapng writers, the per-interface capture registry, tshark lint.

Every interface of the emulated cluster can be captured, like running tcpdump
on each device of a real one; the files are meant to be read in Wireshark and
compared with the kernel's own captures.
"""

from emu.capture.lint import tshark_available, tshark_findings
from emu.capture.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapWriter
from emu.capture.pcapng import PcapngWriter
from emu.capture.points import CapturePoint, CaptureSet

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "CapturePoint",
    "CaptureSet",
    "PcapWriter",
    "PcapngWriter",
    "tshark_available",
    "tshark_findings",
]
