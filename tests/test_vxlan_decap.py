"""What n2's VXLAN receive path refuses, and how it counts each refusal.

Crafted outer frames (scapy, with the 8-byte VXLAN header written out by
hand: scapy's VXLAN layer sets GPE bits) are injected into n2's eth0 of a
built vxlan cluster. Linux (vxlan_rcv, udp_queue_rcv_one_skb, icmp_send)
drops: an unknown VNI, a clear I flag, reserved flag / VNI bits, a VXLAN
header or outer IP/UDP header cut short, a bad non-zero outer UDP checksum
(checked before the encap socket sees it; zero means "no checksum" and is
accepted), an inner frame from our own VTEP MAC (a loop), an inner frame to
another host's MAC (PACKET_OTHERHOST). A datagram to a port nobody listens
on gets ICMP port unreachable from n2, rate limited per destination: a
burst of 10 gets 6 answers (checked on a 6.18 kernel with two netns and a
python sender). Nothing raises.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from emu.scenario import load_scenario_text
from emu.scenario.build import EmulatedCluster, build_cluster
from emu.sim import NS_PER_SECOND

N1_MAC, N2_MAC = "02:42:ac:12:00:0b", "02:42:ac:12:00:0c"
N1_VTEP, N2_VTEP = "6e:2d:54:00:01:01", "6e:2d:54:00:02:02"
CLUSTER = f"""
name: decap
net-conf: {{Network: 10.244.0.0/16, Backend: {{Type: vxlan, VNI: 1, Port: 8472}}}}
nodes:
  - {{name: n1, ip: 172.18.0.11, mac: "{N1_MAC}", subnet: 10.244.1.0/24, vtep-mac: "{N1_VTEP}",
     pods: [{{name: p1, ip: 10.244.1.2}}]}}
  - {{name: n2, ip: 172.18.0.12, mac: "{N2_MAC}", subnet: 10.244.2.0/24, vtep-mac: "{N2_VTEP}",
     pods: [{{name: p2, ip: 10.244.2.2}}]}}
"""


def vxlan_header(vni: int, flags: int = 0x08, reserved1: bytes = b"\0\0\0", reserved2: int = 0) -> bytes:
    return bytes([flags]) + reserved1 + vni.to_bytes(3, "big") + bytes([reserved2])


def inner_frame(dst: str = N2_VTEP, src: str = N1_VTEP) -> bytes:
    """p1's echo request as n1's flannel.1 would put it on the wire."""
    return raw(Ether(dst=dst, src=src) / IP(src="10.244.1.2", dst="10.244.2.2", ttl=63)
               / ICMP(id=7, seq=1) / (b"x" * 56))


def outer_frame(payload: bytes, dport: int = 8472, chksum: int | None = None) -> bytes:
    udp = UDP(sport=40000, dport=dport) if chksum is None else UDP(sport=40000, dport=dport, chksum=chksum)
    return raw(Ether(dst=N2_MAC, src=N1_MAC) / IP(src="172.18.0.11", dst="172.18.0.12", flags=0)
               / udp / Raw(payload))


class Injection:
    """A fresh cluster; frames go into n2's eth0; sees what n2 sends and p2 gets."""

    def __init__(self) -> None:
        self.emulated: EmulatedCluster = build_cluster(load_scenario_text(CLUSTER))
        self.n2 = self.emulated.cluster.nodes["n2"].ns
        self.eth0 = self.n2.devices["eth0"]
        self.sent: list[Ether] = []
        self.to_p2: list[Ether] = []
        self.eth0.taps.append(self._on_eth0)
        p2_eth0 = self.emulated.cluster.pods["p2"].ns.devices["eth0"]
        p2_eth0.taps.append(lambda _t, f: self.to_p2.append(Ether(bytes(f))))

    def _on_eth0(self, _time_ns: int, frame: bytes) -> None:
        decoded = Ether(bytes(frame))
        if decoded.src == N2_MAC:  # what n2 sends, not what it receives
            self.sent.append(decoded)

    def inject(self, *frames: bytes) -> "Injection":
        for frame in frames:
            self.eth0.receive(frame)
        self.emulated.sim.run(until_ns=self.emulated.sim.now_ns + NS_PER_SECOND)
        return self

    def stack_drops(self) -> dict:
        return dict(self.n2.drops)

    def device_drops(self, name: str) -> dict:
        return dict(self.n2.devices[name].stats.drops)

    def echo_requests_at_p2(self) -> int:
        return sum(1 for f in self.to_p2 if ICMP in f and f[ICMP].type == 8)


def test_a_well_formed_frame_is_delivered_and_answered():
    lab = Injection().inject(outer_frame(vxlan_header(1) + inner_frame()))
    assert lab.echo_requests_at_p2() == 1
    replies = [f for f in lab.sent if UDP in f and f[UDP].dport == 8472]
    assert len(replies) == 1 and replies[0][IP].dst == "172.18.0.11"
    assert lab.stack_drops() == {}


def test_zero_outer_udp_checksum_means_none_and_is_accepted():
    lab = Injection().inject(outer_frame(vxlan_header(1) + inner_frame(), chksum=0))
    assert lab.echo_requests_at_p2() == 1


def assert_refused(lab: Injection, counted: dict, device: str | None = None) -> None:
    assert lab.echo_requests_at_p2() == 0
    assert (lab.device_drops(device) if device else lab.stack_drops()) == counted
    assert not any(ICMP in f for f in lab.sent), "a VXLAN refusal sends no ICMP"


def test_unknown_vni_is_dropped():
    assert_refused(Injection().inject(outer_frame(vxlan_header(42) + inner_frame())), {"VXLAN_VNI_NOT_FOUND": 1})


def test_clear_i_flag_is_dropped():
    lab = Injection().inject(outer_frame(vxlan_header(1, flags=0x00) + inner_frame()))
    assert_refused(lab, {"VXLAN_INVALID_HDR": 1})


def test_reserved_bits_are_dropped():
    lab = Injection().inject(
        outer_frame(vxlan_header(1, flags=0x88) + inner_frame()),
        outer_frame(vxlan_header(1, reserved1=b"\0\x01\0") + inner_frame()),
        outer_frame(vxlan_header(1, reserved2=0x01) + inner_frame()),
    )
    assert_refused(lab, {"VXLAN_INVALID_HDR": 3})


def test_bad_outer_udp_checksum_is_dropped_before_decap():
    frame = outer_frame(vxlan_header(1) + inner_frame())
    good = int.from_bytes(frame[40:42], "big")
    lab = Injection().inject(outer_frame(vxlan_header(1) + inner_frame(), chksum=good ^ 0x0101))
    assert_refused(lab, {"UDP_CSUM": 1})


def test_truncated_vxlan_header_is_dropped():
    assert_refused(Injection().inject(outer_frame(vxlan_header(1)[:5])), {"VXLAN_INVALID_HDR": 1})


def test_truncated_inner_frame_is_dropped():
    lab = Injection().inject(outer_frame(vxlan_header(1) + inner_frame()[:10]))
    assert_refused(lab, {"PKT_TOO_SMALL": 1}, device="flannel.1")


def test_truncated_outer_ip_and_udp_headers_are_dropped():
    whole = outer_frame(vxlan_header(1) + inner_frame())
    ip_cut = whole[:14 + 12]  # half an IP header
    udp_cut = bytearray(whole[:14 + 20 + 4])  # half a UDP header, IP total length saying so
    udp_cut[16:18] = (24).to_bytes(2, "big")
    udp_cut[24:26] = b"\0\0"
    udp_cut[24:26] = ip_header_checksum(bytes(udp_cut[14:34])).to_bytes(2, "big")
    lab = Injection().inject(ip_cut, bytes(udp_cut))
    assert lab.echo_requests_at_p2() == 0
    assert sum(lab.device_drops("eth0").values()) + sum(lab.stack_drops().values()) == 2
    assert "PKT_TOO_SMALL" in lab.device_drops("eth0")
    assert "PKT_TOO_SMALL" in lab.stack_drops(), lab.stack_drops()


def ip_header_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_inner_frame_to_another_mac_is_dropped_as_otherhost():
    lab = Injection().inject(outer_frame(vxlan_header(1) + inner_frame(dst="02:00:00:00:00:99")))
    assert_refused(lab, {"OTHERHOST": 1}, device="flannel.1")


def test_inner_frame_from_our_own_vtep_mac_is_a_loop_and_dropped():
    lab = Injection().inject(outer_frame(vxlan_header(1) + inner_frame(src=N2_VTEP)))
    assert_refused(lab, {"VXLAN_INVALID_SMAC": 1}, device="flannel.1")


def test_wrong_port_gets_rate_limited_port_unreachable():
    frame = outer_frame(vxlan_header(1) + inner_frame(), dport=4789)
    lab = Injection().inject(*[frame] * 10)
    assert lab.echo_requests_at_p2() == 0
    assert lab.stack_drops()["NO_SOCKET"] == 10
    errors = [f for f in lab.sent if ICMP in f]
    assert len(errors) == 6, "icmp_ratelimit 1 s with burst 6 per destination"
    for error in errors:
        assert (error[IP].src, error[IP].dst) == ("172.18.0.12", "172.18.0.11")
        assert (error[ICMP].type, error[ICMP].code) == (3, 3)
        assert error[IP].tos == 0xC0
        assert error[UDPerror].dport == 4789
    assert lab.stack_drops()["ICMP_RATELIMITED"] == 4


LAB = Injection()


@given(st.binary(max_size=120), st.integers(0, 2**24 - 1), st.integers(0, 255))
def test_garbage_after_a_vxlan_header_never_raises(tail, vni, flags):
    def refused() -> int:
        return LAB.n2.drops.total() + sum(d.stats.drops.total() for d in LAB.n2.devices.values())

    before, delivered_before = refused(), LAB.echo_requests_at_p2()
    LAB.inject(outer_frame(vxlan_header(vni, flags=flags) + tail))
    delivered = LAB.echo_requests_at_p2() - delivered_before
    assert refused() > before or delivered, "an injected frame was neither delivered nor counted"
