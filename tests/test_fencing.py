"""What fencing misses must be detected (issue #20): a member the log holds, gone from the
view behind the worker's back, is found by the worker itself, counted in a metric, and the
number answered "suppressed" again, without anybody running `dnc verify`.

Real services: Kafka, Redis and a real `dnc worker` (tests/harness.Pipeline).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import count
from typing import Any

import pytest

from schemas.events import Kind, OppositionEvent
from schemas.view import view_layout
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
