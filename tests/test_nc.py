"""netcat (UDP) and background processes in the emulator: what nc sends,
prints and how it ends, as netcat-openbsd 1.219 does (the live comparison
with the real nc is in tests/test_kernel_live.py)."""

from __future__ import annotations

import json

import pytest

from emu.net import Namespace
from emu.net.nc import NcOptions, Netcat
from emu.net.process import stdin_pattern
from emu.net.udp import UdpSocket, choose_ephemeral_port
from emu.scenario import ScenarioError, load_scenario_text
from emu.scenario.run import run_scenario
from emu.sim import NS_PER_SECOND, Scheduler

CLUSTER = """\
name: nc
net-conf: {Network: 10.244.0.0/16, Backend: {Type: BACKEND}}
nodes:
  - {name: n1, pods: [{name: p1a, containers: [web, sidecar]}]}
  - {name: n2, pods: [{name: p2a}]}
"""


def scenario(traffic: str, backend: str = "host-gw"):
    return load_scenario_text(CLUSTER.replace("BACKEND", backend) + "traffic:\n" + traffic)


def udp_payloads(result, point: str) -> list[tuple[int, int]]:
    """(source port, UDP length) of every first fragment / whole datagram sent at `point`."""
    import dpkt
    found = []
    with open(result.out_dir / f"{point}.pcap", "rb") as file:
        for _, frame in dpkt.pcap.Reader(file):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and ip.p == 17 and ip.offset == 0:
                raw = bytes(ip)[ip.hl * 4:]
                found.append((int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[4:6], "big") - 8))
    return found


def test_stdin_is_sent_in_16384_byte_datagrams_and_written_out_by_the_listener(tmp_path):
    result = run_scenario(scenario(
        "  - {from: p2a, run: nc -u -l 5000 &}\n"
        "  - {from: p1a, run: nc -u -q 0 p2a 5000, stdin: {bytes: 40000}}\n"), tmp_path)
    listener, client = (t.result for t in result.traffic)
    sent = udp_payloads(result, "p1a_eth0")
    assert [size for _, size in sent] == [16384, 16384, 40000 - 2 * 16384]
    assert len({port for port, _ in sent}) == 1 and 32768 <= sent[0][0] <= 60999
    assert bytes(listener.stdout) == stdin_pattern(40000) and listener.stopped
    assert client.exit_status == 0 and not client.stopped and client.stdout == b""
    entry = json.loads((tmp_path / "stats.json").read_text())["traffic"][0]
    assert entry["command"] == "nc -u -l 5000 &" and entry["stopped"] and entry["stdout_bytes"] == 40000


def test_a_closed_port_answers_port_unreachable_and_nc_stops_sending_silently(tmp_path):
    result = run_scenario(scenario("  - {from: p1a, run: nc -u -q 0 p2a 5000, stdin: {bytes: 40000}}\n"),
                          tmp_path)
    client = result.traffic[0].result
    assert [size for _, size in udp_payloads(result, "p1a_eth0")] == [16384]  # then ECONNREFUSED
    assert (client.exit_status, client.stderr, client.stdout) == (0, [], b"")
    assert result.stats["namespaces"]["p2a"]["stack"]["drops"] == {"NO_SOCKET": 1}


def test_the_listener_answers_with_its_stdin_and_only_its_first_peer(tmp_path):
    result = run_scenario(scenario(
        "  - {from: p2a, run: nc -u -l 5000 &, stdin: \"pong\\n\"}\n"
        "  - {from: p1a, run: nc -u -w 1 p2a 5000, stdin: \"ping\\n\"}\n"
        "  - {from: n1, run: nc -u -q 0 p2a 5000, stdin: \"other\\n\"}\n"), tmp_path)
    listener, client, other = (t.result for t in result.traffic)
    assert bytes(listener.stdout) == b"ping\n"  # connected to p1a: n1's datagram is refused
    assert bytes(client.stdout) == b"pong\n" and client.exit_status == 0
    assert result.stats["namespaces"]["p2a"]["stack"]["drops"] == {"NO_SOCKET": 1}
    assert client.finished_ns == NS_PER_SECOND  # -w 1: one second of silence after the answer


def test_quit_timer_and_keep_listening(tmp_path):
    result = run_scenario(scenario(
        "  - {from: p2a, run: nc -u -l -k 5000 &}\n"
        "  - {from: p1a, run: nc -u -q 2 p2a 5000, stdin: \"one\\n\"}\n"
        "  - {from: n1, run: nc -u -q 0 p2a 5000, stdin: \"two\\n\"}\n"), tmp_path)
    listener, first, second = (t.result for t in result.traffic)
    assert bytes(listener.stdout) == b"one\ntwo\n"  # -k: every sender
    assert first.finished_ns == 2 * NS_PER_SECOND and second.finished_ns == first.finished_ns
    assert result.end_ns == 2 * NS_PER_SECOND


def test_localhost_between_two_containers_of_a_pod(tmp_path):
    result = run_scenario(scenario(
        "  - {from: p1a/web, run: nc -u -l 127.0.0.1 8080 &}\n"
        "  - {from: p1a/sidecar, run: nc -u -q 0 127.0.0.1 8080, stdin: \"hi\\n\"}\n"), tmp_path)
    assert bytes(result.traffic[0].result.stdout) == b"hi\n"
    assert set(result.capture_counts) == {"p1a_lo"}


def test_a_run_is_byte_identical_twice(tmp_path):
    text = ("  - {from: p2a, run: nc -u -l 5000 &}\n"
            "  - {from: p1a, run: nc -u -q 0 p2a 5000, stdin: {bytes: 20000}}\n")
    first = run_scenario(scenario(text, "vxlan"), tmp_path / "a")
    second = run_scenario(scenario(text, "vxlan"), tmp_path / "b")
    assert first.capture_counts == second.capture_counts
    for name in first.capture_counts:
        assert (tmp_path / "a" / f"{name}.pcap").read_bytes() == (tmp_path / "b" / f"{name}.pcap").read_bytes()


def test_bind_errors_and_unreachable_destinations_exit_1(tmp_path):
    result = run_scenario(scenario(
        "  - {from: p1a, run: nc -u -q 0 -s 10.9.9.9 p2a 5000}\n"
        "  - {from: p1a, run: nc -u -q 0 192.0.2.1 5000}\n"), tmp_path)
    bound, unroutable = (t.result for t in result.traffic)
    assert (bound.exit_status, bound.stderr) == (1, ["nc: bind failed: Cannot assign requested address"])
    assert unroutable.exit_status == 0  # pods have a default route: the datagram just leaves
    pod = run_scenario(scenario("  - {from: n1, run: nc -u -q 0 192.0.2.1 5000}\n"), tmp_path / "n")
    assert (pod.traffic[0].result.exit_status, pod.traffic[0].result.stderr) == (1, [])  # no route


def test_frag_needed_is_a_hard_error_for_a_connected_socket(tmp_path):
    # pods at MTU 1500 over vxlan (flannel.1 at 1450): the node refuses the DF datagram
    text = CLUSTER.replace("BACKEND", "vxlan") + "cni: {mtu: 1500}\ntraffic:\n" + (
        "  - {from: p2a, run: nc -u -l 5000 &}\n"
        "  - {from: p1a, run: nc -u -w 1 p2a 5000, stdin: {bytes: 1460}}\n")
    result = run_scenario(load_scenario_text(text), tmp_path)
    assert result.stats["namespaces"]["n1"]["stack"]["drops"].get("PKT_TOO_BIG") == 1
    client = result.traffic[1].result
    # EMSGSIZE is pending: poll() says POLLERR, nc leaves at once instead of waiting -w 1
    assert client.exit_status == 0 and client.finished_ns == 0
    assert result.traffic[0].result.stdout == b""


def test_ephemeral_ports_follow_udp_lib_get_port():
    """A seeded pick in ip_local_port_range, never a port in use, EADDRINUSE when all are."""
    box = Namespace(Scheduler(), "box", seed=7)
    box.ip_local_port_range = (40000, 40003)
    used: set[int] = set()
    for _ in range(4):
        port = choose_ephemeral_port(box, used)
        assert 40000 <= port <= 40003 and port not in used
        used.add(port)
    with pytest.raises(OSError, match="EADDRINUSE"):
        choose_ephemeral_port(box, used)
    picks = [choose_ephemeral_port(Namespace(Scheduler(), "box", seed=seed), set()) for seed in (1, 1, 2)]
    assert picks[0] == picks[1] != picks[2]  # seeded: the same scenario, the same port


@pytest.mark.parametrize("run, field, problem", [
    ("nc -u -v -l 5000 &", "run", "unsupported option -v"),
    ("nc -u -l 70000 &", "run", "port number too large: 70000"),
    ("nc -u -l 0 &", "run", "port number too small"),
    ("nc -u p2a http", "run", "expected a port number"),
    ("nc -u -l -s 10.244.1.2 5000 &", "run", "usage text"),
    ("nc -u -k p2a 5000 &", "run", "must use -l with -k"),
    ("nc -u p2a 5000", "run", "never exits by itself"),
    ("nc -u -q x p2a 5000", "run", "-q: expected an integer"),
    ("nc -u -q 0 nowhere 5000", "run", "'nowhere' is not an IPv4 address, node or pod"),
    ("telnet p2a 23", "run", "unknown program 'telnet'"),
])
def test_bad_nc_lines_name_the_field(run, field, problem):
    with pytest.raises(ScenarioError) as caught:
        scenario(f"  - {{from: p1a, run: \"{run}\"}}\n")
    assert f"traffic[0].{field}: " in str(caught.value) and problem in str(caught.value)


def test_a_taken_port_and_a_missing_stdin_file_are_refused(tmp_path):
    with pytest.raises(ScenarioError, match=r"^traffic\[1\]\.run: UDP port 5000 in p2a is already taken"):
        scenario("  - {from: p2a, run: nc -u -l 5000 &}\n  - {from: p2a, run: nc -u -l -q 0 5000}\n")
    with pytest.raises(ScenarioError, match=r"^traffic\[0\]\.run: UDP port 8472 in n1 .*flannel\.1"):
        load_scenario_text(CLUSTER.replace("BACKEND", "vxlan") + "traffic:\n"
                           "  - {from: n1, run: nc -u -l 8472 &}\n")
    with pytest.raises(ScenarioError, match=r"^traffic\[0\]\.stdin\.file: .*missing\.bin: file not found"):
        scenario("  - {from: p1a, run: nc -u -q 0 p2a 5000, stdin: {file: missing.bin}}\n")
    with pytest.raises(ScenarioError, match=r"^traffic\[0\]\.stdin: expected a string"):
        scenario("  - {from: p1a, run: nc -u -q 0 p2a 5000, stdin: [1]}\n")
    # one after the other in one chain is fine: the first has ended
    scenario("  - {from: p2a, run: nc -u -l -q 0 5000}\n  - {from: p2a, run: nc -u -l -q 0 5000}\n")


@pytest.mark.parametrize("traffic, field, named", [
    ('  - {from: p2a, run: "nc -x -l 9000 &"}\n', "traffic[0].run", "unsupported option -x"),
    ('  - {from: p1a, run: "nc -N p2a 65536"}\n', "traffic[0].run", "PORT: port number too large: 65536"),
    ('  - {from: p1a, run: "nc -N p2a 0"}\n', "traffic[0].run", "PORT: port number too small: 0"),
    ('  - {from: p1a, run: "nc -N -p 70000 p2a 9000"}\n', "traffic[0].run", "-p: port number too large"),
    ('  - {from: p2a, run: "nc -l 9000 &"}\n  - {from: p2a, run: "nc -l 9000 &"}\n', "traffic[1].run",
     "TCP port 9000 in p2a is already taken by traffic[0]"),
    ('  - {from: p1a, run: "nc -N p2a 9000", stdin: {file: missing.bin}}\n', "traffic[0].stdin.file",
     "missing.bin: file not found"),
    ('  - {from: p1a, run: "nc -u -q 0 p2a 9000", stdin: {file: missing.bin}}\n', "traffic[0].stdin.file",
     "missing.bin: file not found"),
])
def test_bad_traffic_lines_exit_2_with_one_line(traffic, field, named, tmp_path):
    """What a user sees from the command line: exit 2, one line naming the
    field and what is wrong with it, nothing written (TCP and UDP nc)."""
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text(CLUSTER.replace("BACKEND", "host-gw") + "traffic:\n" + traffic)
    proc = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"emu: error: {field}: "), proc.stderr
    assert named in proc.stderr and proc.stdout == "" and not (tmp_path / "out").exists()


def test_stdin_file_is_read_relative_to_the_scenario(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"\x00\xffpayload")
    path = tmp_path / "s.yaml"
    path.write_text(CLUSTER.replace("BACKEND", "host-gw") + "traffic:\n"
                    "  - {from: p1a, run: nc -u -q 0 p2a 5000, stdin: {file: data.bin}}\n")
    from emu.scenario import load_scenario
    assert load_scenario(path).traffic[0].stdin == b"\x00\xffpayload"


def test_background_ping_is_stopped_without_statistics(tmp_path):
    result = run_scenario(scenario("  - {from: p1a, run: ping -c 5 p2a &}\n"
                                   "  - {from: p1b, run: ping -c 1 -W 1 p2a}\n"
                                   .replace("p1b", "n1")), tmp_path)
    background, foreground = (t.result for t in result.traffic)
    assert background.stopped and background.exit_status is None and background.transmitted == 1
    assert not any("statistics" in line for line in background.lines)
    assert foreground.exit_status == 0


def test_netcat_client_on_a_bare_socket_pair():
    """The loop itself, without a cluster: one more byte than a buffer goes as two datagrams."""
    sim = Scheduler()
    ns = Namespace(sim, "box", seed=1)
    server = UdpSocket(ns)
    server.bind(None, 9000)
    ended = []
    Netcat(ns, NcOptions(port=9000, udp=True, quit_after=0, shutdown=True), "127.0.0.1",
           b"x" * 16385).start(ended.append)
    sim.run()
    sizes = [len(server.recvfrom()[0]) for _ in range(len(server.queue))]
    assert sizes == [16384, 1] and ended[0].exit_status == 0


def test_tcp_exchange_with_shutdown_and_a_closed_port(tmp_path):
    """nc -N sends its stdin, FIN; the listener prints it, sees EOF, closes and
    exits 0; a SYN to a closed port gets RST and nc exits 1 without a word
    (both as the live kernel runs them; the TCP frames are the tcp socket's)."""
    result = run_scenario(scenario(
        "  - {from: p2a, run: nc -l 5000 &}\n"
        "  - {from: p1a, run: nc -N p2a 5000, stdin: {bytes: 3000}}\n"
        "  - {from: p1a, run: nc -N p2a 5001, stdin: \"x\\n\"}\n"), tmp_path)
    listener, client, refused = (t.result for t in result.traffic)
    assert bytes(listener.stdout) == stdin_pattern(3000)
    assert (listener.exit_status, listener.stopped) == (0, False)  # EOF ended it, not the run
    assert (client.exit_status, client.stdout) == (0, b"")
    assert (refused.exit_status, refused.stderr) == (1, [])


def test_tcp_listener_with_keep_serves_one_connection_after_another(tmp_path):
    result = run_scenario(scenario(
        "  - {from: p2a, run: nc -l -k 5000 &}\n"
        "  - {from: p1a, run: nc -N p2a 5000, stdin: \"one\\n\"}\n"
        "  - {from: n1, run: nc -N p2a 5000, stdin: \"two\\n\"}\n"), tmp_path)
    listener = result.traffic[0].result
    assert bytes(listener.stdout) == b"one\ntwo\n" and listener.stopped


def test_a_stopped_tcp_listener_closes_its_connection(tmp_path):
    # the client never shuts down (no -N): both wait until the end of the run stops the
    # listener, whose close (FIN) ends the client, which has nothing left to read or send
    result = run_scenario(scenario(
        "  - {from: p2a, run: nc -l 5000 &}\n"
        "  - {from: p1a, run: nc p2a 5000 &, stdin: \"hello\\n\"}\n"), tmp_path)
    listener, client = (t.result for t in result.traffic)
    assert listener.stopped and bytes(listener.stdout) == b"hello\n"
    assert (client.stopped, client.exit_status) == (False, 0)


def test_background_tcp_client_writes_before_the_next_command_and_ends_on_the_stopped_peer(tmp_path):
    """As the live kernel run does (checked there 8/8 points): the next command
    starts once the background client has connected and written, not while
    its handshake is under way; at the end the listener is stopped first, its
    FIN ends the client (exit 0) before the client's own stop."""
    result = run_scenario(scenario(
        "  - {from: p2a, run: nc -l 5000 &}\n"
        "  - {from: p1a, run: nc p2a 5000 &, stdin: \"hello\\n\"}\n"
        "  - {from: p1a, run: ping -c 1 -W 1 n2}\n"), tmp_path)
    import dpkt
    kinds = []
    with open(tmp_path / "p1a_eth0.pcap", "rb") as file:
        for _, frame in dpkt.pcap.Reader(file):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP):
                kinds.append("icmp" if ip.p == 1 else "data" if len(ip.data.data) else "tcp")
    assert kinds.index("data") < kinds.index("icmp")
    listener, client, _ = (t.result for t in result.traffic)
    assert listener.stopped and (client.stopped, client.exit_status) == (False, 0)
