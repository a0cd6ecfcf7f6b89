"""ARP and the neighbour state machine, as Linux runs them (net/ipv4/arp.c, net/core/neighbour.c).

Traffic runs between pods p1a (10.244.1.2) and p1b (10.244.1.3) on node n1's
cni0; frames are taken from the pods' eth0 and decoded with scapy. The
patterns were compared with a real kernel (6.18, iputils ping, two
namespaces joined by a veth, tcpdump on one end), see the notes per test.
"""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from emu.net import UdpSocket
from emu.sim import NS_PER_SECOND
from emu.wire.addr import ip_from_str
from helpers_net import advance, arp_frames, collect, run_ping, two_nodes

P1A, P1B = "10.244.1.2", "10.244.1.3"
P1A_MAC, P1B_MAC = "0a:58:0a:f4:01:02", "0a:58:0a:f4:01:03"
BROADCAST = "ff:ff:ff:ff:ff:ff"


def pods(**options):
    cluster = two_nodes(**options).cluster
    return cluster.pods["p1a"].ns, cluster.pods["p1b"].ns


def seconds_of(time_ns: int) -> float:
    return time_ns / NS_PER_SECOND


def test_packets_queued_while_incomplete_leave_in_order_after_the_reply():
    p1a, p1b = pods(hairpin="false")
    wire = collect(p1a.devices["eth0"])
    sock = UdpSocket(p1a)
    for index in range(5):
        sock.sendto(f"datagram {index}".encode(), (ip_from_str(P1B), 9000))
    assert p1a.show_neighbours() == [f"{P1B} dev eth0 INCOMPLETE"]
    advance(p1a.sim, 1)  # (the cluster never idles: flanneld renews its lease)
    sent = [f for f in wire.ether() if f.src == P1A_MAC]
    assert ARP in sent[0] and sent[0][ARP].op == 1 and sent[0][ARP].pdst == P1B
    assert [bytes(f[UDP].payload) for f in sent[1:]] == [f"datagram {i}".encode() for i in range(5)]
    assert all(f.dst == P1B_MAC for f in sent[1:])
    assert len([f for f in wire.ether() if ARP in f and f[ARP].op == 1 and f.src == P1A_MAC]) == 1


def test_a_request_addressed_to_us_teaches_us_the_sender_so_the_reply_needs_no_arp():
    p1a, p1b = pods()
    p1b_wire = collect(p1b.devices["eth0"])
    assert run_ping(p1a, P1B, 1).received == 1
    requests_from_p1b = [f for f in arp_frames(p1b_wire) if f[ARP].op == 1 and f[ARP].psrc == P1B]
    assert requests_from_p1b == []
    # learned STALE from the request, then used for the reply: DELAY (Linux: `ip neigh` shows DELAY)
    assert p1b.show_neighbours() == [f"{P1A} dev eth0 lladdr {P1A_MAC} DELAY"]
    echo_reply = [f for f in p1b_wire.ether() if ICMP in f and f[ICMP].type == 0][0]
    assert echo_reply.dst == P1A_MAC


def test_an_absent_address_gets_three_broadcasts_a_second_apart_then_host_unreachable():
    # Kernel: requests at 0, 1.008, 2.032 s, then all three queued pings get
    # "From <own address> icmp_seq=N Destination Host Unreachable".
    p1a, _ = pods(hairpin="false")  # (with hairpin each broadcast also comes back)
    wire = collect(p1a.devices["eth0"])
    result = run_ping(p1a, "10.244.1.77", 3, 0.2)
    requests = [(seconds_of(t), Ether(f)) for t, f in wire.frames
                if ARP in Ether(f) and Ether(f)[ARP].pdst == "10.244.1.77" and Ether(f).src == P1A_MAC]
    # retrans 1 s = 250 jiffies (HZ 250): timer-wheel level 1, rounded up to the next
    # 8-jiffy bucket after expiry: 256 jiffies = 1.024 s, then 256 + 250 -> 512 = 2.048 s
    # (the kernel's own jiffies phase gave 1.008 and 2.032 here).
    assert [t for t, _ in requests] == [0.0, 1.024, 2.048]
    assert all(f.dst == BROADCAST and f[ARP].psrc == P1A for _, f in requests)
    assert result.lines[1:4] == [f"From {P1A} icmp_seq={n} Destination Host Unreachable" for n in (1, 2, 3)]
    assert result.summary() == "3 packets transmitted, 0 received, +3 errors, 100% packet loss"
    assert "10.244.1.77 dev eth0 FAILED" in p1a.show_neighbours()
    assert p1a.devices["eth0"].stats.drops["NEIGH_FAILED"] == 3
    assert not [f for f in wire.ether() if IP in f]  # nothing was ever sent to the void


def test_reachable_becomes_stale_after_the_reachable_time():
    p1a, _ = pods()
    run_ping(p1a, P1B, 1)
    assert p1a.show_neighbours() == [f"{P1B} dev eth0 lladdr {P1B_MAC} REACHABLE"]
    advance(p1a.sim, 46)  # reachable time is random in [15 s, 45 s)
    assert p1a.show_neighbours() == [f"{P1B} dev eth0 lladdr {P1B_MAC} STALE"]


def test_a_used_stale_entry_goes_delay_then_probe_with_a_unicast_request():
    p1a, _ = pods()
    wire = collect(p1a.devices["eth0"])
    run_ping(p1a, P1B, 1)
    advance(p1a.sim, 46)
    wire.clear()
    start = p1a.sim.now_ns
    run_ping(p1a, P1B, 1)  # a new ping: no MSG_CONFIRM on its first send
    assert p1a.show_neighbours() == [f"{P1B} dev eth0 lladdr {P1B_MAC} DELAY"]
    advance(p1a.sim, 6)
    arp = [(seconds_of(t - start), Ether(f)) for t, f in wire.frames if ARP in Ether(f)]
    ours = [(t, f.dst, f[ARP].op, f[ARP].pdst) for t, f in arp if f.src == P1A_MAC and f[ARP].op == 1]
    # PROBE: unicast to the cached MAC, 5 s after DELAY, plus the timer wheel's rounding
    # (5 s = 1250 jiffies: level 2, 64-jiffy buckets, so 4 to 256 ms late)
    assert [(dst, op, pdst) for _, dst, op, pdst in ours] == [(P1B_MAC, 1, P1B)]
    assert 5.004 <= ours[0][0] <= 5.256
    answers = [t for t, f in arp if f.src == P1B_MAC and f[ARP].op == 2]
    assert answers == [ours[0][0]]
    assert p1a.show_neighbours() == [f"{P1B} dev eth0 lladdr {P1B_MAC} REACHABLE"]


def test_long_ping_arp_pattern_matches_the_kernel():
    # Kernel run (ping -c 40 -i 1 over a veth, tcpdump on the pinger's side):
    #   0 s    broadcast request from the pinger, reply
    #   5.25 s unicast request from the *responder* (its entry, learned STALE
    #          from our request, was used for the reply: DELAY, then PROBE), reply
    # and nothing else: iputils sends with MSG_CONFIRM after each reply, so the
    # pinger's own entry stays REACHABLE and it never probes.
    p1a, p1b = pods(hairpin="false")
    wire = collect(p1a.devices["eth0"])
    result = run_ping(p1a, P1B, 40, 1.0)
    assert result.received == 40
    arp = [(seconds_of(t), Ether(f)) for t, f in wire.frames if ARP in Ether(f)]
    first = [(f.src, f.dst, f[ARP].op) for t, f in arp if t == 0]
    assert first == [(P1A_MAC, BROADCAST, 1), (P1B_MAC, P1A_MAC, 2)]
    later = [(t, f) for t, f in arp if t > 0]
    # As in the kernel run, the probe comes between the 6th and the 7th echo request.
    assert later[:2] and 5.0 < later[0][0] < 6.0
    assert 5.004 <= later[0][0] <= 5.256
    requests = [f for _, f in later if f[ARP].op == 1]
    replies = [f for _, f in later if f[ARP].op == 2]
    assert requests and all(f.src == P1B_MAC and f.dst == P1A_MAC for f in requests)  # unicast probes
    assert len(replies) == len(requests) and all(f.src == P1A_MAC for f in replies)
    assert p1a.show_neighbours() == [f"{P1B} dev eth0 lladdr {P1B_MAC} REACHABLE"]
    assert p1b.show_neighbours() == [f"{P1A} dev eth0 lladdr {P1A_MAC} REACHABLE"]


def test_arp_requests_for_someone_else_are_not_answered():
    p1a, p1b = pods()
    p1b_wire = collect(p1b.devices["eth0"])
    run_ping(p1a, "10.244.1.77", 1, timeout_s=1)
    assert [f for f in p1b_wire.ether() if f.src == P1B_MAC] == []
    assert p1b.show_neighbours() == []  # not for us, and no entry to update: nothing learned
