"""Apply rules: deterministic and, for the effect on suppression, independent of arrival order.

* last writer by ``(occurred_at, event_id)``;
* a lift ends every suppression older than it; a lift older than a suppression does nothing;
* a later, weaker suppression (a 60-day refusal) never shortens a stronger one (an
  objection until lifted): the state keeps the suppressions that can still matter;
* the same event twice is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from schemas.events import Kind, OppositionEvent
from schemas.state import ActiveSuppression, LiftRecord, Stamp, SuppressionState


class Outcome(StrEnum):
    """What applying one event did (the ``outcome`` label of ``dnc_events_total``)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    REJECTED = "rejected"


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


def apply_event(
    state: SuppressionState | None,
    event: OppositionEvent,
    *,
    now: datetime,
    refusal_cooldown: timedelta,
    partition: int,
) -> Application:
    """Apply a validated, normalised event to the state of its (target, number)."""
    assert event.phone_e164 is not None, "apply_event needs a normalised event"
    stamp = Stamp(occurred_at=event.occurred_at, event_id=event.event_id)
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
    known = [e.stamp.event_id for e in state.active]
    if state.lift is not None:
        known.append(state.lift.stamp.event_id)
    if event.event_id in known:
        return Application(Outcome.DUPLICATE, state)
    if state.lift is not None and stamp.order <= state.lift.stamp.order:
        return Application(Outcome.STALE, state)

    if event.kind is Kind.LIFT:
        lift = LiftRecord(
            stamp=stamp,
            justification=event.justification or "",
            source=event.source,
            agent_id=event.agent_id,
        )
        active = tuple(e for e in state.active if e.stamp.order > stamp.order)
        return Application(
            Outcome.APPLIED,
            state.model_copy(
                update={
                    "lift": lift,
                    "active": active,
                    "tenant": event.tenant,
                    "version": state.version + 1,
                    "partition": partition,
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
    )
    if not entry.in_force(now) or any(_dominated(entry, by=e) for e in state.active):
        return Application(Outcome.STALE, state)
    kept = tuple(e for e in state.active if e.in_force(now) and not _dominated(e, by=entry))
    active = tuple(sorted((*kept, entry), key=lambda e: e.stamp.order))
    return Application(
        Outcome.APPLIED,
        state.model_copy(
            update={
                "active": active,
                "tenant": event.tenant,
                "version": state.version + 1,
                "partition": partition,
                "updated_at": now,
            }
        ),
    )
