"""Answers from what the view said: the decision every checker shares, without a Redis client.

A check reads the view (one :data:`consumers.readiness.READ_VIEW` script) and decides here:
unavailable when the view cannot be trusted or the answer took it past the staleness bound,
else the campaign's rules (:func:`consumers.dial_rules.decide`). The library's checker
(:class:`consumers.checker.SuppressionChecker`, redis-py) and the one-shot check of a shell's
`dnc check` (:mod:`consumers.one_shot`) both answer through :class:`ViewVerdicts`, so they
give the same answers; this module imports no Redis client and no metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from consumers.dial_rules import (
    ConsentFact,
    Reason,
    ReasonCode,
    decide,
    next_allowed_at,
    valid_consent,
)
from consumers.readiness import judge, trusted
from consumers.view_reads import Found, NumberRead
from schemas.phone import normalise_cached
from schemas.policy import CampaignPolicy, LegalBasis
from schemas.tenants import TenantDirectory
from schemas.view import ViewLayout
from schemas.vocabulary import Scope


class Answer(StrEnum):
    """A check's answer; the CLI exits 0, 1, 2 for them."""

    CALLABLE = "callable"
    SUPPRESSED = "suppressed"  # do not call: ``reasons`` says why
    UNAVAILABLE = "unavailable"


_RANK = {Scope.GLOBAL: 0, Scope.TENANT: 1, Scope.CAMPAIGN: 2}


@dataclass(frozen=True)
class CheckResult:
    """The answer for one number.

    ``reasons``: every rule that forbids the call (:mod:`consumers.dial_rules`);
    ``scope``: the broadest list the number is opposed on; ``next_allowed_at``: when waiting
    helps (None: it does not, or the call is allowed); ``consent``: the consent a call
    under a consent campaign relies on (its proof reference); ``why``: when unavailable;
    ``at``: the instant judged (Redis's clock, or the one asked for).
    """

    phone_e164: str | None
    answer: Answer
    scope: Scope | None = None
    why: str | None = None
    reasons: tuple[Reason, ...] = ()
    next_allowed_at: datetime | None = None
    consent: ConsentFact | None = None
    at: datetime | None = None

    @property
    def may_call(self) -> bool:
        """Only an explicit ``callable`` allows a call."""
        return self.answer is Answer.CALLABLE

    def as_json(self) -> dict[str, Any]:
        """The answer as `dnc check --json`, the gateway and `dnc scrub` give it."""
        consent = self.consent
        return {
            "phone_e164": self.phone_e164,
            "answer": self.answer.value,
            "scope": None if self.scope is None else self.scope.value,
            "why": self.why,
            "reasons": [r.as_json() for r in self.reasons],
            "next_allowed_at": _iso(self.next_allowed_at),
            "consent": None if consent is None else {
                "scope": consent.scope.value, "event_id": consent.event_id,
                "expires_at": _iso(consent.expires_at), "proof_ref": consent.proof_ref,
            },
            "at": _iso(self.at),
        }  # fmt: skip


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


# Attempts are read from a little further back than the campaign's period (the window is
# applied on Redis's clock afterwards).
_ATTEMPTS_MARGIN = timedelta(minutes=5)
_PLANS_CACHED = 4096  # (tenant, campaign) pairs whose single-check plan is kept


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a single check of one tenant's campaign needs besides the number: built once."""

    region: str
    policy: CampaignPolicy
    read: NumberRead


def attempts_since_ms(policy: CampaignPolicy, at: datetime | None) -> int | None:
    """From when (ms) a check reads the tenant's attempts; None: the campaign caps none."""
    if policy.max_attempts is None:
        return None
    start = (at or datetime.now(UTC)) - policy.attempt_period - _ATTEMPTS_MARGIN
    return int(start.timestamp() * 1000)


class ViewVerdicts:
    """What a checker decides from the view's replies: its plans, trust and verdicts.

    ``layout``: where the view keeps each number; ``max_staleness_seconds``: the bound
    an answer's view (plus the time the answer took) must be within to say "callable".
    """

    def __init__(
        self, layout: ViewLayout, tenants: TenantDirectory, max_staleness_seconds: float
    ) -> None:
        self._layout = layout
        self._fingerprint = layout.fingerprint
        self._tenants = tenants
        self._max_staleness = max_staleness_seconds
        # Outside a cluster, reading the node's identity costs an INFO: only a sharded view
        # records the node it was vouched on.
        self._with_node = 1 if layout.shards else 0
        self._plans: dict[tuple[str, str | None], _Plan] = {}

    @property
    def tenants(self) -> TenantDirectory:
        """The tenants (and their campaigns' policies) this checker answers for."""
        return self._tenants

    def _unready_reason(self, server_time: Any, meta: Any, node: Any = None) -> str | None:
        """Why the view cannot be trusted right now, or None."""
        if trusted(server_time, meta, self._fingerprint, self._max_staleness, node):
            return None
        verdict = judge(server_time, meta, self._fingerprint, self._max_staleness, node)
        return verdict.why or "not ready"

    def _plan(self, tenant: str, campaign: str | None) -> _Plan:
        """The single-check plan of ``tenant``'s ``campaign`` (raises for an unknown tenant)."""
        plan = self._plans.get((tenant, campaign))
        if plan is None:
            region = self._tenants.get(tenant).default_region
            policy = self._tenants.policy(tenant, campaign)
            read = NumberRead(
                self._layout, tenant, campaign,
                consents=policy.legal_basis is LegalBasis.CONSENT,
                attempts=policy.max_attempts is not None,
                with_node=self._with_node, trust=(self._fingerprint, self._max_staleness),
            )  # fmt: skip
            if len(self._plans) >= _PLANS_CACHED:  # campaigns come and go: keep it bounded
                self._plans.clear()
            plan = self._plans[(tenant, campaign)] = _Plan(region, policy, read)
        return plan

    def _single(
        self, phone: str, tenant: str, campaign: str | None, at: datetime | None
    ) -> tuple[str, _Plan, Sequence[Any], Sequence[Any]]:
        """The number in E.164 (raises on invalid input), its plan and its read's keys and
        arguments."""
        plan = self._plan(tenant, campaign)
        e164 = normalise_cached(phone, plan.region)
        keys, args = plan.read.call(e164, attempts_since_ms(plan.policy, at))
        return e164, plan, keys, args

    def _answer(
        self, e164: str, plan: _Plan, reply: Any, at: datetime | None, started: float
    ) -> CheckResult:
        """A single check's answer from its :data:`READ_VIEW` reply (asked at ``started``)."""
        found = plan.read.found(reply, self._unready_reason)
        return self._in_time(self._decide(e164, plan.policy, found, at), found, started)

    def _in_time(self, result: CheckResult, found: Found, started: float) -> CheckResult:
        """``result``, unless it says "callable" and the view it was read from is past the
        staleness bound by the time the answer is ready: the time the question took counts
        against the bound (a process descheduled after Redis answered, an overloaded host),
        for an answer is only as fresh as the moment it reaches the dialer."""
        if result.answer is not Answer.CALLABLE or found.now is None or found.oldest_ms is None:
            return result
        age = found.now.timestamp() - found.oldest_ms / 1000
        return self._past_bound(result, age, time.perf_counter() - started)

    def _past_bound(self, result: CheckResult, age: float, spent: float) -> CheckResult:
        """``result`` (callable), or unavailable if the view's ``age`` when read plus the
        ``spent`` seconds since the question is past the staleness bound."""
        if age + spent <= self._max_staleness:
            return result
        why = (f"view not current: {age:.2f}s behind when read, plus {spent:.2f}s to answer, "
               f"past the {self._max_staleness:g}s staleness bound (this process or Redis "
               "overloaded?): ask again")  # fmt: skip
        return CheckResult(result.phone_e164, Answer.UNAVAILABLE, why=why, at=result.at)

    def _decide(
        self, e164: str, policy: CampaignPolicy, found: Found, at: datetime | None
    ) -> CheckResult:
        """The answer from what the view said: unavailable if it could not be trusted."""
        if found.why is not None:
            return CheckResult(e164, Answer.UNAVAILABLE, why=found.why, at=found.now)
        instant = at or found.now or datetime.now(UTC)
        facts = found.facts()
        reasons = decide(policy, e164, facts, instant)
        if reasons:
            opposed = [r.scope for r in reasons if r.code is ReasonCode.OPPOSED and r.scope]
            scope = min(opposed, key=_RANK.__getitem__) if opposed else None
            wait = next_allowed_at(policy, e164, facts, instant, reasons)
            return CheckResult(e164, Answer.SUPPRESSED, scope=scope, reasons=tuple(reasons),
                               next_allowed_at=wait, at=instant)  # fmt: skip
        consent = (
            valid_consent(facts, instant) if policy.legal_basis is LegalBasis.CONSENT else None
        )
        return CheckResult(e164, Answer.CALLABLE, consent=consent, at=instant)
