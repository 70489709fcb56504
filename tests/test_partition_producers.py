"""A worker makes a partition's transactional producer only while it owns the partition.

No broker is reached: the ownership check comes before any producer exists.
"""

from __future__ import annotations

import asyncio

import pytest

from schemas.errors import PublishError
from schemas.settings import Settings
from streams.fencing import BatchAbandoned, OwnershipLost, Revocations
from streams.ownership import PartitionProducers, PartitionRevoked, Record


def _producers(owned: set[int] | None) -> PartitionProducers:
    async def confirm(_partition: int) -> bool:
        raise AssertionError("no producer may be initialised for a partition not owned")

    return PartitionProducers(
        Settings(kafka_bootstrap="127.0.0.1:9"), "w1", era="e", owned=lambda: owned,
        confirm=confirm,
    )  # fmt: skip


RECORDS = [Record("t", b"v", b"k", 2)]


def test_a_partition_the_settled_group_gave_away_is_revoked() -> None:
    with pytest.raises(PartitionRevoked) as caught:
        asyncio.run(_producers({0, 1}).send(2, RECORDS))
    assert caught.value.partition == 2
    assert "not owned by this worker any more" in str(caught.value)


def test_while_the_group_rebalances_a_write_is_only_retried_later() -> None:
    with pytest.raises(PublishError) as caught:
        asyncio.run(_producers(None).send(2, RECORDS))
    assert not isinstance(caught.value, PartitionRevoked)
    assert "rebalancing" in str(caught.value)


def test_a_lost_partition_among_several_is_the_error_raised() -> None:
    with pytest.raises(PartitionRevoked):
        asyncio.run(_producers({0}).send_all({2: RECORDS}))


def test_a_batch_writes_nothing_for_a_partition_revoked_since_it_started_even_if_back() -> None:
    revocations = Revocations()
    seen = revocations.snapshot()
    revocations.check(seen, [0, 1, 2])  # nothing revoked: the batch writes
    revocations.revoked([1])  # A -> B ...
    with pytest.raises(BatchAbandoned, match=r"partitions \[1\] were revoked"):
        revocations.check(seen, [1])  # ... -> A again: still refused, fetched again
    with pytest.raises(OwnershipLost) as caught:  # only some of its partitions: exit
        revocations.check(seen, [0, 1])
    assert not isinstance(caught.value, BatchAbandoned)
    revocations.check(seen, [0, 2])  # other partitions' batches are untouched
    revocations.check(revocations.snapshot(), [1])  # a batch started after the revocation
