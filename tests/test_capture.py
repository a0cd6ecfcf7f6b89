"""Capture files: written by emu.capture, read back by dpkt, scapy and tshark.

The readers are independent implementations of the formats, so a frame, a
timestamp or an interface name that survives all of them is written right.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from decimal import Decimal
from pathlib import Path

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import ARP, ICMP, IP, UDP, Ether, PcapNgReader, PcapReader, raw

from emu.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    CaptureSet,
    PcapngWriter,
    PcapWriter,
    tshark_available,
    tshark_findings,
)

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

# Addresses of the kernel reference cluster (shared/kernel-captures/README.md).
P1A_MAC, VETH1A_MAC, CNI0_MAC = "0a:58:0a:f4:01:02", "ee:ee:00:00:01:0a", "0a:58:0a:f4:01:01"
P1A_IP, P2A_IP, CNI0_IP = "10.244.1.2", "10.244.2.2", "10.244.1.1"

PING = raw(
    Ether(src=P1A_MAC, dst=CNI0_MAC)
    / IP(src=P1A_IP, dst=P2A_IP, id=0x1234, flags="DF")
    / ICMP(type=8, id=7, seq=1)
    / bytes(range(56))
)
ARP_REQUEST = raw(Ether(src=P1A_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=P1A_MAC, psrc=P1A_IP, pdst=CNI0_IP))
TUN_PING = raw(IP(src=P1A_IP, dst=P2A_IP, ttl=61) / ICMP(type=8, id=7, seq=1) / b"tun payload")
UDP_DATAGRAM = raw(
    Ether(src=P1A_MAC, dst=CNI0_MAC) / IP(src=P1A_IP, dst=P2A_IP) / UDP(sport=40000, dport=40001) / b"hi"
)

# Virtual times with digits below the microsecond, to see truncation.
T1, T2, T3 = 1_000_000_999, 2_500_123_456, 3_000_000_001

# The global header of the kernel's capture of n1's flannel0 TUN device
# (kernel-captures/udp-cross-node/n1_flannel0.pcap): LE magic, 2.4, snaplen 262144, linktype 101.
KERNEL_TUN_PCAP_HEADER = bytes.fromhex("d4c3b2a1" "0200" "0400" "00000000" "00000000" "00000400" "65000000")


def read_dpkt_pcap(path: Path) -> tuple[int, list[tuple[float, bytes]]]:
    with open(path, "rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        return reader.datalink(), list(reader)


def read_scapy(path: Path, reader_class: type) -> list[tuple[Decimal, bytes, int, str | None]]:
    """(time, bytes, original length, interface name) of every frame."""
    with reader_class(str(path)) as reader:
        return [(Decimal(p.time), bytes(p.original), p.wirelen, getattr(p, "sniffed_on", None)) for p in reader]


def idb_options(path: Path) -> list[dict[str, bytes | int]]:
    """Parse the Interface Description Blocks by hand: linktype and options."""
    data = path.read_bytes()
    interfaces = []
    offset = 0
    while offset < len(data):
        block_type, length = struct.unpack_from("<II", data, offset)
        if block_type == 1:
            (linktype,) = struct.unpack_from("<H", data, offset + 8)
            fields: dict[str, bytes | int] = {"linktype": linktype}
            cursor = offset + 16
            while True:
                code, size = struct.unpack_from("<HH", data, cursor)
                if code == 0:
                    break
                label = {2: "name", 3: "description", 9: "tsresol"}.get(code, str(code))
                fields[label] = data[cursor + 4 : cursor + 4 + size]
                cursor += 4 + size + (-size % 4)
            interfaces.append(fields)
        offset += length
    return interfaces


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    command = ["tshark", "-r", str(path), "-T", "fields"]
    for field in fields:
        command += ["-e", field]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in output.splitlines()]


# --- classic pcap ---------------------------------------------------------


def test_pcap_header_matches_the_kernel_tun_capture(tmp_path: Path) -> None:
    with PcapWriter(tmp_path / "tun.pcap", LINKTYPE_RAW):
        pass
    assert (tmp_path / "tun.pcap").read_bytes() == KERNEL_TUN_PCAP_HEADER


def test_pcap_microseconds_read_back_by_dpkt_and_scapy(tmp_path: Path) -> None:
    path = tmp_path / "eth.pcap"
    with PcapWriter(path) as writer:
        writer.write(T1, PING)
        writer.write(T2, bytearray(ARP_REQUEST))
        writer.write(T3, memoryview(PING))

    linktype, records = read_dpkt_pcap(path)
    assert linktype == dpkt.pcap.DLT_EN10MB == LINKTYPE_ETHERNET
    assert [frame for _, frame in records] == [PING, ARP_REQUEST, PING]
    assert [ts for ts, _ in records] == pytest.approx([1.000000, 2.500123, 3.000000], abs=1e-9)

    with PcapReader(str(path)) as reader:
        assert reader.linktype == 1
    scapy_records = read_scapy(path, PcapReader)
    assert [record[0] for record in scapy_records] == [Decimal("1.000000"), Decimal("2.500123"), Decimal("3.000000")]
    assert scapy_records[0][1] == PING
    assert scapy_records[1][1] == ARP_REQUEST


def test_pcap_nanoseconds_keep_every_digit(tmp_path: Path) -> None:
    path = tmp_path / "ns.pcap"
    with PcapWriter(path, nanosecond=True) as writer:
        writer.write(T1, PING)
        writer.write(T2, ARP_REQUEST)
    assert path.read_bytes()[:4] == bytes.fromhex("4d3cb2a1")  # 0xa1b23c4d, little-endian
    _, records = read_dpkt_pcap(path)
    assert [ts for ts, _ in records] == [Decimal("1.000000999"), Decimal("2.500123456")]  # dpkt: exact for ns
    assert [record[0] for record in read_scapy(path, PcapReader)] == [Decimal("1.000000999"), Decimal("2.500123456")]


def test_pcap_raw_ipv4_linktype(tmp_path: Path) -> None:
    path = tmp_path / "tun.pcap"
    with PcapWriter(path, LINKTYPE_RAW) as writer:
        writer.write(T1, TUN_PING)
    linktype, records = read_dpkt_pcap(path)
    assert linktype == 101
    assert records[0][1] == TUN_PING
    (packet,) = list(PcapReader(str(path)))
    assert packet[IP].dst == P2A_IP and packet[IP].ttl == 61


def test_pcap_snaplen_truncates_but_keeps_the_original_length(tmp_path: Path) -> None:
    path = tmp_path / "short.pcap"
    with PcapWriter(path, snaplen=40) as writer:
        writer.write(T1, PING)
    _, records = read_dpkt_pcap(path)
    assert records[0][1] == PING[:40]
    assert read_scapy(path, PcapReader)[0][2] == len(PING)


def test_pcap_is_complete_before_close(tmp_path: Path) -> None:
    path = tmp_path / "open.pcap"
    writer = PcapWriter(path)
    writer.write(T1, PING)
    writer.write(T2, ARP_REQUEST)
    assert [frame for _, frame in read_dpkt_pcap(path)[1]] == [PING, ARP_REQUEST]
    writer.close()
    writer.close()


def test_pcap_refuses_bad_input(tmp_path: Path) -> None:
    writer = PcapWriter(tmp_path / "bad.pcap")
    with pytest.raises(ValueError, match="ts_ns"):
        writer.write(-1, PING)
    with pytest.raises(ValueError, match="ts_ns"):
        writer.write(2**32 * 10**9, PING)
    with pytest.raises(TypeError, match="ts_ns"):
        writer.write(1.5, PING)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="frame"):
        writer.write(T1, "not bytes")  # type: ignore[arg-type]
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(T1, PING)
    with pytest.raises(ValueError, match="snaplen"):
        PcapWriter(tmp_path / "x.pcap", snaplen=0)
    with pytest.raises(ValueError, match="linktype"):
        PcapWriter(tmp_path / "y.pcap", linktype=70000)


@given(
    records=st.lists(st.tuples(st.integers(0, 2**32 * 10**9 - 1), st.binary(max_size=300)), max_size=8),
    nanosecond=st.booleans(),
)
def test_pcap_round_trips_any_frames_and_times(
    tmp_path_factory: pytest.TempPathFactory, records: list[tuple[int, bytes]], nanosecond: bool
) -> None:
    path = tmp_path_factory.mktemp("prop") / "any.pcap"
    with PcapWriter(path, nanosecond=nanosecond) as writer:
        for ts_ns, frame in records:
            writer.write(ts_ns, frame)
    digits = 9 if nanosecond else 6
    expected = [(Decimal(ts // 10 ** (9 - digits)).scaleb(-digits), frame) for ts, frame in records]
    assert [(time, frame) for time, frame, _, _ in read_scapy(path, PcapReader)] == expected


# --- pcapng ---------------------------------------------------------------


def write_two_interface_pcapng(path: Path) -> None:
    """An Ethernet interface in ns and a TUN in us, the second added after a packet."""
    with PcapngWriter(path) as writer:
        cni0 = writer.add_interface("n1/cni0", "node n1, bridge cni0", LINKTYPE_ETHERNET)
        writer.write(cni0, T1, PING)
        tun = writer.add_interface("n1/flannel0", "node n1, TUN flannel0", LINKTYPE_RAW, nanosecond=False)
        writer.write(tun, T2, TUN_PING)
        writer.write(cni0, T3, ARP_REQUEST)


def test_pcapng_read_back_by_scapy_with_names_and_times(tmp_path: Path) -> None:
    path = tmp_path / "all.pcapng"
    write_two_interface_pcapng(path)
    assert read_scapy(path, PcapNgReader) == [
        (Decimal("1.000000999"), PING, len(PING), "n1/cni0"),
        (Decimal("2.500123"), TUN_PING, len(TUN_PING), "n1/flannel0"),
        (Decimal("3.000000001"), ARP_REQUEST, len(ARP_REQUEST), "n1/cni0"),
    ]


def test_pcapng_interface_blocks(tmp_path: Path) -> None:
    path = tmp_path / "all.pcapng"
    write_two_interface_pcapng(path)
    assert idb_options(path) == [
        {"linktype": 1, "name": b"n1/cni0", "description": b"node n1, bridge cni0", "tsresol": b"\x09"},
        {"linktype": 101, "name": b"n1/flannel0", "description": b"node n1, TUN flannel0", "tsresol": b"\x06"},
    ]


def test_pcapng_read_back_by_dpkt(tmp_path: Path) -> None:
    path = tmp_path / "one.pcapng"
    with PcapngWriter(path) as writer:
        eth0 = writer.add_interface("p1a/eth0", "pod p1a", LINKTYPE_ETHERNET)
        writer.write(eth0, T1, PING)
        writer.write(eth0, T2, ARP_REQUEST[:41])  # odd length: padded to 32 bits on disk
    with open(path, "rb") as handle:
        reader = dpkt.pcapng.Reader(handle)
        assert reader.datalink() == 1
        records = list(reader)
    assert [frame for _, frame in records] == [PING, ARP_REQUEST[:41]]
    assert [ts for ts, _ in records] == pytest.approx([1.000000999, 2.500123456], abs=1e-10)


def test_pcapng_is_complete_before_close(tmp_path: Path) -> None:
    path = tmp_path / "open.pcapng"
    writer = PcapngWriter(path)
    eth0 = writer.add_interface("p1a/eth0", "pod p1a", LINKTYPE_ETHERNET)
    writer.write(eth0, T1, PING)
    assert [frame for _, frame, _, _ in read_scapy(path, PcapNgReader)] == [PING]
    writer.close()


def test_pcapng_refuses_unknown_interface(tmp_path: Path) -> None:
    with PcapngWriter(tmp_path / "x.pcapng") as writer:
        with pytest.raises(ValueError, match="interface_id: 0 is not a declared interface"):
            writer.write(0, T1, PING)
        writer.add_interface("a/b", "", LINKTYPE_ETHERNET)
        with pytest.raises(ValueError, match="interface_id"):
            writer.write(1, T1, PING)
        with pytest.raises(ValueError, match="name"):
            writer.add_interface("", "", LINKTYPE_ETHERNET)


def test_pcapng_is_byte_identical_between_runs(tmp_path: Path) -> None:
    write_two_interface_pcapng(tmp_path / "a.pcapng")
    write_two_interface_pcapng(tmp_path / "b.pcapng")
    assert (tmp_path / "a.pcapng").read_bytes() == (tmp_path / "b.pcapng").read_bytes()


# --- the capture set ------------------------------------------------------


def run_capture_set(out_dir: Path, **options) -> CaptureSet:
    """A small run: three points, one of them silent."""
    with CaptureSet(out_dir, **options) as captures:
        pod = captures.point("p1a", "eth0", LINKTYPE_ETHERNET, "pod p1a eth0")
        captures.point("n1", "veth1a", LINKTYPE_ETHERNET, "node n1 veth1a (silent)")
        tun = captures.point("n1", "flannel0", LINKTYPE_RAW, "node n1 flannel0 TUN")
        tun.record(T1, TUN_PING)
        pod.record(T2, ARP_REQUEST)
        pod.record(T3, PING)
    return captures


def test_capture_set_writes_lazily_named_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "pcaps" / "demo"
    captures = run_capture_set(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["all.pcapng", "n1_flannel0.pcap", "p1a_eth0.pcap"]
    assert captures.counts() == {"p1a_eth0": 2, "n1_veth1a": 0, "n1_flannel0": 1}
    assert list(captures.counts()) == ["p1a_eth0", "n1_veth1a", "n1_flannel0"]

    assert read_dpkt_pcap(out_dir / "p1a_eth0.pcap") == (1, [(pytest.approx(2.500123), ARP_REQUEST), (3.0, PING)])
    assert read_dpkt_pcap(out_dir / "n1_flannel0.pcap") == (101, [(pytest.approx(1.000000), TUN_PING)])

    merged = out_dir / "all.pcapng"
    assert [(name, frame) for _, frame, _, name in read_scapy(merged, PcapNgReader)] == [
        ("n1/flannel0", TUN_PING),
        ("p1a/eth0", ARP_REQUEST),
        ("p1a/eth0", PING),
    ]
    assert [(i["name"], i["description"], i["linktype"]) for i in idb_options(merged)] == [
        (b"n1/flannel0", b"node n1 flannel0 TUN", 101),
        (b"p1a/eth0", b"pod p1a eth0", 1),
    ]


def test_capture_set_without_traffic_writes_nothing(tmp_path: Path) -> None:
    with CaptureSet(tmp_path / "quiet") as captures:
        captures.point("n1", "cni0", LINKTYPE_ETHERNET, "bridge")
    assert list((tmp_path / "quiet").iterdir()) == []
    assert captures.counts() == {"n1_cni0": 0}


def test_capture_set_resolution_and_optional_pcapng(tmp_path: Path) -> None:
    run_capture_set(tmp_path / "ns", pcapng_name=None, nanosecond=True)
    assert sorted(p.name for p in (tmp_path / "ns").iterdir()) == ["n1_flannel0.pcap", "p1a_eth0.pcap"]
    times = [record[0] for record in read_scapy(tmp_path / "ns" / "p1a_eth0.pcap", PcapReader)]
    assert times == [Decimal("2.500123456"), Decimal("3.000000001")]


def test_capture_set_is_byte_identical_between_runs(tmp_path: Path) -> None:
    run_capture_set(tmp_path / "a")
    run_capture_set(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_capture_set_points_are_idempotent_and_checked(tmp_path: Path) -> None:
    with CaptureSet(tmp_path) as captures:
        first = captures.point("n1", "cni0", LINKTYPE_ETHERNET, "bridge")
        assert captures.point("n1", "cni0", LINKTYPE_ETHERNET, "bridge") is first
        with pytest.raises(ValueError, match="n1/cni0"):
            captures.point("n1", "cni0", LINKTYPE_RAW, "bridge")
        with pytest.raises(ValueError, match="ifname"):
            captures.point("n1", "../etc", LINKTYPE_ETHERNET, "x")
        with pytest.raises(ValueError, match="namespace"):
            captures.point("", "eth0", LINKTYPE_ETHERNET, "x")
        captures.point("a_b", "c", LINKTYPE_ETHERNET, "x")
        with pytest.raises(ValueError, match="a_b_c.pcap"):
            captures.point("a", "b_c", LINKTYPE_ETHERNET, "x")
        with pytest.raises(ValueError, match="ts_ns"):
            first.record(-5, PING)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        first.record(T1, PING)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="out_dir"):
        CaptureSet(tmp_path / "file")


# --- tshark ---------------------------------------------------------------


def test_tshark_available_follows_path() -> None:
    assert tshark_available() == (shutil.which("tshark") is not None)


@needs_tshark
def test_tshark_reads_every_written_file_cleanly(tmp_path: Path) -> None:
    with PcapWriter(tmp_path / "us.pcap") as writer:
        for ts_ns, frame in [(T1, PING), (T2, ARP_REQUEST), (T3, UDP_DATAGRAM)]:
            writer.write(ts_ns, frame)
    with PcapWriter(tmp_path / "ns.pcap", LINKTYPE_RAW, nanosecond=True) as writer:
        writer.write(T1, TUN_PING)
    write_two_interface_pcapng(tmp_path / "two.pcapng")
    run_capture_set(tmp_path / "set")
    files = [tmp_path / "us.pcap", tmp_path / "ns.pcap", tmp_path / "two.pcapng", *sorted((tmp_path / "set").iterdir())]
    assert len(files) == 6
    for path in files:
        assert tshark_findings(path, ["udp.port==8472,vxlan"]) == [], path

    rows = tshark_fields(
        tmp_path / "two.pcapng", "frame.interface_name", "frame.interface_description", "frame.time_epoch"
    )
    assert rows == [
        ["n1/cni0", "node n1, bridge cni0", "1.000000999"],
        ["n1/flannel0", "node n1, TUN flannel0", "2.500123000"],
        ["n1/cni0", "node n1, bridge cni0", "3.000000001"],
    ]


@needs_tshark
def test_tshark_findings_report_bad_checksums_and_malformed_frames(tmp_path: Path) -> None:
    bad_ip = bytearray(PING)
    bad_ip[14 + 10] ^= 0xFF  # IPv4 header checksum
    bad_udp = bytearray(UDP_DATAGRAM)
    bad_udp[14 + 20 + 6] ^= 0xFF  # UDP checksum
    bad_icmp = bytearray(PING)
    bad_icmp[14 + 20 + 2] ^= 0xFF  # ICMP checksum
    path = tmp_path / "broken.pcap"
    with PcapWriter(path) as writer:
        for index, frame in enumerate([PING, bad_ip, PING[:30], bad_udp, bad_icmp]):
            writer.write(index * 1000, frame)
    findings = tshark_findings(path)
    assert [finding.split(":")[0] for finding in findings if "checksum" in finding.lower()] == [
        "frame 2",
        "frame 4",
        "frame 5",
    ]
    assert [finding.split(":")[1].strip() for finding in findings if "checksum" in finding.lower()] == [
        "ip",
        "udp",
        "icmp",
    ]
    assert [finding for finding in findings if "malformed" in finding.lower()] == [
        "frame 3: malformed packet: [Malformed Packet: IPv4]"
    ]
    assert not any(finding.startswith("frame 1:") for finding in findings)


@needs_tshark
def test_tshark_findings_report_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    with PcapWriter(path) as writer:
        writer.write(T1, PING)
    path.write_bytes(path.read_bytes()[:-10])
    (finding,) = tshark_findings(path)
    assert "cut short" in finding and str(path) in finding
    (finding,) = tshark_findings(tmp_path / "missing.pcap")
    assert "exit" in finding
    with pytest.raises(ValueError, match="decode_as"):
        tshark_findings(path, "udp.port==8472,vxlan")  # type: ignore[arg-type]


# --- buffered capture sets (what `emu run` uses) ----------------------------------


def _pcap_frames(path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        return [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]


def test_buffered_set_writes_whole_records_at_flush(tmp_path):
    frame = raw(Ether() / IP(dst="10.0.0.1") / ICMP())
    captures = CaptureSet(tmp_path, buffered=True)
    point = captures.point("n1", "eth0", LINKTYPE_ETHERNET, "node n1, veth eth0")
    point.record(1_000, frame)
    point.record(2_000, frame)
    assert _pcap_frames(tmp_path / "n1_eth0.pcap") == []  # header only, still valid
    captures.flush()
    assert _pcap_frames(tmp_path / "n1_eth0.pcap") == [frame, frame]
    point.record(3_000, frame)
    captures.close()
    assert _pcap_frames(tmp_path / "n1_eth0.pcap") == [frame] * 3
    with open(tmp_path / "all.pcapng", "rb") as f:
        assert len(list(dpkt.pcapng.Reader(f))) == 3


def test_scheduler_flushes_at_the_end_of_every_instant(tmp_path):
    from emu.sim import Scheduler

    frame = raw(Ether() / IP(dst="10.0.0.1") / ICMP())
    sim = Scheduler()
    captures = CaptureSet(tmp_path, buffered=True)
    sim.on_advance.append(captures.flush)
    point = captures.point("n1", "eth0", LINKTYPE_ETHERNET, "node n1, veth eth0")
    seen_on_disk = []
    sim.call_at(10, point.record, 10, frame)
    sim.call_at(10, point.record, 10, frame)
    sim.call_at(20, lambda: seen_on_disk.append(len(_pcap_frames(tmp_path / "n1_eth0.pcap"))))
    sim.call_at(20, point.record, 20, frame)
    sim.run()
    assert seen_on_disk == [2]  # the instant t=10 was complete on disk before t=20 began
    assert len(_pcap_frames(tmp_path / "n1_eth0.pcap")) == 3  # run() flushes when it returns
    captures.close()


def test_a_buffered_file_flushes_itself_past_its_memory_bound(tmp_path, monkeypatch):
    """A huge burst in one instant: whole records reach the disk once
    MAX_PENDING bytes wait, without waiting for the end of the instant."""
    from emu.capture.pcap import RecordFile

    frame = raw(Ether() / IP(dst="10.0.0.1") / ICMP())  # 42 bytes: 58 per pcap record
    monkeypatch.setattr(RecordFile, "MAX_PENDING", 200)
    captures = CaptureSet(tmp_path, pcapng_name=None, buffered=True)
    point = captures.point("n1", "eth0", LINKTYPE_ETHERNET, "node n1, veth eth0")
    for ts in range(3):
        point.record(ts, frame)
    assert _pcap_frames(tmp_path / "n1_eth0.pcap") == []  # 174 bytes wait
    point.record(3, frame)  # 232 >= 200: all four go out, whole
    assert _pcap_frames(tmp_path / "n1_eth0.pcap") == [frame] * 4
    point.record(4, frame)
    assert _pcap_frames(tmp_path / "n1_eth0.pcap") == [frame] * 4
    captures.close()
    assert _pcap_frames(tmp_path / "n1_eth0.pcap") == [frame] * 5
