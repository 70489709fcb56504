"""Stall detection (pure logic)."""

from __future__ import annotations

from streams.progress import ProgressWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_waiting_input_without_progress_is_a_stall() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after=10, clock=clock)
    assert watch.stalled_for({0: 100}, {0: 40}) == {}  # seeded at the committed offset
    clock.now = 11
    assert set(watch.stalled_for({0: 100}, {0: 40})) == {0}
    watch.applied(0, 60)
    assert watch.stalled_for({0: 100}, {0: 90}) == {}
    clock.now = 30
    assert set(watch.stalled_for({0: 100}, {0: 90})) == {0}


def test_no_input_waiting_is_never_a_stall() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after=5, clock=clock)
    watch.applied(1, 99)
    clock.now = 1000
    assert watch.stalled_for({1: 100}, {1: 100}) == {}
    clock.now = 1001  # new input arrives: idle time counts from the last idle observation
    assert watch.stalled_for({1: 150}, {1: 100}) == {}
    clock.now = 1006.5
    assert set(watch.stalled_for({1: 150}, {1: 100})) == {1}


def test_unknown_positions_are_not_judged_and_rebalance_forgets() -> None:
    watch = ProgressWatch(stall_after=0)
    assert watch.stalled_for({2: 10}, {2: None}) == {}
    watch.applied(2, 1)
    watch.forget()
    assert watch.stalled_for({2: 10}, {2: None}) == {}
