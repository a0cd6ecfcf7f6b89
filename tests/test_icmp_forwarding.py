"""ICMP and forwarding through a node, as Linux does them (net/ipv4/icmp.c, ip_forward.c, ip_output.c).

p1a (10.244.1.2, on n1) sends across the host-gw cluster to p2a (10.244.2.2, on
n2); frames are taken on p1a's eth0 and decoded by scapy. Every expectation was
checked against a real kernel 6.18 (pod - router - pod namespaces joined by
veths, iputils ping, tcpdump on the sender's veth); the kernel's numbers are
quoted next to each test.
"""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, UDP, ICMPerror, IPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from emu.net import UdpSocket
from emu.wire.addr import ip_from_str
from emu.wire.ipv4 import PROTO_ICMP
from helpers_net import advance, collect, icmp_frames, run_ping, two_nodes

P1A, P2A, CNI0_N1 = "10.244.1.2", "10.244.2.2", "10.244.1.1"
P1A_MAC, CNI0_MAC = "0a:58:0a:f4:01:02", "0a:58:0a:f4:01:01"
DF = 0x2


def lab(**options):
    cluster = two_nodes(**options).cluster
    p1a = cluster.pods["p1a"].ns
    return cluster, p1a, collect(p1a.devices["eth0"])


def test_ttl_1_across_a_node_gets_time_exceeded_from_the_nodes_address_towards_the_sender():
    # Kernel: From 10.98.1.1 (router address on the sender's side), tos 0xc0,
    # ttl 64, flags [none], quoting the 84-byte request with ttl 1 and DF.
    cluster, p1a, wire = lab()
    result = run_ping(p1a, P2A, 1, ttl=1)
    assert result.lines[1] == f"From {CNI0_N1} icmp_seq=1 Time to live exceeded"
    request = [f for f in icmp_frames(wire) if f[ICMP].type == 8][0]
    error = [f for f in icmp_frames(wire) if f[ICMP].type == 11][0]
    assert (error[IP].src, error[IP].dst, error[IP].tos, error[IP].ttl, int(error[IP].flags)) == (
        CNI0_N1, P1A, 0xC0, 64, 0)
    assert error[ICMP].code == 0 and error[IP].len == 20 + 8 + 84
    assert raw(error[ICMP])[8:] == raw(request[IP])  # the datagram as received: TTL 1, DF, all of it
    assert request[IP].ttl == 1 and int(request[IP].flags) == DF


def test_time_exceeded_from_the_far_node_comes_from_its_underlay_address():
    # n2 routes back to 10.244.1.0/24 via eth0 (host-gw), so its error takes eth0's address.
    cluster, p1a, wire = lab()
    result = run_ping(p1a, P2A, 1, ttl=2)
    assert result.lines[1] == "From 172.18.0.12 icmp_seq=1 Time to live exceeded"


def test_time_exceeded_is_rate_limited_burst_6_then_one_per_second():
    # Kernel: ping -t 1 -c 10 -i 0.1 -> exactly 6 "Time to live exceeded".
    cluster, p1a, wire = lab()
    result = run_ping(p1a, P2A, 10, 0.1, ttl=1, timeout_s=1)
    errors = [f for f in icmp_frames(wire) if f[ICMP].type == 11]
    assert [f[ICMPerror].seq for f in errors] == [1, 2, 3, 4, 5, 6]
    assert result.errors == 6
    assert cluster.nodes["n1"].ns.drops["ICMP_RATELIMITED"] == 4
    # one token per second comes back
    result = run_ping(p1a, P2A, 3, 1.0, ttl=1, timeout_s=1)
    assert result.errors == 3


def crafted_echo(seq: int, size: int) -> bytes:
    """A DF echo request from p1a to p2a, put on p1a's wire by hand (no socket, no PMTU cache)."""
    header = IP(src=P1A, dst=P2A, flags="DF")
    return raw(Ether(src=P1A_MAC, dst=CNI0_MAC) / header / ICMP(type=8, id=0x4242, seq=seq)
               / Raw(b"\xab" * size))


def test_fragmentation_needed_is_never_rate_limited():
    # vxlan with cni.mtu 1500: pods may send 1500 bytes, flannel.1 takes 1450.
    cluster, p1a, wire = lab(backend="vxlan", mtu="1500")
    run_ping(p1a, CNI0_N1, 1)  # resolve the gateway first
    wire.clear()
    eth0 = p1a.devices["eth0"]
    for seq in range(1, 11):
        eth0.transmit(crafted_echo(seq, 1472))
    advance(p1a.sim, 1)
    needed = [f for f in icmp_frames(wire) if f[ICMP].type == 3 and f[ICMP].code == 4]
    assert len(needed) == 10
    assert {(f[IP].src, f[ICMP].nexthopmtu) for f in needed} == {(CNI0_N1, 1450)}
    assert "ICMP_RATELIMITED" not in cluster.nodes["n1"].ns.drops


def test_echo_reply_has_df_clear_and_the_requests_tos():
    # Kernel: ping -Q 0x10 -> request tos 0x10 DF, reply tos 0x10 flags [none].
    cluster, p1a, wire = lab()
    run_ping(p1a, P2A, 1)  # resolve first; then a request with tos 0x10 from the stack
    wire.clear()
    request = raw(ICMP(type=8, id=0x77, seq=1) / Raw(b"q" * 56))
    p1a.stack.echo_handlers[0x77] = lambda *args: None  # a socket for the reply
    p1a.stack.send(ip_from_str(P2A), PROTO_ICMP, request, tos=0x10)
    advance(p1a.sim, 1)
    sent, reply = icmp_frames(wire)
    assert (sent[IP].tos, int(sent[IP].flags)) == (0x10, DF)
    assert (reply[ICMP].type, reply[IP].tos, int(reply[IP].flags), reply[IP].src) == (0, 0x10, 0, P2A)


def test_ping_m_do_above_the_mtu_is_a_local_error_and_sends_nothing():
    # Kernel: "ping: local error: message too long, mtu=1500", +1 errors, no frame.
    cluster, p1a, wire = lab()
    result = run_ping(p1a, P2A, 1, size=3000, pmtudisc="do")
    assert result.lines[1] == "ping: local error: message too long, mtu=1500"
    assert result.summary() == "1 packets transmitted, 0 received, +1 errors, 100% packet loss"
    assert len(wire) == 0


def test_ping_m_dont_fragments_and_the_reply_is_fragmented_too():
    # Kernel: ping -s 3000 -M dont: request as 1500 + 1500 + 68 (offsets 0,
    # 1480, 2960, no DF), the same shape back; "3008 bytes from ...".
    cluster, p1a, wire = lab()
    result = run_ping(p1a, P2A, 1, size=3000, pmtudisc="dont")
    assert result.lines[1].startswith(f"3008 bytes from {P2A}: icmp_seq=1 ttl=62")
    ip_frames = [f for f in wire.ether() if IP in f]
    shape = [(f[IP].src, f[IP].len, f[IP].frag * 8, int(f[IP].flags)) for f in ip_frames]
    mf = 0x1
    assert shape == [
        (P1A, 1500, 0, mf), (P1A, 1500, 1480, mf), (P1A, 68, 2960, 0),
        (P2A, 1500, 0, mf), (P2A, 1500, 1480, mf), (P2A, 68, 2960, 0),
    ]
    assert len({f[IP].id for f in ip_frames[:3]}) == 1 and len({f[IP].id for f in ip_frames[3:]}) == 1
    p2a = cluster.pods["p2a"].ns
    assert p2a.delivered == 1  # reassembled once


def test_pinging_a_subnet_broadcast_gets_no_reply():
    # Kernel (icmp_echo_ignore_broadcasts=1): requests to ff:ff:ff:ff:ff:ff, no reply at all.
    cluster, p1a, wire = lab()
    result = run_ping(p1a, "10.244.1.255", 2, 0.2, timeout_s=1)
    assert result.received == 0
    frames = icmp_frames(wire)
    assert frames and all(f[ICMP].type == 8 and f.dst == "ff:ff:ff:ff:ff:ff" for f in frames)
    assert cluster.pods["p1b"].ns.drops["INVALID_PROTO"] >= 2
    assert cluster.nodes["n1"].ns.drops["INVALID_PROTO"] >= 2


def test_udp_to_a_closed_port_gets_port_unreachable():
    # Kernel: from the destination, tos 0xc0, quoting the whole 33-byte datagram.
    cluster, p1a, wire = lab()
    run_ping(p1a, P2A, 1)
    wire.clear()
    sock = UdpSocket(p1a)
    sock.sendto(b"hello", (ip_from_str(P2A), 9999))
    advance(p1a.sim, 1)
    datagram, error = [f for f in wire.ether() if IP in f]
    assert datagram[UDP].dport == 9999
    assert (error[IP].src, error[ICMP].type, error[ICMP].code, error[IP].tos) == (P2A, 3, 3, 0xC0)
    quoted = error[IPerror]
    # quoted as received at p2a, after two routing hops
    assert (quoted.len, quoted.ttl, bytes(quoted[UDPerror].payload)) == (33, 62, b"hello")
