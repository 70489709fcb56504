"""The HTTP gateway's shared contract: the JSON error body, and tenant isolation.

Every error the gateway answers, from any route or layer, is an :class:`ErrorBody`:
``{"error": "<code>", "message": "<what to do>", "details": [{"field", "message"}]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import DncError
from schemas.events import CAMPAIGN_PATTERN
from schemas.phone import MAX_PHONE_INPUT
from schemas.text import SINGLE_LINE, SingleLine
from schemas.tokens import Permission, Principal

PhonePath = Annotated[
    str,
    SINGLE_LINE,
    Path(
        min_length=1,
        max_length=MAX_PHONE_INPUT,
        description="as the person gave it ('0612345678') or E.164 ('+33612345678')",
        examples=["0612345678"],
    ),
]
TenantQuery = Annotated[
    SingleLine | None,
    Query(max_length=64, description="defaults to the token's tenant; any other is 403"),
]
CampaignQuery = Annotated[str | None, Query(pattern=CAMPAIGN_PATTERN, description="campaign id")]


class ErrorDetail(BaseModel):
    """One problem with one field of the request."""

    model_config = ConfigDict(frozen=True)

    field: str = Field(description="where: 'phone', 'body.kind', 'query.campaign', ...")
    message: str


class ErrorBody(BaseModel):
    """Every error answered by the gateway."""

    model_config = ConfigDict(frozen=True)

    error: str = Field(description="stable, machine-readable code, e.g. invalid_request")
    message: str = Field(description="what was wrong and what to do")
    details: list[ErrorDetail] = Field(default_factory=list)
    retry_after_seconds: float | None = Field(None, description="with 429 and 503")
    event_id: str | None = Field(
        None, description="a write that may have been recorded: retry with this event_id"
    )


class ApiError(DncError):
    """An answer other than success, with its status, code and message (and headers)."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        details: list[ErrorDetail] | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(
            error=error,
            message=message,
            details=details or [],
            retry_after_seconds=retry_after,
            event_id=event_id,
        )
        self.headers = dict(headers or {})


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting ``statuses`` as :class:`ErrorBody`."""
    what = {
        400: "malformed request",
        401: "missing or unknown token",
        403: "the token's role or tenant does not allow this",
        408: "the request body did not arrive in time",
        413: "request body too large",
        422: "invalid input, field by field",
        429: "rate limit of this token exceeded (see Retry-After)",
        503: "a dependency (Kafka, Redis, the audit trail) cannot serve the request",
    }
    return {s: {"model": ErrorBody, "description": what.get(s, "error")} for s in statuses}


# Errors any authenticated /v1 route can answer.
AUTHENTICATED_ERRORS = (400, 401, 403, 408, 413, 422, 429, 503)


def invalid_input(field: str, message: str) -> ApiError:
    """A 422 about one field."""
    return ApiError(
        422,
        "invalid_request",
        "the request is not valid: see details",
        details=[ErrorDetail(field=field, message=message)],
    )


def resolve_tenant(principal: Principal, requested: str | None, state: Any = None) -> str:
    """The tenant a request acts for: the token's own; any other is refused (403).

    ``state`` (the request's ``request.state``) receives ``audit_target_tenant``, so the
    audit trail says which tenant a refused request tried to reach.
    """
    if state is not None:
        state.audit_target_tenant = requested or principal.tenant
    if requested is not None and requested != principal.tenant:
        raise ApiError(
            403,
            "forbidden_tenant",
            f"token {principal.token_id!r} of tenant {principal.tenant!r} cannot act for "
            "another tenant",
        )
    return principal.tenant


def require_permission(principal: Principal, permission: Permission) -> None:
    """Refuse (403) a token whose role does not grant ``permission``."""
    if not principal.may(permission):
        raise ApiError(
            403,
            "forbidden_role",
            f"a token with role {principal.role.value!r} cannot "
            f"{permission.value.replace('_', ' ')}",
        )
