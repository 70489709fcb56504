"""What fencing misses must be detected (issue #20): a member the log holds, gone from the
view behind the worker's back, is found by the worker itself, counted in a metric, and the
number answered "suppressed" again, without anybody running `dnc verify`. And a reader
takes the view's metadata and members in one atomic read, so a flush between the two never
reads as "callable".

Real services: Kafka, Redis and a real `dnc worker` (tests/harness.Pipeline).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import redis

from consumers.checker import Answer, SuppressionChecker
from schemas.events import Kind, OppositionEvent
from schemas.tenants import TenantDirectory
from schemas.view import (
    META_KEY,
    META_LAYOUT,
    META_PARTITIONS,
    ViewLayout,
    applied_field,
    ready_field,
    view_layout,
)
from tests.harness import Pipeline, wait_for

pytestmark = [pytest.mark.pipeline]

DETECTION_BOUND = 60.0  # seconds: generous; the promise is that it comes back at all


@pytest.mark.timeout(240)
def test_a_member_removed_behind_the_workers_back_is_found_and_suppressed_again(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start_worker()
    layout = view_layout(p.settings, p.tenants)
    number = "+33612000001"
    key, member = layout.locate("acme", number)
    # A second number in the same set: after the SREM the set still exists, so a scan that
    # only asks whether the keys it filled exist sees nothing wrong.
    sibling = next(
        n for n in (f"+336{i:08d}" for i in count(12_000_002)) if layout.locate("acme", n)[0] == key
    )
    for phone in (number, sibling):
        p.publisher.publish(
            OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.OPPOSITION)
        )
    p.wait_answer(number, "acme", "suppressed")
    p.wait_answer(sibling, "acme", "suppressed")

    assert p.redis.srem(key, str(member)) == 1  # behind the worker's back
    assert p.redis.exists(key) == 1
    removed = p.check(number, "acme").answer.value
    print(f"answer right after the member was removed: {removed}")

    restored = _within(
        DETECTION_BOUND, lambda: p.check(number, "acme").answer.value == "suppressed"
    )
    metric = re.compile(r'^dnc_verify_missing(_total)?\{[^}]*tenant="acme"[^}]*\} \S+$', re.M)
    detected = _within(10, lambda: metric.search(p.metrics()))
    answer = p.check(number, "acme").answer.value
    print(f"{DETECTION_BOUND:.0f}s after the removal: {answer}; metric: {detected}")
    assert restored, (
        f"{number} (an objection in the log) still answered {answer!r} {DETECTION_BOUND:.0f}s "
        f"after its member was removed from the view: nothing detected it\n{p.diagnose()}"
    )
    assert detected, (
        f"no dnc_verify_missing for tenant acme on the worker's /metrics\n{p.metrics()}"
    )


def _within(seconds: float, predicate: Callable[[], Any]) -> Any:
    """``predicate``'s first truthy value within ``seconds``; None if there was none."""
    try:
        return wait_for(predicate, timeout=seconds, interval=0.5)
    except AssertionError:
        return None


@pytest.mark.timeout(120)
def test_a_flush_between_a_checks_metadata_and_members_never_reads_as_callable(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A view written by hand as the worker writes it (members, then the metadata saying every
    partition is ready and current), flushed and written again over and over while a dialer
    checks 200 of its numbers in bulk: every answer is "suppressed" or "unavailable".

    A check pipelined without a transaction reads the metadata, then the sets: a FLUSHALL in
    between answers "callable" for numbers that were in the view whenever it said ready
    (seen in the fault drills as ~150 "callable" answers in the dialer round of a FLUSHALL)."""
    (tmp_path / "tenants.toml").write_text('[tenants.acme]\ndefault_region = "FR"\n')
    tenants = TenantDirectory.load(tmp_path / "tenants.toml")
    layout = ViewLayout(b"test-view-key-atomic-read", 1024)
    numbers = [f"+336{13_000_000 + i:08d}" for i in range(200)]

    def write_view() -> None:
        seconds, micros = redis_client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        pipe = redis_client.pipeline(transaction=True)  # the whole view at once
        for number in numbers:
            key, member = layout.locate("acme", number)
            pipe.sadd(key, str(member))
        pipe.hset(META_KEY, mapping={
            META_PARTITIONS: "3", META_LAYOUT: layout.fingerprint,
            **{ready_field(p): str(now_ms) for p in range(3)},
            **{applied_field(p): str(now_ms) for p in range(3)},
        })  # fmt: skip
        pipe.execute()

    write_view()
    checker = SuppressionChecker(redis_client, layout, tenants, max_staleness_seconds=5.0)
    answers: Counter[Answer] = Counter(r.answer for r in checker.check_many(numbers, "acme"))
    assert answers == {Answer.SUPPRESSED: len(numbers)}, answers
    stop = threading.Event()

    def dial() -> None:
        while not stop.is_set():
            answers.update(r.answer for r in checker.check_many(numbers, "acme"))

    dialer = threading.Thread(target=dial, daemon=True)
    dialer.start()
    try:
        for _ in range(300):
            redis_client.flushall()
            write_view()
    finally:
        stop.set()
        dialer.join(timeout=30)
    print(f"answers across 300 flushes: { {a.value: n for a, n in answers.items()} }")
    assert answers[Answer.CALLABLE] == 0, answers
