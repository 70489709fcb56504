"""When `dnc up` may say "pipeline ready" (:mod:`dnc.settled`): the view ready is not enough
while the worker group is still forming or a moved partition is not yet vouched for by its
new owner."""

from __future__ import annotations

from confluent_kafka import ConsumerGroupState

from consumers.readiness import PartitionFreshness, Readiness
from dnc.settled import judge_settled

STABLE = ConsumerGroupState.STABLE


def view(*owners: str) -> Readiness:
    """A ready, current view whose partition P was last vouched for by ``owners[P]``."""
    return Readiness(True, None, tuple(PartitionFreshness(p, True, 0.5, owner)
                                       for p, owner in enumerate(owners)))  # fmt: skip


def test_not_settled_while_a_partition_is_vouched_for_near_the_bound() -> None:
    members = {"w1": [0, 1], "w2": [2]}
    aging = Readiness(True, None, (PartitionFreshness(0, True, 0.4, "w1"),
                                   PartitionFreshness(1, True, 3.1, "w1"),
                                   PartitionFreshness(2, True, 0.2, "w2")))  # fmt: skip
    verdict = judge_settled(aging, STABLE, members, workers=2, max_staleness=5)
    assert not verdict.settled
    assert verdict.why == (
        "the stalest partition was vouched for 3.1 s ago, more than half the 5 s bound: "
        "the workers are catching up"
    )
    assert judge_settled(aging, STABLE, members, workers=2, max_staleness=8).settled


def test_settled_once_every_worker_vouches_for_exactly_what_it_was_assigned() -> None:
    members = {"local-worker-1": [0, 1], "local-worker-2": [2]}
    verdict = judge_settled(view("local-worker-1", "local-worker-1", "local-worker-2"),
                            STABLE, members, workers=2, max_staleness=5)  # fmt: skip
    assert verdict.settled, verdict.why
    # One worker: its id ("host-pid") need not be its static membership id.
    assert judge_settled(view("h-41", "h-41", "h-41"), STABLE, {"local-worker-1": [0, 1, 2]},
                         workers=1, max_staleness=5).settled  # fmt: skip
    # More workers than partitions: the idle one is a member with nothing to vouch for.
    idle = {"w1": [0], "w2": [1], "w3": [2], "w4": []}
    assert judge_settled(view("w1", "w2", "w3"), STABLE, idle, workers=4, max_staleness=5).settled


def test_not_settled_while_the_group_forms_or_a_moved_partition_is_rebuilt() -> None:
    first_alone = {"local-worker-1": [0, 1, 2]}
    everything_by_the_first = view("local-worker-1", "local-worker-1", "local-worker-1")
    # The first worker vouches for all: the view is ready, the second has not joined yet.
    early = judge_settled(everything_by_the_first, STABLE, first_alone, workers=2, max_staleness=5)
    assert not early.settled and early.why == "1 of 2 workers in the group"
    # It joined: the group rebalances.
    split = {"local-worker-1": [0, 1], "local-worker-2": [2]}
    rebalancing = ConsumerGroupState.COMPLETING_REBALANCING
    moving = judge_settled(everything_by_the_first, rebalancing, split, workers=2, max_staleness=5)
    assert not moving.settled and moving.why == "the worker group is completing_rebalancing"
    # Stable, but partition 2 is still vouched for by its former owner (within the bound).
    rebuilding = judge_settled(everything_by_the_first, STABLE, split, workers=2, max_staleness=5)
    assert not rebuilding.settled and "rebuilding" in rebuilding.why
    # A partition assigned to no one.
    orphan = judge_settled(
        view("a", "a", "a"), STABLE, {"a": [0, 1], "b": []}, workers=2, max_staleness=5
    )
    assert not orphan.settled and orphan.why == "partitions assigned [0, 1] of 3"
    # The view itself not ready: that verdict's reason.
    unready = Readiness(False, "view not ready for partitions [2] (being rebuilt)")
    assert judge_settled(unready, STABLE, split, 2, 5).why == (
        "the view: view not ready for partitions [2] (being rebuilt)"
    )
