"""Apply rules: log order for lifts, strongest suppression, duplicates, cooldowns (hypothesis)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Kind, OppositionEvent, Scope, Source
from schemas.state import SuppressionState
from streams.rules import MAX_LIFTS, Outcome, apply_event

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
    events: list[OppositionEvent],
    now: datetime,
    offsets: list[int] | None = None,
    state: SuppressionState | None = None,
) -> tuple[SuppressionState | None, list[Outcome]]:
    """Apply ``events`` in this log order (offsets 0, 1, ... unless given)."""
    outcomes = []
    for i, e in enumerate(events):
        offset = offsets[i] if offsets is not None else i
        result = apply_event(
            state, e, now=now, refusal_cooldown=COOLDOWN, partition=0, offset=offset
        )
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


def test_the_log_not_the_clocks_orders_lifts_and_oppositions() -> None:
    now = T0 + timedelta(hours=10)
    # A lift appended after an opposition ends it, even if the desktop stamped it later.
    state, outcomes = run([event(Kind.OPPOSITION, 5), event(Kind.LIFT, 2)], now)
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    assert not suppressed(state, now)
    # An opposition appended after a lift takes effect, even stamped an hour before it
    # (a desktop that was offline, or a wrong clock) ...
    state, outcomes = run([event(Kind.LIFT, 5), event(Kind.OPPOSITION, 4)], now)
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED] and suppressed(state, now)
    # ... and a lift stamped minutes ahead voids nothing recorded after it.
    state, _ = run([event(Kind.LIFT, 9), event(Kind.REFUSAL, 8)], now)
    assert suppressed(state, now)


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


def test_a_lift_ends_every_suppression_appended_before_it_and_nothing_after() -> None:
    now = T0 + timedelta(hours=10)
    events = [event(Kind.OPPOSITION, 1), event(Kind.REFUSAL, 3), event(Kind.LIFT, 2)]
    state, _ = run(events, now)
    assert not suppressed(state, now)
    state, _ = run([*events, event(Kind.REFUSAL, 0)], now)
    current = state.effective(now) if state else None
    assert current is not None and current.kind is Kind.REFUSAL


def test_replays_and_resent_copies_change_nothing() -> None:
    now = T0 + timedelta(hours=10)
    opposition, lift = event(Kind.OPPOSITION, 1), event(Kind.LIFT, 2)
    state, _ = run([opposition, lift], now)
    # A crash replays the batch from the committed offset: the same offsets again.
    replayed, outcomes = run([opposition, lift], now, offsets=[0, 1], state=state)
    assert outcomes == [Outcome.DUPLICATE, Outcome.DUPLICATE] and replayed == state
    # A producer re-sends the ended opposition (same event id, a new offset): still lifted.
    resent, outcomes = run([opposition], now, offsets=[7], state=state)
    assert outcomes == [Outcome.DUPLICATE] and not suppressed(resent, now)


def test_any_lift_applied_once_is_a_duplicate_when_seen_again() -> None:
    """Not only the latest: a copy of an older lift, even without a cutoff, ends nothing."""
    now = T0 + timedelta(hours=10)
    o1, l1, o2, l2, o3 = (event(k, at) for at, k in enumerate(
        (Kind.OPPOSITION, Kind.LIFT, Kind.OPPOSITION, Kind.LIFT, Kind.OPPOSITION)))  # fmt: skip
    state, outcomes = run([o1, l1, o2, l2, o3], now)
    assert outcomes == [Outcome.APPLIED] * 5 and suppressed(state, now)
    again, outcomes = run([l1, l2], now, offsets=[9, 10], state=state)
    assert outcomes == [Outcome.DUPLICATE] * 2 and again == state
    # The record is bounded: the oldest lift ids give way to the latest.
    for at in range(MAX_LIFTS + 1):
        state = apply_event(state, event(Kind.LIFT, 20 + at), now=now, refusal_cooldown=COOLDOWN,
                            partition=0, offset=20 + at).state  # fmt: skip
    assert state is not None and len(state.lifts) == MAX_LIFTS
    assert state.lift is not None and state.lifts[-1] == state.lift.stamp.event_id


suppression_kinds = st.sampled_from(
    [Kind.REFUSAL, Kind.OPPOSITION, Kind.CONSENT_WITHDRAWN, Kind.ERASURE]
)
kinds = st.one_of(suppression_kinds, st.just(Kind.LIFT))


def specs_of(
    kind_strategy: st.SearchStrategy[Kind],
) -> st.SearchStrategy[list[tuple[Kind, int, int | None]]]:
    return st.lists(
        st.tuples(kind_strategy, st.integers(0, 48), st.one_of(st.none(), st.integers(1, 100))),
        min_size=1,
        max_size=8,
    )


def build(specs: list[tuple[Kind, int, int | None]]) -> list[OppositionEvent]:
    return [
        event(
            kind,
            at,
            expires=at + expires if expires is not None and kind is not Kind.LIFT else None,
        )
        for kind, at, expires in specs
    ]


NOW = T0 + timedelta(hours=50)  # after every event's occurred_at


@settings(max_examples=300, deadline=None)
@given(specs_of(suppression_kinds), st.randoms(use_true_random=False), st.integers(0, 24 * 200))
def test_suppressions_alone_have_the_same_effect_in_any_order(specs, rnd, later_hours) -> None:
    events = build(specs)
    shuffled = list(events) + [rnd.choice(events) for _ in range(3)]  # with re-sent copies
    rnd.shuffle(shuffled)
    later = NOW + timedelta(hours=later_hours)
    a, _ = run(events, NOW)
    b, _ = run(shuffled, NOW)
    for moment in (NOW, later):
        ea = a.effective(moment) if a else None
        eb = b.effective(moment) if b else None
        assert (ea is None) == (eb is None)
        if ea and eb:
            assert ea.expires_at == eb.expires_at


@settings(max_examples=300, deadline=None)
@given(specs_of(kinds), st.randoms(use_true_random=False), st.integers(0, 24 * 200))
def test_in_log_order_only_what_follows_the_last_lift_counts(specs, rnd, later_hours) -> None:
    events = build(specs)
    state, _ = run(events, NOW)
    # Replays of anything already applied (same offsets) change nothing.
    replay_at = sorted(rnd.sample(range(len(events)), k=min(3, len(events))))
    replayed, outcomes = run([events[i] for i in replay_at], NOW, offsets=replay_at, state=state)
    assert set(outcomes) <= {Outcome.DUPLICATE, Outcome.STALE} and replayed == state
    last_lift = max((i for i, e in enumerate(events) if e.kind is Kind.LIFT), default=-1)
    after = [e for e in events[last_lift + 1 :] if e.kind is not Kind.LIFT]
    for moment in (NOW, NOW + timedelta(hours=later_hours)):
        in_force = [
            e.expires_at
            for e in after
            if (
                expiry := e.expires_at
                or (e.occurred_at + COOLDOWN if e.kind is Kind.REFUSAL else None)
            )
            is None
            or expiry > moment
        ]
        current = state.effective(moment) if state else None
        assert (current is not None) == bool(in_force), (moment, events)


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


def test_a_lift_spares_what_was_appended_after_the_admin_recorded_it() -> None:
    """The lift reached the admin topic at 1,000 ms; a refusal reached the number's log at
    1,050 ms, before the forwarded lift: the person said no after the admin lifted."""
    now = T0 + timedelta(hours=10)
    before, after = event(Kind.OPPOSITION, 1), event(Kind.REFUSAL, 2)
    state = None
    for offset, (e, appended) in enumerate([(before, 900), (after, 1_050)]):
        state = apply_event(state, e, now=now, refusal_cooldown=COOLDOWN, partition=0,
                            offset=offset, appended_ms=appended).state  # fmt: skip
    lifted = apply_event(
        state, event(Kind.LIFT, 3), now=now, refusal_cooldown=COOLDOWN, partition=0,
        offset=2, appended_ms=1_100, lift_cutoff_ms=1_000,
    )  # fmt: skip
    assert [e.stamp.event_id for e in lifted.state.active] == [after.event_id]
    assert suppressed(lifted.state, now)
