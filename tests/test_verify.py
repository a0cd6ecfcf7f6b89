"""Tests for emu.verify: the kernel's captures must match themselves, and every
kind of emulator mistake must be caught, with a message naming field and frame.

The "emulator" side is always a copy of a kernel folder written with dpkt,
so the expected values below are facts of the kernel captures (see
tests/kernel-captures/README.md and tcpdump -v), not outputs of emu.verify.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.verify import Report, checksum_problems, compare_dirs, compare_frames, frame_fields

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

KERNEL = Path(__file__).parent / "kernel-captures"
FOLDERS = sorted(path.name for path in KERNEL.iterdir() if path.is_dir())
ENCAPSULATING = {"vxlan-cross-node", "vxlan-node-to-pod", "udp-cross-node", "udp-node-to-pod"}
VXLAN_PORT = 8472
FLANNEL_UDP_PORT = 8285

Record = tuple[float, bytes]


# ---- pcap plumbing with dpkt ------------------------------------------------


def read_pcap(path: Path) -> tuple[int, list[Record]]:
    with path.open("rb") as file:
        reader = dpkt.pcap.Reader(file)
        return reader.datalink(), [(float(ts), bytes(buf)) for ts, buf in reader]


def write_pcap(path: Path, linktype: int, records: list[Record]) -> None:
    with path.open("wb") as file:
        writer = dpkt.pcap.Writer(file, linktype=linktype, nano=True)
        for ts, buf in records:
            writer.writepkt(buf, ts=ts)


def decode(frame: bytes, linktype: int) -> dpkt.Packet:
    return dpkt.ethernet.Ethernet(frame) if linktype == 1 else dpkt.ip.IP(frame)


def ip_layer(packet: dpkt.Packet) -> dpkt.ip.IP | None:
    found = packet.data if isinstance(packet, dpkt.ethernet.Ethernet) else packet
    return found if isinstance(found, dpkt.ip.IP) else None


def inner_packet(ip: dpkt.ip.IP) -> dpkt.Packet | None:
    """The Ethernet frame in a VXLAN datagram or the IPv4 packet in a flannel-udp one."""
    udp = ip.data
    if not isinstance(udp, dpkt.udp.UDP):
        return None
    if udp.dport == VXLAN_PORT:
        return dpkt.ethernet.Ethernet(udp.data[8:])
    if udp.dport == FLANNEL_UDP_PORT:
        return dpkt.ip.IP(udp.data)
    return None


def put_inner(ip: dpkt.ip.IP, inner: dpkt.Packet) -> None:
    udp = ip.data
    udp.data = (udp.data[:8] if udp.dport == VXLAN_PORT else b"") + bytes(inner)


def seal_outer(ip: dpkt.ip.IP) -> None:
    """Let dpkt recompute this packet's IP, UDP and ICMP checksums (it does so for zeroed ones)."""
    ip.sum = 0
    if isinstance(ip.data, (dpkt.udp.UDP, dpkt.icmp.ICMP)):
        ip.data.sum = 0


def seal(ip: dpkt.ip.IP) -> None:
    """Recompute every checksum, inner packets first: what a correct emulator writes."""
    inner = inner_packet(ip)
    if inner is not None and ip_layer(inner) is not None:
        seal(ip_layer(inner))
        put_inner(ip, inner)
    seal_outer(ip)


def sealed_copy(folder: str, dest: Path) -> Path:
    """The kernel folder with valid checksums everywhere, in nanosecond pcaps."""
    dest.mkdir()
    for path in (KERNEL / folder).glob("*.pcap"):
        linktype, records = read_pcap(path)
        sealed = []
        for ts, frame in records:
            packet = decode(frame, linktype)
            if ip_layer(packet) is not None:
                seal(ip_layer(packet))
            sealed.append((ts, bytes(packet)))
        write_pcap(dest / path.name, linktype, sealed)
    return dest


def edit_point(directory: Path, point: str, edit: Callable[[list[Record]], list[Record]]) -> None:
    path = directory / f"{point}.pcap"
    linktype, records = read_pcap(path)
    write_pcap(path, linktype, edit(records))


def edit_frames(
    directory: Path,
    point: str,
    mutate: Callable[[dpkt.Packet], None],
    frames: list[int] | None = None,
) -> None:
    """Apply ``mutate`` to the decoded frames numbered ``frames`` (1-based; default all)."""
    linktype, _ = read_pcap(directory / f"{point}.pcap")

    def edit(records: list[Record]) -> list[Record]:
        edited = []
        for number, (ts, frame) in enumerate(records, start=1):
            if frames is None or number in frames:
                packet = decode(frame, linktype)
                mutate(packet)
                frame = bytes(packet)
            edited.append((ts, frame))
        return edited

    edit_point(directory, point, edit)


def frames_of(directory: Path, point: str) -> list[bytes]:
    return [frame for _, frame in read_pcap(directory / f"{point}.pcap")[1]]


def only_failure(report: Report) -> tuple[str, list[str]]:
    failing = [point for point in report.points if not point.ok]
    assert len(failing) == 1, report.lines()
    return failing[0].name, failing[0].problems


@pytest.fixture
def emu_copy(tmp_path: Path) -> Callable[[str], Path]:
    return lambda folder: sealed_copy(folder, tmp_path / f"emu-{folder}")


# ---- the kernel against itself ----------------------------------------------


@pytest.mark.parametrize("folder", FOLDERS)
def test_kernel_folder_matches_its_checksum_sealed_copy(folder, emu_copy):
    report = compare_dirs(KERNEL / folder, emu_copy(folder))
    assert report.ok, report.lines()
    assert report.total == len(list((KERNEL / folder).glob("*.pcap")))
    assert report.lines()[-1] == f"fidelity: {report.total}/{report.total} points match"


@pytest.mark.parametrize("folder", FOLDERS)
def test_raw_kernel_folder_fails_only_on_its_offloaded_outer_udp_checksums(folder):
    """The kernel leaves a partial UDP checksum for the NIC: an emulator must not copy that."""
    report = compare_dirs(KERNEL / folder, KERNEL / folder)
    failing = {point.name: point for point in report.points if not point.ok}
    assert set(failing) == ({"n1_eth0", "n2_eth0"} if folder in ENCAPSULATING else set())
    for point in failing.values():
        _, records = read_pcap(KERNEL / folder / f"{point.name}.pcap")
        ip_frames = [n for n, (_, frame) in enumerate(records, 1) if frame[12:14] == b"\x08\x00"]
        frame_numbers = [problem.split(":")[0] for problem in point.problems]
        assert frame_numbers == [f"frame {n}" for n in ip_frames]
        assert all(": udp.checksum bad (0x" in problem for problem in point.problems)


def test_report_lines_show_each_point_and_the_score(emu_copy):
    emu = emu_copy("host-gw-same-node")

    def spoof_sender(eth):
        eth.src = eth.data.sha = b"\x02" * 6

    edit_frames(emu, "p1b_eth0", spoof_sender, frames=[1])
    assert compare_dirs(KERNEL / "host-gw-same-node", emu).lines() == [
        "ok   n1_cni0    6/6 frames",
        "ok   n1_veth1a  7/7 frames",
        "ok   n1_veth1b  6/6 frames",
        "ok   p1a_eth0   7/7 frames",
        "FAIL p1b_eth0   frame 1: eth.src kernel=0a:58:0a:f4:01:02 emu=02:02:02:02:02:02 (+1 more)",
        "fidelity: 4/5 points match",
    ]


# ---- mutations that must be caught -------------------------------------------


def test_changed_ttl_is_reported_with_field_and_frame(emu_copy):
    emu = emu_copy("host-gw-cross-node")

    def lower_ttl(eth):
        eth.data.ttl -= 1
        seal(eth.data)

    edit_frames(emu, "n1_eth0", lower_ttl, frames=[3])
    report = compare_dirs(KERNEL / "host-gw-cross-node", emu)
    assert only_failure(report) == ("n1_eth0", ["frame 3: ip.ttl kernel=63 emu=62"])
    assert "FAIL n1_eth0    frame 3: ip.ttl kernel=63 emu=62" in report.lines()
    assert report.lines()[-1] == "fidelity: 9/10 points match"
    assert not report.ok


def test_removed_frame_is_caught(emu_copy):
    emu = emu_copy("host-gw-cross-node")
    edit_point(emu, "p1a_eth0", lambda records: records[:3] + records[4:])
    name, problems = only_failure(compare_dirs(KERNEL / "host-gw-cross-node", emu))
    assert name == "p1a_eth0"
    assert problems[0] == "emulator has 6 frames, kernel 7"
    assert problems[1].startswith("frame 4: ")


def test_only_the_first_differences_are_listed(emu_copy):
    emu = emu_copy("host-gw-cross-node")
    edit_point(emu, "p1a_eth0", lambda records: records[1:])
    _, problems = only_failure(compare_dirs(KERNEL / "host-gw-cross-node", emu))
    assert len(problems) == 11
    assert problems[0] == "emulator has 6 frames, kernel 7"
    assert problems[-1] == "... further differences not listed"


def test_added_frame_is_caught(emu_copy):
    emu = emu_copy("host-gw-cross-node")
    edit_point(emu, "p1a_eth0", lambda records: records + records[-1:])
    report = compare_dirs(KERNEL / "host-gw-cross-node", emu)
    assert only_failure(report) == ("p1a_eth0", ["emulator has 8 frames, kernel 7"])
    point = next(point for point in report.points if point.name == "p1a_eth0")
    assert (point.kernel_frames, point.emu_frames) == (7, 8)


def test_changed_arp_target_is_caught(emu_copy):
    emu = emu_copy("host-gw-cross-node")
    new_target = bytes([10, 244, 1, 9])
    edit_frames(emu, "p1a_eth0", lambda eth: setattr(eth.data, "tpa", new_target), frames=[2])
    assert only_failure(compare_dirs(KERNEL / "host-gw-cross-node", emu)) == (
        "p1a_eth0",
        ["frame 2: arp.tpa kernel=10.244.1.1 emu=10.244.1.9"],
    )


def test_flipped_df_is_caught(emu_copy):
    emu = emu_copy("host-gw-cross-node")

    def clear_df(eth):
        eth.data.df = 0
        seal(eth.data)

    edit_frames(emu, "n2_cni0", clear_df, frames=[5])
    assert only_failure(compare_dirs(KERNEL / "host-gw-cross-node", emu)) == (
        "n2_cni0",
        ["frame 5: ip.df kernel=1 emu=0"],
    )


def test_changed_vni_is_caught(emu_copy):
    emu = emu_copy("vxlan-cross-node")

    def change_vni(eth):
        udp = eth.data.data
        udp.data = udp.data[:4] + (2 << 8).to_bytes(4, "big") + udp.data[8:]
        seal(eth.data)

    edit_frames(emu, "n2_eth0", change_vni, frames=[4])
    assert only_failure(compare_dirs(KERNEL / "vxlan-cross-node", emu)) == (
        "n2_eth0",
        ["frame 4: vxlan.vni kernel=1 emu=2"],
    )


def test_changed_inner_ttl_inside_vxlan_is_caught(emu_copy):
    emu = emu_copy("vxlan-cross-node")

    def lower_inner_ttl(eth):
        inner = inner_packet(eth.data)
        inner.data.ttl -= 1
        put_inner(eth.data, inner)
        seal(eth.data)

    edit_frames(emu, "n1_eth0", lower_inner_ttl, frames=[3])
    assert only_failure(compare_dirs(KERNEL / "vxlan-cross-node", emu)) == (
        "n1_eth0",
        ["frame 3: inner.ip.ttl kernel=63 emu=62"],
    )


def test_changed_inner_ttl_inside_flannel_udp_is_caught(emu_copy):
    emu = emu_copy("udp-cross-node")

    def raise_inner_ttl(eth):
        inner = inner_packet(eth.data)
        inner.ttl += 1
        put_inner(eth.data, inner)
        seal(eth.data)

    edit_frames(emu, "n1_eth0", raise_inner_ttl, frames=[3])
    assert only_failure(compare_dirs(KERNEL / "udp-cross-node", emu)) == (
        "n1_eth0",
        ["frame 3: inner.ip.ttl kernel=62 emu=63"],
    )


def test_changed_icmp_seq_is_caught(emu_copy):
    emu = emu_copy("udp-cross-node")

    def change_seq(ip):
        ip.data.data.seq = 7
        seal(ip)

    edit_frames(emu, "n2_flannel0", change_seq, frames=[2])
    assert only_failure(compare_dirs(KERNEL / "udp-cross-node", emu)) == (
        "n2_flannel0",
        ["frame 2: icmp.echo.seq kernel=1 emu=7"],
    )


def test_missing_file_is_caught(emu_copy):
    emu = emu_copy("host-gw-cross-node")
    (emu / "n2_cni0.pcap").unlink()
    report = compare_dirs(KERNEL / "host-gw-cross-node", emu)
    assert only_failure(report) == ("n2_cni0", ["missing in emulator output (kernel has 6 frames)"])
    assert report.total == 10


def test_extra_file_is_caught(emu_copy):
    emu = emu_copy("host-gw-same-node")
    shutil.copy(emu / "n1_cni0.pcap", emu / "n2_cni0.pcap")
    report = compare_dirs(KERNEL / "host-gw-same-node", emu)
    assert only_failure(report) == (
        "n2_cni0",
        ["not in kernel captures (the kernel saw no traffic here), emulator has 6 frames"],
    )
    assert report.lines()[-1] == "fidelity: 5/6 points match"


def test_bad_ip_checksum_is_caught(emu_copy):
    emu = emu_copy("host-gw-cross-node")
    edit_frames(emu, "n1_eth0", lambda eth: setattr(eth.data, "sum", 0x1234), frames=[4])
    _, records = read_pcap(KERNEL / "host-gw-cross-node" / "n1_eth0.pcap")
    valid = int.from_bytes(records[3][1][24:26], "big")  # kernel IP header checksums are complete
    assert only_failure(compare_dirs(KERNEL / "host-gw-cross-node", emu)) == (
        "n1_eth0",
        [f"frame 4: ip.checksum bad (0x1234, expected 0x{valid:04x})"],
    )


def test_bad_inner_icmp_checksum_inside_vxlan_is_caught(emu_copy):
    emu = emu_copy("vxlan-cross-node")

    def spoil_inner_icmp_checksum(eth):
        inner = inner_packet(eth.data)
        inner.data.data.sum = 0x1234
        put_inner(eth.data, inner)
        seal_outer(eth.data)

    edit_frames(emu, "n2_eth0", spoil_inner_icmp_checksum, frames=[3])
    _, records = read_pcap(KERNEL / "vxlan-cross-node" / "n2_eth0.pcap")
    inner_icmp_at = 14 + 20 + 8 + 8 + 14 + 20
    valid = int.from_bytes(records[2][1][inner_icmp_at + 2 : inner_icmp_at + 4], "big")
    assert only_failure(compare_dirs(KERNEL / "vxlan-cross-node", emu)) == (
        "n2_eth0",
        [f"frame 3: inner.icmp.checksum bad (0x1234, expected 0x{valid:04x})"],
    )


def test_broken_pcap_is_a_problem_not_an_exception(emu_copy):
    emu = emu_copy("host-gw-same-node")
    (emu / "p1a_eth0.pcap").write_bytes(b"not a pcap at all")
    name, problems = only_failure(compare_dirs(KERNEL / "host-gw-same-node", emu))
    assert name == "p1a_eth0"
    assert problems[0].startswith("emulator pcap unreadable (")


def test_linktype_mismatch_is_caught(emu_copy):
    emu = emu_copy("host-gw-same-node")
    _, records = read_pcap(emu / "p1b_eth0.pcap")
    write_pcap(emu / "p1b_eth0.pcap", 101, records)
    assert only_failure(compare_dirs(KERNEL / "host-gw-same-node", emu)) == (
        "p1b_eth0",
        ["linktype kernel=1 emu=101"],
    )


def test_a_directory_argument_that_is_not_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="emu_dir"):
        compare_dirs(KERNEL / "host-gw-same-node", tmp_path / "nowhere")


# ---- differences the kernel is free to make -----------------------------------


def test_ip_ids_may_differ(emu_copy):
    emu = emu_copy("vxlan-cross-node")

    def renumber(eth):
        ip = ip_layer(eth)
        if ip is None:
            return
        inner = inner_packet(ip)
        if inner is not None:
            ip_layer(inner).id ^= 0x5A5A
            put_inner(ip, inner)
        ip.id ^= 0xA5A5
        seal(ip)

    for point in ("n1_eth0", "n2_eth0", "p1a_eth0", "n2_flannel.1"):
        edit_frames(emu, point, renumber)
    ip_id = slice(18, 20)
    kernel_frame_3 = frames_of(KERNEL / "vxlan-cross-node", "n1_eth0")[2]
    assert frames_of(emu, "n1_eth0")[2][ip_id] != kernel_frame_3[ip_id]
    assert compare_dirs(KERNEL / "vxlan-cross-node", emu).ok


def test_echo_id_and_payload_may_differ(emu_copy):
    emu = emu_copy("udp-cross-node")

    def new_echo(ip):
        echo = ip.data.data
        echo.id ^= 0xFFFF
        echo.data = bytes(len(echo.data))
        seal(ip)

    edit_frames(emu, "n1_flannel0", new_echo)
    echo_id_and_payload = slice(24, None)
    kernel_frame_1 = frames_of(KERNEL / "udp-cross-node", "n1_flannel0")[0]
    emu_frame_1 = frames_of(emu, "n1_flannel0")[0]
    assert emu_frame_1[echo_id_and_payload] != kernel_frame_1[echo_id_and_payload]
    assert compare_dirs(KERNEL / "udp-cross-node", emu).ok


def test_vxlan_source_port_may_differ(emu_copy):
    emu = emu_copy("vxlan-node-to-pod")

    def new_source_port(eth):
        if isinstance(eth.data, dpkt.ip.IP):
            eth.data.data.sport = 40000
            seal(eth.data)

    edit_frames(emu, "n1_eth0", new_source_port)
    assert frames_of(emu, "n1_eth0")[2][34:36] == (40000).to_bytes(2, "big")
    assert compare_dirs(KERNEL / "vxlan-node-to-pod", emu).ok


def test_flannel_udp_source_port_may_not_differ(emu_copy):
    emu = emu_copy("udp-node-to-pod")

    def new_source_port(eth):
        eth.data.data.sport = 8286
        seal(eth.data)

    edit_frames(emu, "n1_eth0", new_source_port, frames=[3])
    assert only_failure(compare_dirs(KERNEL / "udp-node-to-pod", emu)) == (
        "n1_eth0",
        ["frame 3: udp.sport kernel=8285 emu=8286"],
    )


def _udp_frame(sport: int, dport: int) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, ulen=14, data=b"hello\n")
    ip = dpkt.ip.IP(src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), p=17, ttl=64, data=udp)
    ip.len = 20 + len(bytes(udp))
    seal(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def _write(path, frames):
    with open(path, "wb") as file:
        writer = dpkt.pcap.Writer(file)
        for frame in frames:
            writer.writepkt(frame, 0)


@pytest.mark.parametrize("emu_ports, ok", [
    ((41000, 41000, 50000), True),   # another pick, the same roles: the kernel's ports are random
    ((41000, 42000, 50000), False),  # the emulator's flow changed port where the kernel's did not
    ((41000, 41000, 41000), False),  # two flows on one port where the kernel has two ports
])
def test_ephemeral_ports_compare_by_role(tmp_path, emu_ports, ok):
    kernel, emu = tmp_path / "kernel", tmp_path / "emu"
    kernel.mkdir(), emu.mkdir()
    _write(kernel / "p1_eth0.pcap", [_udp_frame(port, 5000) for port in (33000, 33000, 60000)])
    _write(emu / "p1_eth0.pcap", [_udp_frame(port, 5000) for port in emu_ports])
    assert compare_dirs(kernel, emu).ok == ok


def test_timestamps_may_differ(emu_copy):
    emu = emu_copy("vxlan-cross-node")

    def shifted(records):
        return [(1000.0 + number, frame) for number, (_, frame) in enumerate(records)]

    for path in emu.glob("*.pcap"):
        edit_point(emu, path.stem, shifted)
    assert read_pcap(emu / "n1_eth0.pcap")[1][0][0] == 1000.0
    assert compare_dirs(KERNEL / "vxlan-cross-node", emu).ok


def test_custom_ports_are_decoded(tmp_path):
    """A scenario on VXLAN port 4789 is verified only when told that port."""
    _, records = read_pcap(KERNEL / "vxlan-cross-node" / "n1_eth0.pcap")
    eth = dpkt.ethernet.Ethernet(records[2][1])
    eth.data.data.dport = 4789
    seal(eth.data)
    frame = bytes(eth)
    default_names = [name for name, _ in frame_fields(frame, 1)]
    custom = dict(frame_fields(frame, 1, vxlan_ports=(4789,)))
    assert "udp.payload" in default_names and "inner.ip.ttl" not in default_names
    assert custom["inner.ip.ttl"] == 63 and custom["vxlan.vni"] == 1 and "udp.sport" not in custom


# ---- frame_fields and checksum_problems on their own ---------------------------


def kernel_frame(folder: str, point: str, number: int) -> tuple[int, bytes]:
    linktype, records = read_pcap(KERNEL / folder / f"{point}.pcap")
    return linktype, records[number - 1][1]


def test_fields_of_a_vxlan_frame_leave_out_what_the_kernel_randomises():
    linktype, frame = kernel_frame("vxlan-cross-node", "n1_eth0", 3)
    fields = dict(frame_fields(frame, linktype))
    assert fields["frame.len"] == 148
    assert fields["eth.src"] == "02:42:ac:12:00:0b" and fields["eth.type"] == "0x0800"
    assert (fields["ip.src"], fields["ip.dst"]) == ("172.18.0.11", "172.18.0.12")
    assert (fields["ip.ttl"], fields["ip.df"]) == (64, 0)
    assert (fields["udp.dport"], fields["vxlan.flags"], fields["vxlan.vni"]) == (8472, "0x08", 1)
    assert fields["inner.eth.dst"] == "6e:2d:54:00:02:02"
    assert (fields["inner.ip.ttl"], fields["inner.icmp.echo.seq"]) == (63, 1)
    assert fields["inner.icmp.echo.data_len"] == 56
    assert fields["eth.padding"] == 0
    forbidden = ("ip.id", "checksum", "udp.sport", "icmp.echo.id", "icmp.echo.data")
    assert not [name for name in fields if name.endswith(forbidden)]


def test_fields_of_a_tun_frame_start_at_ip():
    linktype, frame = kernel_frame("udp-cross-node", "n1_flannel0", 2)
    assert linktype == 101
    fields = frame_fields(frame, linktype)
    assert fields[:3] == [("frame.len", 84), ("ip.version", 4), ("ip.ihl", 5)]
    assert ("ip.ttl", 61) in fields and ("icmp.type", 0) in fields


def test_arp_fields():
    linktype, frame = kernel_frame("host-gw-cross-node", "n1_eth0", 2)
    assert frame_fields(frame, linktype)[4:13] == [
        ("arp.htype", 1),
        ("arp.ptype", "0x0800"),
        ("arp.hlen", 6),
        ("arp.plen", 4),
        ("arp.op", 2),
        ("arp.sha", "02:42:ac:12:00:0c"),
        ("arp.spa", "172.18.0.12"),
        ("arp.tha", "02:42:ac:12:00:0b"),
        ("arp.tpa", "172.18.0.11"),
    ]


def frag_needed(quoted: bytes) -> bytes:
    """n1 tells p1a that 10.244.2.2 needs an MTU of 1450, quoting ``quoted``."""
    icmp = dpkt.icmp.ICMP(type=3, code=4, data=dpkt.icmp.ICMP.Unreach(mtu=1450, data=quoted))
    ip = dpkt.ip.IP(src=bytes([10, 244, 1, 1]), dst=bytes([10, 244, 1, 2]), ttl=64, p=1, data=icmp)
    ip.len = 20 + len(bytes(icmp))
    eth = dpkt.ethernet.Ethernet(
        dst=bytes.fromhex("0a580af40102"), src=bytes.fromhex("0a580af40101"), type=0x0800, data=ip
    )
    return bytes(eth)


def test_icmp_error_fields_recurse_into_a_truncated_quote_whose_checksum_is_not_checked():
    _, request = kernel_frame("host-gw-cross-node", "p1a_eth0", 4)
    quoted = bytearray(request[14:14 + 40])  # IP header + 20 bytes of the echo request
    quoted[10:12] = b"\xde\xad"  # Linux quotes what it received, checksum and all
    frame = frag_needed(bytes(quoted))
    fields = dict(frame_fields(frame, 1))
    assert (fields["icmp.type"], fields["icmp.code"]) == (3, 4)
    assert (fields["icmp.mtu"], fields["icmp.unused"]) == (1450, 0)
    assert fields["icmp.quote.len"] == 40
    assert (fields["icmp.quote.ip.len"], fields["icmp.quote.ip.ttl"]) == (84, 64)
    assert fields["icmp.quote.ip.src"] == "10.244.1.2"
    assert (fields["icmp.quote.icmp.echo.seq"], fields["icmp.quote.icmp.echo.data_len"]) == (1, 12)
    assert checksum_problems(frame, 1) == []


def test_icmp_errors_with_different_quotes_differ():
    _, request = kernel_frame("host-gw-cross-node", "p1a_eth0", 4)
    assert compare_frames(frag_needed(request[14:42]), frag_needed(request[14:48]), 1) == [
        "frame.len kernel=70 emu=76",
        "ip.len kernel=56 emu=62",
        "icmp.quote.len kernel=28 emu=34",
        "icmp.quote.icmp.echo.data_len kernel=0 emu=6",
    ]


def test_padding_is_a_field():
    linktype, frame = kernel_frame("host-gw-cross-node", "n1_eth0", 1)
    assert compare_frames(frame, frame + bytes(18), linktype) == [
        "frame.len kernel=42 emu=60",
        "eth.padding kernel=0 emu=18",
    ]


def test_vlan_tag_is_a_field():
    linktype, frame = kernel_frame("host-gw-cross-node", "n1_eth0", 1)
    tagged = frame[:12] + bytes.fromhex("8100" "2064" "0806") + frame[14:]
    fields = frame_fields(tagged, linktype)
    assert fields[3:8] == [
        ("eth.type", "0x8100"),
        ("eth.vlan.pcp", 1),
        ("eth.vlan.dei", 0),
        ("eth.vlan.id", 100),
        ("eth.vlan.type", "0x0806"),
    ]
    assert ("arp.op", 1) in fields


def test_structural_divergence_is_reported_once():
    linktype, arp = kernel_frame("host-gw-cross-node", "n1_eth0", 1)
    _, ping = kernel_frame("host-gw-cross-node", "n1_eth0", 3)
    differences = compare_frames(arp, ping, linktype)
    assert differences[-1] == "kernel has arp.htype=1 where emu has ip.version=4"
    assert "frame.len kernel=42 emu=98" in differences


def test_malformed_frames_become_fields():
    linktype, ping = kernel_frame("host-gw-cross-node", "n1_eth0", 3)
    short_header = ("ip.malformed", "truncated header (10 of 20 bytes)")
    short_datagram = ("ip.malformed", "truncated datagram (46 of 84 bytes)")
    short_frame = ("eth.malformed", "truncated header (9 of 14 bytes)")
    assert frame_fields(ping[:24], linktype)[-1] == short_header
    assert frame_fields(ping[:60], linktype)[-1] == short_datagram
    assert frame_fields(ping[:9], linktype) == [("frame.len", 9), short_frame]


def test_zero_udp_checksum_means_none():
    linktype, frame = kernel_frame("vxlan-cross-node", "n1_eth0", 3)
    no_checksum = frame[:40] + b"\x00\x00" + frame[42:]
    assert checksum_problems(no_checksum, linktype) == []
    # the kernel's partial (offload) checksum; tcpdump -vv names the same two values
    assert checksum_problems(frame, linktype) == ["udp.checksum bad (0x58bf, expected 0x28d6)"]


def test_unsupported_linktype_is_refused():
    with pytest.raises(ValueError, match="linktype 113"):
        frame_fields(b"", 113)


@given(frame=st.binary(max_size=200), linktype=st.sampled_from([1, 101]))
def test_any_bytes_give_fields_never_an_exception(frame, linktype):
    fields = frame_fields(frame, linktype)
    assert fields[0] == ("frame.len", len(frame))
    assert all(isinstance(name, str) and isinstance(value, (int, str)) for name, value in fields)
    checksum_problems(frame, linktype)


VXLAN_FRAME = kernel_frame("vxlan-cross-node", "n1_eth0", 3)[1]


@given(
    position=st.integers(0, len(VXLAN_FRAME) - 1),
    value=st.integers(0, 255),
    cut=st.integers(0, len(VXLAN_FRAME)),
)
def test_damaged_vxlan_frames_give_fields_never_an_exception(position, value, cut):
    damaged = bytearray(VXLAN_FRAME)
    damaged[position] = value
    damaged = bytes(damaged[:cut])
    assert frame_fields(damaged, 1)[0] == ("frame.len", cut)
    compare_frames(VXLAN_FRAME, damaged, 1)
