"""Suppression state per (scope target, number): the Faust table value and the change record.

The state holds the suppressions in force that can still matter (a newer one that lasts at
least as long makes an older one redundant), the latest lift and the ids of the lifts
applied (bounded), applied in log order (see :mod:`streams.rules`).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.events import ConsentSource, Kind, Scope, Source


class Stamp(BaseModel):
    """Identity and order of an event: ``(occurred_at, event_id)``."""

    model_config = ConfigDict(frozen=True)

    occurred_at: AwareDatetime
    event_id: UUID

    @property
    def order(self) -> tuple[datetime, str]:
        """Sort key: occurred_at, then event_id as text for a total, deterministic order."""
        return (self.occurred_at, str(self.event_id))


class ActiveSuppression(BaseModel):
    """One suppression that is in force unless a newer lift ends it or it expires."""

    model_config = ConfigDict(frozen=True)

    stamp: Stamp
    kind: Kind
    expires_at: AwareDatetime | None  # None: until lifted
    source: Source
    agent_id: str | None = None
    reason_code: str | None = None
    appended_ms: int | None = None  # when the broker appended it to the log (LogAppendTime)

    def in_force(self, now: datetime) -> bool:
        """True while not expired at ``now``."""
        return self.expires_at is None or self.expires_at > now


class LiftRecord(BaseModel):
    """The latest lift: every suppression older than it is over."""

    model_config = ConfigDict(frozen=True)

    stamp: Stamp
    justification: str
    source: Source
    agent_id: str | None = None


class ConsentRecord(BaseModel):
    """A consent to prospecting calls, as recorded, with its proof reference; ``ended_by``
    once a withdrawal appended after it ended it (kept: the proof duty outlives it)."""

    model_config = ConfigDict(frozen=True)

    event_id: UUID
    captured_at: AwareDatetime
    expires_at: AwareDatetime
    granted_ms: int  # its place in log order: when the consents topic appended it (ms)
    source: ConsentSource
    proof_ref: str
    wording_version: str | None = None
    recorded_by: str | None = None
    ended_by: UUID | None = None  # the withdrawal that ended it
    ended_ms: int | None = None  # when that withdrawal was appended (ms)

    def valid_at(self, now: datetime) -> bool:
        """Not ended and not expired at ``now``."""
        return self.ended_by is None and self.ended_ms is None and self.expires_at > now


class AttemptRecord(BaseModel):
    """A call attempt reserved at dial time (counted per tenant and number)."""

    model_config = ConfigDict(frozen=True)

    event_id: UUID
    at: AwareDatetime
    campaign_id: str | None = None


class SuppressionState(BaseModel):
    """Everything applied so far to one number in one scope target (the table value)."""

    model_config = ConfigDict(frozen=True)

    target: str  # "_global", "tenant" or "tenant/campaign"
    tenant: str  # tenant that recorded the latest change
    scope: Scope
    campaign_id: str | None
    phone_e164: str
    lift: LiftRecord | None = None
    active: tuple[ActiveSuppression, ...] = ()
    version: int = 0  # number of changes applied
    partition: int = 0  # source partition that owns this key
    # (partition, offset) of the last event applied: a replay at or before it is a no-op.
    position: tuple[int, int] | None = None
    # Suppressions a lift ended: their ids stay known, so a re-sent copy does not revive them.
    ended: tuple[UUID, ...] = ()
    # Lifts applied (the latest last): a copy or a replay of any of them is a duplicate.
    lifts: tuple[UUID, ...] = ()
    # Consents of this scope (the latest last, bounded: the log keeps them all), the append
    # time of the latest consent withdrawal of this scope (it ends every consent granted
    # before it, in this scope and the narrower ones), the tenant's recent attempts.
    consents: tuple[ConsentRecord, ...] = ()
    withdrawn_ms: int | None = None
    attempts: tuple[AttemptRecord, ...] = ()
    updated_at: AwareDatetime

    def effective(self, now: datetime) -> ActiveSuppression | None:
        """The suppression in force at ``now`` that lasts longest, or None when callable."""
        best: ActiveSuppression | None = None
        for entry in self.active:
            if not entry.in_force(now):
                continue
            if best is None or _outlasts(entry, best):
                best = entry
        return best

    def next_expiry(self, now: datetime) -> datetime | None:
        """When the current suppression ends by itself (None: never, or not suppressed)."""
        current = self.effective(now)
        return None if current is None else current.expires_at

    @property
    def table_key(self) -> str:
        """Key in the Faust table and the suppressions topic: ``target|E164``."""
        return state_key(self.target, self.phone_e164)


def state_key(target: str, phone_e164: str) -> str:
    """Key in the Faust table and the compacted suppressions topic."""
    return f"{target}|{phone_e164}"


def _outlasts(a: ActiveSuppression, b: ActiveSuppression) -> bool:
    if a.expires_at is None:
        return b.expires_at is not None or a.stamp.order > b.stamp.order
    if b.expires_at is None:
        return False
    return a.expires_at > b.expires_at or (
        a.expires_at == b.expires_at and a.stamp.order > b.stamp.order
    )


class SuppressionChange(BaseModel):
    """Latest state of one number in one scope, as written to ``dnc.suppressions.v1``.

    The topic is compacted on the same key as the table, so it always holds the
    current state of every number: what the reference-list sync delivers.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: int = 1
    target: str
    tenant: str
    scope: Scope
    campaign_id: str | None
    phone_e164: str
    suppressed: bool
    kind: Kind | None  # kind in force, or "lift" when lifted, None when expired
    expires_at: AwareDatetime | None
    erasure_requested: bool
    cause: str  # "event" or "expiry"
    source_event_id: UUID | None
    occurred_at: AwareDatetime | None
    reason_code: str | None
    version: int
    changed_at: AwareDatetime
    # When the person said what caused this change (the event applied last); None for an
    # expiry or a re-emission. ``occurred_at`` above is the stamp of the state in force, which
    # can be older (a refusal under a standing objection changes nothing it shows).
    event_occurred_at: AwareDatetime | None = None

    @classmethod
    def of(
        cls,
        state: SuppressionState,
        now: datetime,
        cause: str,
        event_occurred_at: datetime | None = None,
    ) -> SuppressionChange:
        """The change record for ``state`` as seen at ``now``."""
        current = state.effective(now)
        latest: ActiveSuppression | LiftRecord | None = current
        if latest is None and state.lift is not None:
            latest = state.lift
        kind: Kind | None
        if current is not None:
            kind = current.kind
        elif cause == "expiry" or state.lift is None:
            kind = None
        else:
            kind = Kind.LIFT
        return cls(
            target=state.target,
            tenant=state.tenant,
            scope=state.scope,
            campaign_id=state.campaign_id,
            phone_e164=state.phone_e164,
            suppressed=current is not None,
            kind=kind,
            expires_at=current.expires_at if current else None,
            erasure_requested=any(e.kind is Kind.ERASURE for e in state.active),
            cause=cause,
            source_event_id=latest.stamp.event_id if latest else None,
            occurred_at=latest.stamp.occurred_at if latest else None,
            reason_code=current.reason_code if current else None,
            version=state.version,
            changed_at=now,
            event_occurred_at=event_occurred_at,
        )
