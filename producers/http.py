"""The HTTP endpoints that write events: record an opposition (agent), lift a suppression
(admin), record a consent (consent recorder).

Each answers 202 only once Kafka acknowledged the event (the publisher waits for acks=all),
422 with field-level details for invalid input, 503 when Kafka cannot take the event:
never a silent loss. The tenant is the token's; the audit trail is written by the
gateway around these endpoints.
"""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from producers.publisher import OppositionPublisher, Receipt
from schemas.api import (
    AUTHENTICATED_ERRORS,
    ApiError,
    ErrorDetail,
    PhonePath,
    error_responses,
    invalid_input,
    resolve_tenant,
)
from schemas.audit import AuditAction
from schemas.errors import InvalidEventError, PublishError
from schemas.events import CAMPAIGN_PATTERN, ConsentSource, Kind, OppositionEvent, Scope, Source
from schemas.phone import MAX_PHONE_INPUT
from schemas.text import SINGLE_LINE, SingleLine
from schemas.tokens import Permission, Principal

MAX_FUTURE_SKEW = timedelta(minutes=5)  # an occurred_at later than this is a clock error
MAX_BACKDATE = timedelta(days=366)  # older events are imports: use `dnc import`

Phone = Annotated[
    str,
    SINGLE_LINE,
    Field(
        min_length=1,
        max_length=MAX_PHONE_INPUT,
        description="as the person gave it ('06 12 34 56 78') or E.164 ('+33612345678')",
    ),
]
TenantParam = Annotated[
    SingleLine | None,
    Field(max_length=64, description="defaults to the token's tenant; any other is 403"),
]
Require = Callable[[Permission], Callable[..., Any]]


class OppositionRequest(BaseModel):
    """What an agent desktop sends when a person says "do not call me"."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"phone": "06 12 34 56 78", "kind": "refusal", "agent_id": "agent-42"}]
        },
    )

    phone: Phone
    kind: Literal["refusal", "opposition", "consent_withdrawn", "erasure"] = Field(
        description="refusal: cooldown (60 days by default); the others: until lifted"
    )
    scope: Literal["tenant", "campaign"] | None = Field(
        None, description="default: campaign when campaign_id is given, else tenant"
    )
    campaign_id: str | None = Field(None, pattern=CAMPAIGN_PATTERN)
    agent_id: SingleLine | None = Field(
        None, max_length=128, description="the agent who heard it (one line of text)"
    )
    reason_code: SingleLine | None = Field(None, max_length=64, description="one line of text")
    occurred_at: AwareDatetime | None = Field(
        None, description="when the person said it (default: now); at most 5 min ahead"
    )
    expires_at: AwareDatetime | None = Field(None, description="optional end of the suppression")
    event_id: uuid.UUID | None = Field(
        None, description="choose it to retry safely: the same event twice is a no-op"
    )
    tenant: TenantParam = None


class LiftRequest(BaseModel):
    """An administrator ends a suppression of one scope, saying why."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"justification": "recorded by mistake (ticket 1234)"}]},
    )

    justification: SingleLine = Field(
        min_length=1, max_length=1000, description="why the suppression ends (audited; one line)"
    )
    campaign_id: str | None = Field(None, pattern=CAMPAIGN_PATTERN, description="lift one campaign")
    event_id: uuid.UUID | None = Field(None, description="choose it to retry safely")
    tenant: TenantParam = None


class ConsentRequest(BaseModel):
    """What a consent recorder sends when a person agrees to be called, with its proof."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "phone": "06 12 34 56 78",
                    "campaign_id": "optin-2027",
                    "source": "web_form",
                    "proof_ref": "form-v3/submission-81723",
                    "wording_version": "v3",
                }
            ]
        },
    )

    phone: Phone
    campaign_id: str | None = Field(
        None, pattern=CAMPAIGN_PATTERN, description="the campaign consented to; omit: the tenant's"
    )
    source: ConsentSource = Field(description="how the consent was captured")
    proof_ref: SingleLine = Field(
        min_length=1,
        max_length=256,
        description="where its proof is archived (form and submission id, call recording id...)",
    )
    captured_at: AwareDatetime | None = Field(
        None, description="when the person consented (default: now); at most 5 min ahead"
    )
    expires_at: AwareDatetime | None = Field(
        None, description="its end (default and longest: captured_at + the consent_validity)"
    )
    wording_version: SingleLine | None = Field(
        None, max_length=64, description="the version of the wording the person agreed to"
    )
    recorded_by: SingleLine | None = Field(
        None, max_length=128, description="who recorded it (default: token:<the token's id>)"
    )
    event_id: uuid.UUID | None = Field(
        None, description="choose it to retry safely: the same event twice is a no-op"
    )
    tenant: TenantParam = None

    @field_validator("proof_ref")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must say where the proof is archived (it is blank)")
        return value


class Recorded(BaseModel):
    """Kafka acknowledged the event (acks=all): it is in the log of record."""

    event_id: uuid.UUID
    phone_e164: str
    kind: Kind
    scope: Scope
    campaign_id: str | None = None
    partition: int
    offset: int


def _invalid(exc: ValidationError | InvalidEventError) -> ApiError:
    if isinstance(exc, InvalidEventError):
        field = "phone" if exc.reason == "invalid_phone" else "body"
        details = [ErrorDetail(field=field, message=exc.message)]
    else:
        details = [
            ErrorDetail(
                field=".".join(str(p) for p in e["loc"]) or "body",
                message=e["msg"].removeprefix("Value error, "),
            )
            for e in exc.errors()
        ]
    return ApiError(
        422, "invalid_request", "the request is not valid: see details", details=details
    )


def _check_time(occurred_at: datetime | None, field: str = "occurred_at") -> None:
    # A far-future occurred_at would outrank every later lift (last writer wins): refuse it.
    if occurred_at is None:
        return
    now = datetime.now(UTC)
    if occurred_at > now + MAX_FUTURE_SKEW or occurred_at < now - MAX_BACKDATE:
        raise invalid_input(
            field,
            "must be within the last 366 days and at most 5 minutes ahead of the gateway's "
            "clock (omit it to use now; older records are imported with the CLI)",
        )


class OppositionWrites:
    """Builds, validates and publishes the events of the two write endpoints."""

    def __init__(self, publisher: OppositionPublisher) -> None:
        self._publisher = publisher

    async def publish(self, request: Request, **fields: Any) -> Recorded:
        """Validate, normalise, publish and wait for the ack; ApiError 422 / 503 otherwise."""
        try:
            event, payload = self._publisher.prepare(OppositionEvent.record(**fields))
        except (ValidationError, InvalidEventError) as exc:
            raise _invalid(exc) from None
        assert event.phone_e164 is not None
        request.state.audit_subject = event.phone_e164
        request.state.audit_event_id = event.event_id
        outcome = (await run_in_threadpool(self._publisher.publish_prepared, [(event, payload)]))[0]
        if isinstance(outcome, PublishError):
            raise ApiError(
                503,
                "kafka_unavailable",
                f"the event was not recorded: {outcome} (retry with the same event_id)",
                headers={"Retry-After": "1"},
                retry_after=1.0,
                event_id=str(event.event_id),
            )
        return _recorded(event, outcome)


def _recorded(event: OppositionEvent, receipt: Receipt) -> Recorded:
    assert event.phone_e164 is not None
    return Recorded(
        event_id=event.event_id,
        phone_e164=event.phone_e164,
        kind=event.kind,
        scope=event.scope,
        campaign_id=event.campaign_id,
        partition=receipt.partition,
        offset=receipt.offset,
    )


def _audited_write(action: AuditAction, summary: str) -> dict[str, Any]:
    """A write route's options: 202 with the receipt, errors as ErrorBody, audited."""
    return {
        "status_code": 202,
        "response_model": Recorded,
        "responses": error_responses(*AUTHENTICATED_ERRORS),
        "openapi_extra": {"x-dnc-audit": action.value},
        "summary": summary,
    }


def oppositions_router(publisher: OppositionPublisher, require: Require) -> APIRouter:
    """POST /v1/oppositions (agent, admin) and DELETE /v1/suppressions/{phone} (admin)."""
    router = APIRouter(tags=["agent desktop"])
    writes = OppositionWrites(publisher)

    @router.post(
        "/v1/oppositions",
        **_audited_write(AuditAction.RECORD_OPPOSITION, "Record an opposition (agent)"),
    )
    async def record_opposition(
        body: OppositionRequest,
        request: Request,
        principal: Annotated[Principal, Depends(require(Permission.RECORD))],
    ) -> Recorded:
        """Record what the person asked for; 202 once Kafka acknowledged the event."""
        tenant = resolve_tenant(principal, body.tenant, request.state)
        _check_time(body.occurred_at)
        fields = body.model_dump(exclude_none=True, exclude={"tenant", "scope"})
        scope = body.scope or ("campaign" if body.campaign_id else "tenant")
        return await writes.publish(
            request, **fields, tenant=tenant, scope=scope, source=Source.HTTP_GATEWAY
        )

    @router.delete(
        "/v1/suppressions/{phone}",
        **_audited_write(AuditAction.LIFT, "Lift a suppression (admin, with a justification)"),
    )
    async def lift_suppression(
        phone: PhonePath,
        body: LiftRequest,
        request: Request,
        principal: Annotated[Principal, Depends(require(Permission.LIFT))],
    ) -> Recorded:
        """End the suppression of one scope (the tenant's, or one campaign's); audited."""
        tenant = resolve_tenant(principal, body.tenant, request.state)
        return await writes.publish(
            request,
            tenant=tenant,
            phone=phone,
            kind=Kind.LIFT,
            scope=Scope.CAMPAIGN if body.campaign_id else Scope.TENANT,
            campaign_id=body.campaign_id,
            justification=body.justification,
            agent_id=f"token:{principal.token_id}",
            source=Source.ADMIN,
            **({"event_id": body.event_id} if body.event_id else {}),
        )

    return router


def consents_router(publisher: OppositionPublisher, require: Require) -> APIRouter:
    """POST /v1/consents (consent recorders only: a grant makes a number callable)."""
    router = APIRouter(tags=["consent recorder"])
    writes = OppositionWrites(publisher)

    @router.post(
        "/v1/consents",
        **_audited_write(
            AuditAction.RECORD_CONSENT,
            "Record a consent to prospecting calls, with its proof (consent recorder)",
        ),
    )
    async def record_consent(
        body: ConsentRequest,
        request: Request,
        principal: Annotated[Principal, Depends(require(Permission.RECORD_CONSENTS))],
    ) -> Recorded:
        """Record a consent for the tenant or one campaign; 202 once Kafka acknowledged it.

        It never ends an opposition; a withdrawal is `POST /v1/oppositions` with kind
        `consent_withdrawn`.
        """
        tenant = resolve_tenant(principal, body.tenant, request.state)
        _check_time(body.captured_at, "captured_at")
        captured = body.captured_at or datetime.now(UTC)
        if body.expires_at is not None and body.expires_at <= captured:
            raise invalid_input("expires_at", "must be after captured_at (default: now)")
        fields = {
            "tenant": tenant, "phone": body.phone, "kind": Kind.CONSENT,
            "scope": Scope.CAMPAIGN if body.campaign_id else Scope.TENANT,
            "campaign_id": body.campaign_id, "consent_source": body.source,
            "proof_ref": body.proof_ref, "occurred_at": captured, "expires_at": body.expires_at,
            "wording_version": body.wording_version,
            "recorded_by": body.recorded_by or f"token:{principal.token_id}",
            "source": Source.HTTP_GATEWAY, "event_id": body.event_id,
        }  # fmt: skip
        return await writes.publish(request, **{k: v for k, v in fields.items() if v is not None})

    return router
