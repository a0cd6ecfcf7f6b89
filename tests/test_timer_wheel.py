"""Kernel timers fire when the timer wheel gets to them (emu.sim.timer_wheel).

Expected values are worked out by hand from kernel/time/timer.c at HZ 250
(4 ms jiffies): a timer `delta` jiffies ahead sits in level 0 (delta < 63,
1-jiffy buckets), 1 (< 504, 8), 2 (< 4032, 64), 3 (< 32256, 512), ...,
and its expiry is rounded up to the next bucket of its level.
"""

from hypothesis import given
from hypothesis import strategies as st

from emu.sim import NS_PER_SECOND
from emu.sim.timer_wheel import fire_time_ns

MS = NS_PER_SECOND // 1000


def test_hand_computed_expiries():
    assert fire_time_ns(0, 40 * MS) == 44 * MS  # 10 jiffies, level 0: bucket 11
    assert fire_time_ns(0, 1 * NS_PER_SECOND) == 1024 * MS  # 250 jiffies, level 1: 256
    assert fire_time_ns(1024 * MS, 2024 * MS) == 2048 * MS  # 506, level 1: 512
    assert fire_time_ns(0, 5 * NS_PER_SECOND) == 5120 * MS  # 1250 jiffies, level 2: 1280
    assert fire_time_ns(0, 30 * NS_PER_SECOND) == 30720 * MS  # 7500 jiffies, level 3: 7680
    assert fire_time_ns(3 * NS_PER_SECOND, 2 * NS_PER_SECOND) == 3 * NS_PER_SECOND  # already due


@given(st.integers(0, 10**12), st.integers(0, 10**12))
def test_never_early_and_at_most_a_level_granule_late(now_ns, delay_ns):
    fired = fire_time_ns(now_ns, now_ns + delay_ns)
    assert fired >= now_ns + delay_ns  # the wheel rounds up: never early
    assert fired - (now_ns + delay_ns) <= max(delay_ns // 7, 0) + 8 * MS  # a granule is < 1/7 of delta
