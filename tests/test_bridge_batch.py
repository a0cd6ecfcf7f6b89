"""`Bridge.handle_port_batch` is `handle_port_frame` for each frame, faster.

Two identical bridges get the same frames, one frame at a time and in
batches per ingress port; every transmission (in global order), every
counter and the FDB must come out the same.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from emu.net.bridge import Bridge
from emu.net.device import NetDevice
from emu.sim import Scheduler
from emu.wire.ethernet import ETHERTYPE_IPV4, ethernet_header

PORTS = 3
BRIDGE_MAC = b"\x02\xbb\x00\x00\x00\x01"
HOSTS = [bytes([0x02, 0, 0, 0, 0, i]) for i in range(1, 7)]
SPECIAL = [b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01", BRIDGE_MAC, b"\x00" * 6]


class Wire(NetDevice):
    """A port whose wire appends (port name, frame) to a shared log."""

    def __init__(self, sim: Scheduler, index: int, log: list, mtu: int) -> None:
        super().__init__(sim, f"port{index}", bytes([0x02, 0xEE, 0, 0, 0, index]), mtu)
        self.log = log

    def _xmit(self, frame: bytes) -> None:
        self.log.append((self.name, frame))


def build(hairpin: bool):
    sim = Scheduler()
    log: list = []
    bridge = Bridge(sim, "br0", BRIDGE_MAC)
    ports = [Wire(sim, i, log, 1500 if i else 100) for i in range(PORTS)]
    for port in ports:
        bridge.add_port(port, hairpin=hairpin)
    return sim, bridge, ports, log


def state(bridge: Bridge, ports, log):
    return (log, bridge.counters(), [p.stats.as_dict() for p in ports],
            {mac: (e.port.name if e.port else None, e.updated_ns, e.static, e.local)
             for mac, e in bridge.fdb.entries.items()})


frames = st.lists(st.tuples(
    st.integers(0, PORTS - 1),
    st.sampled_from(HOSTS + SPECIAL),
    st.sampled_from(HOSTS + SPECIAL[:2] + [b"\x00" * 6]),
    st.integers(0, 200),
), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(frames, st.booleans(), st.integers(1, 5))
def test_batches_equal_frame_by_frame(items, hairpin, chunk):
    one = build(hairpin)
    many = build(hairpin)
    for sim, bridge, ports, _ in (one, many):
        sim.now_ns = 10
    wire = [(i, ethernet_header(dst, src, ETHERTYPE_IPV4) + bytes(size)) for i, dst, src, size in items]
    for ingress, frame in wire:
        one[1].handle_port_frame(one[2][ingress], frame)
    position = 0
    while position < len(wire):
        ingress = wire[position][0]
        batch = []
        while position < len(wire) and wire[position][0] == ingress and len(batch) < chunk:
            batch.append(wire[position][1])
            position += 1
        many[1].handle_port_batch(many[2][ingress], batch)
    assert state(many[1], many[2], many[3]) == state(one[1], one[2], one[3])


def test_a_batch_of_known_unicast_is_one_run_per_egress():
    sim, bridge, ports, log = build(hairpin=False)
    for index, port in enumerate(ports):
        bridge.fdb.learn(HOSTS[index], port, 0)
    frames = [ethernet_header(HOSTS[1], HOSTS[0], ETHERTYPE_IPV4) + bytes(46)] * 5
    bridge.handle_port_batch(ports[0], frames)
    assert log == [("port1", frames[0])] * 5
    assert bridge.forwarded == 5 and bridge.flooded == 0
    assert ports[1].stats.tx_packets == 5
