"""'May I call this number now?' on the real pipeline (issue #19): consents recorded on the
consents topic and applied by the worker, withdrawals winning in log order, the attempt
cap reserved atomically by concurrent dialers and counted again after the view is lost."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from consumers.attempts import AttemptDesk
from consumers.checker import Answer, SuppressionChecker, checker_client
from producers.publisher import OppositionPublisher
from schemas.events import ConsentSource, Kind, OppositionEvent, Scope
from tests.harness import Pipeline, wait_for

pytestmark = pytest.mark.pipeline


def _codes(p: Pipeline, phone: str, campaign: str, at: datetime | None = None) -> set[str]:
    result = p.checker.check(phone, "acme", campaign, at)
    assert result.answer is not Answer.UNAVAILABLE, result.why
    return {r.code.value for r in result.reasons}


def _grant(p: Pipeline, phone: str, **fields: object) -> OppositionEvent:
    event = OppositionEvent.record(
        tenant="acme", phone=phone, kind=Kind.CONSENT, scope=Scope.CAMPAIGN,
        campaign_id="optin", consent_source=ConsentSource.WEB_FORM,
        proof_ref="webform-v3#77", recorded_by="consent-platform", **fields,
    )  # fmt: skip
    p.publisher.publish(event)
    return event


def test_a_consent_campaign_calls_only_with_a_valid_consent(running_pipeline: Pipeline) -> None:
    p = running_pipeline
    phone = "+33615000001"
    assert _codes(p, phone, "optin") == {"no_consent"}
    assert _codes(p, phone, "spring") == set()  # a campaign without the rule: as before
    grant = _grant(p, phone)
    wait_for(lambda: p.check(phone, "acme", "optin").may_call, timeout=30, what="consent applied")
    result = p.check(phone, "acme", "optin")
    assert result.consent is not None and result.consent.proof_ref == "webform-v3#77"
    assert result.consent.event_id == str(grant.event_id)
    # A year later (the default consent_validity), the same view: expired.
    later = datetime.now(UTC) + timedelta(days=400)
    assert _codes(p, phone, "optin", later) == {"consent_expired"}
    # The person withdraws: opposed (until an admin lifts it) and the consent is ended.
    p.publisher.publish(OppositionEvent.record(tenant="acme", phone=phone,
                                               kind=Kind.CONSENT_WITHDRAWN))  # fmt: skip
    p.wait_answer(phone, "acme", "suppressed", campaign="optin")
    assert _codes(p, phone, "optin") == {"opposed", "consent_withdrawn"}
    opposed = next(r for r in p.check(phone, "acme", "optin").reasons if r.code.value == "opposed")
    assert (opposed.scope, opposed.kind) == (Scope.TENANT, Kind.CONSENT_WITHDRAWN)
    # `dnc consent show`: the record, its proof, and what ended it.
    shown = p.cli("consent", "show", phone, "--tenant", "acme", "--json")
    assert shown.returncode == 0, shown.stderr
    [entry] = json.loads(shown.stdout)
    assert entry["proof_ref"] == "webform-v3#77" and entry["source"] == "web_form"
    assert entry["ended_at"] is not None and entry["valid"] is False


def test_a_grant_never_lifts_an_opposition_and_erasure_keeps_the_proof(
    running_pipeline: Pipeline,
) -> None:
    p = running_pipeline
    phone = "+33615000002"
    p.publisher.publish(OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.ERASURE))
    p.wait_answer(phone, "acme", "suppressed", campaign="optin")
    _grant(p, phone)
    wait_for(lambda: "no_consent" not in _codes(p, phone, "optin"), timeout=30,
             what="the grant applied")  # fmt: skip
    assert _codes(p, phone, "optin") == {"opposed"}  # still opposed: a grant is no lift
    shown = json.loads(p.cli("consent", "show", phone, "--tenant", "acme", "--json").stdout)
    assert [e["proof_ref"] for e in shown] == ["webform-v3#77"]  # erasure kept the proof


def test_a_consent_on_the_oppositions_topic_is_refused(running_pipeline: Pipeline) -> None:
    """Anyone who can write the log (a desktop) must not be able to make a number callable."""
    p = running_pipeline
    phone = "+33615000003"
    forged = OppositionEvent.record(
        tenant="acme", phone=phone, kind=Kind.CONSENT, consent_source=ConsentSource.PAPER,
        proof_ref="forged", phone_e164=phone,
    )  # fmt: skip
    producer = p.publisher._producer  # the log's producer, any bytes
    producer.produce(p.settings.oppositions_topic, value=forged.model_dump_json().encode(),
                     key=forged.kafka_key)  # fmt: skip
    assert producer.flush(15) == 0
    letters = p.consume(p.settings.dead_letter_topic, 1000, timeout=30, until=lambda ms: any(
        b"forged" in (m.value() or b"") for m in ms))  # fmt: skip
    reasons = [dict(m.headers() or []).get("dnc.dlq.reason") for m in letters
               if b"forged" in (m.value() or b"")]  # fmt: skip
    assert reasons == [b"consent_not_authorised"], reasons
    assert _codes(p, phone, "optin") == {"no_consent"}


def test_eight_dialers_at_once_get_exactly_the_cap_and_it_survives_a_lost_view(
    running_pipeline: Pipeline,
) -> None:
    p = running_pipeline
    phone = "+33615000004"
    publisher = OppositionPublisher.from_settings(p.settings, p.tenants)

    def dialer(_n: int) -> bool:
        checker = SuppressionChecker.from_settings(
            p.settings, p.tenants, checker_client(p.stack.redis_url, 2)
        )
        return AttemptDesk(checker, publisher).attempt(phone, "acme", "capped4").go

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(dialer, range(8)))
        assert outcomes.count(True) == 4, outcomes  # max_attempts = 4
        assert _codes(p, phone, "capped4") == {"attempt_cap"}
        # Every "go" was recorded in the log: a view rebuilt from it counts them again.
        p.redis.flushall()
        p.wait_answer(phone, "acme", "suppressed", campaign="capped4", timeout=60)
        assert _codes(p, phone, "capped4") == {"attempt_cap"}
        assert not AttemptDesk(p.checker, publisher).attempt(phone, "acme", "capped4").go
        cap = p.check(phone, "acme", "capped4")
        assert cap.next_allowed_at is not None and cap.next_allowed_at > datetime.now(UTC)
        # Another campaign of the tenant without a cap: not capped (the count is the tenant's,
        # the cap the campaign's).
        assert _codes(p, phone, "spring") == set()
    finally:
        publisher.close()
