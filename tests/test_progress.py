"""Stall detection (pure logic)."""

from __future__ import annotations

from streams.progress import ProgressWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_that_never_finishes_is_a_stall() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after=10, clock=clock)
    watch.received(0, 40)
    clock.now = 9
    assert watch.stalled_for({0: 41}, {0: 40}) == {}
    clock.now = 11
    assert watch.stalled_for({0: 41}, {0: 40}) == {0: 11}
    watch.applied()
    assert watch.stalled_for({0: 41}, {0: 40}) == {}


def test_events_in_the_log_never_delivered_are_a_stall() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after=5, clock=clock)
    assert watch.stalled_for({1: 100}, {1: 40}) == {}  # seeded at the committed offset
    clock.now = 6
    assert set(watch.stalled_for({1: 100}, {1: 40})) == {1}
    watch.received(1, 99)
    watch.applied()
    clock.now = 100
    assert watch.stalled_for({1: 100}, {1: 100}) == {}  # caught up and committed


def test_slow_but_moving_is_not_a_stall_and_unknowns_are_not_judged() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after=5, clock=clock)
    for second in range(1, 30):
        clock.now = second
        watch.received(2, second)
        watch.applied()
        assert watch.stalled_for({2: 1000}, {2: second}) == {}  # commits follow
    assert watch.stalled_for({3: 10}, {3: None}) == {}
    watch.forget()
    clock.now = 1000
    assert watch.stalled_for({2: 10}, {2: None}) == {}


def test_commits_held_behind_a_skipped_event_are_a_stall() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after=5, clock=clock)
    # Offsets 75..85 were skipped; everything after them was delivered and applied, so the
    # stream looks caught up, but commits cannot pass the hole.
    watch.received(1, 529)
    watch.applied()
    assert watch.stalled_for({1: 530}, {1: 75}) == {}
    clock.now = 4
    assert watch.stalled_for({1: 530}, {1: 75}) == {}
    clock.now = 6
    assert watch.stalled_for({1: 530}, {1: 75}) == {1: 6}
    # Commits moving again (the hole was repaired) clear it.
    assert watch.stalled_for({1: 530}, {1: 530}) == {}
    clock.now = 20
    assert watch.stalled_for({1: 530}, {1: 530}) == {}


def test_commits_trailing_a_busy_partition_are_not_a_stall() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after=5, clock=clock)
    for second in range(1, 30):
        clock.now = second
        watch.received(0, second * 100)
        watch.applied()
        assert watch.stalled_for({0: second * 100 + 50}, {0: second * 100 - 100}) == {}


def test_idle_is_the_time_since_the_last_delivery_on_any_partition() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after=10, clock=clock)
    assert watch.idle_for() == float("inf")
    clock.now = 5
    watch.received(2, 7)
    clock.now = 8
    assert watch.idle_for() == 3
