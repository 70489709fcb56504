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
* the same event twice is a no-op: by event id (also for suppressions a lift ended, and for
  every lift applied, not only the latest) and by log position (a replay after a crash
  re-reads offsets already applied).
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


MAX_ENDED = 64  # event ids of suppressions ended by lifts, remembered as duplicates
# Event ids of lifts applied, remembered as duplicates. A copy of an older lift still ends
# only what was appended before its signed cutoff (see :mod:`schemas.authority`).
MAX_LIFTS = 64


def _already_applied(
    state: SuppressionState, event: OppositionEvent, partition: int, offset: int | None
) -> bool:
    if event.event_id in state.ended or event.event_id in state.lifts:
        return True
    if state.lift is not None and state.lift.stamp.event_id == event.event_id:
        return True  # a state recorded before the lifts were remembered
    if any(e.stamp.event_id == event.event_id for e in state.active):
        return True
    return (
        offset is not None
        and state.position is not None
        and state.position[0] == partition
        and offset <= state.position[1]
    )


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
) -> Application:
    """Apply a validated, normalised event, read at ``partition``/``offset`` of the log.

    ``appended_ms``: when the broker appended it there. ``lift_cutoff_ms`` (lifts): when the
    broker appended the lift to the admin topic; suppressions appended after that, while
    the lift was being forwarded here, are not ended by it (None: every one before it).
    """
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
    if _already_applied(state, event, partition, offset):
        return Application(Outcome.DUPLICATE, state)
    position = (partition, offset) if offset is not None else state.position

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
                "position": position,
                "updated_at": now,
            }
        ),
    )
