"""A worker keeps every state of the partitions it keeps through a rebalance.

Faust revokes every partition at the start of a rebalance (eager protocol), but its
recovery only re-reads the changelog of the partitions the new assignment takes away, and
resumes the others where its last recovery stopped. A worker that dropped the states of all
its revoked partitions (as one did, to forget work applied in memory and never made durable)
lost, on the partitions it kept, every state older than its last recovery: its next view
rebuild left those numbers out, and they were answered "callable". Seen in the two-worker
SIGSTOP drill; here it takes only a worker that recovered states, then a second worker
joining and leaving, on a real Kafka and Redis. A state missing from the table shows when
the number's next event is applied to nothing: a refusal replaced the opposition, in the
view and the changelog, and when it expired the number was callable.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from consumers.checker import Answer
from schemas.events import Kind, OppositionEvent
from tests.harness import Pipeline, wait_for

pytestmark = [pytest.mark.pipeline, pytest.mark.kafka, pytest.mark.redis]

TENANT = "acme"
NUMBERS = [f"+336{40_000_000 + i:08d}" for i in range(300)]  # spread over every partition


def _callable(p: Pipeline) -> list[str]:
    """The numbers answered something other than opposed (every one of them was opposed)."""
    return [n for n in NUMBERS if p.check(n, TENANT).answer is not Answer.SUPPRESSED]


def _settled(p: Pipeline, workers: set[str]) -> bool:
    owners = p.owners()
    return (
        len(owners) == p.settings.partitions
        and set(owners.values()) == workers
        and p.check("+33612345678", TENANT).answer is not Answer.UNAVAILABLE
    )


def test_states_survive_a_rebalance_of_a_worker_that_recovered_them(pipeline: Pipeline) -> None:
    [first] = pipeline.start_workers(1)
    outcomes = pipeline.publisher.publish_many(
        [OppositionEvent.record(tenant=TENANT, phone=n, kind=Kind.OPPOSITION) for n in NUMBERS]
    )
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes[:3]
    wait_for(lambda: not _callable(pipeline), timeout=60, what="every number opposed")

    # A new worker recovers the states from the changelog (its recovery moves past them)...
    pipeline.kill_worker_id(first)
    [survivor] = pipeline.start_workers(1)
    wait_for(lambda: _settled(pipeline, {survivor}), timeout=120, what="the survivor serving")
    assert not _callable(pipeline)

    # ...then a second worker joins (the survivor keeps some partitions) and leaves.
    [joiner] = pipeline.start_workers(1)
    wait_for(lambda: _settled(pipeline, {survivor, joiner}), timeout=120, what="both vouching")
    wrong = _callable(pipeline)
    assert not wrong, f"{len(wrong)} opposed numbers not answered opposed after the join"

    pipeline.kill_worker_id(joiner)
    wait_for(lambda: _settled(pipeline, {survivor}), timeout=120, what="the survivor alone")
    wrong = _callable(pipeline)
    assert not wrong, f"{len(wrong)} opposed numbers not answered opposed after the leave"

    # Each number's next event is applied to the state the survivor holds: a refusal that
    # ends in a few seconds must leave the opposition in force.
    until = datetime.now(UTC) + timedelta(seconds=4)
    outcomes = pipeline.publisher.publish_many(
        [
            OppositionEvent.record(tenant=TENANT, phone=n, kind=Kind.REFUSAL, expires_at=until)
            for n in NUMBERS
        ]
    )
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes[:3]
    topic = pipeline.settings.oppositions_topic
    wait_for(lambda: not any(pipeline.commit_lag(topic).values()), timeout=60,
             what="the refusals applied and committed")  # fmt: skip
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 3.0)
    wrong = _callable(pipeline)
    assert not wrong, f"{len(wrong)} opposed numbers callable once a refusal applied later ended"
