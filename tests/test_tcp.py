"""TCP against the kernel: handshake, windows, segmentation, resets, retransmission.

The expected frames come from kernel captures of netcat-openbsd between
pods of the reference cluster (Linux 6.18, tcp_congestion_control=reno,
tests/kernel-tcp/, taken at p1a's eth0), decoded by dpkt and
compared with the verifier's masking: relative sequence numbers, IP ids
relative to each direction's first, no timestamps.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from emu.net import gso
from emu.net.tcp import TcpSocket
from emu.net.tcp_params import TcpSysctls, select_initial_window
from emu.wire.addr import ip_from_str
from emu.wire.tcp import TcpSegment
from tests.helpers_net import collect
from tests.helpers_tcp import KERNEL_TCP, cluster, pcap_frames, tcp_shape, transfer


def _run(emulated, size: int, **kwargs):
    tap = collect(emulated.cluster.namespace("p1a").devices["eth0"])
    result = transfer(emulated, size, **kwargs)
    emulated.sim.run()
    return tap, result


@pytest.mark.parametrize("capture, size", [("host-gw-hello", 6), ("host-gw-20k", 20000)])
def test_transfer_matches_kernel_capture(capture: str, size: int) -> None:
    """Handshake options and windows, GSO super-frames cut by the cwnd quota,
    quick ACKs, rcv_ssthresh growth, FIN / FIN-ACK: frame for frame."""
    tap, result = _run(cluster("host-gw"), size)
    assert bytes(result["received"]) == bytes(i & 0xFF for i in range(size))
    kernel = tcp_shape([frame for _, frame in pcap_frames(KERNEL_TCP / f"{capture}_p1a_eth0.pcap")])
    assert tcp_shape(tap.raw()) == kernel


def test_initial_window_follows_sysctls() -> None:
    """tcp_select_initial_window: the kernel's values for MSS 1460 / 1410 /
    1432 (kernel-facts) and a smaller tcp_rmem[2] giving a smaller scale."""
    sysctls = TcpSysctls()
    assert select_initial_window(sysctls, 65536, 1460, 0, True)[::2] == (64240, 10)
    assert select_initial_window(sysctls, 65536, 1410, 0, True)[0] == 64860
    assert select_initial_window(sysctls, 65536, 1398, 0, True)[0] == 64308
    assert select_initial_window(sysctls, 65536, 1432, 0, True)[0] == 64440
    small = TcpSysctls(tcp_rmem=(4096, 131072, 6291456))
    assert select_initial_window(small, 65536, 1460, 0, True)[2] == 7  # ilog2(6 MB) - 15


def test_sysctls_change_the_syn() -> None:
    """SACK and window scaling off: MSS, NOP, NOP, TS, as tcp_options_write."""
    emulated = cluster("host-gw")
    ns = emulated.cluster.namespace("p1a")
    ns.tcp_sysctls.tcp_sack = 0
    ns.tcp_sysctls.tcp_window_scaling = 0
    tap, _ = _run(emulated, 6)
    syn = tcp_shape(tap.raw())[0]
    assert syn[6] == (2, 1, 1, 8)
    assert syn[8] is None


def test_closed_port_gets_reset() -> None:
    """RST|ACK acknowledging the SYN, window 0, IP id 0; connect sees ECONNREFUSED."""
    emulated = cluster("host-gw")
    tap, result = _run(emulated, 6, listen=False)
    shape = tcp_shape(tap.raw())
    assert [s[1] for s in shape] == [0x02, 0x14]
    assert shape[1][3] == 1 and shape[1][5] == 0 and shape[1][12] == 0
    assert result["error"] == "ECONNREFUSED"


def test_syn_retransmissions_follow_the_kernel() -> None:
    """SYN retries against a port that drops SYNs: 1 s, four linear 1 s
    timeouts (tcp_syn_linear_timeouts), then doubling, as the kernel did."""
    emulated = cluster("host-gw")
    p2a = emulated.cluster.namespace("p2a")
    p2a.stack.tcp.input = lambda dev, packet: p2a.drop("test-firewall")
    tap = collect(emulated.cluster.namespace("p1a").devices["eth0"])
    transfer(emulated, 6)
    emulated.sim.run(until_ns=20 * 10**9)
    sent = [t for t, frame in tap.frames if frame[23] == 6 and frame[34 + 13] == 0x02]
    kernel = [t for t, frame in pcap_frames(KERNEL_TCP / "host-gw-syn-dropped_p1a_eth0.pcap")
              if frame[23] == 6]
    gaps = [round((b - a) / 1e9) for a, b in zip(sent, sent[1:])]
    kernel_gaps = [round(b - a) for a, b in zip(kernel, kernel[1:])]
    assert gaps[:len(kernel_gaps)] == kernel_gaps == [1, 1, 1, 1, 1, 2, 4, 8]


def test_super_frames_cross_vxlan_and_are_cut_by_tun() -> None:
    """GSO: the vxlan backend carries 7056-byte frames (eth0: 7106, encapsulated),
    as the kernel showed; flannel0 (a TUN) sees only MTU-sized segments with
    valid checksums, and the data arrives whole."""
    emulated = cluster("vxlan")
    eth0 = collect(emulated.cluster.namespace("n1").devices["eth0"])
    _, result = _run(emulated, 20000)
    assert len(result["received"]) == 20000
    assert max(len(frame) for frame in eth0.raw()) == 7106
    emulated = cluster("udp")
    tun = collect(emulated.cluster.namespace("n1").devices["flannel0"])
    _, result = _run(emulated, 20000)
    assert bytes(result["received"]) == bytes(i & 0xFF for i in range(20000))
    packets = [p for p in tun.raw() if p[9] == 6]
    assert max(map(len, packets)) == 1472
    for packet in packets:
        assert TcpSegment(packet[20:]).checksum_ok(packet[12:16], packet[16:20])


@pytest.mark.parametrize("backend", ["host-gw", "vxlan", "udp"])
def test_200k_transfer_finishes_with_valid_frames(backend: str, tmp_path) -> None:
    """The issue's bulk case: 200 KB cross-node arrives whole; tshark (when
    installed) finds no bad checksum and no malformed frame at any point."""
    from emu.capture import PcapWriter

    emulated = cluster(backend)
    writers: dict[int, PcapWriter] = {}  # every capture point in one file per link type
    for name in ("p1a", "n1", "n2", "p2a"):
        for dev in emulated.cluster.namespace(name).devices.values():
            if dev.linktype not in writers:
                writers[dev.linktype] = PcapWriter(tmp_path / f"{dev.linktype}.pcap", dev.linktype)
            writer = writers[dev.linktype]
            dev.taps.append(lambda ts, frame, w=writer: w.write(ts, frame))
    result = transfer(emulated, 200_000, port=9)
    emulated.sim.run()
    for writer in writers.values():
        writer.close()
    assert bytes(result["received"]) == bytes(i & 0xFF for i in range(200_000))
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (CI installs it)")
    for pcap in tmp_path.glob("*.pcap"):
        bad = subprocess.run(
            ["tshark", "-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-o",
             "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-Y",
             "_ws.malformed || tcp.checksum.status == 0 || udp.checksum.status == 0"
             " || ip.checksum.status == 0"], capture_output=True, text=True, check=True)
        assert bad.stdout == "", f"{pcap.name}: {bad.stdout}"


def test_data_after_close_gets_reset() -> None:
    """A segment for a socket whose application closed: RST (tcp_rcv_state_process)."""
    emulated = cluster("host-gw")
    sim = emulated.sim
    p1a, p2a = (emulated.cluster.namespace(n) for n in ("p1a", "p2a"))
    listener = TcpSocket(p2a)
    listener.bind(None, 7000)
    listener.listen(1)
    client = TcpSocket(p1a)
    tap = collect(p1a.devices["eth0"])

    def on_listener() -> None:
        child = listener.accept()
        if child is not None:
            child.close()  # FIN at once; the client keeps sending

    listener.on_wake = on_listener
    client.on_wake = lambda: client.connected and not client.unsent and client.state == "CLOSE_WAIT" \
        and client.send(b"late")
    sim.call_process_at(0, client.connect, (ip_from_str("10.244.2.2"), 7000))
    sim.run(until_ns=10**9)
    flags = [s[1] for s in tcp_shape(tap.raw())]
    assert flags[-1] & 0x04  # the server's RST
    assert client.error in ("EPIPE", "ECONNRESET")


def test_gso_segments_keep_sequence_and_ids() -> None:
    """Software GSO: consecutive sequence numbers and IP ids, PSH only on the last."""
    from emu.wire.ipv4 import Ipv4Repr
    from emu.wire.tcp import ACK, PSH, TcpRepr

    src, dst = ip_from_str("10.0.0.1"), ip_from_str("10.0.0.2")
    tcp = TcpRepr(1000, 2000, 5, 9, ACK | PSH, 100).build(bytes(3000), src, dst)
    packet = Ipv4Repr(src=src, dst=dst, protocol=6, payload_len=len(tcp), ident=7, df=True).header() + tcp
    parts = gso.segments(packet, 1448)
    assert [len(p) for p in parts] == [1488, 1488, 144]
    assert [int.from_bytes(p[4:6], "big") for p in parts] == [7, 8, 9]
    assert [TcpSegment(p[20:]).seq for p in parts] == [5, 1453, 2901]
    assert [TcpSegment(p[20:]).flags & PSH for p in parts] == [0, 0, PSH]


def _verify_point(tmp_path, emulated, point: str, kernel_pcap, size: int = 20000, **kwargs):
    """`emu verify` of one capture point: the emulator's pcap against a kernel one."""
    from emu.capture import PcapWriter
    from emu.verify import compare_dirs

    ns_name, dev_name = point.split("_", 1)
    dev = emulated.cluster.namespace(ns_name).devices[dev_name]
    (tmp_path / "emu").mkdir()
    (tmp_path / "kernel").mkdir()
    writer = PcapWriter(tmp_path / "emu" / f"{point}.pcap", dev.linktype)
    dev.taps.append(lambda ts, frame: writer.write(ts, frame))
    transfer(emulated, size, **kwargs)
    emulated.sim.run(until_ns=10**9)
    writer.close()
    shutil.copy(kernel_pcap, tmp_path / "kernel" / f"{point}.pcap")
    return compare_dirs(tmp_path / "kernel", tmp_path / "emu")


@pytest.mark.parametrize("backend, point", [("host-gw", "p1a_eth0"), ("vxlan", "p1a_eth0"),
                                            ("vxlan", "n1_eth0")])
def test_verify_masks_isn_timestamps_and_ports(backend: str, point: str, tmp_path) -> None:
    """The oracle passes the 20 KB transfer: relative seq/ack, ephemeral ports by
    role, TS values dropped, everything else (options, windows, lengths) equal."""
    kernel = KERNEL_TCP / f"{backend}-20k_{point}.pcap"
    report = _verify_point(tmp_path, cluster(backend), point, kernel)
    assert report.ok, report.lines()


def test_verify_window_allowance_covers_a_slow_reader_only(tmp_path) -> None:
    """The slow-reader run passes only thanks to the documented allowance; a
    window above the emulator's, or further below, is still a difference."""
    from emu.verify.compare import TCP_WINDOW_ALLOWANCE, _field_differences

    report = _verify_point(tmp_path, cluster("host-gw"), "p2a_eth0",
                           KERNEL_TCP / "host-gw-20k-slow-reader_p2a_eth0.pcap")
    assert report.ok, report.lines()
    fields = [("tcp.flags", "0x10"), ("tcp.window", 103)]
    low = 103 - TCP_WINDOW_ALLOWANCE
    assert not _field_differences([("tcp.flags", "0x10"), ("tcp.window", low)], fields)
    assert _field_differences([("tcp.flags", "0x10"), ("tcp.window", low - 1)], fields)
    assert _field_differences([("tcp.flags", "0x10"), ("tcp.window", 104)], fields)
    assert _field_differences([("tcp.flags", "0x02"), ("tcp.window", 100)],
                              [("tcp.flags", "0x02"), ("tcp.window", 103)])


@pytest.mark.parametrize("point", ["p1a_eth0", "n2_eth0"])
def test_verify_lets_a_late_pure_ack_pass_only_what_it_cannot_change(point: str, tmp_path) -> None:
    """A kernel run where the receiver's ACK of the second super-frame was
    overtaken on the way (per-CPU backlogs): it passes thanks to the late-ACK
    alignment alone, and the same reorder with the ACK turned into one that
    acknowledges the data it passed is still a difference."""
    from emu.verify.compare import _align_late_acks, may_pass

    kernel = KERNEL_TCP / f"host-gw-20k-late-ack_{point}.pcap"  # examples/tcp-host-gw.yaml
    report = _verify_point(tmp_path, cluster("host-gw"), point, kernel, port=9000)
    assert report.ok, report.lines()

    def segment(src: str, flags: str, seq: int, ack: int, length: int = 0) -> list:
        dst = "s" if src == "c" else "c"
        return [("ip.src", src), ("ip.dst", dst), ("tcp.sport", 1 if src == "c" else 2),
                ("tcp.dport", 2 if src == "c" else 1), ("tcp.flags", flags), ("tcp.seq", f"+{seq}"),
                ("tcp.ack", f"+{ack}"), ("tcp.payload_len", length)]

    ack = segment("s", "0x10", 1, 14481)
    data = segment("c", "0x18", 14481, 1, 1904)
    newer_ack = segment("s", "0x10", 1, 16385)
    assert may_pass(ack, data) and may_pass(ack, newer_ack)
    assert not may_pass(ack, segment("c", "0x18", 7241, 1, 7240))  # data it acknowledges
    assert not may_pass(ack, segment("s", "0x10", 1, 7241))  # an older ACK of its own direction
    assert not may_pass(data, ack)  # only pure ACKs are let through
    emu = [ack, data, newer_ack]
    late = [data, newer_ack, ack]
    _align_late_acks(late, emu)
    assert late == emu
    blocked = [segment("c", "0x18", 7241, 1, 7240), ack]
    _align_late_acks(blocked, [ack, segment("c", "0x18", 7241, 1, 7240)])
    assert blocked[0] != ack


def test_relative_sequences_catch_an_offset() -> None:
    """Relative numbering per direction: equal streams agree whatever the ISN,
    a stream one byte ahead does not."""
    from emu.verify.sequences import TcpSequences

    def frames(isn_a: int, isn_b: int, extra: int = 0):
        base = [("ip.src", "a"), ("ip.dst", "b"), ("tcp.sport", 1), ("tcp.dport", 2)]
        back = [("ip.src", "b"), ("ip.dst", "a"), ("tcp.sport", 2), ("tcp.dport", 1)]
        return [base + [("tcp.flags", "0x02"), ("tcp.seq", isn_a), ("tcp.ack", 0)],
                back + [("tcp.flags", "0x12"), ("tcp.seq", isn_b), ("tcp.ack", isn_a + 1)],
                base + [("tcp.flags", "0x10"), ("tcp.seq", isn_a + 1 + extra),
                        ("tcp.ack", isn_b + 1)]]

    def relative(side):
        numbering = TcpSequences()
        return [numbering.relative(frame) for frame in side]

    assert relative(frames(5, 0xFFFFFFF0)) == relative(frames(123456, 42))
    assert relative(frames(5, 7, extra=1)) != relative(frames(5, 7))
