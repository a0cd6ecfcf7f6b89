"""`Bridge.handle_port_batch` is `handle_port_frame` for each frame, faster.

Two identical bridges get the same frames, one frame at a time and in
batches per ingress port; every transmission (in global order), every
counter and the FDB must come out the same.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.net.bridge import Bridge
from emu.net.device import NetDevice
from emu.sim import Scheduler
from emu.wire.ethernet import ETHERTYPE_IPV4, ethernet_header
from emu.wire.packed import PackedFrames

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


# -- the planned (numpy) path --------------------------------------------------------
VLAN_TPID = 0x8100
events = st.lists(st.one_of(
    # a batch: ingress port, a time step before it, its frames (dst, src, ethertype, size)
    st.tuples(st.just("batch"), st.integers(0, PORTS - 1), st.integers(0, 40),
              st.lists(st.tuples(st.sampled_from(HOSTS + SPECIAL), st.sampled_from(HOSTS + SPECIAL),
                                 st.sampled_from([ETHERTYPE_IPV4, VLAN_TPID]), st.integers(0, 120)),
                       min_size=1, max_size=80)),
    # a user-added static entry for a host on some port (moves on learning, as in Linux)
    st.tuples(st.just("static"), st.integers(0, PORTS - 1), st.sampled_from(HOSTS)),
    # an entry learned some time ago (a random FDB state, partly aged)
    st.tuples(st.just("learned"), st.integers(0, PORTS - 1), st.sampled_from(HOSTS), st.integers(0, 80)),
    # a port's settings: `bridge link set dev PORT hairpin .. learning .. state ..`
    st.tuples(st.just("port"), st.integers(0, PORTS - 1), st.booleans(),
              st.sampled_from([True, True, False]),
              st.sampled_from(["forwarding", "forwarding", "learning", "blocking", "disabled"])),
), min_size=1, max_size=12)


def run_events(bridge_and_more, items, batched: bool, packed: bool = False):
    sim, bridge, ports, log = bridge_and_more
    for item in items:
        if item[0] == "static":
            bridge.fdb.add_static(item[2], ports[item[1]])
            continue
        if item[0] == "learned":
            bridge.fdb.learn(item[2], ports[item[1]], max(0, sim.now_ns - item[3]))
            continue
        if item[0] == "port":
            settings = ports[item[1]].bridge_port
            settings.hairpin, settings.learning, settings.state = item[2:]
            continue
        _, ingress, step, specs = item
        sim.now_ns += step
        frames = [ethernet_header(dst, src, ethertype) + bytes(size) for dst, src, ethertype, size in specs]
        frames = [frame[:size] if size < 14 else frame for frame, (_, _, _, size) in zip(frames, specs)]
        if batched:
            if packed:  # one length per packed batch: pad every frame to the longest
                longest = max(map(len, frames))
                frames = PackedFrames.from_frames([frame.ljust(longest, b"\0") for frame in frames])
            bridge.handle_port_batch(ports[ingress], frames)
        else:
            if packed:
                longest = max(map(len, frames))
                frames = [frame.ljust(longest, b"\0") for frame in frames]
            for frame in frames:
                bridge.handle_port_frame(ports[ingress], frame)


def build_short_ageing(hairpin: bool):
    built = build(hairpin)
    built[1].fdb.ageing_ns = 50  # entries age within a few batches
    return built


@settings(max_examples=300, deadline=None)
@given(events, st.booleans(), st.sampled_from([1, 2, 8, 32]), st.booleans())
def test_planned_batches_equal_frame_by_frame(items, hairpin, vector_min, packed):
    """The numpy plan and the runs (forced on from `vector_min` frames)
    against frame by frame, i.e. against `Bridge.decide`: learning within
    the batch, random FDB states (entries learned at random ages), aging,
    static entries moving, local MACs, refused sources, floods, MTU drops
    with and without a VLAN tag, same-port drops, and per-port hairpin,
    learning and STP state."""
    from emu.net import bridge as bridge_module
    saved = bridge_module.VECTOR_MIN
    bridge_module.VECTOR_MIN = vector_min
    try:
        one, many = build_short_ageing(hairpin), build_short_ageing(hairpin)
        run_events(one, items, batched=False, packed=packed)
        run_events(many, items, batched=True, packed=packed)
    finally:
        bridge_module.VECTOR_MIN = saved
    assert state(many[1], many[2], many[3]) == state(one[1], one[2], one[3])


def test_a_large_batch_goes_out_in_one_interleaved_call_in_order():
    """Known unicast to three ports in a shuffled order: one plan, every frame
    on the wire in the per-frame order, nothing flooded."""
    sim, bridge, ports, log = build(hairpin=False)
    for index, port in enumerate(ports):
        bridge.fdb.learn(HOSTS[index], port, 0)
    destinations = [HOSTS[1], HOSTS[2]] * 50
    frames = [ethernet_header(dst, HOSTS[0], ETHERTYPE_IPV4) + bytes([i]) * 46
              for i, dst in enumerate(destinations)]
    calls = []
    original = NetDevice.transmit_interleaved
    NetDevice.transmit_interleaved = staticmethod(lambda *args: (calls.append(args), original(*args)))
    try:
        bridge.handle_port_batch(ports[0], frames)
    finally:
        NetDevice.transmit_interleaved = staticmethod(original)
    assert log == [(f"port{1 if i % 2 == 0 else 2}", frame) for i, frame in enumerate(frames)]
    assert len(calls) == 1 and bridge.forwarded == 100 and bridge.flooded == 0


def test_a_learned_static_entry_moves_like_linux():
    """br_fdb_update moves any non-local entry to the port a frame came from."""
    sim, bridge, ports, log = build(hairpin=False)
    bridge.fdb.add_static(HOSTS[0], ports[1])
    bridge.handle_port_frame(ports[2], ethernet_header(HOSTS[1], HOSTS[0], ETHERTYPE_IPV4) + bytes(46))
    entry = bridge.fdb.lookup(HOSTS[0], 0)
    assert entry.port is ports[2] and entry.static
    bridge.handle_port_frame(ports[2], ethernet_header(HOSTS[1], BRIDGE_MAC, ETHERTYPE_IPV4) + bytes(46))
    assert bridge.fdb.lookup(BRIDGE_MAC, 0).port is None  # local: never moves


def _forced_plans(test):
    """Run `test` with the numpy plan used from 2 frames on."""
    from emu.net import bridge as bridge_module
    saved = bridge_module.VECTOR_MIN
    bridge_module.VECTOR_MIN = 2
    try:
        return test()
    finally:
        bridge_module.VECTOR_MIN = saved


def _both_ways(frames, setup, ingress=0):
    """The state after `frames` on port `ingress`, frame by frame and as one planned batch."""
    results = []
    for batched in (False, True):
        built = build(hairpin=False)
        setup(*built)
        if batched:
            _forced_plans(lambda: built[1].handle_port_batch(built[2][ingress], frames))
        else:
            for frame in frames:
                built[1].handle_port_frame(built[2][ingress], frame)
        results.append(state(built[1], built[2], built[3]))
    return results


def test_an_entry_exactly_as_old_as_the_ageing_time_is_still_live():
    def setup(sim, bridge, ports, log):
        bridge.fdb.ageing_ns = 50
        bridge.fdb.learn(HOSTS[1], ports[1], 0)
        sim.now_ns = 50
    frames = [ethernet_header(HOSTS[1], HOSTS[0], ETHERTYPE_IPV4) + bytes(46)] * 3
    one, many = _both_ways(frames, setup)
    assert many == one
    assert one[0] == [("port1", frames[0])] * 3  # forwarded, not flooded


def test_the_mtu_check_allows_four_more_bytes_for_a_vlan_tag():
    def setup(sim, bridge, ports, log):
        bridge.fdb.learn(HOSTS[0], ports[0], 0)  # port0 has MTU 100
    tagged = ethernet_header(HOSTS[0], HOSTS[1], VLAN_TPID) + bytes(104)
    untagged = ethernet_header(HOSTS[0], HOSTS[1], ETHERTYPE_IPV4) + bytes(104)
    one, many = _both_ways([tagged, untagged, tagged], setup, ingress=1)
    assert many == one
    assert one[0] == [("port0", tagged), ("port0", tagged)]


def test_a_batch_is_planned_again_when_handling_a_frame_changes_the_fdb():
    """A port whose wire reconfigures the bridge as a flood goes out (a
    synchronous side effect): later frames of the batch follow the change."""
    results = []
    for batched in (False, True):
        sim, bridge, ports, log = build(hairpin=False)
        bridge.fdb.learn(HOSTS[2], ports[1], 0)

        def rewire(frame, port=ports[2], original=ports[2]._xmit):
            original(frame)
            bridge.fdb.add_static(HOSTS[2], ports[0])
        ports[2]._xmit = rewire
        frames = [ethernet_header(b"\xff" * 6, HOSTS[0], ETHERTYPE_IPV4) + bytes(46)]
        frames += [ethernet_header(HOSTS[2], HOSTS[1], ETHERTYPE_IPV4) + bytes(46)] * 3
        if batched:
            _forced_plans(lambda: bridge.handle_port_batch(ports[1], frames))
        else:
            for frame in frames:
                bridge.handle_port_frame(ports[1], frame)
        results.append(state(bridge, ports, log))
    assert results[1] == results[0]
    assert results[0][0][-3:] == [("port0", frames[1])] * 3


class Grouped(Wire):
    """A port class that takes an interleaved batch in one call (and logs it)."""

    takes_interleaved = True
    calls: list = []

    @classmethod
    def transmit_interleaved_batch(cls, devices, which, frames):
        cls.calls.append((which.tolist(), list(frames)))


def test_transmit_interleaved_hands_one_class_its_whole_batch_and_runs_otherwise():
    import numpy as np
    sim, log = Scheduler(), []
    wires = [None, Wire(sim, 1, log, 1500), Wire(sim, 2, log, 1500)]
    frames = [bytes([i]) * 20 for i in range(5)]
    which = np.array([1, 2, 2, 1, 2])
    NetDevice.transmit_interleaved(wires, which, frames)
    assert log == [(f"port{w}", frame) for w, frame in zip(which.tolist(), frames)]
    assert [w.stats.tx_packets for w in wires[1:]] == [2, 3]
    grouped = [None, Grouped(sim, 1, log, 1500), Grouped(sim, 2, log, 1500)]
    Grouped.calls.clear()
    NetDevice.transmit_interleaved(grouped, which, frames)
    assert Grouped.calls == [(which.tolist(), frames)]
    mixed = [None, Grouped(sim, 1, log, 1500), Wire(sim, 2, log, 1500)]
    Grouped.calls.clear()
    log.clear()
    NetDevice.transmit_interleaved(mixed, which, frames)
    assert Grouped.calls == [] and log == [(f"port{w}", frame) for w, frame in zip(which.tolist(), frames)]


# -- the port object and the decision ------------------------------------------------
def _frame(dst: bytes, src: bytes) -> bytes:
    return ethernet_header(dst, src, ETHERTYPE_IPV4) + bytes(46)


def test_port_settings_live_on_the_bridge_port_not_on_the_device():
    sim, bridge, ports, log = build(hairpin=False)
    port = ports[0].bridge_port
    assert (port.bridge, port.dev, port.hairpin, port.learning, port.state) == (bridge, ports[0], False, True,
                                                                                 "forwarding")
    assert ports[0].master is bridge and not hasattr(ports[0], "hairpin")
    with pytest.raises(ValueError, match="state"):
        port.state = "sleeping"


def test_decide_names_each_fate():
    sim, bridge, ports, log = build(hairpin=False)
    bridge.fdb.learn(HOSTS[1], ports[1], 0)
    assert bridge.decide(ports[0], b"\xff" * 6, 0)[0] == "flood-group"
    assert bridge.decide(ports[0], HOSTS[5], 0)[0] == "flood-unknown"
    assert bridge.decide(ports[0], BRIDGE_MAC, 0)[0] == "local"
    assert bridge.decide(ports[0], HOSTS[1], 0)[:2] == ("forward", ports[1])
    assert bridge.decide(ports[1], HOSTS[1], 0) == ("drop", ports[1], "BRIDGE_SAME_PORT")
    ports[1].bridge_port.hairpin = True
    assert bridge.decide(ports[1], HOSTS[1], 0)[:2] == ("forward", ports[1])
    ports[1].bridge_port.state = "blocking"
    assert bridge.decide(ports[0], HOSTS[1], 0) == ("drop", ports[1], "BRIDGE_PORT_STATE")


def test_a_learning_port_learns_then_drops_and_a_blocking_one_does_neither():
    sim, bridge, ports, log = build(hairpin=False)
    ports[0].bridge_port.state = "learning"
    ports[1].bridge_port.state = "blocking"
    bridge.handle_port_frame(ports[0], _frame(HOSTS[5], HOSTS[0]))
    bridge.handle_port_frame(ports[1], _frame(HOSTS[5], HOSTS[1]))
    assert HOSTS[0] in bridge.fdb and HOSTS[1] not in bridge.fdb
    assert log == [] and ports[0].stats.drops["BRIDGE_PORT_STATE"] == 1
    assert ports[1].stats.drops["BRIDGE_PORT_STATE"] == 1


def test_a_flood_skips_ports_that_are_not_forwarding():
    sim, bridge, ports, log = build(hairpin=False)
    ports[2].bridge_port.state = "disabled"
    bridge.handle_port_frame(ports[0], _frame(HOSTS[5], HOSTS[0]))
    assert [name for name, _ in log] == ["port1"]


def test_learning_off_keeps_the_source_out_of_the_fdb():
    sim, bridge, ports, log = build(hairpin=False)
    ports[0].bridge_port.learning = False
    bridge.handle_port_frame(ports[0], _frame(HOSTS[5], HOSTS[0]))
    assert HOSTS[0] not in bridge.fdb and len(log) == PORTS - 1
