"""A dialer's attempt: "may I call now?" and, only if yes, one attempt reserved and recorded.

The SDK's, `dnc attempt`'s and the gateway's ``POST /v1/attempts``: check the number under
the campaign's rules; if callable, reserve one attempt against the campaign's cap in the
view (atomically: concurrent dialers never exceed it), then record the attempt in the log
of record and wait for Kafka's acknowledgement before answering "go". The worker applies
the recorded attempt to the tenant's counter, which is what a rebuilt view counts.

A reservation whose recording fails stays counted until the period is over (the safe side:
the cap is reached sooner, never later) and the answer is "unavailable".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from consumers.checker import Answer, CheckResult, SuppressionChecker
from producers.publisher import OppositionPublisher, Receipt
from schemas.errors import PublishError
from schemas.events import Kind, OppositionEvent, Scope, Source


@dataclass(frozen=True)
class AttemptOutcome:
    """The answer to an attempt: ``go`` only once the attempt is recorded in the log."""

    result: CheckResult
    attempt_id: str | None = None  # the recorded attempt (go only)
    receipt: Receipt | None = None

    @property
    def go(self) -> bool:
        """True: call now (one attempt reserved and recorded)."""
        return self.result.may_call and self.receipt is not None


class AttemptDesk:
    """Answers and records attempts for dialers (the checker reads, the publisher records)."""

    def __init__(
        self,
        checker: SuppressionChecker,
        publisher: OppositionPublisher,
        source: Source = Source.CLI,
    ) -> None:
        self._checker = checker
        self._publisher = publisher
        self._source = source

    def attempt(self, phone: str, tenant: str, campaign: str) -> AttemptOutcome:
        """Check ``phone`` for ``campaign``; if callable, reserve and record one attempt.

        Raises :class:`schemas.errors.InvalidPhoneNumber` (or UnknownTenant) on bad input.
        """
        result = self._checker.check(phone, tenant, campaign)
        if not result.may_call:
            return AttemptOutcome(result)
        attempt_id = str(uuid.uuid4())
        reserved = self._checker.reserve(result, tenant, campaign, attempt_id)
        if not reserved.may_call or reserved.at is None:
            return AttemptOutcome(reserved)
        event = OppositionEvent(
            event_id=uuid.UUID(attempt_id), tenant=tenant, phone=phone,
            phone_e164=reserved.phone_e164, kind=Kind.ATTEMPT, scope=Scope.CAMPAIGN,
            campaign_id=campaign, source=self._source, occurred_at=reserved.at,
        )  # fmt: skip
        try:
            receipt = self._publisher.publish(event)
        except PublishError as exc:
            why = f"the attempt could not be recorded in the log ({exc}): do not call"
            return AttemptOutcome(replace(reserved, answer=Answer.UNAVAILABLE, why=why))
        return AttemptOutcome(reserved, attempt_id, receipt)
