"""The worker's continuous reconciliation (issue #20, hole 9), against a real Redis view."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from prometheus_client import REGISTRY
from redis.asyncio import Redis as AsyncRedis

from infra.launch.stack import LocalStack
from streams.audit import ViewAudit, in_force_partition
from streams.processor import encode_state
from tests.test_view_sharded import NOW, PARTITIONS, ShardedView, _state, phones

pytestmark = pytest.mark.redis


@pytest.fixture
def view(local_stack: LocalStack, redis_client: redis.Redis) -> Iterator[ShardedView]:
    shown = ShardedView(redis_client, AsyncRedis.from_url(local_stack.redis_url), shards=0)
    yield shown
    shown.close()


def _missing_gauge(tenant: str) -> float | None:
    return REGISTRY.get_sample_value("dnc_verify_missing", {"tenant": tenant})


def test_a_member_deleted_behind_the_workers_back_is_found_and_its_partition_named(
    view: ShardedView,
) -> None:
    numbers = phones(300)
    states = {f"acme|{p}": _state("acme", p) for p in numbers}
    view.fill(numbers)
    table = {key: encode_state(s) for key, s in states.items()}
    audit = ViewAudit(table, view.async_client, view.layout)
    victim = numbers[17]
    key, member = view.layout.locate("acme", victim)
    view.sync.srem(key + "r", member)  # one member gone (a refusal); its set still exists

    def step() -> set[int]:
        return view.loop.run_until_complete(audit.step(range(PARTITIONS), NOW, budget=1000))

    assert step() == set()  # found missing once: a suspect (a batch may be in flight)
    assert step() == {0}  # still missing, state unchanged: lost; its partition is named
    assert _missing_gauge("acme") == 1
    view.sync.sadd(key + "r", member)  # (the worker rebuilds it)
    for _ in range(3):  # the next full passes find nothing: the gauge goes back to 0
        assert step() == set()
    assert _missing_gauge("acme") == 0


def test_a_state_changed_since_it_was_found_missing_is_not_confirmed(view: ShardedView) -> None:
    numbers = phones(20)
    view.fill(numbers)
    table = {f"acme|{p}": encode_state(_state("acme", p)) for p in numbers}
    audit = ViewAudit(table, view.async_client, view.layout)
    key, member = view.layout.locate("acme", numbers[3])
    view.sync.srem(key + "r", member)
    run = view.loop.run_until_complete
    assert run(audit.step(range(PARTITIONS), NOW, budget=100)) == set()
    lifted = _state("acme", numbers[3]).model_copy(update={"active": ()})
    table[f"acme|{numbers[3]}"] = encode_state(lifted)  # a lift applied meanwhile
    assert run(audit.step(range(PARTITIONS), NOW, budget=100)) == set()


def test_in_force_reads_the_states_json() -> None:
    state = _state("acme", "+33612345678")
    raw = encode_state(state)
    assert in_force_partition(raw, NOW) == 0
    expired = state.model_copy(
        update={"active": (state.active[0].model_copy(update={"expires_at": NOW}),)}
    )
    assert in_force_partition(encode_state(expired), NOW) is None
    assert in_force_partition(encode_state(expired), NOW - timedelta(seconds=1)) == 0
    assert in_force_partition(encode_state(state.model_copy(update={"active": ()})), NOW) is None


def test_in_force_without_decoding_finds_the_partition_not_a_look_alike_string() -> None:
    """The fast path (a suppression without end) reads the partition after the active list,
    never text inside a string that imitates it."""
    state = _state("acme", "+33612345678")
    tricky = state.active[0].model_copy(update={"reason_code": '],"version":1,"partition":7'})
    raw = encode_state(state.model_copy(update={"partition": 2, "active": (tricky,)}))
    assert in_force_partition(raw, NOW) == 2
    ending = tricky.model_copy(update={"expires_at": NOW})
    lapsed = encode_state(state.model_copy(update={"partition": 2, "active": (ending,)}))
    assert in_force_partition(lapsed, NOW) is None
