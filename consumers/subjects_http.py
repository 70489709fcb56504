"""The data subject's access request over HTTP (admin): `GET /v1/subjects/{phone}`, audited.

The report (:class:`consumers.subjects.SubjectReport`) holds the number's events from the log
of record, the consents from the consents topic with their proofs and what ended them, the
current state, and what the reference list was given.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from consumers.checker import SuppressionChecker
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
    PhonePath,
    TenantQuery,
    error_responses,
    invalid_input,
    resolve_tenant,
)
from schemas.audit import AuditAction
from schemas.errors import InvalidPhoneNumber
from schemas.phone import normalise
from schemas.tokens import Permission, Principal

Require = Callable[[Permission], Callable[..., Any]]
SUBJECT_RETRY_AFTER_SECONDS = 5  # a subject access request takes seconds: so does a place


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
