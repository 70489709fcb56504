"""A restarted worker serves the view it left instead of rebuilding it (issue #21).

A worker that stops (SIGTERM) or dies (SIGKILL) and comes back with the same id finds its
table on disk (RocksDB) and the view as it left it in Redis. When nothing happened since
its last vouch (no other owner, the same Redis instance, no state stored past the
changelog offset that vouch covered), it adopts the view: claimed, marked ready, nothing
rewritten, so a restart does not grow with the number of states. When its table holds a
state past what the view's last vouch covered, it rebuilds. Either way every opposition
stays suppressed, and new ones are applied after the restart. Real Kafka, Redis, workers.
"""

from __future__ import annotations

import time

import pytest

from consumers.checker import Answer
from schemas.events import Kind, OppositionEvent
from schemas.view import covered_field
from tests.harness import Pipeline, wait_for

pytestmark = [pytest.mark.pipeline, pytest.mark.kafka, pytest.mark.redis]

TENANT = "acme"
NUMBERS = [f"+336{41_000_000 + i:08d}" for i in range(200)]  # spread over every partition
ADOPTED = "adopted as left at the last vouch"
WORKER = "steady"  # the same id at each start: the same worker restarted


def _oppose(p: Pipeline, numbers: list[str]) -> None:
    outcomes = p.publisher.publish_many(
        [OppositionEvent.record(tenant=TENANT, phone=n, kind=Kind.OPPOSITION) for n in numbers]
    )
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes[:3]


def _callable(p: Pipeline, numbers: list[str]) -> list[str]:
    return [n for n in numbers if p.check(n, TENANT).answer is not Answer.SUPPRESSED]


def _answered_callable(p: Pipeline, numbers: list[str]) -> list[str]:
    """The numbers answered "callable" (not "unavailable", which fails closed)."""
    return [n for n in numbers if p.check(n, TENANT).answer is Answer.CALLABLE]


def _suppressed_count(p: Pipeline, worker_id: str | None = None) -> float:
    """The worker's ``dnc_suppressed_numbers`` for the tenant (set by the indexing)."""
    prefix = f'dnc_suppressed_numbers{{tenant="{TENANT}"}} '
    return sum(float(line[len(prefix):]) for line in p.metrics(worker_id).splitlines()
               if line.startswith(prefix))  # fmt: skip


def _covered(p: Pipeline) -> list[bytes | None]:
    return [p.redis.hget(p.meta_key, covered_field(q)) for q in range(p.settings.partitions)]


def _settle(p: Pipeline) -> None:
    """Until every number is suppressed, every event committed (a SIGKILL replays nothing,
    whose states a replay would store again: then the worker rebuilds, see below) and two
    vouches in a row covered the same offsets."""
    wait_for(lambda: not _callable(p, NUMBERS), timeout=60, what="every number opposed")
    topic = p.settings.oppositions_topic
    wait_for(lambda: not any(p.commit_lag(topic).values()), timeout=30, what="commits")

    def steady() -> bool:
        before = _covered(p)
        time.sleep(2 * p.settings.freshness_interval_seconds + 0.2)
        return None not in before and before == _covered(p)

    wait_for(steady, timeout=30, what="the vouches to cover the table")


def _restart(p: Pipeline) -> str:
    """Start the worker again (the same id); its log once its view is ready. (Its id is the
    view's owner already: wait for its own log line, not for the owner field.)"""
    p.start_worker(wait_ready=False, worker_id=WORKER)
    wait_for(lambda: "view ready:" in p.worker_log(None), timeout=90, what="the view ready")
    return p.worker_log(None)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_restarted_worker_adopts_the_view_it_left(pipeline: Pipeline, how: str) -> None:
    pipeline.start_worker(worker_id=WORKER)
    _oppose(pipeline, NUMBERS)
    _settle(pipeline)
    assert ADOPTED not in pipeline.worker_log(None)  # (its first start rebuilt an empty view)

    pipeline.stop_worker() if how == "sigterm" else pipeline.kill_worker()
    log = _restart(pipeline)
    assert ADOPTED in log, log[-3000:]
    assert not _answered_callable(pipeline, NUMBERS)
    wait_for(lambda: not _callable(pipeline, NUMBERS), timeout=30, what="vouched for again")
    # The adopted states are indexed (expiries, filled keys, counts) in the background,
    # once the view is vouched for (not before: it would only delay that vouch).
    wait_for(lambda: _suppressed_count(pipeline) == len(NUMBERS), timeout=30,
             what="the adopted view indexed")  # fmt: skip
    fresh = [f"+336{42_000_000 + i:08d}" for i in range(20)]
    _oppose(pipeline, fresh)  # (applied, written and vouched under the adopted claims)
    wait_for(lambda: not _callable(pipeline, fresh), timeout=60, what="new oppositions shown")


def test_a_view_behind_the_table_is_rebuilt_not_adopted(pipeline: Pipeline) -> None:
    """The view's last vouch covered less than the table holds (a batch stored after it,
    then the worker died): the restarted worker rebuilds every partition."""
    pipeline.start_worker(worker_id=WORKER)
    _oppose(pipeline, NUMBERS)
    _settle(pipeline)
    pipeline.kill_worker()
    for q in range(pipeline.settings.partitions):  # as if the last batches came after it
        pipeline.redis.hset(pipeline.meta_key, covered_field(q), "0")
    log = _restart(pipeline)
    assert ADOPTED not in log and "view ready:" in log, log[-3000:]
    assert not _answered_callable(pipeline, NUMBERS)
    wait_for(lambda: not _callable(pipeline, NUMBERS), timeout=30, what="vouched for again")


def test_a_failover_survivor_adopts_what_it_kept_and_counts_every_suppression(
    pipeline: Pipeline,
) -> None:
    """One of two workers dies with nothing in flight: the survivor adopts the partitions it
    kept (its view as it left them), rebuilds only the moved ones (reading their databases
    alone), and counts every owned suppression again in the background."""
    p = pipeline
    first, second = p.start_workers(2)
    wait_for(lambda: len(set(p.owners().values())) == 2, timeout=60, what="two owners")
    _oppose(p, NUMBERS)
    _settle(p)
    owners = p.owners()
    victim = owners[0]
    survivor = second if victim == first else first
    kept = sorted(q for q, owner in owners.items() if owner == survivor)
    p.kill_worker_id(victim)
    wait_for(lambda: set(p.owners().values()) == {survivor}, timeout=90,
             what=f"{survivor} vouching for every partition")  # fmt: skip
    log = (p.tmp / f"worker-{survivor.rsplit('-', 1)[1]}.log").read_text(errors="replace")
    assert f"nothing rewritten: {kept})" in log, log[-3000:]
    assert not _answered_callable(p, NUMBERS)
    wait_for(lambda: _suppressed_count(p, survivor) == len(NUMBERS), timeout=30,
             what="every suppression counted")  # fmt: skip
