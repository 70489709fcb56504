"""Skipped offsets are fetched again; real gaps and in-flight duplicates are not."""

from __future__ import annotations

from streams.delivery import MAX_REPAIRS, REPAIR_TIMEOUT, DeliveryHoles


def test_continuous_delivery_needs_no_seek() -> None:
    holes = DeliveryHoles()
    assert [holes.seek_needed("p0", o) for o in range(10, 20)] == [None] * 10
    assert holes.seek_needed("p0", 15) is None  # redelivery after a rewind


def test_a_skipped_offset_is_fetched_again_once() -> None:
    holes = DeliveryHoles()
    for offset in (10, 11, 12):
        holes.seek_needed("p0", offset)
    assert holes.seek_needed("p0", 14) == 13  # 13 never came
    assert holes.seek_needed("p0", 15) is None  # fetched before the seek
    assert holes.seek_needed("p0", 13) is None  # the repair arrives
    assert [holes.seek_needed("p0", o) for o in (14, 15, 16)] == [None, None, None]


def test_repairs_of_a_real_gap_are_bounded() -> None:
    stubborn = DeliveryHoles()
    stubborn.seek_needed("p2", 0)
    seeks = []
    for _ in range(MAX_REPAIRS + 2):
        seeks.append(stubborn.seek_needed("p2", 5))
        stubborn.forget()
        stubborn.seek_needed("p2", 0)
    assert seeks.count(1) == MAX_REPAIRS and seeks[-1] is None


def test_a_repair_that_does_not_come_back_is_sought_again_then_bounded() -> None:
    now = [100.0]
    holes = DeliveryHoles(clock=lambda: now[0])
    holes.seek_needed("p1", 74)
    assert holes.seek_needed("p1", 86) == 75  # 75..85 skipped: seek back
    assert holes.overdue() == {}  # the seek has had no time yet
    now[0] += REPAIR_TIMEOUT
    assert holes.overdue() == {"p1": 75}  # the refetch was dropped: seek again
    assert holes.overdue() == {}  # not before another timeout
    for _ in range(MAX_REPAIRS):
        now[0] += REPAIR_TIMEOUT
        holes.overdue()
    assert holes.overdue() == {}  # accepted as a gap after MAX_REPAIRS
    now[0] += REPAIR_TIMEOUT
    assert holes.overdue() == {}


def test_a_repair_that_arrives_is_not_sought_again() -> None:
    now = [0.0]
    holes = DeliveryHoles(clock=lambda: now[0])
    holes.seek_needed("p0", 1)
    assert holes.seek_needed("p0", 3) == 2
    assert holes.seek_needed("p0", 2) is None  # the repair arrives
    now[0] += 60
    assert holes.overdue() == {}
