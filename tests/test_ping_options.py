"""The iputils ping options beyond -c -i -s -t -W -M -I -q: parsed as iputils
20221126 parses them, and run by the emulated ping as the real one runs them.

Expected values are worked out by hand from iputils (ping/ping.c option
parsing and parsetos, ping_common.c fill, pinger, main_loop, finish) and
from what a live Linux 6.18 run showed (two namespaces joined by a veth,
tcpdump on one end; the saved regressions tests/regressions/ping-*.yaml
hold the cluster runs): a -Q TOS is copied whole into the echo reply, the
VXLAN outer header keeps only the inner ECN bits (CE becoming ECT(0)),
flannel's udp backend sends with TOS 0. Frames are read back from the
emulator's pcaps with scapy.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.utils import rdpcap

from emu.net.ping import PingResult
from emu.scenario import load_scenario_text, parse_ping
from emu.scenario.run import run_scenario
from helpers_net import two_nodes_yaml

P1B, P2A, UNUSED_ON_N2 = "10.244.1.3", "10.244.2.2", "10.244.2.9"


# -- parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "command, expected",
    [
        ("ping -c2 -s1400 -Mdo -t 5 -I eth0 -q 10.0.0.1",
         dict(count=2, size=1400, pmtudisc="do", ttl=5, interface="eth0", quiet=True)),
        ("ping 10.0.0.1 -c 1", dict(count=1, interval=1.0, size=56, quiet=False)),
        ("ping -qc3 10.0.0.1", dict(count=3, quiet=True)),
        ("ping -c 1 -I 10.244.1.2 -M dont 10.0.0.1", dict(interface="10.244.1.2", pmtudisc="dont")),
        ("ping -c 1 -s 0 -W 0.5 10.0.0.1", dict(size=0, timeout=0.5)),
        ("ping -c 1 -c 4 10.0.0.1", dict(count=4)),
        ("ping -nqc2 10.0.0.1", dict(count=2, quiet=True, deadline=None)),
        ("ping -n -D -O -v -U -4 -a -B -L -c 1 10.0.0.1",
         dict(count=1, timestamps=True, outstanding=True, verbose=True, quiet=False)),
        ("ping -c 1 -m 7 -S 65536 10.0.0.1", dict(count=1, tos=0, pattern=None, preload=1)),
        ("ping -c 3 -w 5 10.0.0.1", dict(count=3, deadline=5)),
        ("ping -w5 10.0.0.1", dict(count=0, deadline=5)),
        ("ping -c 1 -w 0 10.0.0.1", dict(count=1, deadline=None)),
        ("ping -c1 -l3 10.0.0.1", dict(preload=3)),
        ("ping -c1 -l 65536 10.0.0.1", dict(preload=65536)),
        ("ping -c1 -Q 0xB8 10.0.0.1", dict(tos=0xB8)),
        ("ping -c1 -Q46 10.0.0.1", dict(tos=46)),
        ("ping -c1 -Q 255 10.0.0.1", dict(tos=255)),
        ("ping -c1 -Q 0x 10.0.0.1", dict(tos=0)),
        ("ping -c1 -p abc 10.0.0.1", dict(pattern=b"\xab\x0c")),
        ("ping -c1 -p ff 10.0.0.1", dict(pattern=b"\xff")),
        ("ping -c1 -p 0102030405060708090a0b0c0d0e0f1011 10.0.0.1",
         dict(pattern=bytes(range(1, 17)))),
        ("ping -c1 -s 3 -p 0102030405 10.0.0.1", dict(size=3, pattern=b"\x01\x02\x03\x04\x05")),
        ("ping -c1 -s 16 -p '' 10.0.0.1", dict(size=16, pattern=b"")),
        ("ping 10.0.0.1 -c 2 -Q 0x10", dict(count=2, tos=16)),
    ],
)
def test_accepted_forms(command, expected):
    spec = parse_ping(command)
    assert {key: getattr(spec, key) for key in expected} == expected
    assert spec.destination == IPv4Address("10.0.0.1")


@pytest.mark.parametrize(
    "command, reason",
    [
        ("ping 10.0.0.1", "ping needs -c COUNT or -w DEADLINE"),
        ("ping -w 0 10.0.0.1", "ping needs -c COUNT or -w DEADLINE"),
        ("ping -c 1 --flood 10.0.0.1", "unsupported option -flood (supported: -c -w -i -l -s -p -Q -t -W -M "
                                       "-I -q -n -D -O -v -U -4 -a -B -L -m -S)"),
        ("ping 10.0.0.1 -c", "option -c needs a value"),
        ("ping -c x 10.0.0.1", "-c: expected an integer >= 1, got 'x'"),
        ("ping -c 0 10.0.0.1", "-c: expected an integer >= 1, got '0'"),
        ("ping -c 1 -i 0 10.0.0.1", "-i: expected a number of seconds > 0, got '0'"),
        ("ping -c 1 -i nan 10.0.0.1", "-i: expected a number of seconds > 0, got 'nan'"),
        ("ping -c 1 -s 65508 10.0.0.1", "-s: expected an integer 0..65507, got '65508'"),
        ("ping -c 1 -t 0 10.0.0.1", "-t: expected an integer 1..255, got '0'"),
        ("ping -c 1 -t 256 10.0.0.1", "-t: expected an integer 1..255, got '256'"),
        ("ping -c 1 -W -1 10.0.0.1", "-W: expected a number of seconds > 0, got '-1'"),
        ("ping -c 1 -M probe 10.0.0.1", "-M: expected do, dont or want, got 'probe'"),
        ("ping -c 1 -I 'a b' 10.0.0.1", "-I: 'a b' is neither an IPv4 address nor an interface name"),
        ("ping -c 1 10.0.0.1 10.0.0.2", "ping needs exactly one destination, got 2"),
        ("ping -c 1", "ping needs exactly one destination, got 0"),
        ("ping -c 1 example.com", "destination 'example.com' is not an IPv4 address or a node/pod name"),
        ("ping -c 1 fe80::1", "destination 'fe80::1' is not an IPv4 address or a node/pod name"),
        ("traceroute 10.0.0.1", "only ping commands are supported, got 'traceroute'"),
        ("", "only ping commands are supported, got ''"),
        ("ping -c 1 '10.0.0.1", "cannot split the command line: No closing quotation"),
        ("ping -c 1 -f 10.0.0.1", "-f: flood timing depends on the real round-trip time; not emulated"),
        ("ping -c 1 -A 10.0.0.1",
         "-A: the adaptive interval depends on the real round-trip time; not emulated"),
        ("ping -c 1 -b 10.0.0.1", "-b: broadcast pings; not emulated"),
        ("ping -c 1 -R 10.0.0.1", "-R: the record-route IP option; not emulated"),
        ("ping -c 1 -T tsonly 10.0.0.1", "-T: the timestamp IP option; not emulated"),
        ("ping -c 1 -r 10.0.0.1", "-r: bypassing the routing table (SO_DONTROUTE); not emulated"),
        ("ping -nfc1 10.0.0.1", "-f: flood timing depends on the real round-trip time; not emulated"),
        ("ping -c 1 -e 5 10.0.0.1",
         "unsupported option -e (supported: -c -w -i -l -s -p -Q -t -W -M -I -q -n -D -O -v -U -4 -a -B "
         "-L -m -S)"),
        ("ping -c 1 -w x 10.0.0.1", "-w: expected an integer 0..2147483647, got 'x'"),
        ("ping -c 1 -w 1.5 10.0.0.1", "-w: expected an integer 0..2147483647, got '1.5'"),
        ("ping -c 1 -l 0 10.0.0.1", "-l: expected an integer 1..65536, got '0'"),
        ("ping -c 1 -l 65537 10.0.0.1", "-l: expected an integer 1..65536, got '65537'"),
        ("ping -c 1 -l 65536 -i 40 10.0.0.1", "-l: illegal preload and/or interval: 65536 and 40"),
        ("ping -c 1 -Q 256 10.0.0.1", "-Q: the decimal value of TOS bits must be in range 0-255, got 256"),
        ("ping -c 1 -Q 0x100 10.0.0.1", "-Q: the decimal value of TOS bits must be in range 0-255, got 256"),
        ("ping -c 1 -Q ef 10.0.0.1", "-Q: bad TOS value: 'ef' (expected 0..255, decimal or 0x hex)"),
        ("ping -c 1 -Q -1 10.0.0.1", "-Q: bad TOS value: '-1' (expected 0..255, decimal or 0x hex)"),
        ("ping -c 1 -p 0x10 10.0.0.1", "-p: patterns must be specified as hex digits, got '0x10'"),
        ("ping -c 1 -s 10 -p 0102030405 10.0.0.1",
         "-p: with -s 10, iputils leaves data bytes 5..9 of the pattern uninitialized (heap garbage on the "
         "wire); not emulated"),
        ("ping -c 1 -s 8 -p ff 10.0.0.1",
         "-p: with -s 8, iputils leaves data bytes 1..7 of the pattern uninitialized (heap garbage on the "
         "wire); not emulated"),
        ("ping -c 1 -p '' 10.0.0.1",
         "-p: with -s 56, iputils leaves data bytes 16..55 of the pattern uninitialized (heap garbage on "
         "the wire); not emulated"),
        ("ping -c 1 -m x 10.0.0.1", "-m: expected an integer 0..4294967295, got 'x'"),
        ("ping -c 1 -S 0 10.0.0.1", "-S: expected an integer 1..2147483647, got '0'"),
        ("ping -c 1 -Q", "option -Q needs a value"),
    ],
)
def test_refused_forms(command, reason):
    with pytest.raises(ValueError) as caught:
        parse_ping(command)
    assert str(caught.value) == reason


# -- running ---------------------------------------------------------------------------------

def run(tmp_path, command: str, backend: str = "host-gw", source: str = "p1a"):
    """Run one command in the reference two-node cluster; (its ping result, pcap reader)."""
    text = two_nodes_yaml(backend=backend, traffic=f"  - {{from: {source}, run: {command}}}")
    result = run_scenario(load_scenario_text(text), tmp_path)
    return result.traffic[0].ping, lambda point: list(rdpcap(str(tmp_path / f"{point}.pcap")))


def echoes(frames, kind: int):
    return [frame for frame in frames if ICMP in frame and frame[ICMP].type == kind]


def test_pattern_fills_the_data_after_the_timestamp(tmp_path):
    ping, pcap = run(tmp_path, f"ping -c 1 -s 40 -p abc {P1B}")
    (request,) = echoes(pcap("p1a_eth0"), 8)
    data = bytes(request[ICMP].payload)
    assert len(data) == 40
    assert data[16:] == bytes.fromhex("ab0c" * 12)  # fill(): "ab" then "c" as one byte each
    assert ping.lines[0] == "PATTERN: 0xab0c"
    assert ping.lines[1] == "PING 10.244.1.3 (10.244.1.3) 40(68) bytes of data."


@pytest.mark.parametrize(
    "options, data",
    [
        ("-s 3 -p 0102030405", "010203"),  # as seen live: one copy, cut at the size
        ("-s 10 -p 0102", "01020102010201020102"),  # 10 >= 2 + 8: copies up to offset 16
        ("-s 9 -p ff", "ff" * 9),
    ],
)
def test_pattern_without_timestamp_room(tmp_path, options, data):
    ping, pcap = run(tmp_path, f"ping -c 1 {options} {P1B}")
    (request,) = echoes(pcap("p1a_eth0"), 8)
    assert bytes(request[ICMP].payload).hex() == data
    size = len(data) // 2
    # Under 16 bytes there is no timestamp, so no round-trip time either (as iputils prints it).
    assert ping.lines[2] == f"{size + 8} bytes from {P1B}: icmp_seq=1 ttl=64"


def test_quiet_pattern_is_not_printed(tmp_path):
    ping, _ = run(tmp_path, f"ping -q -c 1 -p ff {P1B}")
    assert not any(line.startswith("PATTERN") for line in ping.lines)


@pytest.mark.parametrize(
    "backend, point, outer_tos",
    [
        ("vxlan", "n1_eth0", 0x02),  # ECN CE (0b11) encapsulated as ECT(0); the DSCP is not copied
        ("udp", "n1_eth0", 0x00),  # flanneld's UDP socket has the default TOS
        ("host-gw", "n1_eth0", None),  # routed as it is
    ],
)
def test_tos_on_the_wire(tmp_path, backend, point, outer_tos):
    _, pcap = run(tmp_path, f"ping -c 1 -Q 0xbb {P2A}", backend=backend)
    (request,) = echoes(pcap("p1a_eth0"), 8)
    (reply,) = echoes(pcap("p1a_eth0"), 0)
    assert request[IP].tos == 0xBB
    assert reply[IP].tos == 0xBB  # icmp_reply copies the request's whole TOS byte
    underlay = [frame for frame in pcap(point) if IP in frame]
    tunnelled = [frame for frame in underlay if UDP in frame]
    if outer_tos is None:
        assert not tunnelled
        assert {frame[IP].tos for frame in underlay} == {0xBB}
    else:
        assert len(tunnelled) == 2
        assert {frame[IP].tos for frame in tunnelled} == {outer_tos}


def test_preload_sends_back_to_back_then_one_per_interval(tmp_path):
    ping, pcap = run(tmp_path, f"ping -c 4 -l 3 -i 0.2 -O {P1B}")
    requests = echoes(pcap("p1a_eth0"), 8)
    first = float(requests[0].time)
    assert [round(float(r.time) - first, 6) for r in requests] == [0.0, 0.0, 0.0, 0.2]
    assert [r[ICMP].seq for r in requests] == [1, 2, 3, 4]
    # ping reads no reply until its burst is sent, so -O reports 1 and 2 first (as live).
    assert [line.split(" ttl=")[0] for line in ping.lines[1:7]] == [
        "no answer yet for icmp_seq=1",
        "no answer yet for icmp_seq=2",
        f"64 bytes from {P1B}: icmp_seq=1",
        f"64 bytes from {P1B}: icmp_seq=2",
        f"64 bytes from {P1B}: icmp_seq=3",
        f"64 bytes from {P1B}: icmp_seq=4",
    ]


def test_preload_is_capped_by_count(tmp_path):
    ping, pcap = run(tmp_path, f"ping -c 2 -l 5 -i 0.2 {P1B}")
    requests = echoes(pcap("p1a_eth0"), 8)
    assert len(requests) == 2 and requests[0].time == requests[1].time
    assert ping.summary() == "2 packets transmitted, 2 received, 0% packet loss"


def test_deadline_keeps_sending_past_count_to_an_unanswering_target(tmp_path):
    ping, pcap = run(tmp_path, f"ping -c 3 -w 2 -i 0.3 {UNUSED_ON_N2}")
    requests = echoes(pcap("p1a_eth0"), 8)
    assert len(requests) == 7  # 0, 0.3, ... 1.8 s; the alarm at 2 s ends it
    assert ping.summary() == "7 packets transmitted, 0 received, 100% packet loss"
    assert ping.finished_ns - ping.started_ns == 2_000_000_000


def test_deadline_ends_at_count_replies(tmp_path):
    ping, _ = run(tmp_path, f"ping -c 2 -w 5 -i 0.2 {P1B}")
    assert ping.summary() == "2 packets transmitted, 2 received, 0% packet loss"
    assert ping.finished_ns - ping.started_ns == 200_000_000


def test_deadline_without_count_sends_until_the_alarm(tmp_path):
    ping, _ = run(tmp_path, f"ping -w 1 -i 0.3 {P1B}")
    assert ping.summary() == "4 packets transmitted, 4 received, 0% packet loss"  # 0, .3, .6, .9 s
    assert ping.finished_ns - ping.started_ns == 1_000_000_000


def test_deadline_ends_at_the_first_error(tmp_path):
    ping, pcap = run(tmp_path, f"ping -c 3 -w 2 -t 1 -i 0.2 {P2A}")
    assert len(echoes(pcap("p1a_eth0"), 8)) == 1
    assert ping.lines[-1] == "1 packets transmitted, 0 received, +1 errors, 100% packet loss"


def test_without_deadline_an_error_does_not_end_the_run(tmp_path):
    ping, pcap = run(tmp_path, f"ping -c 3 -W 1 -t 1 -i 0.2 {P2A}")
    assert len(echoes(pcap("p1a_eth0"), 8)) == 3


def test_an_error_is_no_answer_for_outstanding(tmp_path):
    # pinger() tests the received bitmap, which only replies set.
    ping, _ = run(tmp_path, f"ping -c 2 -i 0.2 -W 1 -t 1 -O {P2A}")
    assert ping.lines[1:4] == [
        "From 10.244.1.1 icmp_seq=1 Time to live exceeded",
        "no answer yet for icmp_seq=1",
        "From 10.244.1.1 icmp_seq=2 Time to live exceeded",
    ]


def test_timestamps_and_ident(tmp_path):
    ping, pcap = run(tmp_path, f"ping -c 2 -i 0.25 -D -v {P1B}")
    requests = echoes(pcap("p1a_eth0"), 8)
    ident = requests[0][ICMP].id
    start = float(requests[0].time)
    assert ping.lines[1:3] == [
        f"[{start:.6f}] 64 bytes from {P1B}: icmp_seq=1 ident={ident} ttl=64 time=0.000 ms",
        f"[{start + 0.25:.6f}] 64 bytes from {P1B}: icmp_seq=2 ident={ident} ttl=64 time=0.000 ms",
    ]


@pytest.mark.parametrize(
    "transmitted, received, shown",
    [(3, 2, "33.3333"), (3, 1, "66.6667"), (7, 0, "100"), (2, 2, "0"), (8, 7, "12.5")],
)
def test_loss_is_printed_like_printf_g(transmitted, received, shown):
    result = PingResult("ping", "x", transmitted=transmitted, received=received)
    assert result.summary() == f"{transmitted} packets transmitted, {received} received, {shown}% packet loss"
