"""The worker's continuous reconciliation (issue #20, hole 9), against a real Redis view and
the table on a real RocksDB store."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from redis.asyncio import Redis as AsyncRedis

from infra.launch.stack import LocalStack
from schemas.state import SuppressionState
from streams.audit import YIELD_EVERY, ViewAudit, in_force_partition
from streams.faust_bridge import FaustStateTable
from streams.processor import encode_state
from tests.test_table_store import _table
from tests.test_view_sharded import NOW, PARTITIONS, ShardedView, _state, phones

pytestmark = pytest.mark.redis


@pytest.fixture
def view(local_stack: LocalStack, redis_client: redis.Redis) -> Iterator[ShardedView]:
    shown = ShardedView(redis_client, AsyncRedis.from_url(local_stack.redis_url), shards=0)
    yield shown
    shown.close()


def _stored(tmp_path: Path, states: Mapping[str, SuppressionState]) -> FaustStateTable:
    """``states`` in a table on RocksDB, each in its partition's database."""
    table = FaustStateTable(_table(tmp_path))
    _store(table, states)
    return table


def _store(table: FaustStateTable, states: Mapping[str, SuppressionState]) -> None:
    table.persist({key: (s.partition, encode_state(s)) for key, s in states.items()},
                  {s.partition: 1 for s in states.values()})  # fmt: skip


def _missing_gauge(tenant: str) -> float | None:
    return REGISTRY.get_sample_value("dnc_verify_missing", {"tenant": tenant})


def test_a_member_deleted_behind_the_workers_back_is_found_and_its_partition_named(
    view: ShardedView, tmp_path: Path
) -> None:
    numbers = phones(300)
    view.fill(numbers)
    table = _stored(tmp_path, {f"acme|{p}": _state("acme", p) for p in numbers})
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


def test_a_state_changed_since_it_was_found_missing_is_not_confirmed(
    view: ShardedView, tmp_path: Path
) -> None:
    numbers = phones(20)
    view.fill(numbers)
    table = _stored(tmp_path, {f"acme|{p}": _state("acme", p) for p in numbers})
    audit = ViewAudit(table, view.async_client, view.layout)
    key, member = view.layout.locate("acme", numbers[3])
    view.sync.srem(key + "r", member)
    run = view.loop.run_until_complete
    assert run(audit.step(range(PARTITIONS), NOW, budget=100)) == set()
    lifted = _state("acme", numbers[3]).model_copy(update={"active": ()})
    _store(table, {f"acme|{numbers[3]}": lifted})  # a lift applied meanwhile
    assert run(audit.step(range(PARTITIONS), NOW, budget=100)) == set()


def test_a_pass_reads_every_state_a_page_at_a_time_within_its_budget(
    view: ShardedView, tmp_path: Path
) -> None:
    numbers = phones(3 * YIELD_EVERY + 7)  # more than a page
    view.fill(numbers)
    table = _stored(tmp_path, {f"acme|{p}": _state("acme", p) for p in numbers})
    lifted = {f"acme|{p}": _state("acme", p).model_copy(update={"active": ()})
              for p in numbers[::3]}  # fmt: skip
    _store(table, lifted)  # (read, not in force: not audited, not counted in the budget)
    in_force = len(numbers) - len(lifted)
    budget = 600
    victim = numbers[-2]  # (in force: -2 is not a multiple of 3 from the start)
    key, member = view.layout.locate("acme", victim)
    view.sync.srem(key + "r", member)
    audited = REGISTRY.get_sample_value("dnc_verify_audited_total") or 0.0
    run = view.loop.run_until_complete
    steps = -(-in_force // budget)  # a pass, step by step
    audit = ViewAudit(table, view.async_client, view.layout)
    confirmed = [run(audit.step(range(PARTITIONS), NOW, budget)) for _ in range(steps + 1)]
    now_audited = REGISTRY.get_sample_value("dnc_verify_audited_total") or 0.0
    # Each step stopped at its budget, and the pass audited every state in force once.
    assert now_audited - audited == in_force + budget  # (the next pass's first step: +budget)
    assert sorted(map(sorted, confirmed)) == [[]] * steps + [[0]]  # found once, then confirmed


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
