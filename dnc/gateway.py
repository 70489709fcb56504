"""`dnc gateway`: the HTTP API for agent desktops and dialers (FastAPI on uvicorn).

Composition root: builds the services (publisher, checker, audit log, subject log), the
routers that live beside their contracts (``producers.http``, ``consumers.http``), the
access layer, the edge middlewares and the error handlers, in :func:`create_app`. Nothing
happens at import time.
"""

import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from consumers.attempts import AttemptDesk
from consumers.checker import SuppressionChecker
from consumers.http import attempts_router, checks_router
from consumers.subjects import SubjectLog, SubjectScanPool
from consumers.subjects_http import subjects_router
from dnc.gateway_access import Authenticator, RateLimiter
from dnc.gateway_edge import AuditTrail, EdgeObservability, RequestLimits, error_response
from infra.topics import ensure_topics
from producers.audit import AuditLog
from producers.http import consents_router, oppositions_router
from producers.publisher import OppositionPublisher
from schemas.api import ApiError, ErrorBody, ErrorDetail, error_responses
from schemas.errors import ConfigError
from schemas.events import Source, event_json_schema
from schemas.metrics import GATEWAY_DENIED
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.tokens import Permission, Principal
from schemas.topics import pipeline_topics

log = logging.getLogger("dnc.gateway")

DESCRIPTION = """\
Record oppositions ("do not call me") and check numbers before calling, over HTTP.

Every `/v1` route needs `Authorization: Bearer <token>`; a token belongs to one tenant and
one role (`agent`: record; `dialer`: check and reserve attempts; `consent`: grant consents;
`admin`: everything but granting consents, including lifts and subject access requests).
Errors are JSON: `{"error", "message", "details"}`.
Fail closed: only `"answer": "callable"` allows a call; `unavailable` is answered with 503.
"""


@dataclass
class GatewayServices:
    """What the endpoints use; built from settings, or passed in by tests."""

    publisher: OppositionPublisher
    checker: SuppressionChecker
    audit: AuditLog
    subjects: SubjectLog
    scans: SubjectScanPool  # subject-access scans run here, never on the checks' threads

    @classmethod
    def connect(cls, settings: Settings, tenants: TenantDirectory) -> "GatewayServices":
        """Clients for the configured Kafka and Redis (they connect lazily)."""
        # Single checks run on the asyncio client (no thread per check), lists on threads.
        checker = SuppressionChecker.from_settings(settings, tenants, with_async=True)
        return cls(
            publisher=OppositionPublisher.from_settings(settings, tenants),
            checker=checker,
            audit=AuditLog.from_settings(settings),
            subjects=SubjectLog(settings, tenants),
            scans=SubjectScanPool(
                settings.gateway_subject_scan_workers, settings.gateway_subject_scan_queue
            ),
        )

    def close(self) -> None:
        """Deliver what is queued, then release the clients."""
        self.scans.close()
        self.publisher.close()
        self.audit.close()


class Readiness(BaseModel):
    """Whether this gateway can serve: Kafka reachable and the Redis view ready."""

    ready: bool
    kafka: str
    view: str


def create_app(
    settings: Settings, tenants: TenantDirectory, services: GatewayServices | None = None
) -> FastAPI:
    """The gateway application (routes, access, limits, audit, errors); serve it with uvicorn."""
    svc = services or GatewayServices.connect(settings, tenants)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.audit.start()
        yield
        await run_in_threadpool(svc.close)
        await svc.checker.aclose()

    app = FastAPI(
        title="dnc gateway",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    access = Authenticator(
        tenants,
        RateLimiter(settings.gateway_rate_limit_per_second, settings.gateway_rate_limit_burst),
    )
    app.include_router(oppositions_router(svc.publisher, access.require))
    app.include_router(consents_router(svc.publisher, access.require))
    app.include_router(
        checks_router(svc.checker, settings.gateway_bulk_check_limit, access.require)
    )
    desk = AttemptDesk(svc.checker, svc.publisher, Source.HTTP_GATEWAY)
    app.include_router(attempts_router(desk, access.require))
    app.include_router(
        subjects_router(
            svc.subjects,
            svc.checker,
            lambda tenant: tenants.get(tenant).default_region,
            access.require,
            svc.scans,
        )
    )
    _add_public_routes(app, settings, svc, access)
    _add_error_handlers(app)
    # Added innermost first: RequestLimits runs inside AuditTrail, inside EdgeObservability.
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.gateway_max_body_bytes,
        timeout_seconds=settings.gateway_request_timeout_seconds,
    )
    app.add_middleware(
        AuditTrail, audit=svc.audit, subject_key=settings.view_key.get_secret_value().encode()
    )
    app.add_middleware(EdgeObservability)
    if settings.gateway_cors_origins:  # browser agent desktops on other origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.gateway_cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    return app


def _add_public_routes(
    app: FastAPI, settings: Settings, svc: GatewayServices, access: Authenticator
) -> None:
    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        """Always 200 while the process serves requests."""
        return {"status": "alive"}

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready"}},
        summary="Kafka reachable and the Redis view ready",
    )
    async def readyz() -> Any:
        """200 when Kafka answers and the view is complete; 503 otherwise (with why)."""
        topics = (settings.oppositions_topic, settings.audit_topic)
        kafka_ok = await run_in_threadpool(svc.audit.reachable, 2.0, topics)
        verdict = await run_in_threadpool(svc.checker.readiness)
        view_ok, why = verdict.ready, verdict.why or "ready and current"
        body = Readiness(
            ready=kafka_ok and view_ok,
            kafka="reachable"
            if kafka_ok
            else f"unreachable or topics missing ({', '.join(topics)})",
            view=why,
        )
        return body if body.ready else JSONResponse(body.model_dump(), status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/schema/opposition",
        tags=["agent desktop"],
        responses=error_responses(401, 403, 429),
        summary="JSON Schema of the opposition event (as `dnc schema`)",
    )
    async def opposition_schema(
        _caller: Annotated[Principal, Depends(access.require(Permission.READ_SCHEMA))],
    ) -> dict[str, Any]:
        """For producers not written in Python; any valid token may read it."""
        return event_json_schema()


def _validation_details(errors: Sequence[Any]) -> list[ErrorDetail]:
    details = []
    for error in errors:
        where = [str(p) for p in error.get("loc", ())]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            message = f"not valid JSON: {error.get('ctx', {}).get('error', 'decode error')}"
        details.append(ErrorDetail(field=".".join(where) or "request", message=message))
    return details


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        if exc.body.error == "forbidden_tenant":
            GATEWAY_DENIED.labels(reason="forbidden_tenant").inc()
        content = exc.body.model_dump(mode="json")
        return JSONResponse(content, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        body = ErrorBody(
            error="invalid_request",
            message="the request is not valid: see details",
            details=_validation_details(exc.errors()),
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette lists the methods of the first route with this path only.
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return error_response(
            exc.status_code,
            _HTTP_CODES.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers,
        )


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Methods the API documents for this path (from the OpenAPI paths, router-agnostic)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern, _format, _converters = compile_path(template)
        if pattern.match(request.url.path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


class _AnnouncingServer(uvicorn.Server):
    """Says where it listens once bound (port 0 picks a free port)."""

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                sys.stdout.write(f"gateway listening on http://{host}:{port}\n")
                sys.stdout.flush()


def run_gateway(settings: Settings, host: str, port: int) -> None:
    """Serve the gateway in the foreground; SIGINT/SIGTERM stop it gracefully."""
    tenants = TenantDirectory.load(settings.tenants_file)
    try:
        ensure_topics(
            settings.kafka_bootstrap,
            pipeline_topics(settings),
            timeout=5,
            client_config=settings.kafka_client_config(),
        )
    except ConfigError as exc:  # serve anyway: /readyz says 503 and writes answer 503
        log.warning("could not check the topics: %s", exc)
    if settings.uses_default_view_key:
        log.warning("DNC_VIEW_KEY is the public development default: set a secret in production")
    tokens = sum(len(tenants.get(t).tokens) for t in tenants.names)
    if not tokens:
        log.warning("no token is declared: create one with `dnc token create`")
    config = uvicorn.Config(
        create_app(settings, tenants),
        host=host,
        port=port,
        access_log=False,  # it would log paths, and paths carry phone numbers
        log_config=None,  # keep the CLI's logging
        proxy_headers=False,  # the audit's source address is the TCP peer
        server_header=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=30,
    )
    _AnnouncingServer(config).run()
