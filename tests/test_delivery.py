"""Skipped offsets are fetched again; real gaps and in-flight duplicates are not."""

from __future__ import annotations

from streams.delivery import MAX_REPAIRS, DeliveryHoles


def no_gap(start: int, end: int) -> bool:
    return False


def test_continuous_delivery_needs_no_seek() -> None:
    holes = DeliveryHoles()
    assert [holes.seek_needed("p0", o, no_gap) for o in range(10, 20)] == [None] * 10
    assert holes.seek_needed("p0", 15, no_gap) is None  # redelivery after a rewind


def test_a_skipped_offset_is_fetched_again_once() -> None:
    holes = DeliveryHoles()
    for offset in (10, 11, 12):
        holes.seek_needed("p0", offset, no_gap)
    assert holes.seek_needed("p0", 14, no_gap) == 13  # 13 never came
    assert holes.seek_needed("p0", 15, no_gap) is None  # fetched before the seek
    assert holes.seek_needed("p0", 13, no_gap) is None  # the repair arrives
    assert [holes.seek_needed("p0", o, no_gap) for o in (14, 15, 16)] == [None, None, None]


def test_known_gaps_are_left_alone_and_repairs_are_bounded() -> None:
    holes = DeliveryHoles()
    holes.seek_needed("p1", 5, no_gap)
    assert holes.seek_needed("p1", 9, lambda a, b: (a, b) == (6, 9)) is None
    stubborn = DeliveryHoles()
    stubborn.seek_needed("p2", 0, no_gap)
    seeks = []
    for _ in range(MAX_REPAIRS + 2):
        seeks.append(stubborn.seek_needed("p2", 5, no_gap))
        stubborn.forget()
        stubborn.seek_needed("p2", 0, no_gap)
    assert seeks.count(1) == MAX_REPAIRS and seeks[-1] is None
