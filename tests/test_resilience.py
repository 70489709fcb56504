"""Crashes and lost state: nothing lost, nothing applied twice in effect, fail closed meanwhile."""

from __future__ import annotations

import json
import threading
import time

import pytest

from schemas.events import Kind, OppositionEvent
from tests.harness import Pipeline, wait_for

pytestmark = pytest.mark.pipeline


def numbers(start: int, count: int) -> list[str]:
    return [f"+336{start + i:08d}" for i in range(count)]


@pytest.mark.timeout(300)
def test_worker_crash_and_restart_mid_stream_loses_nothing_and_applies_nothing_twice(
    pipeline: Pipeline,
) -> None:
    pipeline.start_worker()
    phones = numbers(10_000_000, 1500)
    events = [OppositionEvent.record(tenant="acme", phone=n, kind=Kind.OPPOSITION) for n in phones]

    def publish_in_waves() -> None:
        for i in range(0, len(events), 100):
            for outcome in pipeline.publisher.publish_many(events[i : i + 100]):
                assert not isinstance(outcome, Exception), outcome
            time.sleep(0.05)

    publisher = threading.Thread(target=publish_in_waves)
    publisher.start()
    time.sleep(0.4)
    pipeline.kill_worker()  # SIGKILL mid-stream: no graceful commit
    time.sleep(1.0)
    pipeline.start_worker(wait_ready=False)
    publisher.join()
    time.sleep(1.0)
    t0 = time.monotonic()
    pipeline.stop_worker()  # and a graceful restart on top
    print(f"graceful stop took {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    pipeline.start_worker()
    print(f"restart until ready took {time.monotonic() - t0:.1f}s")

    def all_suppressed() -> bool:
        results = pipeline.checker.check_many(phones, "acme")
        return all(r.answer.value == "suppressed" for r in results)

    t0 = time.monotonic()
    try:
        wait_for(all_suppressed, timeout=90, interval=0.5, what="every published number suppressed")
    except AssertionError:
        print(pipeline.diagnose())
        raise
    print(f"caught up in {time.monotonic() - t0:.1f}s")

    # Every number got exactly one event: each one's latest state must be version 1,
    # i.e. replays after the crash were recognised as duplicates, not applied again.
    latest: dict[str, dict[str, object]] = {}

    def every_number_seen(messages: list[object]) -> bool:
        change = json.loads(messages[-1].value())  # type: ignore[attr-defined]
        latest[change["phone_e164"]] = change
        return set(latest) == set(phones)

    pipeline.consume(
        pipeline.settings.suppressions_topic, 10 * len(phones), timeout=60, until=every_number_seen
    )
    assert set(latest) == set(phones)
    assert {c["version"] for c in latest.values()} == {1}
    assert all(c["suppressed"] for c in latest.values())
    # The worker commits what it applied, all of it once caught up (a restart replays
    # nothing more than the last second).
    log = pipeline.settings.oppositions_topic
    wait_for(lambda: set(pipeline.commit_lag(log).values()) == {0}, timeout=15,
             what="the worker's committed offsets at the log's end")  # fmt: skip
    print(f"commit lag per partition: {pipeline.commit_lag(log)}")


def test_flushed_redis_answers_unavailable_until_rebuilt(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    phones = numbers(20_000_000, 300)
    for outcome in pipeline.publisher.publish_many(
        [OppositionEvent.record(tenant="acme", phone=n, kind=Kind.ERASURE) for n in phones]
    ):
        assert not isinstance(outcome, Exception)
    wait_for(
        lambda: all(
            r.answer.value == "suppressed" for r in pipeline.checker.check_many(phones, "acme")
        ),
        timeout=30,
        what="suppressed before the flush",
    )

    pipeline.redis.flushall()
    first = pipeline.check(phones[0], "acme")
    assert first.answer.value == "unavailable", first  # never "callable" from an empty view
    assert first.why and "not ready" in first.why

    wait_for(
        lambda: pipeline.check(phones[0], "acme").answer.value != "unavailable",
        timeout=30,
        what="the worker to rebuild the view",
    )
    results = pipeline.checker.check_many(phones, "acme")
    assert all(r.answer.value == "suppressed" for r in results)
    metrics = pipeline.metrics()  # the fenced vouch or the maintenance tick saw it first
    assert any(f'dnc_view_rebuilds_total{{trigger="{t}"}}' in metrics
               for t in ("view_lost", "view_replaced")), metrics  # fmt: skip


def test_redis_down_or_worker_gone_fails_closed(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    assert pipeline.check("0612345678", "acme").answer.value == "callable"
    pipeline.kill_worker()
    stale = wait_for(
        lambda: (r := pipeline.check("0612345678", "acme")).answer.value == "unavailable" and r,
        timeout=15,
        what="the view to go stale",
    )
    assert "not current" in (stale.why or "")

    import redis

    from consumers.checker import SuppressionChecker

    dead = SuppressionChecker(
        redis.Redis(port=1, socket_connect_timeout=0.2), pipeline.checker._layout, pipeline.tenants
    )
    result = dead.check("0612345678", "acme")
    assert result.answer.value == "unavailable" and "redis unreachable" in (result.why or "")
    assert [r.answer.value for r in dead.check_many(["0612345678", "0612345679"], "acme")] == [
        "unavailable",
        "unavailable",
    ]


def test_a_stalled_worker_stops_vouching_so_checks_fail_closed(pipeline: Pipeline) -> None:
    """Redis is fine, but the worker cannot finish a batch (its output topic is gone)."""
    from confluent_kafka.admin import AdminClient

    from infra.topics import ensure_pipeline_topics

    pipeline.env["DNC_STALL_AFTER_SECONDS"] = "2"
    pipeline.env["DNC_STALL_EXIT_AFTER_SECONDS"] = "0"
    pipeline.start_worker()
    admin = AdminClient({"bootstrap.servers": pipeline.stack.bootstrap_servers})
    for future in admin.delete_topics([pipeline.settings.suppressions_topic]).values():
        future.result(timeout=30)
    time.sleep(2)
    pipeline.publisher.publish(
        OppositionEvent.record(tenant="acme", phone="0687654321", kind=Kind.OPPOSITION)
    )
    stalled = wait_for(
        lambda: (r := pipeline.check("0687654321", "acme")).answer.value == "unavailable" and r,
        timeout=40,
        what="checks to fail closed while the worker is stalled",
    )
    assert "not current" in (stalled.why or "")
    wait_for(lambda: "made no progress" in pipeline.worker_log(tail=None), timeout=30,
             what="the worker to report the stall")  # fmt: skip

    ensure_pipeline_topics(pipeline.settings)  # the operator restores the topic
    pipeline.wait_answer("0687654321", "acme", "suppressed", timeout=60)
