"""`dnc status` answers what ops ask first, on a real worker, sync and reference list: safe to
dial per tenant (and why not), staleness per partition, what is pending where, and how many
dead letters since when."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.events import Kind
from tests.harness import raw_event, wait_for
from tests.test_reference_list import RefStack, event, ref  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.pipeline, pytest.mark.postgres]


def status(stack: RefStack, *args: str) -> tuple[int, dict[str, Any]]:
    """`dnc status --json` as an operator runs it: (exit code, report)."""
    result = stack.pipeline.cli("status", "--json", *args)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.timeout(180)
def test_status_says_whether_it_is_safe_to_dial_what_is_pending_and_the_dead_letters(
    ref: RefStack,  # noqa: F811 (the fixture imported above)
) -> None:
    settings = ref.pipeline.settings
    started = datetime.now(UTC)
    for n in range(3):
        ref.pipeline.publisher.publish(event(f"06 12 34 56 {n:02d}", Kind.OPPOSITION))
    bad = raw_event(event_id=str(uuid.uuid4()), tenant="acme", phone="12", kind="refusal")
    producer = ref.pipeline.publisher._producer
    producer.produce(settings.oppositions_topic, value=bad)
    producer.flush(10)
    ref.wait_row("+33612345602", do_not_call=True)

    def settled() -> dict[str, Any] | None:
        code, report = status(ref)
        letters = report["dead_letters"].get(settings.dead_letter_topic, {})
        acme = report["tenants"]["acme"]
        done = code == 0 and letters.get("count") == 1 and acme.get("pending") == 0
        return report if done else None

    report = wait_for(settled, timeout=60, interval=1, what="status: healthy, one dead letter")
    acme = report["tenants"]["acme"]
    assert acme["safe_to_dial"] is True, acme
    assert f"within the {settings.max_staleness_seconds:g} s bound" in acme["why"]
    assert acme["reference_list_sink"] == "postgres" and acme["sync_running"] is True
    assert acme["oldest_pending_seconds"] == 0 and acme["sync_lag"] == 0
    assert report["safe_to_dial"] is True and report["safe_to_dial_why"] == acme["why"]
    assert set(report["partitions"]) == {"0", "1", "2"}  # JSON keys
    for partition in report["partitions"].values():
        assert partition["staleness_seconds"] <= settings.max_staleness_seconds
    worker = report["dead_letters"][settings.dead_letter_topic]
    assert worker["newest_reason"] == "missing_field", worker
    oldest = datetime.fromisoformat(worker["oldest"])
    assert started <= oldest <= datetime.fromisoformat(worker["newest"]) <= datetime.now(UTC)
    sinks = report["dead_letters"][settings.reference_dead_letter_topic]
    assert sinks["count"] == 0 and sinks["oldest"] is None, sinks

    # What a person reads: the same answers, in tables (in a terminal of 160 columns).
    ref.pipeline.env["COLUMNS"] = "160"
    shown = ref.pipeline.cli("status")
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    for expected in ("safe to dial: yes (view ready, stalest partition", "dead letters",
                     "missing_field", "ago)", "partitions", "per tenant"):  # fmt: skip
        assert expected in text, (expected, shown.stdout)

    # The probe stays cheap: no per-tenant scan, no dead-letter read.
    code, probe = status(ref, "--probe")
    assert code == 0 and probe["tenants"] == {} and probe["dead_letters"] == {}

    # The worker dies: within the staleness bound it is no longer safe to dial, and why.
    ref.pipeline.kill_worker()

    def unsafe() -> dict[str, Any] | None:
        code, report = status(ref)
        return report if code == 2 and not report["tenants"]["acme"]["safe_to_dial"] else None

    report = wait_for(unsafe, timeout=30, interval=1, what="status: not safe to dial")
    why = report["tenants"]["acme"]["why"]
    assert why.startswith("checks answer 'unavailable'"), why
    shown = ref.pipeline.cli("status")
    assert shown.returncode == 2 and "safe to dial: no (checks answer" in shown.stdout, shown.stdout
    assert report["safe_to_dial"] is False and report["safe_to_dial_why"] == why
