"""The kernel run's schedule: scenario order kept, overruns shift what follows.

A fake clock drives it, so nothing here depends on the machine's speed:
every `begin_*` call is made only once its predicate says it would not
block.
"""

from __future__ import annotations

import threading

import pytest

from emu.kernel.schedule import ScheduleCancelled, WallSchedule


class FakeClock:
    """Wall-clock seconds; `at(t)` moves it just past t seconds after the start."""

    START = 100.0

    def __init__(self) -> None:
        self.now = self.START
        self.reads = 0  # since the clock last moved

    def __call__(self) -> float:
        self.reads += 1
        if self.reads > 1000:  # a begin_* waiting for a time that never comes
            raise AssertionError("the schedule would wait forever")
        return self.now

    def at(self, elapsed: float) -> None:
        self.now = self.START + elapsed + 1e-9
        self.reads = 0


def schedule_of(starts, events):
    clock = FakeClock()
    return WallSchedule(starts, events, clock), clock


def test_an_event_that_overruns_its_slot_shifts_every_later_item():
    # the events scenario of test_kernel_events: the slow machine of issue 15
    schedule, clock = schedule_of([0.2, 1.8, 3.8], [1.0, 3.0])
    clock.at(0.2)
    assert schedule.begin_chain(0.2)[0] == pytest.approx(0.2)
    clock.at(1.0)
    assert not schedule.chain_may_begin(1.8)
    assert schedule.begin_event(1.0)[0] == pytest.approx(1.0)
    clock.at(2.56)  # event_1 runs until t=2.56, past the ping at 1.8
    assert not schedule.chain_may_begin(1.8)  # never into a half-built cluster
    assert schedule.end_event(1.0) == pytest.approx(2.56)
    assert schedule.shift == pytest.approx(0.76)
    assert schedule.chain_may_begin(1.8)
    assert schedule.begin_chain(1.8) == (pytest.approx(2.56), 2.56)  # 1.8 + 0.76, kept for the emulator
    clock.at(3.66)  # t=3.66: the event at 3.0 is due at 3.76 now, not before
    assert not schedule.event_may_begin(3.0)
    clock.at(3.76)
    assert schedule.begin_event(3.0)[0] == pytest.approx(3.76)
    clock.at(3.86)
    schedule.end_event(3.0)  # ended inside its slot (the next item is due at 4.56)
    assert schedule.shift == pytest.approx(0.76)
    assert not schedule.chain_may_begin(3.8)
    clock.at(4.56)
    assert schedule.begin_chain(3.8)[0] == pytest.approx(4.56)


def test_an_event_ending_in_its_slot_shifts_nothing():
    schedule, clock = schedule_of([2.5], [1.0])
    clock.at(1.0)
    schedule.begin_event(1.0)
    clock.at(1.4)
    schedule.end_event(1.0)
    assert schedule.shift == 0.0
    assert not schedule.chain_may_begin(2.5)
    clock.at(2.5)
    assert schedule.chain_may_begin(2.5)


def test_a_chain_at_the_time_of_an_event_waits_for_it_as_the_emulator_runs_it_first():
    schedule, clock = schedule_of([1.0], [1.0])
    clock.at(1.0)
    assert schedule.event_may_begin(1.0) and not schedule.chain_may_begin(1.0)
    schedule.begin_event(1.0)
    clock.at(3.0)
    schedule.end_event(1.0)
    assert schedule.shift == pytest.approx(2.0)
    assert schedule.begin_chain(1.0)[0] == pytest.approx(3.0)


def test_an_event_waits_for_the_chains_scheduled_before_it():
    schedule, clock = schedule_of([0.9], [1.0])
    clock.at(1.2)  # both due: the chain at 0.9 goes first
    assert not schedule.event_may_begin(1.0)
    schedule.begin_chain(0.9)
    assert schedule.event_may_begin(1.0)


def test_a_chained_command_waits_while_an_event_runs_or_is_due():
    schedule, clock = schedule_of([0.0], [1.0])
    schedule.begin_chain(0.0)
    assert schedule.chained_may_begin()
    clock.at(1.0)
    assert not schedule.chained_may_begin()  # the event is due: it goes first
    schedule.begin_event(1.0)
    assert not schedule.chained_may_begin()
    schedule.end_event(1.0)
    assert schedule.chained_may_begin()


def test_cancel_releases_every_waiter():
    schedule, _ = schedule_of([5.0], [])
    outcome = []

    def wait() -> None:
        try:
            schedule.begin_chain(5.0)
            outcome.append("began")
        except ScheduleCancelled:
            outcome.append("cancelled")

    waiter = threading.Thread(target=wait)
    waiter.start()
    schedule.cancel()
    waiter.join()
    assert outcome == ["cancelled"]
