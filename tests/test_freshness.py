"""The applied frontier and the commits made from it: never past an unapplied offset."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from faust.types import TP

from schemas.events import Scope
from schemas.state import SuppressionState
from streams.commits import AppliedCommits
from streams.freshness import AppliedFrontier
from streams.processor import encode_state, load_state

LOG = "dnc.oppositions.v1"


def test_vouches_only_once_everything_below_the_observed_end_is_applied() -> None:
    frontier = AppliedFrontier()
    frontier.seed(0, 10)
    frontier.observe(1_000, {0: 14})
    frontier.applied(0, [10, 12, 13])  # 11 skipped by the stream
    assert frontier.vouchable() == {}
    assert frontier.gap(0) == (11, 12)
    frontier.applied(0, [11])
    assert frontier.vouchable() == {0: 1_000}
    assert frontier.next_offset(0) == 14


def test_offsets_dropped_before_the_first_delivery_hold_the_frontier_at_the_seed() -> None:
    frontier = AppliedFrontier()
    frontier.seed(3, 35)
    frontier.applied(3, range(47, 60))  # 35..46 dropped after an assignment
    frontier.observe(2_000, {3: 60})
    assert frontier.next_offset(3) == 35
    assert frontier.waiting() == {3: (35, 60)}
    assert frontier.vouchable() == {}


def test_a_forwarded_offset_counts_as_applied_only_once_released() -> None:
    """A mis-keyed event forwarded to its canonical partition: the partition it was read on
    is not vouched for past it (nor committed past it) until the canonical partition's
    frontier has passed the copy (issue #20, hole 3)."""
    frontier = AppliedFrontier()
    frontier.seed(1, 20)
    frontier.applied(1, [20])
    frontier.forwarded(1, 21, canonical=2, landed=57)  # read at 1/21, copied to 2/57
    frontier.applied(1, [22, 23])
    frontier.observe(5_000, {1: 24})
    assert frontier.vouchable() == {}  # the event is in neither view yet
    assert frontier.next_offset(1) == 21 and frontier.is_held(1, 21)
    assert frontier.gap(1) == (21, 22)  # (a hole to the eye; the worker skips held ones)
    assert frontier.held() == {1: {21: (2, 57)}}
    frontier.release(1, [21])
    assert frontier.vouchable() == {1: 5_000}
    assert frontier.next_offset(1) == 24 and frontier.held() == {}


def test_a_forward_to_its_own_partition_is_released_once_its_copy_is_applied() -> None:
    """Mis-keyed but on the right partition: the copy lands after the original, on the
    partition the original holds back; the copy applied is what counts, not the frontier."""
    frontier = AppliedFrontier()
    frontier.seed(0, 0)
    frontier.forwarded(0, 0, canonical=0, landed=2)
    frontier.applied(0, [1, 2])
    assert frontier.next_offset(0) == 0 and frontier.is_applied(0, 2)
    assert not frontier.is_applied(0, 0) and not frontier.is_applied(0, 3)
    frontier.release(0, [0])
    assert frontier.next_offset(0) == 3


def test_forwards_are_forgotten_on_rebalance() -> None:
    frontier = AppliedFrontier()
    frontier.seed(0, 0)
    frontier.forwarded(0, 0, canonical=1, landed=3)
    frontier.forget()
    assert frontier.held() == {} and frontier.next_offset(0) is None


class RecordingConsumer:
    """Faust's consumer surface the committer uses: assignment() and _commit()."""

    def __init__(self, assigned: set[TP], fail: bool = False) -> None:
        self.assigned = assigned
        self.fail = fail
        self.commits: list[dict[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self.assigned

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        if self.fail:
            raise ConnectionError("broker away")
        self.commits.append(dict(offsets))
        return True


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_commits_the_frontier_never_an_offset_past_an_unapplied_one() -> None:
    frontier = AppliedFrontier()
    tp = TP(LOG, 0)
    consumer = RecordingConsumer({tp})
    commits = AppliedCommits(consumer, {LOG: frontier})
    frontier.seed(0, 35)
    frontier.applied(0, range(47, 60))
    _run(commits.commit([tp]))
    assert consumer.commits == [{tp: 35}]  # 35 is not applied: no further than it
    frontier.applied(0, range(35, 47))
    _run(commits.commit([tp]))
    _run(commits.commit([tp]))  # unchanged: not committed twice
    assert consumer.commits == [{tp: 35}, {tp: 60}]


def test_only_assigned_partitions_are_committed_and_failures_are_retried() -> None:
    frontier = AppliedFrontier()
    mine, gone = TP(LOG, 0), TP(LOG, 1)
    consumer = RecordingConsumer({mine}, fail=True)
    commits = AppliedCommits(consumer, {LOG: frontier})
    for partition in (0, 1):
        frontier.seed(partition, 0)
        frontier.applied(partition, [0, 1])
    _run(commits.commit([mine, gone]))  # the broker is away: logged, nothing recorded
    consumer.fail = False
    _run(commits.commit([mine, gone]))
    assert consumer.commits == [{mine: 2}]


def test_changelog_records_carry_fausts_own_key_bytes() -> None:
    from faust.serializers import codecs

    from streams.kafka_sink import changelog_key, changelog_value

    for key in ("acme|+33612345678", "_global|+33612345678", "société/été|+3361234"):
        assert changelog_key(key) == codecs.dumps("json", key)
    value = {"version": 2, "active": [{"kind": "opposition"}], "note": "é"}
    assert codecs.loads("json", changelog_value(value)) == value
    # A state as the processor stores it: Faust reads back what load_state accepts.
    state = SuppressionState(target="acme", tenant="acme", scope=Scope.TENANT, campaign_id=None,
                             phone_e164="+33612345678", version=3, position=(1, 42),
                             updated_at=datetime(2026, 1, 2, tzinfo=UTC))  # fmt: skip
    record = changelog_value(encode_state(state))
    assert codecs.loads("json", record) == state.model_dump(mode="json")
    assert load_state(record) == state  # what the table holds after recovery (raw values)
    assert load_state(codecs.loads("json", record)) == state
