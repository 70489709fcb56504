"""Unit tests of the reference-list sync's pure parts (no services)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import phonenumbers

from consumers.reference_sync import backoff_seconds, propagation_origin
from consumers.sinks.base import Delivery
from dnc.demo import number_pool
from schemas.events import Kind
from tests.sync_harness import delivery


def change(version: int = 1, cause: str = "event", occurred: datetime | None = None) -> Delivery:
    kind = Kind.REFUSAL if cause == "event" else None
    return delivery("+33612345678", version, kind=kind, cause=cause, at=occurred)


def test_backoff_grows_with_jitter_and_stays_under_the_cap() -> None:
    rng = random.Random(7)
    for failures in range(40):
        delay = backoff_seconds(failures, 0.2, 30, rng)
        assert 0.1 <= delay <= 30
    early = [backoff_seconds(0, 0.2, 30, rng) for _ in range(200)]
    late = [backoff_seconds(10, 0.2, 30, rng) for _ in range(200)]
    assert max(early) <= 0.2
    assert sum(late) / len(late) > 10 * sum(early) / len(early)
    assert len({round(d, 6) for d in late}) > 150  # jittered: retries do not synchronise


def test_idempotency_key_is_stable_per_change_and_never_holds_the_number() -> None:
    one = change(version=3, occurred=datetime.now(UTC))
    again = Delivery(one.change, one.body, None, 2, 99)  # redelivered at another offset
    assert one.idempotency_key == again.idempotency_key
    assert change(version=4, occurred=datetime.now(UTC)).idempotency_key != one.idempotency_key
    assert "612345678" not in one.idempotency_key


def test_propagation_counts_from_the_event_or_from_the_expiry() -> None:
    said = datetime.now(UTC) - timedelta(seconds=3)
    assert propagation_origin(change(occurred=said).change) == said
    expired = change(cause="expiry").change
    assert propagation_origin(expired) == expired.changed_at
    # A refusal under a standing objection: the state's stamp is the old objection, the
    # change was caused now: latency counts from the refusal.
    standing = change(occurred=said - timedelta(days=30)).change
    caused = standing.model_copy(update={"event_occurred_at": said})
    assert propagation_origin(caused) == said


def test_demo_number_pools_are_valid_numbers_of_their_region() -> None:
    for region in ("FR", "GB"):
        pool = number_pool(region)
        assert len(set(pool)) == len(pool)
        for number in pool:
            parsed = phonenumbers.parse(number)
            assert phonenumbers.is_valid_number(parsed), number
            assert phonenumbers.region_code_for_number(parsed) == region, number
