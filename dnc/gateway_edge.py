"""The gateway's edge, as three small ASGI middlewares (outermost first):

1. :class:`EdgeObservability`: metrics per route template, an access log that never holds
   a path (``/v1/suppressions/+336...`` carries a number) nor a query, and a JSON 500 for
   anything unexpected (its traceback only at DEBUG: exception texts may quote input);
2. :class:`AuditTrail`: an audit record for every response of an audited route (writes,
   subject access) whose caller was authenticated; a success is sent only once its record
   is acknowledged by Kafka, otherwise the answer becomes 503;
3. :class:`RequestLimits`: 413 for a body over the limit (from Content-Length before
   reading, or while streaming), 408 when the body does not arrive in time, 503 when the
   request takes longer than the timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producers.audit import AuditLog
from schemas.api import ErrorBody
from schemas.audit import AuditAction, AuditRecord, subject_ref
from schemas.errors import AuditError
from schemas.metrics import GATEWAY_REQUEST_SECONDS, GATEWAY_REQUESTS
from schemas.tokens import Principal

log = logging.getLogger("dnc.gateway")
access_log = logging.getLogger("dnc.gateway.access")

# Routes whose successful answers are logged at DEBUG only: dialers' reads are counted in
# metrics, not logged one by one, and health probes are noise.
QUIET_ROUTES = frozenset(
    {
        ("GET", "/v1/suppressions/{phone}"),
        ("POST", "/v1/checks"),
        ("POST", "/v1/attempts"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    }
)


def error_response(
    status: int,
    error: str,
    message: str,
    headers: dict[str, str] | None = None,
    event_id: str | None = None,
) -> JSONResponse:
    """A JSON :class:`ErrorBody` response."""
    retry = float(headers["Retry-After"]) if headers and "Retry-After" in headers else None
    body = ErrorBody(error=error, message=message, retry_after_seconds=retry, event_id=event_id)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's template (``/v1/subjects/{phone}``), or ``unmatched``."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


def _state(scope: Scope) -> dict[str, Any]:
    state = scope.get("state")
    return state if isinstance(state, dict) else {}


class EdgeObservability:
    """Counts and times every request by route template; logs it without personal data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, observe its outcome."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception as exc:
            log.error(
                "unhandled %s on %s %s", type(exc).__name__, scope["method"], route_template(scope)
            )
            log.debug("traceback of the unhandled error", exc_info=exc)
            if not response_started:
                status = 500
                response = error_response(
                    500, "internal_error", "unexpected error: it was logged; retry later"
                )
                await response(scope, receive, send)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    @staticmethod
    def _observe(scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method = scope["method"] if scope["method"] in _METHODS else "other"  # bounded label
        GATEWAY_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
        GATEWAY_REQUEST_SECONDS.labels(route=route).observe(seconds)
        principal = _state(scope).get("principal")
        quiet = (method, route) in QUIET_ROUTES and status < 400
        access_log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %d %.1fms client=%s tenant=%s token=%s",
            method,
            route,
            status,
            seconds * 1e3,
            (scope.get("client") or ("-",))[0],
            principal.tenant if isinstance(principal, Principal) else "-",
            principal.token_id if isinstance(principal, Principal) else "-",
        )


class AuditTrail:
    """Writes the audit record of every audited request before its answer leaves."""

    def __init__(self, app: ASGIApp, audit: AuditLog, subject_key: bytes) -> None:
        self.app = app
        self._audit = audit
        self._key = subject_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, audit it before its answer leaves."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        audited = released = False

        async def audited_send(message: Message) -> None:
            nonlocal audited, released
            if message["type"] == "http.response.start":
                # The route and the caller are known once the answer starts.
                audited = _audit_action(scope) is not None
            if not audited:
                await send(message)
                return
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                released = True
                await self._release(scope, held, send)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if _audit_action(scope) is not None and not released:
                self._audit.write_nowait(self._record(scope, 500, "internal_error"))
            raise

    def _record(self, scope: Scope, status: int, reason: str | None) -> AuditRecord:
        found = _audit_action(scope)
        assert found is not None
        action, principal = found
        state = _state(scope)
        headers = dict(scope.get("headers") or [])
        subject = state.get("audit_subject")
        return AuditRecord(
            at=datetime.now(UTC),
            tenant=principal.tenant,
            token_id=principal.token_id,
            role=principal.role,
            action=action,
            method=scope["method"],
            route=route_template(scope),
            target_tenant=state.get("audit_target_tenant"),
            subject=subject_ref(self._key, subject) if subject else None,
            event_id=state.get("audit_event_id"),
            source_address=(scope.get("client") or (None,))[0],
            user_agent=headers.get(b"user-agent", b"").decode("latin-1")[:256] or None,
            status=status,
            outcome=AuditRecord.outcome_of(status),
            reason=reason,
        )

    async def _release(self, scope: Scope, held: list[Message], send: Send) -> None:
        status = held[0]["status"]
        if status >= 300:
            # A refusal or a failure is recorded without waiting for (or depending on) Kafka.
            body = b"".join(m.get("body", b"") for m in held[1:])
            self._audit.write_nowait(self._record(scope, status, _error_code(body)))
        else:
            record = self._record(scope, status, None)
            try:
                await self._audit.write(record)
            except AuditError as exc:
                log.error("%s %s: %s", scope["method"], route_template(scope), exc)
                await self._refuse_unaudited(scope, record, send)
                return
        for message in held:
            await send(message)

    async def _refuse_unaudited(self, scope: Scope, record: AuditRecord, send: Send) -> None:
        """503 instead of a success whose audit record Kafka did not acknowledge."""
        failed = record.model_copy(
            update={"status": 503, "outcome": "failed", "reason": "audit_unavailable"}
        )
        self._audit.write_nowait(failed)  # delivered if Kafka comes back within its timeout
        message = "the audit trail is unavailable, so this request was not served: retry"
        if record.event_id is not None:
            message = (
                f"event {record.event_id} was recorded but its audit record could not be "
                "written: retry with the same event_id (a replay is a no-op)"
            )
        response = error_response(
            503,
            "audit_unavailable",
            message,
            {"Retry-After": "1"},
            str(record.event_id) if record.event_id else None,
        )
        await response(scope, _no_body, send)


def _audit_action(scope: Scope) -> tuple[AuditAction, Principal] | None:
    """(action, caller) when the matched route is audited and the caller authenticated."""
    action = (getattr(scope.get("route"), "openapi_extra", None) or {}).get("x-dnc-audit")
    principal = _state(scope).get("principal")
    if action is None or not isinstance(principal, Principal):
        return None
    return AuditAction(action), principal


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _error_code(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return error if isinstance(error, str) else None


class BodyTooLarge(HTTPException):
    """Raised while reading a body that outgrows the limit (413, as an HTTP error)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class RequestLimits:
    """Body size limit (413), slow body (408) and overall request timeout (503)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self._max = max_body_bytes
        self._timeout = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request within its size and time limits."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max):
            status, error = (413, "body_too_large") if declared.isdigit() else (400, "bad_request")
            message = (
                f"request body larger than {self._max} bytes"
                if status == 413
                else ("invalid Content-Length")
            )
            await error_response(status, error, message, {"Connection": "close"})(
                scope, receive, send
            )
            return
        received = 0
        waiting_for_body = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, waiting_for_body
            waiting_for_body = True
            message = await receive()  # a timeout cancels it here, leaving the flag set
            waiting_for_body = False
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max:
                    raise BodyTooLarge(self._max)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            async with asyncio.timeout(self._timeout) as deadline:
                await self.app(scope, limited_receive, tracked_send)
        except TimeoutError:
            if not deadline.expired() or response_started:
                raise
            if waiting_for_body:
                response = error_response(
                    408,
                    "request_timeout",
                    f"the body did not arrive within {self._timeout} s",
                    {"Connection": "close"},
                )
            else:
                response = error_response(
                    503,
                    "timeout",
                    f"the request took longer than {self._timeout} s: retry",
                    {"Retry-After": "1"},
                )
            await response(scope, _no_body, send)
