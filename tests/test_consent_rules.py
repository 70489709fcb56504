"""Consents, withdrawals and attempts in log order (issue #19): the worker's apply rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from schemas.events import ConsentSource, Kind, OppositionEvent, Scope, Source
from schemas.state import SuppressionState
from streams.rules import MAX_CONSENTS, Outcome, apply_event

T0 = datetime(2026, 9, 1, 9, tzinfo=UTC)
PHONE = "+33612345678"
YEAR = T0 + timedelta(days=365)


def _event(kind: Kind, **fields: object) -> OppositionEvent:
    base: dict[str, object] = dict(
        event_id=uuid.uuid4(), tenant="acme", phone=PHONE, phone_e164=PHONE, kind=kind,
        occurred_at=T0, scope=Scope.TENANT,
    )  # fmt: skip
    if kind is Kind.CONSENT:
        base.update(consent_source=ConsentSource.WEB_FORM, proof_ref="form-v3#1234",
                    recorded_by="consent-platform")  # fmt: skip
    if kind is Kind.ATTEMPT:
        base.update(scope=Scope.CAMPAIGN, campaign_id="optin-2027", source=Source.CLI)
    base.update(fields)
    return OppositionEvent.model_validate(base)


def _apply(
    state: SuppressionState | None, event: OppositionEvent, offset: int, appended_ms: int
) -> tuple[SuppressionState, Outcome]:
    result = apply_event(
        state, event, now=T0 + timedelta(hours=1), refusal_cooldown=timedelta(days=60),
        partition=0, offset=offset, appended_ms=appended_ms,
        lift_cutoff_ms=appended_ms if event.kind is Kind.CONSENT else None,
        consent_until=YEAR if event.kind is Kind.CONSENT else None,
    )  # fmt: skip
    return result.state, result.outcome


def test_a_grant_is_recorded_with_its_proof_and_changes_no_suppression() -> None:
    state, outcome = _apply(None, _event(Kind.CONSENT), 0, 1_000)
    assert outcome is Outcome.APPLIED
    [consent] = state.consents
    assert consent.proof_ref == "form-v3#1234" and consent.granted_ms == 1_000
    assert consent.expires_at == YEAR and consent.valid_at(T0)
    assert state.effective(T0) is None and state.active == ()


def test_a_withdrawal_appended_after_a_grant_ends_it_whatever_the_clocks() -> None:
    grant = _event(Kind.CONSENT, occurred_at=T0)
    # The withdrawal says it happened before the grant (a desktop's clock): it was appended
    # after it, so it wins.
    withdrawal = _event(Kind.CONSENT_WITHDRAWN, occurred_at=T0 - timedelta(days=1))
    state, _ = _apply(None, grant, 0, 1_000)
    state, outcome = _apply(state, withdrawal, 1, 2_000)
    assert outcome is Outcome.APPLIED
    [consent] = state.consents
    assert consent.ended_by == withdrawal.event_id and consent.ended_ms == 2_000
    assert not consent.valid_at(T0)
    assert state.withdrawn_ms == 2_000
    assert state.effective(T0 + timedelta(hours=1)) is not None  # and it suppresses


def test_a_grant_appended_after_a_withdrawal_is_valid_but_never_lifts_it() -> None:
    state, _ = _apply(None, _event(Kind.CONSENT_WITHDRAWN), 0, 1_000)
    state, _ = _apply(state, _event(Kind.CONSENT, occurred_at=T0 + timedelta(minutes=5)), 1, 2_000)
    [consent] = state.consents
    assert consent.valid_at(T0 + timedelta(hours=1))
    assert state.effective(T0 + timedelta(hours=1)) is not None  # still suppressed


def test_a_grant_forwarded_late_but_recorded_before_the_withdrawal_is_ended() -> None:
    """The grant's place in log order is when the consents topic appended it (its signed
    cutoff), not when its forwarded copy reached the log after the withdrawal."""
    state, _ = _apply(None, _event(Kind.CONSENT_WITHDRAWN), 0, 2_000)
    state, _ = _apply(state, _event(Kind.CONSENT), 1, 1_500)  # recorded at 1,500
    [consent] = state.consents
    assert consent.ended_ms == 2_000 and not consent.valid_at(T0)


def test_a_withdrawal_under_a_stronger_suppression_still_ends_the_consents() -> None:
    state, _ = _apply(None, _event(Kind.CONSENT), 0, 1_000)
    state, _ = _apply(
        state, _event(Kind.OPPOSITION, occurred_at=T0 + timedelta(minutes=1)), 1, 2_000
    )
    state, outcome = _apply(state, _event(Kind.CONSENT_WITHDRAWN), 2, 3_000)  # older stamp
    assert outcome is Outcome.APPLIED
    assert state.consents[0].ended_ms == 3_000


def test_the_same_grant_or_attempt_twice_is_a_duplicate() -> None:
    grant, attempt = _event(Kind.CONSENT), _event(Kind.ATTEMPT)
    state, _ = _apply(None, grant, 0, 1_000)
    state, _ = _apply(state, attempt, 1, 1_100)
    assert _apply(state, grant, 5, 1_200)[1] is Outcome.DUPLICATE  # (another offset: a copy)
    assert _apply(state, attempt, 6, 1_300)[1] is Outcome.DUPLICATE
    assert len(state.attempts) == 1 and state.attempts[0].campaign_id == "optin-2027"


def test_attempts_count_for_the_tenant_and_consents_stay_bounded() -> None:
    assert _event(Kind.ATTEMPT).target == "acme"  # whatever the campaign
    state = None
    for i in range(MAX_CONSENTS + 3):
        state, _ = _apply(state, _event(Kind.CONSENT), i, 1_000 + i)
    assert state is not None and len(state.consents) == MAX_CONSENTS
    assert state.consents[-1].granted_ms == 1_000 + MAX_CONSENTS + 2  # the latest kept


def test_erasure_keeps_the_proof_of_consent_and_the_suppression() -> None:
    state, _ = _apply(None, _event(Kind.CONSENT), 0, 1_000)
    state, _ = _apply(state, _event(Kind.ERASURE, occurred_at=T0 + timedelta(minutes=1)), 1, 2_000)
    assert state.consents[0].proof_ref == "form-v3#1234"
    assert state.effective(T0 + timedelta(hours=1)) is not None


def test_an_earlier_offset_applied_after_a_later_one_is_not_taken_for_a_replay() -> None:
    """Faust may skip offsets after an assignment; the worker fetches them again after later
    ones were applied. A withdrawal at offset 120 applied after a consent's copy at 170 is
    new, not a replay (seen in the fault drills: the withdrawal was lost, the number called)."""
    state, _ = _apply(None, _event(Kind.CONSENT), 170, 1_000)
    state, outcome = _apply(state, _event(Kind.CONSENT_WITHDRAWN), 120, 2_000)
    assert outcome is Outcome.APPLIED
    assert state.effective(T0 + timedelta(hours=1)) is not None
    assert not state.consents[0].valid_at(T0)
