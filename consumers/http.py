"""The dialer's HTTP check (one number, or a list) and the subject access request (admin).

Fail closed, as the library: only ``"answer": "callable"`` (``"may_call": true``) allows a
call. A single check answers 200 for callable and suppressed and **503** for unavailable
(Redis unreachable, view incomplete, worker silent), with the same JSON body and a
Retry-After, so a client that only looks at the status code fails closed too. A bulk
check answers 200 with one answer per number (an invalid number is ``unavailable`` with
the reason, as in the library), and 503 when the view itself cannot answer.
"""

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from consumers.checker import Answer, CheckResult, SuppressionChecker
from consumers.subjects import (
    SubjectLog,
    SubjectReport,
    SubjectScanError,
    SubjectScanPool,
    SubjectScansBusy,
    ViewAnswer,
)
from schemas.api import (
    AUTHENTICATED_ERRORS,
    ApiError,
    CampaignQuery,
    PhonePath,
    TenantQuery,
    error_responses,
    invalid_input,
    resolve_tenant,
)
from schemas.audit import AuditAction
from schemas.errors import InvalidPhoneNumber
from schemas.events import CAMPAIGN_PATTERN, Scope
from schemas.metrics import GATEWAY_CHECKS
from schemas.phone import MAX_PHONE_INPUT, normalise
from schemas.text import SINGLE_LINE, SingleLine
from schemas.tokens import Permission, Principal

Require = Callable[[Permission], Callable[..., Any]]
RETRY_AFTER_SECONDS = 1
SUBJECT_RETRY_AFTER_SECONDS = 5  # a subject access request takes seconds: so does a place


class CheckAnswer(BaseModel):
    """May the dialer call this number? Only ``callable`` (``may_call``) allows it."""

    phone: str = Field(description="the number as sent")
    phone_e164: str | None = Field(None, description="null when the number is not valid")
    answer: Answer
    may_call: bool
    scope: Scope | None = Field(None, description="which suppression list matched")
    why: str | None = Field(None, description="why the answer is unavailable")


class BulkCheckRequest(BaseModel):
    """A list scrub before loading a campaign."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"phones": ["0612345678", "+33698765432"]}]},
    )

    phones: list[Annotated[str, SINGLE_LINE, Field(max_length=MAX_PHONE_INPUT)]] = Field(
        min_length=1, description="numbers to check (the limit is DNC_GATEWAY_BULK_CHECK_LIMIT)"
    )
    campaign: str | None = Field(None, pattern=CAMPAIGN_PATTERN)
    tenant: SingleLine | None = Field(
        None, max_length=64, description="defaults to the token's tenant; any other is 403"
    )


class BulkCheckAnswer(BaseModel):
    """One answer per number, in the order sent."""

    results: list[CheckAnswer]
    callable: int
    suppressed: int
    unavailable: int


def _answer(phone: str, result: CheckResult) -> CheckAnswer:
    return CheckAnswer(
        phone=phone,
        phone_e164=result.phone_e164,
        answer=result.answer,
        may_call=result.may_call,
        scope=result.scope,
        why=result.why,
    )


def _count(tenant: str, results: Sequence[CheckResult]) -> None:
    for result in results:
        GATEWAY_CHECKS.labels(tenant=tenant, outcome=result.answer.value).inc()


def _unavailable(content: BaseModel) -> JSONResponse:
    return JSONResponse(
        content.model_dump(mode="json"),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def checks_router(checker: SuppressionChecker, bulk_limit: int, require: Require) -> APIRouter:
    """GET /v1/suppressions/{phone} and POST /v1/checks (dialer, admin)."""
    router = APIRouter(tags=["dialer"])

    def unavailable_doc(model: str) -> dict[str, Any]:
        refs = [{"$ref": f"#/components/schemas/{m}"} for m in (model, "ErrorBody")]
        return {
            "description": "unavailable: do NOT call (or a timeout, as an ErrorBody)",
            "content": {"application/json": {"schema": {"anyOf": refs}}},
        }

    @router.get(
        "/v1/suppressions/{phone}",
        response_model=CheckAnswer,
        responses={**error_responses(*AUTHENTICATED_ERRORS), 503: unavailable_doc("CheckAnswer")},
        summary="May I call this number? (dialer)",
    )
    async def check_number(
        phone: PhonePath,
        principal: Annotated[Principal, Depends(require(Permission.CHECK))],
        campaign: CampaignQuery = None,
        tenant: TenantQuery = None,
    ) -> Any:
        """callable (200), suppressed (200) or unavailable (503); 422 for an invalid number."""
        own = resolve_tenant(principal, tenant)
        try:
            result = await checker.check_async(phone, own, campaign)
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
            503: unavailable_doc("BulkCheckAnswer"),
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
        results = await run_in_threadpool(checker.check_many, body.phones, own, body.campaign)
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


def subjects_router(
    subjects: SubjectLog,
    checker: SuppressionChecker,
    tenants_region: Callable[[str], str],
    require: Require,
    scans: SubjectScanPool,
) -> APIRouter:
    """GET /v1/subjects/{phone} (admin): a data subject's access request, audited.

    The scan runs on ``scans`` (threads of its own): 503 with Retry-After when it is full.
    """
    router = APIRouter(tags=["data subject access"])

    @router.get(
        "/v1/subjects/{phone}",
        response_model=SubjectReport,
        responses=error_responses(*AUTHENTICATED_ERRORS),
        openapi_extra={"x-dnc-audit": AuditAction.SUBJECT_ACCESS.value},
        summary="Everything held about a number for this tenant (admin)",
    )
    async def subject_access(
        phone: PhonePath,
        request: Request,
        principal: Annotated[Principal, Depends(require(Permission.SUBJECT_ACCESS))],
        tenant: TenantQuery = None,
    ) -> SubjectReport:
        """Current state, the events that made it, and what the reference list was given.

        503 with Retry-After when Kafka cannot be read, or when the gateway already serves as
        many access requests as it allows (DNC_GATEWAY_SUBJECT_SCAN_WORKERS and _QUEUE).
        """
        own = resolve_tenant(principal, tenant, request.state)
        try:
            e164 = normalise(phone, tenants_region(own))
        except InvalidPhoneNumber as exc:
            raise invalid_input("phone", exc.message) from None
        request.state.audit_subject = e164
        try:
            report = await scans.run(subjects.report, own, e164)
        except SubjectScansBusy as exc:
            raise ApiError(
                503,
                "subject_access_busy",
                f"{exc}: retry in {SUBJECT_RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(SUBJECT_RETRY_AFTER_SECONDS)},
                retry_after=float(SUBJECT_RETRY_AFTER_SECONDS),
            ) from None
        except SubjectScanError as exc:
            raise ApiError(
                503, "kafka_unavailable", str(exc), headers={"Retry-After": "1"}, retry_after=1.0
            ) from None
        live = await checker.check_async(e164, own, None)
        report.view = ViewAnswer(answer=live.answer.value, scope=live.scope, why=live.why)
        return report

    return router
