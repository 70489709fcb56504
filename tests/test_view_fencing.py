"""Every write to the view is fenced (issue #20), on real Redis, plain and sharded.

The worker's side (streams/view_writer.py) against a real Redis: a rebuild interrupted by a
flush or a Redis restart is never marked ready, a writer whose claim was superseded by a
newer owner's cannot write, mark or vouch any more, a vouch on another Redis instance is
refused, and the partition count in the metadata only grows. The pipeline-level drills
(a worker frozen past the session timeout, FLUSHALL during a rebuild of 200,000 states, a
Redis restart during a rebuild) are in tests/test_faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from consumers.checker import Answer
from infra.launch.stack import LocalStack
from schemas.view import META_PARTITIONS, claim_token, instance_field
from streams.fencing import OwnershipLost
from streams.view_writer import SuppressionViewWriter, ViewLost, ViewMoved
from tests.test_view_sharded import NOW, PARTITIONS, ShardedView, _state, phones

pytestmark = pytest.mark.redis

ALL = range(PARTITIONS)


@pytest.fixture(params=[0, 8], ids=["plain", "sharded"])
def view(
    request: pytest.FixtureRequest, local_stack: LocalStack, redis_client: redis.Redis
) -> Iterator[ShardedView]:
    shown = ShardedView(redis_client, AsyncRedis.from_url(local_stack.redis_url), request.param)
    yield shown
    shown.close()


def _claims(sequence: int, worker: str = "w-test", era: str = "era") -> dict[int, str]:
    return {p: claim_token(era, sequence, worker) for p in ALL}


def _suppressed(view: ShardedView, numbers: list[str]) -> list[Answer]:
    return [r.answer for r in view.checker.check_many(numbers, "acme")]


def test_a_flush_during_a_rebuild_is_never_marked_ready(view: ShardedView) -> None:
    numbers = phones(400)
    first, rest = numbers[:200], numbers[200:]

    async def rebuild(w: SuppressionViewWriter) -> None:
        await w.claim(_claims(1))
        await w.write([_state("acme", p) for p in first], NOW)  # the rebuild's first chunk
        view.sync.flushall()  # ... lost
        await w.write([_state("acme", p) for p in rest], NOW)  # later chunks recreate keys
        await w.mark_ready(ALL, PARTITIONS)

    with pytest.raises(ViewLost):
        view.run(rebuild)
    # Nothing was written after the flush (the claims were gone), nothing is ready.
    assert set(_suppressed(view, numbers)) == {Answer.UNAVAILABLE}
    assert not view.checker.readiness().ready
    assert 0 in view.writer.lost  # (the states' partition)


def test_a_restart_during_a_rebuild_is_never_marked_ready(view: ShardedView) -> None:
    numbers = phones(50)

    async def rebuild(w: SuppressionViewWriter) -> None:
        await w.claim(_claims(1))
        await w.write([_state("acme", p) for p in numbers], NOW)
        # As a restart that reloaded a snapshot taken after the claim: the claims are there,
        # the instance is another one (its run id).
        for key in w.layout.meta_keys():
            w._instances[key] = "the-instance-at-the-claim"
        await w.mark_ready(ALL, PARTITIONS)

    with pytest.raises(ViewMoved):
        view.run(rebuild)
    assert not view.checker.readiness().ready


def test_a_copy_swapped_in_during_a_rebuild_is_never_marked_ready(view: ShardedView) -> None:
    """A restore of an earlier copy (here SWAPDB) keeps the claims and the run id: the write
    counter tells it lost the writes made since."""
    numbers = phones(200)

    async def rebuild(w: SuppressionViewWriter) -> None:
        await w.claim(_claims(1))
        await w.write([_state("acme", p) for p in numbers[:100]], NOW)
        for key in view.sync.scan_iter(match="dnc:v1:*"):  # the copy, in database 1
            assert view.sync.copy(key, key, destination_db=1, replace=True)
        await w.write([_state("acme", p) for p in numbers[100:]], NOW)
        view.sync.swapdb(0, 1)  # ... restored
        await w.mark_ready(ALL, PARTITIONS)

    try:
        with pytest.raises(ViewMoved):
            view.run(rebuild)
        assert not view.checker.readiness().ready
    finally:
        view.sync.execute_command("FLUSHDB")  # (database 0 is the copy; 1 the swapped out)
        view.sync.swapdb(0, 1)
        view.sync.execute_command("FLUSHDB")


def test_a_superseded_owner_can_no_longer_write_mark_or_vouch(view: ShardedView) -> None:
    numbers = phones(60)
    old = view.fill(numbers[:30])  # worker A: claim 1, ready, vouched
    newer = SuppressionViewWriter(view.async_client, view.layout, "w-new")

    async def take_over(w: SuppressionViewWriter) -> None:
        await newer.claim(_claims(2, "w-new"))  # worker B's fence record came later
        await newer.write([_state("acme", p) for p in numbers], NOW)
        await newer.mark_ready(ALL, PARTITIONS)
        now = await newer.server_time_ms()
        assert await newer.vouch({p: (now, 0) for p in ALL}, {}) == set()

    view.run(take_over)
    assert set(_suppressed(view, numbers)) == {Answer.SUPPRESSED}

    async def stale_lift(w: SuppressionViewWriter) -> None:
        lifted = _state("acme", numbers[0]).model_copy(update={"active": ()})
        await w.write([lifted], NOW)  # A resumes with a lift it applied before it froze

    with pytest.raises(OwnershipLost):
        view.run(stale_lift)
    assert _suppressed(view, numbers[:1]) == [Answer.SUPPRESSED]  # the newer owner's wins

    async def stale_vouch(w: SuppressionViewWriter) -> set[int]:
        now = await w.server_time_ms()
        return await w.vouch({p: (now, 0) for p in ALL}, {})

    assert view.run(stale_vouch) == set(ALL)

    async def stale_claim(w: SuppressionViewWriter) -> None:
        await w.claim(_claims(1))  # A's old claim again (it cannot get a newer one)

    with pytest.raises(OwnershipLost):
        view.run(stale_claim)
    assert 0 not in old.claimed
    assert set(_suppressed(view, numbers)) == {Answer.SUPPRESSED}


def test_a_claim_of_another_era_is_accepted(view: ShardedView) -> None:
    """The fence topic recreated (its offsets restart at 0): its claims are not compared
    with the old topic's, whose owners cannot append to it any more."""
    view.fill(phones(10))
    newer = SuppressionViewWriter(view.async_client, view.layout, "w-new")
    view.run(lambda _w: newer.claim(_claims(0, "w-new", era="another")))
    assert newer.claimed == frozenset(ALL)


def test_writes_after_a_flush_are_skipped_and_the_partitions_lost(view: ShardedView) -> None:
    numbers = phones(20)
    view.fill(numbers[:10])
    view.sync.flushall()

    async def write(w: SuppressionViewWriter) -> None:
        await w.write([_state("acme", p) for p in numbers], NOW)

    view.run(write)  # no exception: the partition is lost, to be rebuilt
    assert view.writer.lost == {0} and 0 not in view.writer.claimed  # (the states' partition)
    assert view.sync.dbsize() == 0  # nothing written under a vanished claim


def test_a_vouch_on_another_instance_is_refused(view: ShardedView) -> None:
    view.fill(phones(10))
    for key in view.layout.meta_keys():
        view.sync.hset(key, instance_field(2), "a-restarted-instance")

    async def vouch(w: SuppressionViewWriter) -> set[int]:
        now = await w.server_time_ms()
        return await w.vouch({p: (now, 0) for p in ALL}, {})

    assert view.run(vouch) == {2}


def test_the_partition_count_only_grows(view: ShardedView) -> None:
    view.fill(phones(10))
    for key in view.layout.meta_keys():
        view.sync.hset(key, META_PARTITIONS, "12")  # a worker configured with 12 partitions

    async def rebuild(w: SuppressionViewWriter) -> None:
        await w.claim(_claims(2))
        await w.mark_ready(ALL, PARTITIONS)

    view.run(rebuild)
    assert {view.sync.hget(k, META_PARTITIONS) for k in view.layout.meta_keys()} == {b"12"}


# --- adoption: a restarted owner serves the view it left instead of rebuilding it ----------


def _left(view: ShardedView, numbers: list[str], covered: int | None, vouch: bool = True) -> None:
    """Worker w-test claims, writes ``numbers``, marks ready and (if ``vouch``) vouches with
    ``covered`` as its table's changelog offset: what its restart finds."""

    async def work(w: SuppressionViewWriter) -> None:
        await w.claim(_claims(1))
        await w.write([_state("acme", p) for p in numbers], NOW)
        await w.mark_ready(ALL, PARTITIONS)
        if vouch:
            now = await w.server_time_ms()
            assert await w.vouch({p: (now, 0) for p in ALL}, dict.fromkeys(ALL, covered)) == set()

    view.run(work)


def _adopt(
    view: ShardedView, covered: int | None, worker: str = "w-test", sequence: int = 2
) -> tuple[SuppressionViewWriter, set[int]]:
    restarted = SuppressionViewWriter(view.async_client, view.layout, worker)
    claims = _claims(sequence, worker)
    return restarted, view.run(lambda _w: restarted.adopt(claims, dict.fromkeys(ALL, covered)))


@pytest.mark.parametrize("covered", [41, None], ids=["states", "empty-table"])
def test_a_restarted_owner_adopts_the_view_it_left_and_serves_on(
    view: ShardedView, covered: int | None
) -> None:
    numbers = phones(50)
    _left(view, numbers, covered)
    restarted, adopted = _adopt(view, covered)
    assert adopted == set(ALL) and restarted.claimed == frozenset(ALL)
    assert set(_suppressed(view, numbers)) == {Answer.SUPPRESSED}  # (served all along)

    async def serve(w: SuppressionViewWriter) -> set[int]:
        await w.mark_ready(ALL, PARTITIONS)
        lifted = _state("acme", numbers[0]).model_copy(update={"active": ()})
        await w.write([lifted], NOW)
        now = await w.server_time_ms()
        return await w.vouch({p: (now, 0) for p in ALL}, dict.fromkeys(ALL, 42))

    assert view.run(lambda _w: serve(restarted)) == set()  # its writes and vouches count
    assert _suppressed(view, numbers[:2]) == [Answer.CALLABLE, Answer.SUPPRESSED]


def _another_instance(view: ShardedView) -> None:
    for key in view.layout.meta_keys():
        view.sync.hset(key, instance_field(2), "a-restarted-instance")


def _newer_owner(view: ShardedView) -> None:
    newer = SuppressionViewWriter(view.async_client, view.layout, "w-new")
    view.run(lambda _w: newer.claim(_claims(3, "w-new")))


@pytest.mark.parametrize(
    ("left", "change", "table", "worker", "refused"),
    [
        ("vouched", None, 42, "w-test", ALL),  # the table stored a state after the vouch
        ("vouched", None, None, "w-test", ALL),  # (or its database was replayed from empty)
        ("vouched", None, 41, "w-other", ALL),  # another worker
        ("vouched", "flush", 41, "w-test", ALL),
        ("vouched", "instance", 41, "w-test", [2]),  # Redis restarted (one copy's run id)
        ("vouched", "newer owner", 41, "w-test", ALL),
        ("not vouched", None, 41, "w-test", ALL),  # rebuilt, never vouched: nothing covered
    ],
)
def test_a_view_not_exactly_as_its_owner_left_it_is_not_adopted(
    view: ShardedView,
    left: str,
    change: str | None,
    table: int | None,
    worker: str,
    refused: range | list[int],
) -> None:
    numbers = phones(30)
    _left(view, numbers, 41, vouch=left == "vouched")
    if change == "flush":
        view.sync.flushall()
    elif change == "instance":
        _another_instance(view)
    elif change == "newer owner":
        _newer_owner(view)
    restarted, adopted = _adopt(view, table, worker)
    assert adopted == set(ALL) - set(refused)
    assert not restarted.claimed & set(refused)
    if change != "newer owner":  # (the rebuild's claim still goes through; then it rebuilds)
        view.run(lambda _w: restarted.claim({p: _claims(2, worker)[p] for p in refused}))
        assert restarted.claimed == frozenset(ALL)
