"""Apply rules: the log orders a number's history, not the clocks of the desktops.

Events are applied in the order of the log partition of the number's canonical key (every
event is routed there first), so:

* a lift ends exactly the suppressions appended to the log before it, whatever their
  ``occurred_at``; an opposition appended after a lift always takes effect, whatever its
  ``occurred_at`` (an offline desktop, a wrong clock). When in doubt, suppressed: a
  wrongful suppression costs a missed call, a wrongful lift a call to someone who said no;
* among suppressions, the stronger one wins: a later, weaker suppression (a 60-day refusal)
  never shortens a stronger one (an objection until lifted), whatever the arrival order;
  ``occurred_at`` is the legal record and the start of a cooldown;
* the same event twice is a no-op, by event id: the suppressions in force and those a lift
  ended, every lift applied (not only the latest), consents, attempts. Not by log position:
  offsets may be applied out of order (a skipped offset fetched again after later ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from schemas.events import Kind, OppositionEvent
from schemas.state import (
    ActiveSuppression,
    AttemptRecord,
    ConsentRecord,
    LiftRecord,
    Stamp,
    SuppressionState,
)


class Outcome(StrEnum):
    """What applying one event did (the ``outcome`` label of ``dnc_events_total``)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    REJECTED = "rejected"
    FORWARDED = "forwarded"  # routed to its canonical partition (or from the admin topic)


@dataclass(frozen=True)
class Application:
    """The result of applying one event: outcome and the state after it."""

    outcome: Outcome
    state: SuppressionState


def expiry_of(event: OppositionEvent, refusal_cooldown: timedelta) -> datetime | None:
    """When the suppression this event creates ends: explicit, cooldown for refusals, or never."""
    if event.expires_at is not None:
        return event.expires_at
    if event.kind is Kind.REFUSAL:
        return event.occurred_at + refusal_cooldown
    return None


def _dominated(entry: ActiveSuppression, by: ActiveSuppression) -> bool:
    """``entry`` can never matter while ``by`` exists: ``by`` is newer and lasts as long."""
    if by.stamp.order <= entry.stamp.order:
        return False
    if by.expires_at is None:
        return True
    return entry.expires_at is not None and by.expires_at >= entry.expires_at


# Event ids of suppressions ended by lifts, or stale when they came (expired, or outlasted
# by a newer one), remembered as duplicates.
MAX_ENDED = 64
# Event ids of lifts applied, remembered as duplicates. A copy of an older lift still ends
# only what was appended before its signed cutoff (see :mod:`schemas.authority`).
MAX_LIFTS = 64


def _already_applied(
    state: SuppressionState, event: OppositionEvent, partition: int, offset: int | None
) -> bool:
    if event.event_id in state.ended or event.event_id in state.lifts:
        return True
    if any(c.event_id == event.event_id for c in state.consents) or any(
        a.event_id == event.event_id for a in state.attempts
    ):
        return True
    if state.lift is not None and state.lift.stamp.event_id == event.event_id:
        return True  # a state recorded before the lifts were remembered
    # By event id only, never by log position: the stream may deliver a partition's offsets
    # out of order (Faust skips offsets after an assignment, the worker fetches them again
    # after later ones were applied), and an event at an earlier offset than the last one
    # applied is then new, not a replay. Ids kept bounded: an event forgotten and seen again
    # is applied again, which can only suppress more (or end a consent again).
    return any(e.stamp.event_id == event.event_id for e in state.active)


def apply_event(
    state: SuppressionState | None,
    event: OppositionEvent,
    *,
    now: datetime,
    refusal_cooldown: timedelta,
    partition: int,
    offset: int | None = None,
    appended_ms: int | None = None,
    lift_cutoff_ms: int | None = None,
    consent_until: datetime | None = None,
) -> Application:
    """Apply a validated, normalised event, read at ``partition``/``offset`` of the log.

    ``appended_ms``: when the broker appended it there. ``lift_cutoff_ms`` (lifts and
    consents): when the broker appended it to the admin or consents topic, signed; for a
    lift, suppressions appended after that, while it was being forwarded here, are not ended
    by it (None: every one before it); for a consent, its place in log order (None: refused).
    ``consent_until`` (consents): the longest it may last (captured_at + the campaign's
    consent_validity).
    """
    assert event.phone_e164 is not None, "apply_event needs a normalised event"
    stamp = Stamp(occurred_at=event.occurred_at, event_id=event.event_id)
    fresh = state is None  # (nothing applied to it yet: no duplicate to look for)
    if state is None:
        state = SuppressionState(
            target=event.target,
            tenant=event.tenant,
            scope=event.scope,
            campaign_id=event.campaign_id,
            phone_e164=event.phone_e164,
            partition=partition,
            updated_at=now,
        )
    if not fresh and _already_applied(state, event, partition, offset):
        return Application(Outcome.DUPLICATE, state)
    position = (partition, offset) if offset is not None else state.position
    moved = {"tenant": event.tenant, "version": state.version + 1, "partition": partition,
             "position": position, "updated_at": now}  # fmt: skip

    if event.kind is Kind.CONSENT:
        return _consent(state, event, lift_cutoff_ms, consent_until, moved)
    if event.kind is Kind.ATTEMPT:
        attempt = AttemptRecord(event_id=event.event_id, at=event.occurred_at,
                                campaign_id=event.campaign_id)  # fmt: skip
        recent = [a for a in state.attempts if a.at > now - ATTEMPTS_KEPT]
        attempts = tuple(sorted((*recent, attempt), key=lambda a: a.at))[-MAX_ATTEMPTS:]
        return Application(
            Outcome.APPLIED, state.model_copy(update={"attempts": attempts, **moved})
        )
    withdrawn = None
    if event.kind is Kind.CONSENT_WITHDRAWN:
        # It ends every consent of its scope granted before it, whether or not its
        # suppression adds anything to a stronger one already in force (a replay, read at the
        # same append time, changes nothing).
        at = appended_ms if appended_ms is not None else int(now.timestamp() * 1000)
        after = _withdraw(state, event.event_id, at)
        if (after.consents, after.withdrawn_ms) != (state.consents, state.withdrawn_ms):
            state = withdrawn = after.model_copy(update=moved)

    if event.kind is Kind.LIFT:
        lift = LiftRecord(
            stamp=stamp,
            justification=event.justification or "",
            source=event.source,
            agent_id=event.agent_id,
        )
        # Everything in force was appended before this lift: it ends, except what was
        # appended after the admin recorded the lift (when in doubt, suppressed).
        survivors = tuple(
            e
            for e in state.active
            if lift_cutoff_ms is not None
            and e.appended_ms is not None
            and e.appended_ms >= lift_cutoff_ms
        )
        ending = [e.stamp.event_id for e in state.active if e not in survivors]
        ended = (*state.ended, *ending)[-MAX_ENDED:]
        return Application(
            Outcome.APPLIED,
            state.model_copy(
                update={
                    "lift": lift,
                    "lifts": (*state.lifts, event.event_id)[-MAX_LIFTS:],
                    "active": survivors,
                    "ended": ended,
                    "tenant": event.tenant,
                    "version": state.version + 1,
                    "partition": partition,
                    "position": position,
                    "updated_at": now,
                }
            ),
        )

    entry = ActiveSuppression(
        stamp=stamp,
        kind=event.kind,
        expires_at=expiry_of(event, refusal_cooldown),
        source=event.source,
        agent_id=event.agent_id,
        reason_code=event.reason_code,
        appended_ms=appended_ms,
    )
    if not entry.in_force(now) or any(_dominated(entry, by=e) for e in state.active):
        if withdrawn is not None:  # (consents ended, nothing suppressed: seen)
            return Application(Outcome.APPLIED, _seen(withdrawn, event.event_id))
        # Remembered as seen, so that a copy or a replay of it stays a duplicate (even once
        # what made it stale is lifted).
        return Application(Outcome.STALE, _seen(state, event.event_id))
    kept = tuple(e for e in state.active if e.in_force(now) and not _dominated(e, by=entry))
    active = tuple(sorted((*kept, entry), key=lambda e: e.stamp.order))
    # Those it outlasts (or that expired) leave the state: remembered as seen, so that a
    # replay of one is a duplicate, even once this one is lifted.
    dropped = [e.stamp.event_id for e in state.active if e not in kept]
    return Application(
        Outcome.APPLIED,
        state.model_copy(
            update={
                "active": active,
                "ended": (*state.ended, *dropped)[-MAX_ENDED:],
                "tenant": event.tenant,
                "version": state.version + 1,
                "partition": partition,
                "position": position,
                "updated_at": now,
            }
        ),
    )


# A consent's longest life when no campaign says otherwise (the policy's consent_validity).
DEFAULT_CONSENT_VALIDITY = timedelta(days=365)
# Attempts kept in the state: a year back, the latest few hundred (caps count a few a month).
ATTEMPTS_KEPT = timedelta(days=366)
MAX_ATTEMPTS = 256
# Consents kept in the state per scope (the log keeps every one, for the proof duty).
MAX_CONSENTS = 16


def _consent(
    state: SuppressionState,
    event: OppositionEvent,
    granted_ms: int | None,
    until: datetime | None,
    moved: dict[str, object],
) -> Application:
    """A consent, in log order: granted before the latest withdrawal of its scope, it is
    recorded as ended by it (a withdrawal appended after a grant wins, whatever the clocks)."""
    if granted_ms is None:  # (the processor refuses a consent without a signed cutoff)
        return Application(Outcome.REJECTED, state)
    ends = [t for t in (event.expires_at, until) if t is not None]
    expires_at = min(ends) if ends else event.occurred_at + DEFAULT_CONSENT_VALIDITY
    withdrawn = state.withdrawn_ms is not None and state.withdrawn_ms >= granted_ms
    assert event.consent_source is not None and event.proof_ref is not None
    record = ConsentRecord(
        event_id=event.event_id,
        captured_at=event.occurred_at,
        expires_at=expires_at,
        granted_ms=granted_ms,
        source=event.consent_source,
        proof_ref=event.proof_ref,
        wording_version=event.wording_version,
        recorded_by=event.recorded_by,
        ended_ms=state.withdrawn_ms if withdrawn else None,
    )
    consents = tuple(sorted((*state.consents, record), key=lambda c: c.granted_ms))
    return Application(
        Outcome.APPLIED,
        state.model_copy(update={"consents": consents[-MAX_CONSENTS:], **moved}),
    )


def _seen(state: SuppressionState, event_id: UUID) -> SuppressionState:
    """``state`` remembering ``event_id`` (a stale suppression) among the ones it has seen."""
    if event_id in state.ended:
        return state
    return state.model_copy(update={"ended": (*state.ended, event_id)[-MAX_ENDED:]})


def _withdraw(state: SuppressionState, event_id: UUID, at_ms: int) -> SuppressionState:
    """``state`` with every consent granted before ``at_ms`` ended by ``event_id``."""
    consents = tuple(
        c.model_copy(update={"ended_by": event_id, "ended_ms": at_ms})
        if c.granted_ms <= at_ms and c.ended_by is None  # (the same ms: the withdrawal wins)
        else c
        for c in state.consents
    )
    return state.model_copy(
        update={"consents": consents, "withdrawn_ms": max(at_ms, state.withdrawn_ms or 0)}
    )
