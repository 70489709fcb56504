"""Apply rules: last writer, lifts, duplicates, cooldowns; order independence (hypothesis)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Kind, OppositionEvent, Scope, Source
from schemas.state import SuppressionState
from streams.rules import Outcome, apply_event

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COOLDOWN = timedelta(days=60)
PHONE = "+33612345678"


def event(
    kind: Kind, at: int, *, eid: uuid.UUID | None = None, expires: int | None = None
) -> OppositionEvent:
    fields = dict(
        event_id=eid or uuid.uuid4(),
        tenant="acme",
        phone=PHONE,
        phone_e164=PHONE,
        kind=kind,
        occurred_at=T0 + timedelta(hours=at),
    )
    if kind is Kind.LIFT:
        fields.update(source=Source.ADMIN, justification="customer asked to be called back")
    if expires is not None:
        fields["expires_at"] = T0 + timedelta(hours=expires)
    return OppositionEvent.model_validate(fields)


def run(
    events: list[OppositionEvent], now: datetime
) -> tuple[SuppressionState | None, list[Outcome]]:
    state = None
    outcomes = []
    for e in events:
        result = apply_event(state, e, now=now, refusal_cooldown=COOLDOWN, partition=0)
        state = result.state
        outcomes.append(result.outcome)
    return state, outcomes


def suppressed(state: SuppressionState | None, now: datetime) -> bool:
    return state is not None and state.effective(now) is not None


def test_opposition_suppresses_until_lifted() -> None:
    now = T0 + timedelta(hours=10)
    state, outcomes = run([event(Kind.OPPOSITION, 1)], now)
    assert outcomes == [Outcome.APPLIED] and suppressed(state, now)
    state, _ = run([event(Kind.OPPOSITION, 1), event(Kind.LIFT, 2)], now)
    assert not suppressed(state, now)


def test_lift_older_than_suppression_does_nothing() -> None:
    now = T0 + timedelta(hours=10)
    state, outcomes = run([event(Kind.OPPOSITION, 5), event(Kind.LIFT, 2)], now)
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    assert suppressed(state, now)
    # and a suppression older than an applied lift is stale
    state, outcomes = run([event(Kind.LIFT, 5), event(Kind.OPPOSITION, 2)], now)
    assert outcomes[1] is Outcome.STALE and not suppressed(state, now)


def test_duplicate_event_is_a_no_op() -> None:
    now = T0 + timedelta(hours=10)
    e = event(Kind.ERASURE, 1)
    state, outcomes = run([e, e], now)
    assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert state is not None and state.version == 1


def test_refusal_expires_after_cooldown() -> None:
    state, _ = run([event(Kind.REFUSAL, 0)], T0)
    assert suppressed(state, T0 + COOLDOWN - timedelta(seconds=1))
    assert not suppressed(state, T0 + COOLDOWN)


def test_later_refusal_never_shortens_an_objection() -> None:
    now = T0 + timedelta(days=90)
    state, _ = run([event(Kind.OPPOSITION, 0), event(Kind.REFUSAL, 1)], T0 + timedelta(hours=2))
    assert state is not None and suppressed(state, now)
    assert state.effective(now).kind is Kind.OPPOSITION  # type: ignore[union-attr]


def test_lift_between_two_suppressions_keeps_the_newer() -> None:
    now = T0 + timedelta(hours=10)
    events = [event(Kind.OPPOSITION, 1), event(Kind.REFUSAL, 3), event(Kind.LIFT, 2)]
    state, _ = run(events, now)
    current = state.effective(now) if state else None
    assert current is not None and current.kind is Kind.REFUSAL


kinds = st.sampled_from(
    [Kind.REFUSAL, Kind.OPPOSITION, Kind.CONSENT_WITHDRAWN, Kind.ERASURE, Kind.LIFT]
)
event_specs = st.lists(
    st.tuples(kinds, st.integers(0, 48), st.one_of(st.none(), st.integers(1, 100))),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(event_specs, st.randoms(use_true_random=False), st.integers(0, 24 * 200))
def test_effect_is_independent_of_order_and_duplicates(specs, rnd, later_hours: int) -> None:
    events = []
    for kind, at, expires in specs:
        exp = at + expires if expires is not None and kind is not Kind.LIFT else None
        events.append(event(kind, at, expires=exp))
    shuffled = list(events) + [rnd.choice(events) for _ in range(3)]  # with replays
    rnd.shuffle(shuffled)
    now = T0 + timedelta(hours=50)  # after every event, so none is "expired on arrival" differently
    later = now + timedelta(hours=later_hours)
    a, _ = run(events, now)
    b, _ = run(shuffled, now)
    for moment in (now, later):
        ea = a.effective(moment) if a else None
        eb = b.effective(moment) if b else None
        assert (ea is None) == (eb is None)
        if ea and eb:
            assert ea.expires_at == eb.expires_at


def test_campaign_scope_is_its_own_target() -> None:
    e = OppositionEvent.model_validate(
        dict(
            event_id=uuid.uuid4(),
            tenant="acme",
            phone=PHONE,
            kind=Kind.OPPOSITION,
            scope=Scope.CAMPAIGN,
            campaign_id="spring-2026",
            occurred_at=T0,
        )
    )
    assert e.target == "acme/spring-2026"
    assert e.kafka_key.startswith(b"acme:")
