"""Connection tracking with NAT: tuples both ways, replies un-NATted, ICMP errors
RELATED and translated (outer and quoted packet), SNAT port clashes, timeouts,
and the NAT rewrite's checksums (checked with scapy, independently of emu.wire)."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

from hypothesis import given, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.packet import Raw

from emu.net.netfilter.conntrack import DST, NS, SRC, Conntrack, packet_tuple
from emu.wire import nat as wire_nat

POD_A, POD_C, VIP, POD_B, NODE = "10.244.1.2", "10.244.1.3", "10.96.0.10", "10.244.2.7", "172.18.0.11"


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes = b"query") -> bytearray:
    return bytearray(bytes(IP(src=src, dst=dst, ttl=64, id=7) / UDP(sport=sport, dport=dport) / Raw(payload)))


def checksums_valid(packet: bytes) -> bool:
    """scapy recomputes every checksum it was given; equal bytes mean they were right."""
    parsed = IP(bytes(packet))
    for layer in (IP, UDP, TCP, ICMP, IPerror):
        if parsed.haslayer(layer):
            del parsed[layer].chksum
    rebuilt = bytes(parsed)
    original = IP(bytes(packet))
    if original.haslayer(UDP) and original[UDP].chksum == 0:
        return rebuilt[:26] + b"\0\0" + rebuilt[28:] == bytes(packet) or rebuilt == bytes(packet)
    return rebuilt == bytes(packet)


def dnat_connection(table: Conntrack, now: int = 0):
    request = udp(POD_A, 40000, VIP, 53)
    tracked = table.track(request, now)
    assert tracked.state == "NEW"
    table.bind(tracked.connection, DST, ip(POD_B), (5353, 5353))
    table.translate(tracked, request, DST)
    table.bind(tracked.connection, SRC, None, None)
    table.seen(tracked, request, now)
    return tracked.connection, request


def test_dnat_rewrites_the_request_and_the_reply_comes_back_from_the_service_address():
    table = Conntrack(random.Random(1))
    connection, request = dnat_connection(table)
    sent = IP(bytes(request))
    assert (sent.dst, sent[UDP].dport, sent.src, sent[UDP].sport) == (POD_B, 5353, POD_A, 40000)
    assert checksums_valid(request)
    reply = udp(POD_B, 5353, POD_A, 40000, b"answer")
    tracked = table.track(reply, NS)
    assert (tracked.state, tracked.direction, tracked.connection) == ("ESTABLISHED", 1, connection)
    table.translate(tracked, reply, DST)
    table.translate(tracked, reply, SRC)
    table.seen(tracked, reply, NS)
    back = IP(bytes(reply))
    assert (back.src, back[UDP].sport, back.dst, back[UDP].dport) == (VIP, 53, POD_A, 40000)
    assert checksums_valid(reply)
    again = table.track(udp(POD_A, 40000, VIP, 53), 2 * NS)
    assert again.state == "ESTABLISHED" and again.connection is connection


def test_an_icmp_error_from_the_endpoint_is_related_and_reads_as_from_the_service():
    table = Conntrack(random.Random(1))
    _, request = dnat_connection(table)
    error = bytearray(bytes(IP(src=POD_B, dst=POD_A) / ICMP(type=3, code=3) / bytes(request)[:28]))
    tracked = table.track(error, NS)
    assert tracked.state == "RELATED"
    table.translate(tracked, error, DST)
    table.translate(tracked, error, SRC)
    seen = IP(bytes(error))
    assert (seen.src, seen.dst) == (VIP, POD_A)
    quoted = seen[IPerror]
    assert (quoted.src, quoted.dst, quoted[UDPerror].sport, quoted[UDPerror].dport) == (POD_A, VIP, 40000, 53)
    # The quote ends after the UDP header: its checksum is the one of the whole
    # datagram pod A sent (patched as Linux patches it, not recomputed).
    assert quoted[UDPerror].chksum == IP(bytes(udp(POD_A, 40000, VIP, 53)))[UDP].chksum
    assert checksums_valid(error)


def test_masquerade_keeps_the_source_port_unless_another_connection_holds_it():
    table = Conntrack(random.Random(5))
    ports = []
    for pod in (POD_A, POD_C, POD_A):
        packet = udp(pod, 33000, "1.1.1.1", 53)
        tracked = table.track(packet, 0)
        if tracked.state == "NEW" and not tracked.connection.nat_done:
            table.bind(tracked.connection, DST, None, None)
            table.bind(tracked.connection, SRC, ip(NODE), None)
        table.translate(tracked, packet, SRC)
        table.seen(tracked, packet, 0)
        assert checksums_valid(packet)
        ports.append((IP(bytes(packet)).src, IP(bytes(packet))[UDP].sport))
    assert ports[0] == (NODE, 33000)
    assert ports[1][0] == NODE and 1024 <= ports[1][1] <= 65535 and ports[1][1] != 33000
    assert ports[2] == ports[0]  # the first connection again: same mapping
    assert len(table.connections) == 2


def test_random_fully_draws_a_port_from_the_namespace_seed():
    def mapped(seed: int) -> int:
        table = Conntrack(random.Random(seed))
        packet = udp(POD_A, 33000, "1.1.1.1", 53)
        tracked = table.track(packet, 0)
        table.bind(tracked.connection, SRC, ip(NODE), None, random_fully=True)
        table.translate(tracked, packet, SRC)
        return IP(bytes(packet))[UDP].sport

    assert mapped(9) == mapped(9)
    assert {mapped(seed) for seed in range(8)} != {33000}
    assert all(1024 <= mapped(seed) <= 65535 for seed in range(8))


def test_icmp_echo_through_snat_keeps_its_id_and_the_reply_is_translated_back():
    table = Conntrack(random.Random(1))
    echo = bytearray(bytes(IP(src=POD_A, dst="8.8.8.8") / ICMP(type=8, id=0x1234, seq=1) / b"ping"))
    tracked = table.track(echo, 0)
    table.bind(tracked.connection, DST, None, None)
    table.bind(tracked.connection, SRC, ip(NODE), None)
    table.translate(tracked, echo, SRC)
    table.seen(tracked, echo, 0)
    assert (IP(bytes(echo)).src, IP(bytes(echo))[ICMP].id) == (NODE, 0x1234) and checksums_valid(echo)
    reply = bytearray(bytes(IP(src="8.8.8.8", dst=NODE) / ICMP(type=0, id=0x1234, seq=1) / b"ping"))
    back = table.track(reply, NS)
    assert back.state == "ESTABLISHED"
    table.translate(back, reply, DST)
    assert IP(bytes(reply)).dst == POD_A and checksums_valid(reply)


def test_udp_timeouts_and_the_conntrack_listing():
    table = Conntrack(random.Random(1))
    connection, _ = dnat_connection(table)
    assert table.listing(0) == [
        f"udp      17 30 src={POD_A} dst={VIP} sport=40000 dport=53 [UNREPLIED] "
        f"src={POD_B} dst={POD_A} sport=5353 dport=40000 mark=0 use=1"]
    assert table.listing(30 * NS) == []  # unreplied: 30 s
    connection, _ = dnat_connection(table, now=100 * NS)
    for now in (101 * NS, 103 * NS):  # replies, the second one more than 2 s after the start
        reply = udp(POD_B, 5353, POD_A, 40000)
        tracked = table.track(reply, now)
        table.seen(tracked, reply, now)
    assert table.listing(103 * NS)[0].startswith("udp      17 120 ")
    assert table.listing(103 * NS)[0].endswith("[ASSURED] mark=0 use=1")
    assert table.listing(223 * NS) == []


def test_a_later_fragment_and_a_truncated_packet_are_not_tracked():
    fragment = bytes(IP(src=POD_A, dst=VIP, flags=0, frag=100, proto=17) / Raw(b"x" * 16))
    assert packet_tuple(fragment) is None
    assert Conntrack(random.Random(1)).track(b"\x45\x00", 0).state == "INVALID"


@given(protocol=st.sampled_from(["udp", "tcp", "icmp"]), payload=st.binary(max_size=64),
       src=st.integers(1, 2**32 - 2), dst=st.integers(1, 2**32 - 2),
       new_src=st.integers(1, 2**32 - 2), new_port=st.integers(1, 65535), udp_zero=st.booleans())
def test_rewrite_keeps_every_checksum_valid(protocol, payload, src, dst, new_src, new_port, udp_zero):
    layer = {"udp": UDP(sport=1000, dport=2000, chksum=0 if udp_zero else None),
             "tcp": TCP(sport=1000, dport=2000, flags="PA"), "icmp": ICMP(type=8, id=77)}[protocol]
    packet = bytearray(bytes(IP(src=str(IPv4Address(src)), dst=str(IPv4Address(dst))) / layer / payload))
    wire_nat.rewrite(packet, src=IPv4Address(new_src).packed, sport=new_port)
    parsed = IP(bytes(packet))
    assert parsed.src == str(IPv4Address(new_src))
    assert checksums_valid(packet)
    if protocol == "udp" and udp_zero:
        assert parsed[UDP].chksum == 0


def node_netfilter(rules: str):
    from emu.net.netfilter import Netfilter
    from emu.net.netfilter.engine import address_type_of

    def masquerade_source(out_dev: str, destination: bytes) -> bytes:
        return ip(NODE)

    netfilter = Netfilter(random.Random(3), lambda a: address_type_of(a, lambda b: b == ip(NODE)),
                          masquerade_source)
    netfilter.load(rules)
    return netfilter


def test_a_node_forwards_a_pod_to_its_service_and_back_through_the_hooks_in_linux_order():
    from test_netfilter_rules import KUBE_PROXY_RULES

    node = node_netfilter(KUBE_PROXY_RULES.replace("--probability 0.50000000000", "--probability 1.0"))
    request = bytearray(bytes(IP(src=POD_A, dst=VIP) / TCP(sport=40000, dport=80, flags="S")))
    result, state = node.prerouting(request, "cni0", 0)
    assert result.verdict == "ACCEPT" and IP(bytes(request)).dst == "10.244.1.5"
    assert node.forward(request, state, "cni0").verdict == "ACCEPT"
    assert node.postrouting(request, state, "cni0", ip("10.244.1.5"), 0).verdict == "ACCEPT"
    assert checksums_valid(request) and IP(bytes(request))[TCP].dport == 8080
    reply = bytearray(bytes(IP(src="10.244.1.5", dst=POD_A) / TCP(sport=8080, dport=40000, flags="SA")))
    result, state = node.prerouting(reply, "cni0", NS)
    assert state.tracked.state == "ESTABLISHED"
    assert node.forward(reply, state, "cni0").verdict == "ACCEPT"  # KUBE-FORWARD: ESTABLISHED
    node.postrouting(reply, state, "cni0", ip(POD_A), NS)
    assert (IP(bytes(reply)).src, IP(bytes(reply))[TCP].sport) == (VIP, 80) and checksums_valid(reply)
    shown = node.show(NS)
    nat = shown["iptables"]["nat"]
    assert nat["KUBE-SERVICES"]["rules"][0]["packets"] == 1  # the nat table saw the first packet only
    assert nat["PREROUTING"]["rules"][0]["packets"] == 1
    assert shown["conntrack"][0].startswith("tcp      6 ")
    assert "src=10.244.1.2 dst=10.96.0.10 sport=40000 dport=80 src=10.244.1.5 dst=10.244.1.2 sport=8080" \
           in shown["conntrack"][0]


def test_forward_policy_drop_without_flannels_rule_drops_cross_node_traffic():
    node = node_netfilter("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    packet = bytearray(bytes(IP(src=POD_A, dst=POD_B) / ICMP(type=8, id=1)))
    result, state = node.prerouting(packet, "cni0", 0)
    dropped = node.forward(packet, state, "flannel.1")
    assert (dropped.verdict, dropped.where) == ("DROP", "filter/FORWARD")
    fixed = node_netfilter("*filter\n:FORWARD DROP [0:0]\n-A FORWARD -s 10.244.0.0/16 -j ACCEPT\n"
                           "-A FORWARD -d 10.244.0.0/16 -j ACCEPT\nCOMMIT\n")
    result, state = fixed.prerouting(packet, "cni0", 0)
    assert fixed.forward(packet, state, "flannel.1").verdict == "ACCEPT"
