"""`dnc status` answers what ops ask first, on a real worker, sync and reference list: safe to
dial per tenant (and why not), staleness per partition, what is pending where, and how many
dead letters since when."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.dial_rules import ReasonCode
from dnc.health import tally_consents
from schemas.events import ConsentSource, Kind, Scope
from schemas.view import consent_value
from tests.harness import Pipeline, raw_event, wait_for
from tests.test_reference_list import RefStack, event, ref  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.pipeline, pytest.mark.postgres]


def status(pipeline: Pipeline, *args: str) -> tuple[int, dict[str, Any]]:
    """`dnc status --json` as an operator runs it: (exit code, report)."""
    result = pipeline.cli("status", "--json", *args)
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
        code, report = status(ref.pipeline)
        letters = report["dead_letters"].get(settings.dead_letter_topic, {})
        acme = report["tenants"]["acme"]
        # The lane commits at most every 0.5 s after its sink acknowledged: pending reaches
        # 0 first, then the lag.
        done = (code == 0 and letters.get("count") == 1 and acme.get("pending") == 0
                and acme.get("sync_lag") == 0)  # fmt: skip
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
    code, probe = status(ref.pipeline, "--probe")
    assert code == 0 and probe["tenants"] == {} and probe["dead_letters"] == {}

    # The worker dies: within the staleness bound it is no longer safe to dial, and why.
    ref.pipeline.kill_worker()

    def unsafe() -> dict[str, Any] | None:
        code, report = status(ref.pipeline)
        return report if code == 2 and not report["tenants"]["acme"]["safe_to_dial"] else None

    report = wait_for(unsafe, timeout=30, interval=1, what="status: not safe to dial")
    why = report["tenants"]["acme"]["why"]
    assert why.startswith("checks answer 'unavailable'"), why
    shown = ref.pipeline.cli("status")
    assert shown.returncode == 2 and "safe to dial: no (checks answer" in shown.stdout, shown.stdout
    assert report["safe_to_dial"] is False and report["safe_to_dial_why"] == why


def consent(phone: str, n: int, **fields: Any) -> Any:
    """A consent to acme from its web form (the publisher puts it on the consents topic)."""
    return event(phone, Kind.CONSENT, consent_source=ConsentSource.WEB_FORM,
                 proof_ref=f"webform-v3#{n}", recorded_by="web-form", **fields)  # fmt: skip


@pytest.mark.timeout(180)
def test_status_counts_each_tenants_valid_consents_and_those_ending_within_30_days(
    consent_pipeline: Pipeline,
) -> None:
    p = consent_pipeline
    now = datetime.now(UTC)
    valid_for_a_year, ends_in_10_days, campaign_only = "0611000001", "0611000002", "0611000003"
    withdrawn, expired = "0611000004", "0611000005"
    for n, sent in enumerate([
        consent(valid_for_a_year, 1),  # the campaign's validity: a year
        consent(ends_in_10_days, 2, expires_at=now + timedelta(days=10)),
        consent(campaign_only, 3, scope=Scope.CAMPAIGN, campaign_id="optin-2027"),
        consent(withdrawn, 4),
        consent(expired, 5, occurred_at=now - timedelta(days=2), expires_at=now - timedelta(1)),
    ]):  # fmt: skip
        assert p.publisher.publish(sent).offset >= 0, n
    # Withdrawn from a desktop once the grant was recorded (log order ends it).
    p.publisher.publish(event(withdrawn, Kind.CONSENT_WITHDRAWN))

    # The view has them all when a dialer's checks for the consent campaign say so.
    for phone in (valid_for_a_year, ends_in_10_days, campaign_only):
        assert p.wait_answer(phone, "acme", "callable", campaign="optin-2027").consent is not None

    def refused_for(phone: str, code: ReasonCode) -> bool:
        return code in {r.code for r in p.check(phone, "acme", "optin-2027").reasons}

    wait_for(lambda: refused_for(withdrawn, ReasonCode.CONSENT_WITHDRAWN), timeout=30,
             what="the withdrawal in the view")  # fmt: skip
    wait_for(lambda: refused_for(expired, ReasonCode.CONSENT_EXPIRED), timeout=30,
             what="the expired consent in the view")  # fmt: skip

    code, report = status(p)
    assert code == 0, report
    acme, globex = report["tenants"]["acme"], report["tenants"]["globex"]
    # Valid: the tenant's two and the campaign's; of them, one ends within 30 days. The
    # withdrawn and the expired ones do not count.
    assert (acme["consents_valid"], acme["consents_expiring_30d"]) == (3, 1), acme
    assert (globex["consents_valid"], globex["consents_expiring_30d"]) == (0, 0), globex

    p.env["COLUMNS"] = "200"
    shown = p.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "consents" in shown.stdout and "expiring within 30 d" in shown.stdout, shown.stdout
    acme_row = next(line for line in shown.stdout.splitlines() if " acme " in line)
    cells = [cell.strip() for cell in acme_row.split("│")]
    assert cells[1:6] == ["acme", "yes", str(acme["suppressed_numbers"]), "3", "1"], acme_row

    # The probe does not read them.
    code, probe = status(p, "--probe")
    assert code == 0 and probe["tenants"] == {}


def test_a_consent_is_counted_only_while_valid_and_not_withdrawn() -> None:
    now = datetime(2027, 3, 1, 12, tzinfo=UTC)
    ms = int(now.timestamp() * 1000)
    day = 86_400_000
    values = [
        consent_value(None, ms - day, ms + 365 * day, "a", "p#1"),  # valid
        consent_value(None, ms - day, ms + 29 * day, "b", "p#2"),  # valid, ends in 29 days
        consent_value(ms - 2 * day, ms - day, ms + 31 * day, "c", "p#3"),  # re-granted: valid
        consent_value(ms - day, ms - day, ms + 365 * day, "d", "p#4"),  # same ms: withdrawn
        consent_value(ms, ms - day, ms + 365 * day, "e", "p#5"),  # withdrawn after
        consent_value(None, ms - 2 * day, ms, "f", "p#6"),  # expired at this instant
        consent_value(ms - day),  # a withdrawal alone
    ]
    assert tally_consents(values, now) == (3, 1)
    assert tally_consents([v.encode() for v in values], now) == (3, 1)
    assert tally_consents(values, now + timedelta(days=2)) == (3, 2)  # c ends within 30 days
