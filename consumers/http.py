"""The dialer's HTTP routes: "may I call this number now?" for one number or a list, and
``POST /v1/attempts``: if so, one attempt reserved and recorded before "go".

Fail closed, as the library: only ``"answer": "callable"`` (``"may_call": true``) allows a
call. A single check answers 200 for callable and suppressed and **503** for unavailable
(Redis unreachable, view incomplete, worker silent), with the same JSON body and a
Retry-After, so a client that only looks at the status code fails closed too. A bulk
check answers 200 with one answer per number (an invalid number is ``unavailable`` with
the reason, as in the library), and 503 when the view itself cannot answer. Every answer
names every rule that forbids the call (``reasons``) and when waiting helps
(``next_allowed_at``), as `dnc check --json` does (:meth:`CheckResult.as_json`).
"""

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from consumers.attempts import AttemptDesk, AttemptOutcome
from consumers.checker import Answer, CheckResult, SuppressionChecker
from consumers.dial_rules import ReasonCode
from schemas.api import (
    AUTHENTICATED_ERRORS,
    CampaignQuery,
    PhonePath,
    TenantQuery,
    error_responses,
    invalid_input,
    resolve_tenant,
)
from schemas.errors import InvalidPhoneNumber
from schemas.events import CAMPAIGN_PATTERN, Kind, Scope
from schemas.metrics import GATEWAY_ATTEMPTS, GATEWAY_CHECKS
from schemas.phone import MAX_PHONE_INPUT
from schemas.text import SINGLE_LINE, SingleLine
from schemas.tokens import Permission, Principal

Require = Callable[[Permission], Callable[..., Any]]
RETRY_AFTER_SECONDS = 1
# Campaign planning looks ahead; beyond this an instant is a typo (and the calendars' and the
# attempts window's arithmetic would leave the representable years).
MAX_AT_DISTANCE = timedelta(days=3653)
AT_DESCRIPTION = (
    "judge hours, holidays, expiries and the attempts window at this instant (ISO 8601 with a "
    "time zone, within ten years of now) against the view as it is now; default: now"
)
AtQuery = Annotated[
    AwareDatetime | None,
    Query(description=AT_DESCRIPTION + " (in a URL, write '+' as %2B, or use Z)"),
]
LegacyCampaignQuery = Annotated[
    str | None,
    Query(pattern=CAMPAIGN_PATTERN, deprecated=True, description="former name of campaign_id"),
]
Phone = Annotated[str, SINGLE_LINE, Field(min_length=1, max_length=MAX_PHONE_INPUT)]
TenantField = Annotated[
    SingleLine | None,
    Field(max_length=64, description="defaults to the token's tenant; any other is 403"),
]


class ReasonAnswer(BaseModel):
    """One rule that forbids the call, and when (if ever) waiting lifts it."""

    code: ReasonCode
    scope: Scope | None = Field(None, description="opposed: which list; consent_*: its scope")
    kind: Kind | None = Field(None, description="opposed: the kind of suppression")
    next_allowed_at: AwareDatetime | None = Field(None, description="null: waiting does not help")
    detail: str | None = None


class ConsentAnswer(BaseModel):
    """The recorded consent a call under a consent campaign relies on."""

    scope: Scope
    event_id: str
    expires_at: AwareDatetime
    proof_ref: str = Field(description="where its proof is archived")


class CheckAnswer(BaseModel):
    """May the dialer call this number now? Only ``callable`` (``may_call``) allows it."""

    phone: str = Field(description="the number as sent")
    phone_e164: str | None = Field(None, description="null when the number is not valid")
    answer: Answer
    may_call: bool
    scope: Scope | None = Field(None, description="the broadest suppression list it is on")
    why: str | None = Field(None, description="why the answer is unavailable")
    reasons: list[ReasonAnswer] = Field(
        default_factory=list, description="every rule that forbids the call (suppressed only)"
    )
    next_allowed_at: AwareDatetime | None = Field(
        None, description="when every reason lifts; null when callable, or when no time helps"
    )
    consent: ConsentAnswer | None = Field(
        None, description="a consent campaign's callable answer: the consent relied on"
    )
    at: AwareDatetime | None = Field(None, description="the instant judged")


class AttemptAnswer(CheckAnswer):
    """``go``: call now, one attempt was reserved and recorded; otherwise why not."""

    go: bool
    attempt_id: uuid.UUID | None = Field(None, description="the attempt recorded (go only)")


class BulkCheckRequest(BaseModel):
    """A list scrub before loading a campaign."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"phones": ["0612345678", "+33698765432"], "campaign_id": "optin-2027"}]
        },
    )

    phones: list[Phone] = Field(
        min_length=1, description="numbers to check (the limit is DNC_GATEWAY_BULK_CHECK_LIMIT)"
    )
    campaign_id: str | None = Field(
        None, pattern=CAMPAIGN_PATTERN, description="its rules apply (tenants file)"
    )
    campaign: str | None = Field(
        None,
        pattern=CAMPAIGN_PATTERN,
        description="former name of campaign_id",
        json_schema_extra={"deprecated": True},
    )
    at: AwareDatetime | None = Field(None, description=AT_DESCRIPTION)
    tenant: TenantField = None


class BulkCheckAnswer(BaseModel):
    """One answer per number, in the order sent."""

    results: list[CheckAnswer]
    callable: int
    suppressed: int
    unavailable: int


class AttemptRequest(BaseModel):
    """A dialer about to call a number for a campaign."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"phone": "0612345678", "campaign_id": "optin-2027"}]},
    )

    phone: Phone
    campaign_id: str = Field(
        pattern=CAMPAIGN_PATTERN, description="its rules apply, and its cap counts the attempt"
    )
    tenant: TenantField = None


def _answer(phone: str, result: CheckResult) -> CheckAnswer:
    return CheckAnswer.model_validate({"phone": phone, "may_call": result.may_call,
                                       **result.as_json()})  # fmt: skip


def _count(tenant: str, results: Sequence[CheckResult]) -> None:
    for result in results:
        GATEWAY_CHECKS.labels(tenant=tenant, outcome=result.answer.value).inc()


def _unavailable(content: BaseModel) -> JSONResponse:
    return JSONResponse(
        content.model_dump(mode="json"),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _campaign(campaign_id: str | None, legacy: str | None) -> str | None:
    """The campaign asked for, under its name or its former one (not two different ones)."""
    if campaign_id is not None and legacy is not None and campaign_id != legacy:
        raise invalid_input("campaign", "campaign is the former name of campaign_id: send one")
    return campaign_id or legacy


def _instant(at: datetime | None) -> datetime | None:
    if at is not None and abs(at - datetime.now(UTC)) > MAX_AT_DISTANCE:
        raise invalid_input("at", "must be within ten years of now (omit it to judge now)")
    return at


def checks_router(checker: SuppressionChecker, bulk_limit: int, require: Require) -> APIRouter:
    """GET /v1/suppressions/{phone} and POST /v1/checks (dialer, admin)."""
    router = APIRouter(tags=["dialer"])

    @router.get(
        "/v1/suppressions/{phone}",
        response_model=CheckAnswer,
        responses={**error_responses(*AUTHENTICATED_ERRORS), 503: _unavailable_doc("CheckAnswer")},
        summary="May I call this number now? (dialer)",
    )
    async def check_number(
        phone: PhonePath,
        principal: Annotated[Principal, Depends(require(Permission.CHECK))],
        campaign_id: CampaignQuery = None,
        at: AtQuery = None,
        tenant: TenantQuery = None,
        campaign: LegacyCampaignQuery = None,
    ) -> Any:
        """callable (200), suppressed (200, with every reason) or unavailable (503); 422 for
        an invalid number, or an ``at`` without a time zone."""
        own = resolve_tenant(principal, tenant)
        chosen, instant = _campaign(campaign_id, campaign), _instant(at)
        try:
            result = await checker.check_async(phone, own, chosen, instant)
        except InvalidPhoneNumber as exc:
            raise invalid_input("phone", exc.message) from None
        _count(own, [result])
        answer = _answer(phone, result)
        return _unavailable(answer) if result.answer is Answer.UNAVAILABLE else answer

    @router.post(
        "/v1/checks",
        response_model=BulkCheckAnswer,
        responses={
            **error_responses(*AUTHENTICATED_ERRORS),
            503: _unavailable_doc("BulkCheckAnswer"),
        },
        summary=f"Scrub a list of numbers, up to {bulk_limit} per request (dialer)",
    )
    async def check_numbers(
        body: BulkCheckRequest,
        principal: Annotated[Principal, Depends(require(Permission.CHECK))],
    ) -> Any:
        """One answer per number; 503 when the view cannot answer at all."""
        own = resolve_tenant(principal, body.tenant)
        if len(body.phones) > bulk_limit:
            raise invalid_input(
                "phones",
                f"at most {bulk_limit} numbers per request, got {len(body.phones)}: split it",
            )
        chosen, instant = _campaign(body.campaign_id, body.campaign), _instant(body.at)
        results = await run_in_threadpool(checker.check_many, body.phones, own, chosen, instant)
        _count(own, results)
        answers = [_answer(p, r) for p, r in zip(body.phones, results, strict=True)]
        totals = {a: sum(1 for r in results if r.answer is a) for a in Answer}
        content = BulkCheckAnswer(
            results=answers,
            callable=totals[Answer.CALLABLE],
            suppressed=totals[Answer.SUPPRESSED],
            unavailable=totals[Answer.UNAVAILABLE],
        )
        # A valid number answered unavailable means the view itself could not answer.
        view_down = any(
            r.answer is Answer.UNAVAILABLE and r.phone_e164 is not None for r in results
        )
        return _unavailable(content) if view_down else content

    return router


def attempts_router(desk: AttemptDesk, require: Require) -> APIRouter:
    """POST /v1/attempts (dialer, admin): "may I call now?" and, if so, one attempt reserved.

    Not audited one by one (as checks): each attempt is itself an event in the log of record.
    """
    router = APIRouter(tags=["dialer"])

    @router.post(
        "/v1/attempts",
        response_model=AttemptAnswer,
        responses={
            **error_responses(*AUTHENTICATED_ERRORS),
            503: _unavailable_doc("AttemptAnswer"),
        },
        summary="May I call now? If so, reserve and record one attempt (dialer)",
    )
    async def attempt(
        body: AttemptRequest,
        principal: Annotated[Principal, Depends(require(Permission.ATTEMPT))],
    ) -> Any:
        """200 ``"go": true`` once the attempt is reserved under the campaign's cap and Kafka
        acknowledged it: call now. 200 ``"go": false`` with every reason: do not call. 503
        (same body, ``"answer": "unavailable"``): do NOT call, the answer is not known."""
        own = resolve_tenant(principal, body.tenant)
        try:
            # Blocking (Redis, then Kafka's acknowledgement): on the threads, as bulk checks.
            outcome = await run_in_threadpool(desk.attempt, body.phone, own, body.campaign_id)
        except InvalidPhoneNumber as exc:
            raise invalid_input("phone", exc.message) from None
        GATEWAY_ATTEMPTS.labels(tenant=own, outcome=_attempt_outcome(outcome)).inc()
        result = outcome.result
        answer = AttemptAnswer.model_validate({
            "phone": body.phone, "go": outcome.go, "attempt_id": outcome.attempt_id,
            **result.as_json(), "may_call": outcome.go,
        })  # fmt: skip
        return _unavailable(answer) if result.answer is Answer.UNAVAILABLE else answer

    return router


def _attempt_outcome(outcome: AttemptOutcome) -> str:
    if outcome.go:
        return "go"
    return "unavailable" if outcome.result.answer is Answer.UNAVAILABLE else "not_callable"


def _unavailable_doc(model: str) -> dict[str, Any]:
    refs = [{"$ref": f"#/components/schemas/{m}"} for m in (model, "ErrorBody")]
    return {
        "description": "unavailable: do NOT call (or a timeout, as an ErrorBody)",
        "content": {"application/json": {"schema": {"anyOf": refs}}},
    }
