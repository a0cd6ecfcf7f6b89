"""A bridge FDB holds a million MACs in well under 200 MB, and ages them lazily."""

import tracemalloc

from emu.net.fdb import Fdb
from emu.sim import seconds

MILLION = 1_000_000
LIMIT_BYTES = 200 * 1024 * 1024


class Port:
    """Stands in for a device: the FDB only compares ports by identity."""

    def __init__(self, name):
        self.name = name


def test_a_million_macs_learned_looked_up_and_aged_under_200_mb():
    ports = [Port(f"veth{i}") for i in range(8)]
    tracemalloc.start()
    try:
        fdb = Fdb(ageing_ns=seconds(300))
        macs = [b"\x02" + i.to_bytes(5, "big") for i in range(MILLION)]
        for i, mac in enumerate(macs):
            fdb.learn(mac, ports[i % 8], now_ns=seconds(1))
        assert len(fdb) == MILLION
        found = sum(1 for i in range(0, MILLION, 997)
                    if fdb.lookup_port(macs[i], seconds(2)) == (ports[i % 8], False))
        assert found == len(range(0, MILLION, 997))
        # Refresh the even half at t=200 s; at t=400 s only that half is alive.
        for mac in macs[::2]:
            fdb.learn(mac, ports[0], now_ns=seconds(200))
        assert fdb.lookup(macs[1], seconds(400)) is None
        assert fdb.lookup(macs[2], seconds(400)).port is ports[0]
        fdb.sweep(seconds(400))
        assert len(fdb) == MILLION // 2
        # Freed slots are reused, not appended.
        fdb.learn(b"\x04" * 6, ports[1], seconds(400))
        assert fdb.slots == MILLION
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < LIMIT_BYTES, f"peak {peak / 2**20:.0f} MiB"


def test_lookup_forgets_an_aged_entry_and_bumps_the_generation():
    fdb = Fdb(ageing_ns=seconds(10))
    port = Port("p")
    fdb.learn(b"\x02" * 6, port, seconds(0))
    generation = fdb.generation
    assert fdb.is_live(b"\x02" * 6, seconds(10))
    assert not fdb.is_live(b"\x02" * 6, seconds(10) + 1)
    assert fdb.lookup(b"\x02" * 6, seconds(11)) is None
    assert b"\x02" * 6 not in fdb
    assert fdb.generation == generation + 1


def test_refresh_keeps_generation_but_a_move_bumps_it():
    fdb = Fdb()
    a, b = Port("a"), Port("b")
    fdb.learn(b"\x02" * 6, a, 0)
    generation = fdb.generation
    fdb.learn(b"\x02" * 6, a, 5)
    assert fdb.generation == generation
    assert fdb.entries[b"\x02" * 6].updated_ns == 5
    fdb.learn(b"\x02" * 6, b, 6)
    assert fdb.generation == generation + 1
    assert fdb.entries[b"\x02" * 6].port is b
