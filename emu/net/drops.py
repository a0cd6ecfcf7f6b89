"""Every reason a packet is dropped, in one table, named like Linux's.

Why: stats.json's `drops` should read like `dropwatch` or `pwru` output on
the real node. Where Linux has a reason for the same condition
(`SKB_DROP_REASON_<NAME>` in include/net/dropreason-core.h) the counter is
named <NAME>; where it has none (an emulator limitation, a userspace
program's refusal, an ICMP message not sent) the name says so in the same
style and the table marks it `linux=False`. Several conditions may share one
Linux reason (a TTL expiring in forwarding is IP_INHDR, as in ip_forward).

Every `drop(...)` in emu.net, emu.flannel and emu.k8s names a key of
REASONS (tests/test_drop_reasons.py checks the source); parse errors of
emu.wire map to a reason with `wire_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DropReason:
    """One counter name: whether Linux has it, and what it means here."""

    name: str
    linux: bool
    meaning: str


_TABLE = [
    # -- Linux's SKB_DROP_REASON_* ---------------------------------------------------
    DropReason("PKT_TOO_SMALL", True, "a header is cut short (Ethernet, IPv4 length, UDP, ICMP, inner frame)"),
    DropReason("IP_INHDR", True, "bad IPv4 header (version, IHL, total length), or TTL expired in forwarding"),
    DropReason("IP_CSUM", True, "IPv4 header checksum wrong"),
    DropReason("OTHERHOST", True, "unicast frame for another MAC (device not promiscuous), or a decapsulated one"),
    DropReason("UNHANDLED_PROTO", True, "ethertype nobody handles"),
    DropReason("IP_INADDRERRORS", True, "packet to forward while ip_forward is 0"),
    DropReason("UNICAST_IN_L2_MULTICAST", True, "unicast IP in an L2 broadcast/multicast frame, not forwarded"),
    DropReason("IP_INNOROUTES", True, "no route to forward a packet"),
    DropReason("IP_OUTNOROUTES", True, "no route for a locally generated packet (underlay, ICMP error)"),
    DropReason("PKT_TOO_BIG", True, "larger than the egress MTU (DF set when forwarding, or a veth/bridge port)"),
    DropReason("IP_NOPROTO", True, "no handler for the IP protocol"),
    DropReason("NO_SOCKET", True, "no socket for a UDP datagram, echo reply or ICMP error"),
    DropReason("UDP_CSUM", True, "UDP checksum wrong"),
    DropReason("ICMP_CSUM", True, "ICMP checksum wrong"),
    DropReason("INVALID_PROTO", True, "echo request to a broadcast address (icmp_echo_ignore_broadcasts)"),
    DropReason("NEIGH_FAILED", True, "neighbour resolution failed for a queued packet"),
    DropReason("NEIGH_QUEUEFULL", True, "too many bytes queued waiting for resolution"),
    DropReason("DEV_READY", True, "device down, without carrier, peer or reader"),
    DropReason("DUP_FRAG", True, "duplicate fragment"),
    DropReason("FRAG_REASM_TIMEOUT", True, "reassembly timed out"),
    DropReason("TCP_CSUM", True, "TCP checksum wrong"),
    DropReason("NETFILTER_DROP", True, "dropped by an iptables rule or policy (DROP, REJECT) or a conntrack clash"),
    # -- no Linux reason for it ----------------------------------------------------------
    DropReason("VLAN_UNSUPPORTED", False, "802.1Q tagged frame (no VLAN devices are emulated)"),
    DropReason("IP_INVALID_SOURCE", False, "martian source address (multicast, broadcast, loopback from outside)"),
    DropReason("MULTICAST_UNSUPPORTED", False, "multicast destination (no multicast routing is emulated)"),
    DropReason("ICMP_TYPE_UNHANDLED", False, "ICMP type the stack does not handle"),
    DropReason("ICMP_REPLY_UNSENDABLE", False, "echo reply could not be sent"),
    DropReason("ICMP_ERROR_UNSENDABLE", False, "ICMP error could not be sent"),
    DropReason("ICMP_RATELIMITED", False, "ICMP error not sent: per-peer rate limit"),
    DropReason("ICMP_GLOBAL_RATELIMITED", False, "ICMP error not sent: global rate limit"),
    DropReason("BRIDGE_SAME_PORT", False, "known unicast back out its ingress port without hairpin"),
    DropReason("BRIDGE_PORT_STATE", False, "a frame from or to a bridge port that is not forwarding "
                                           "(disabled, listening, blocking; learning ports learn, then drop)"),
    DropReason("MAC_INVALID_SOURCE", False, "multicast or zero source MAC on a bridge port"),
    DropReason("BRIDGE_DIRECT_RECEIVE", False, "a frame received on a bridge device itself"),
    DropReason("ARP_TRUNCATED", False, "ARP packet cut short"),
    DropReason("ARP_BAD_HEADER", False, "ARP hardware or protocol length wrong"),
    DropReason("ARP_UNSUPPORTED_TYPE", False, "ARP for another hardware or protocol type"),
    DropReason("ARP_UNKNOWN_OP", False, "ARP opcode other than request or reply"),
    DropReason("ARP_BAD_ADDRESS", False, "ARP with a multicast or loopback address"),
    DropReason("ARP_BAD_SENDER_MAC", False, "ARP from a multicast MAC"),
    DropReason("VXLAN_INVALID_HDR", False, "VXLAN header cut short, I flag missing or reserved bits set"),
    DropReason("VXLAN_VNI_NOT_FOUND", False, "VXLAN for a VNI with no device"),
    DropReason("VXLAN_INVALID_SMAC", False, "decapsulated frame from our own MAC"),
    DropReason("VXLAN_NO_REMOTE", False, "no FDB entry for the inner destination MAC"),
    DropReason("FLANNELD_SHORT_PACKET", False, "flanneld read a packet shorter than an IPv4 header"),
    DropReason("FLANNELD_NO_LEASE", False, "flanneld has no lease for the destination"),
    DropReason("FLANNELD_SEND_FAILED", False, "flanneld's UDP send was refused"),
    DropReason("FLANNELD_TTL_ZERO", False, "flanneld's proxy would decrement the TTL to 0"),
    DropReason("FRAG_BAD_LENGTH", False, "fragment whose length is not a multiple of 8 (not the last)"),
    DropReason("FRAG_INCONSISTENT_LENGTH", False, "fragments disagree on the datagram's length"),
    DropReason("FRAG_OVERLAP", False, "fragment overlapping another with different bytes"),
    DropReason("FRAG_BEYOND_END", False, "fragment beyond the datagram's end"),
    DropReason("TCP_BAD_OPTIONS", False, "TCP options that cannot be parsed"),
    DropReason("TCP_RESET_UNSENDABLE", False, "the RST answering a segment could not be sent"),
    DropReason("TCP_LISTEN_OVERFLOW", False, "SYN to a listener whose accept queue is full"),
    DropReason("FAULT_INJECTED", False, "taken by a scenario's injected fault (faults:)"),
    DropReason("NOT_SPECIFIED", True, "anything else"),
]

REASONS: dict[str, DropReason] = {reason.name: reason for reason in _TABLE}

# emu.wire parse errors (WireError.reason) -> the drop they cause.
_WIRE = {
    "ipv4-truncated": "PKT_TOO_SMALL", "udp-truncated": "PKT_TOO_SMALL", "udp-bad-length": "PKT_TOO_SMALL",
    "icmp-truncated": "PKT_TOO_SMALL", "eth-truncated": "PKT_TOO_SMALL", "eth-vlan-truncated": "PKT_TOO_SMALL",
    "arp-truncated": "ARP_TRUNCATED", "arp-bad-hlen": "ARP_BAD_HEADER", "arp-bad-plen": "ARP_BAD_HEADER",
    "vxlan-truncated": "VXLAN_INVALID_HDR",
}


def wire_reason(error: Exception) -> str:
    """The drop reason for a parse error of emu.wire (`WireError`)."""
    reason = getattr(error, "reason", "")
    if reason in _WIRE:
        return _WIRE[reason]
    if reason.startswith("ipv4-"):
        return "IP_INHDR"
    return "NOT_SPECIFIED"


def errno_reason(errno_name: str) -> str:
    """The drop reason for a packet whose local send the stack refused."""
    return {"ENETUNREACH": "IP_OUTNOROUTES", "EMSGSIZE": "PKT_TOO_BIG"}.get(errno_name, "NOT_SPECIFIED")
