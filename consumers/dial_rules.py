"""The dial decision: "may I call this number now?", as pure functions over plain data.

Shared by the checker, the gateway, ``dnc check`` and subject access, so that a rule is
written once and tested once. No I/O: the caller reads the facts from the view
(:class:`ViewFacts`), the policy from the tenants file
(:meth:`schemas.tenants.TenantDirectory.policy`) and passes the instant asked about.

:func:`decide` names EVERY rule that forbids the call, not only the first:

* ``opposed``: one reason per suppression list (scope) and kind the number is on;
* ``sector_banned``: the campaign's sector is banned from phone prospecting (law
  2025-594), unless the legal basis is a contract;
* ``no_consent`` / ``consent_expired`` / ``consent_withdrawn``: the legal basis is
  ``consent`` and no recorded consent is valid (:func:`consent_reason`);
* ``public_holiday`` / ``outside_calling_hours``: D223-9, Monday to Friday, 10:00-13:00
  and 14:00-20:00 in the consumer's time zone (10:00 and 14:00 sharp are inside, 13:00
  and 20:00 sharp outside), not on a public holiday. The zones and holiday calendars of a
  number, and the safe side taken when the number does not say where its consumer is,
  are described in :mod:`consumers.dial_calendar`: every zone must be inside the hours,
  and a holiday in any calendar that may apply counts;
* ``attempt_cap``: the tenant's reserved attempts on this number within
  ``(at - attempt_period, at]`` have reached ``max_attempts``.

Each reason carries ``next_allowed_at``, the earliest instant this reason alone stops
forbidding the call, or None when no time helps (oppositions, consent, sector).
:func:`next_allowed_at` combines them. Both are in UTC whatever the zone of ``at``: a
datetime of a zone that changes its clocks compares by wall clock with one of the same
zone, and never equal to one of another zone in the hour that repeats (PEP 495), so the
zone is for display only.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from consumers.dial_calendar import NumberCalendar, number_calendar
from schemas.policy import CallingHours, CampaignPolicy, LegalBasis
from schemas.vocabulary import Kind, Scope

# D223-9's windows, in seconds of the local day: [10:00, 13:00) and [14:00, 20:00).
OPENS, BREAK_STARTS, BREAK_ENDS, CLOSES = 10 * 3600, 13 * 3600, 14 * 3600, 20 * 3600
_WEEKEND = 5  # date.weekday() of Saturday
_DAYS_SEARCHED = 40  # a run of closed days longer than this: no opening is given
_ROUNDS = 64  # bounded searches: past this, no time is shown to help
_HOURS_CACHED = 4096  # (calendar, second) verdicts of the calling hours kept
_EPOCH, _SECOND = datetime(1970, 1, 1, tzinfo=UTC), timedelta(seconds=1)
# The scopes whose consent withdrawals end a consent checked for a campaign (or a tenant).
_COVERING = (Scope.GLOBAL, Scope.TENANT, Scope.CAMPAIGN)


class ReasonCode(StrEnum):
    """Why a call is not allowed; stable names for clients, logs and metrics."""

    OPPOSED = "opposed"
    NO_CONSENT = "no_consent"
    CONSENT_EXPIRED = "consent_expired"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    OUTSIDE_CALLING_HOURS = "outside_calling_hours"
    PUBLIC_HOLIDAY = "public_holiday"
    ATTEMPT_CAP = "attempt_cap"
    SECTOR_BANNED = "sector_banned"


TIME_BASED = frozenset(
    {ReasonCode.OUTSIDE_CALLING_HOURS, ReasonCode.PUBLIC_HOLIDAY, ReasonCode.ATTEMPT_CAP}
)


@dataclass(frozen=True, slots=True)
class Reason:
    """One rule that forbids the call, with when (if ever) waiting lifts it."""

    code: ReasonCode
    scope: Scope | None = None  # opposed: which list; consent_*: the scope concerned
    kind: Kind | None = None  # opposed: the suppression kind
    next_allowed_at: datetime | None = None  # in UTC; None: no time helps
    detail: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The reason for a JSON answer; every key is always present (null when unset)."""
        return {
            "code": self.code.value,
            "scope": None if self.scope is None else self.scope.value,
            "kind": None if self.kind is None else self.kind.value,
            "next_allowed_at": (
                None if self.next_allowed_at is None else self.next_allowed_at.isoformat()
            ),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class ConsentFact:
    """A recorded consent grant of the tenant (TENANT scope) or of the campaign (CAMPAIGN)."""

    scope: Scope
    granted_ms: int  # when the grant was appended to the log: its place in log order
    expires_at: datetime
    event_id: str
    proof_ref: str


@dataclass(frozen=True, slots=True)
class ViewFacts:
    """What the view knows of one number for one tenant (and campaign) when asked."""

    opposed: Sequence[tuple[Scope, Kind]] = ()
    consents: Sequence[ConsentFact] = ()
    # per scope (GLOBAL, TENANT, CAMPAIGN): append time of its latest consent withdrawal
    withdrawn_ms: Mapping[Scope, int] = field(default_factory=dict)
    attempts: Sequence[datetime] = ()  # this tenant's reserved attempts on this number


def decide(policy: CampaignPolicy, e164: str, facts: ViewFacts, at: datetime) -> list[Reason]:
    """Every rule that forbids calling ``e164`` at ``at`` (aware); empty: callable."""
    if at.tzinfo is None:
        raise ValueError("the instant of a dial decision must be timezone-aware")
    reasons = [Reason(ReasonCode.OPPOSED, scope, kind) for scope, kind in facts.opposed]
    if policy.sector_banned and policy.legal_basis is not LegalBasis.CONTRACT:
        reasons.append(Reason(ReasonCode.SECTOR_BANNED, detail=policy.sector))
    if policy.legal_basis is LegalBasis.CONSENT:
        missing = consent_reason(facts.consents, facts.withdrawn_ms, at)
        if missing is not None:
            reasons.append(missing)
    if policy.calling_hours is CallingHours.FR:
        closed = hours_reason(number_calendar(e164), at)
        if closed is not None:
            reasons.append(closed)
    if policy.max_attempts is not None:
        capped = attempt_cap_reason(facts.attempts, policy.max_attempts, policy.attempt_period, at)
        if capped is not None:
            reasons.append(capped)
    return reasons


def only_oppositions(policy: CampaignPolicy) -> bool:
    """True when, under ``policy``, :func:`decide` names nothing but the number's oppositions
    (no sector ban, consent, calling hours or cap): its verdict is then the same for every
    number with the same oppositions, at any instant, and no time helps."""
    banned = policy.sector_banned and policy.legal_basis is not LegalBasis.CONTRACT
    return not (
        banned
        or policy.legal_basis is LegalBasis.CONSENT
        or policy.calling_hours is CallingHours.FR
        or policy.max_attempts is not None
    )


def next_allowed_at(
    policy: CampaignPolicy,
    e164: str,
    facts: ViewFacts,
    at: datetime,
    reasons: Sequence[Reason] | None = None,
) -> datetime | None:
    """The earliest instant from ``at`` when :func:`decide` gives no reason at all, in UTC.

    ``at`` itself when the call is allowed now; None when a reason has no
    ``next_allowed_at`` (waiting does not help), when waiting ends a consent, or when no
    such instant is found in a bounded search. ``reasons``: :func:`decide`'s, if known.
    """
    pending = decide(policy, e164, facts, at) if reasons is None else reasons
    moment = at.astimezone(UTC)
    for _ in range(_ROUNDS):
        if not pending:
            return moment
        waits = [reason.next_allowed_at for reason in pending]
        if any(wait is None for wait in waits):
            return None
        # Each reason's time is the earliest it alone allows: none sooner can do for all.
        # Compared in UTC: datetimes of one zone compare by wall clock, wrong in the hour
        # that repeats when daylight saving ends.
        moment = max(wait.astimezone(UTC) for wait in waits if wait is not None)
        pending = decide(policy, e164, facts, moment)
    return None


def valid_consent(facts: ViewFacts, at: datetime) -> ConsentFact | None:
    """The consent a call at ``at`` relies on (the latest granted of the valid ones): its
    proof reference goes with the answer. None when none is valid."""
    withdrawn_at = max((facts.withdrawn_ms.get(scope, -1) for scope in _COVERING), default=-1)
    valid = [c for c in facts.consents if c.granted_ms > withdrawn_at and c.expires_at > at]
    return max(valid, key=lambda c: c.granted_ms, default=None)


def consent_reason(
    consents: Sequence[ConsentFact], withdrawn_ms: Mapping[Scope, int], at: datetime
) -> Reason | None:
    """None when a consent is valid at ``at``; else why not.

    A consent is valid iff it was granted after the latest withdrawal of every covering
    scope (global, tenant and campaign: a withdrawal for this campaign also ends the
    tenant-wide consent for it) and has not expired. A grant and a withdrawal in the same
    millisecond: the withdrawal wins.
    """
    withdrawn_at, withdrawn_by = -1, None
    for scope in _COVERING:  # broadest first: it names a tie
        ms = withdrawn_ms.get(scope)
        if ms is not None and ms > withdrawn_at:
            withdrawn_at, withdrawn_by = ms, scope
    expired: ConsentFact | None = None
    ended_by_withdrawal = False
    for consent in consents:
        if consent.granted_ms <= withdrawn_at:
            ended_by_withdrawal = True
        elif consent.expires_at <= at:
            if expired is None or consent.expires_at > expired.expires_at:
                expired = consent
        else:
            return None
    if ended_by_withdrawal:
        return Reason(ReasonCode.CONSENT_WITHDRAWN, scope=withdrawn_by)
    if expired is not None:
        return Reason(
            ReasonCode.CONSENT_EXPIRED,
            scope=expired.scope,
            detail=f"consent {expired.event_id} expired at {expired.expires_at.isoformat()}",
        )
    return Reason(ReasonCode.NO_CONSENT)


def attempt_cap_reason(
    attempts: Sequence[datetime], cap: int, period: timedelta, at: datetime
) -> Reason | None:
    """None when fewer than ``cap`` attempts fall within ``(at - period, at]``; else the
    reason, with the earliest instant the count in the rolling window drops below ``cap``
    (attempts reserved after ``at`` count once the window reaches them)."""
    # In UTC: arithmetic on datetimes of one zone is wall-clock arithmetic, and a window
    # of exact days must not stretch or shrink by an hour across a daylight-saving change.
    now = at.astimezone(UTC)
    ordered = sorted(attempt.astimezone(UTC) for attempt in attempts)
    counted = bisect_right(ordered, now) - bisect_right(ordered, now - period)
    if counted < cap:
        return None
    # The count drops only when an attempt leaves the window (attempt + period): try each
    # such instant in order; the last attempt's always empties the window.
    wait = now
    for attempt in ordered:
        leaves = attempt + period
        if leaves > now and bisect_right(ordered, leaves) - bisect_right(ordered, attempt) < cap:
            wait = leaves
            break
    return Reason(
        ReasonCode.ATTEMPT_CAP,
        next_allowed_at=wait,
        detail=f"{counted} attempts in the last {period.days} days (at most {cap})",
    )


def hours_reason(calendar: NumberCalendar, at: datetime) -> Reason | None:
    """None when ``at`` is inside D223-9's calling hours in every zone of the number;
    else ``public_holiday`` (a holiday in any zone) or ``outside_calling_hours``."""
    return _hours_reason_at(calendar, (at - _EPOCH) // _SECOND)


@lru_cache(maxsize=_HOURS_CACHED)
def _hours_reason_at(calendar: NumberCalendar, second: int) -> Reason | None:
    """:func:`hours_reason` at the whole second ``second`` (Unix time): the same for every
    instant of that second, as the hours open and close on whole minutes, the reason's detail
    names the minute and the opening is one of those boundaries. Cached: the numbers of a
    bulk check, and checks within a second, share a handful of calendars."""
    return hours_verdict(calendar, datetime.fromtimestamp(second, UTC))


def hours_verdict(calendar: NumberCalendar, at: datetime) -> Reason | None:
    """:func:`hours_reason` computed at ``at`` itself (uncached)."""
    if not calendar.zones:
        return Reason(ReasonCode.OUTSIDE_CALLING_HOURS, detail="no known time zone for this number")
    code: ReasonCode | None = None
    detail = ""
    for zone in calendar.zones:
        local = at.astimezone(zone)
        holiday = calendar.holiday(local.date())
        if holiday is not None:
            code, detail = ReasonCode.PUBLIC_HOLIDAY, f"{holiday}, {local:%Y-%m-%d} in {zone.key}"
            break
        if code is None and not _inside(local):
            code, detail = ReasonCode.OUTSIDE_CALLING_HOURS, f"{local:%a %H:%M} in {zone.key}"
    if code is None:
        return None
    opening = next_opening(calendar, at)
    return Reason(code, next_allowed_at=opening, detail=detail)


def next_opening(calendar: NumberCalendar, at: datetime) -> datetime | None:
    """The earliest instant from ``at`` inside the calling hours in every zone at once
    (in UTC), or None when the zones' hours do not meet in a bounded search."""
    moment = at.astimezone(UTC)  # instants compared in UTC: exact across zones and changes
    for _ in range(_ROUNDS):
        latest = moment
        for zone in calendar.zones:
            opening = _opening_in(calendar, zone, moment)
            if opening is None:
                return None
            latest = max(latest, opening.astimezone(UTC))
        if latest == moment:
            return moment
        moment = latest
    return None


def _inside(local: datetime) -> bool:
    if local.weekday() >= _WEEKEND:
        return False
    second = local.hour * 3600 + local.minute * 60 + local.second
    return OPENS <= second < BREAK_STARTS or BREAK_ENDS <= second < CLOSES


def _opening_in(calendar: NumberCalendar, zone: ZoneInfo, moment: datetime) -> datetime | None:
    """The earliest instant from ``moment`` inside the calling hours of one zone."""
    local = moment.astimezone(zone)
    day = local.date()
    if _working(calendar, day):
        second = local.hour * 3600 + local.minute * 60 + local.second
        if second < OPENS:
            return _local(day, OPENS, zone)
        if second < BREAK_STARTS or BREAK_ENDS <= second < CLOSES:
            return moment
        if second < BREAK_ENDS:
            return _local(day, BREAK_ENDS, zone)
    for _ in range(_DAYS_SEARCHED):
        day += timedelta(days=1)
        if _working(calendar, day):
            return _local(day, OPENS, zone)
    return None


def _working(calendar: NumberCalendar, day: date) -> bool:
    return day.weekday() < _WEEKEND and calendar.holiday(day) is None


def _local(day: date, second: int, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(second // 3600, second % 3600 // 60), tzinfo=zone)
