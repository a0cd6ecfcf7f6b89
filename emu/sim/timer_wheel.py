"""When a Linux kernel timer really fires: the timer wheel's rounding.

Why: kernel timers (neighbour/ARP timers, IP reassembly) are not exact. The
timer wheel (kernel/time/timer.c, calc_wheel_index / calc_index) keeps a
timer armed `delta` jiffies ahead in a level whose granularity grows with
`delta` (1, 8, 64, 512, ... jiffies) and rounds its expiry *up* to the next
bucket of that level, so it never fires early: a 1 s ARP retransmission
fires 4-32 ms late, a 5 s probe timer 4-256 ms late, a 30 s reassembly
timeout up to 2 s late. Kernel captures show it (ARP retries at 1.008 and
2.032 s, a DELAY probe at 5.25 s); it decides which comes first when a
timer and a ping are due at the same nominal time (the ping, most often).

Jiffies are counted from virtual time 0 (HZ 250, the kernel the reference
captures come from); the real kernel's jiffies phase is arbitrary, so the
exact lateness is a fixed, deterministic choice within the kernel's range.
"""

from __future__ import annotations

from emu.sim.scheduler import NS_PER_SECOND

HZ = 250
TICK_NS = NS_PER_SECOND // HZ
LVL_CLK_SHIFT = 3  # each level is 8 times coarser than the one below
LVL_BITS = 6  # 64 buckets per level
LVL_DEPTH = 9  # levels for HZ > 100
LVL_SIZE = 1 << LVL_BITS


def _level_start(level: int) -> int:
    """LVL_START(level): the smallest delta (jiffies) kept in `level`."""
    return (LVL_SIZE - 1) << ((level - 1) * LVL_CLK_SHIFT)


def fire_time_ns(now_ns: int, expires_ns: int) -> int:
    """The virtual time at which a timer armed at `now_ns` for `expires_ns` runs."""
    clk = now_ns // TICK_NS
    expires = expires_ns // TICK_NS
    delta = expires - clk
    if delta < 0:
        return now_ns  # already due: the next timer run
    level = 0
    while level < LVL_DEPTH - 1 and delta >= _level_start(level + 1):
        level += 1
    shift = level * LVL_CLK_SHIFT
    bucket_expiry = ((expires >> shift) + 1) << shift
    return max(now_ns, bucket_expiry * TICK_NS)
