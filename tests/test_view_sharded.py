"""The sharded view (the layout for a Redis Cluster), written and read on real Redis.

A check is one script on the number's shard: its node's clock, its node's identity, the
shard's copy of the metadata and the members. Run here on one Redis server with shards
(the same scripts and keys) and on a real Redis Cluster of 3 masters with a replica each.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from consumers.checker import Answer, SuppressionChecker, checker_client
from infra.launch.redis_cluster import RedisCluster as RedisClusterService
from infra.launch.stack import LocalStack
from schemas.events import GLOBAL_TARGET, Kind, Scope, Source
from schemas.settings import BUNDLED_TENANTS_FILE
from schemas.state import ActiveSuppression, Stamp, SuppressionState
from schemas.tenants import TenantDirectory
from schemas.view import ViewLayout, claim_token, instance_field, node_field
from streams.view_writer import SuppressionViewWriter, ViewMoved

NOW = datetime.now(UTC)
PARTITIONS = 3
TOKEN = claim_token("era", 1, "w-test")  # the writer's claim on every partition
TENANTS = TenantDirectory.load(BUNDLED_TENANTS_FILE)


def _state(target: str, phone: str) -> SuppressionState:
    entry = ActiveSuppression(
        stamp=Stamp(occurred_at=NOW, event_id=uuid.uuid4()),
        kind=Kind.REFUSAL,
        expires_at=None,
        source=Source.AGENT_DESKTOP,
    )
    scope = Scope.GLOBAL if target == GLOBAL_TARGET else Scope.TENANT
    return SuppressionState(target=target, tenant="acme", scope=scope, campaign_id=None,
                            phone_e164=phone, active=(entry,), updated_at=NOW)  # fmt: skip


def phones(n: int) -> list[str]:
    return [f"+336{10000000 + i * 7919:08d}" for i in range(n)]


class ShardedView:
    """A writer (the worker's side) and a checker (the dialer's) on one Redis deployment."""

    def __init__(self, sync: Any, async_client: Any, shards: int) -> None:
        self.layout = ViewLayout(b"sharded-test-key", 64, shards=shards)
        self.sync = sync
        self.checker = SuppressionChecker(
            sync, self.layout, TENANTS, max_staleness_seconds=5, async_client=async_client
        )
        self.loop = asyncio.new_event_loop()
        self.async_client = async_client
        self.writer = SuppressionViewWriter(async_client, self.layout, "w-test")

    def run(self, work: Any) -> Any:
        """``work(writer)`` on the writer's event loop."""
        return self.loop.run_until_complete(work(self.writer))

    def close(self) -> None:
        self.loop.run_until_complete(self.async_client.aclose())
        self.loop.close()

    def fill(self, suppressed: list[str]) -> SuppressionViewWriter:
        """Mark every partition ready, write ``suppressed`` (tenant acme), vouch: current."""

        async def work(writer: SuppressionViewWriter) -> SuppressionViewWriter:
            await writer.claim({p: TOKEN for p in range(PARTITIONS)})
            await writer.write([_state("acme", p) for p in suppressed], NOW)
            await writer.mark_ready(range(PARTITIONS), PARTITIONS)
            now = await writer.server_time_ms()
            assert await writer.vouch(dict.fromkeys(range(PARTITIONS), (now, 0)), {}) == set()
            return writer

        return self.run(work)


@pytest.fixture
def plain_sharded(local_stack: LocalStack, redis_client: redis.Redis) -> Iterator[ShardedView]:
    view = ShardedView(redis_client, AsyncRedis.from_url(local_stack.redis_url), shards=8)
    yield view
    view.close()


@pytest.fixture
def cluster_sharded(redis_cluster: RedisClusterService) -> Iterator[ShardedView]:
    """The view on a real Redis Cluster (3 masters, a replica each), flushed."""
    sync = checker_client(redis_cluster.url, 2, cluster=True)
    sync.flushall(target_nodes=RedisCluster.PRIMARIES)
    view = ShardedView(sync, AsyncRedisCluster.from_url(redis_cluster.url), shards=48)
    yield view
    view.close()
    sync.close()


def _answers(view: ShardedView, numbers: list[str]) -> dict[str, Answer]:
    return {p: view.checker.check(p, "acme").answer for p in numbers}


def assert_reads_what_was_written(view: ShardedView) -> None:
    numbers = phones(120)
    suppressed = numbers[::3]
    view.fill(suppressed)
    single = _answers(view, numbers)
    assert {p for p, a in single.items() if a == Answer.SUPPRESSED} == set(suppressed)
    assert {a for p, a in single.items() if p not in suppressed} == {Answer.CALLABLE}
    bulk = view.checker.check_many(numbers, "acme")
    assert [r.answer for r in bulk] == [single[p] for p in numbers]
    assert view.checker.readiness().ready
    # Every key of a number is in its shard: one slot, one node.
    keys = {view.layout.locate(t, p)[0] for p in numbers for t in ("acme", GLOBAL_TARGET)}
    tags = {k.split("{", 1)[1].split("}", 1)[0] for k in keys}
    assert tags == {f"s{view.layout.shard_of(p)}" for p in numbers}
    assert len(tags) > view.layout.shards // 2  # 120 numbers spread over the shards


@pytest.mark.redis
def test_a_sharded_view_answers_like_the_plain_one(plain_sharded: ShardedView) -> None:
    assert_reads_what_was_written(plain_sharded)


@pytest.mark.redis
def test_on_a_redis_cluster_each_number_is_read_on_one_node(
    cluster_sharded: ShardedView,
) -> None:
    assert_reads_what_was_written(cluster_sharded)
    sync, layout = cluster_sharded.sync, cluster_sharded.layout
    nodes = {sync.get_node_from_key(key).name for key in layout.meta_keys()}
    assert len(nodes) == 3  # the shards are spread over the 3 masters


@pytest.mark.redis
def test_on_a_redis_cluster_a_copy_vouched_for_on_another_node_fails_closed(
    cluster_sharded: ShardedView,
) -> None:
    assert_a_copy_on_another_node_fails_closed(cluster_sharded)


def assert_a_copy_on_another_node_fails_closed(view: ShardedView) -> None:
    numbers = phones(60)
    view.fill(numbers[:30])
    victim = numbers[0]
    meta_key = view.layout.meta_key(victim)
    # As after a failover: the copy says it was vouched for on another node (and instance).
    view.sync.hset(meta_key, mapping={node_field(1): "another-node", instance_field(1): "x"})
    in_shard = [p for p in numbers if view.layout.meta_key(p) == meta_key]
    elsewhere = [p for p in numbers if view.layout.meta_key(p) != meta_key]
    result = view.checker.check(victim, "acme")
    assert result.answer == Answer.UNAVAILABLE and "not vouched for on this Redis node" in (
        result.why or ""
    )
    assert {view.checker.check(p, "acme").answer for p in in_shard} == {Answer.UNAVAILABLE}
    assert Answer.UNAVAILABLE not in {view.checker.check(p, "acme").answer for p in elsewhere}
    answers = [r.answer for r in view.checker.check_many(numbers, "acme")]
    bulk = dict(zip(numbers, answers, strict=True))
    assert {bulk[p] for p in in_shard} == {Answer.UNAVAILABLE}
    assert not view.checker.readiness().ready

    async def vouch_again(w: SuppressionViewWriter) -> set[int]:
        now = await w.server_time_ms()
        return await w.vouch({p: (now, 0) for p in range(PARTITIONS)}, {})

    # The worker may not vouch there again without a rebuild (mark_ready).
    assert view.run(vouch_again) == {1}


@pytest.mark.redis
def test_a_copy_vouched_for_on_another_node_fails_closed(plain_sharded: ShardedView) -> None:
    assert_a_copy_on_another_node_fails_closed(plain_sharded)


def assert_a_rebuild_across_a_failover_is_not_marked_ready(view: ShardedView) -> None:
    numbers = phones(40)
    view.fill(numbers)

    async def rebuild_across_a_failover(w: SuppressionViewWriter) -> None:
        await w.claim({p: claim_token("era", 2, "w-test") for p in range(PARTITIONS)})
        # As if the node holding this shard was replaced while the rebuild wrote to it.
        w._instances[view.layout.meta_key(numbers[0])] = "the-instance-before"
        await w.write([_state("acme", p) for p in numbers], NOW)
        await w.mark_ready(range(PARTITIONS), PARTITIONS)

    with pytest.raises(ViewMoved):
        view.run(rebuild_across_a_failover)
    assert view.checker.check(numbers[0], "acme").answer is Answer.UNAVAILABLE
    assert not view.checker.readiness().ready


@pytest.mark.redis
def test_a_rebuild_across_a_failover_is_not_marked_ready(plain_sharded: ShardedView) -> None:
    assert_a_rebuild_across_a_failover_is_not_marked_ready(plain_sharded)


@pytest.mark.redis
def test_on_a_redis_cluster_a_rebuild_across_a_failover_is_not_marked_ready(
    cluster_sharded: ShardedView,
) -> None:
    assert_a_rebuild_across_a_failover_is_not_marked_ready(cluster_sharded)


def assert_answers_right_after_the_scripts_are_flushed(view: ShardedView) -> None:
    """A check is one script (EVALSHA): a node that lost it (``SCRIPT FLUSH``, a restart, a
    promoted replica) is given it again, and the check answers."""
    numbers = phones(60)
    view.fill(numbers[::2])
    expected = [Answer.SUPPRESSED if i % 2 == 0 else Answer.CALLABLE for i in range(60)]

    async def asyncio_checks(numbers: list[str]) -> list[Answer]:
        return [(await view.checker.check_async(p, "acme")).answer for p in numbers]

    readers = {
        "check": lambda: [view.checker.check(p, "acme").answer for p in numbers],
        "check_async": lambda: view.loop.run_until_complete(asyncio_checks(numbers)),
        "check_many": lambda: [r.answer for r in view.checker.check_many(numbers, "acme")],
    }
    for name, read in readers.items():
        view.sync.script_flush()  # (on a Redis Cluster: on every master)
        assert read() == expected, name
    view.sync.script_flush()
    assert view.checker.readiness().ready


@pytest.mark.redis
def test_a_sharded_view_is_read_right_after_the_scripts_are_flushed(
    plain_sharded: ShardedView,
) -> None:
    assert_answers_right_after_the_scripts_are_flushed(plain_sharded)


@pytest.mark.redis
def test_on_a_redis_cluster_a_check_right_after_the_scripts_are_flushed_answers(
    cluster_sharded: ShardedView,
) -> None:
    assert_answers_right_after_the_scripts_are_flushed(cluster_sharded)
