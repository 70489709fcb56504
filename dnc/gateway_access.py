"""Who may call the gateway: bearer tokens (401), per-token rate limit (429), roles (403).

The rate limit is a token bucket per token, held in this process: with several gateway
processes behind a load balancer each applies it on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from schemas.api import ApiError, require_permission
from schemas.metrics import GATEWAY_DENIED
from schemas.tenants import TenantDirectory
from schemas.tokens import Permission, Principal

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="a token from `dnc token create --tenant T --role agent|dialer|admin|consent`",
)


class RateLimiter:
    """Token buckets: ``rate`` requests per second sustained, ``burst`` at once, per key."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str) -> float:
        """0 when a request of ``key`` may go now, else the seconds until one may."""
        now = self._clock()
        tokens, when = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - when) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate


class Authenticator:
    """Turns the Authorization header into a :class:`Principal`, or refuses the request."""

    def __init__(self, tenants: TenantDirectory, limiter: RateLimiter) -> None:
        self._tenants = tenants
        self._limiter = limiter

    def principal(
        self, request: Request, credentials: HTTPAuthorizationCredentials | None
    ) -> Principal:
        """The caller, once authenticated and within its rate limit; 401 or 429 otherwise."""
        if credentials is None:
            GATEWAY_DENIED.labels(reason="missing_token").inc()
            raise ApiError(
                401,
                "missing_token",
                "send 'Authorization: Bearer <token>' (create one with `dnc token create`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = self._tenants.authenticate(credentials.credentials)
        if principal is None:
            GATEWAY_DENIED.labels(reason="unknown_token").inc()
            raise ApiError(
                401,
                "unknown_token",
                "this token is not declared in the tenants file (revoked, or mistyped)",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        request.state.principal = principal
        wait = self._limiter.take(f"{principal.tenant}/{principal.token_id}")
        if wait > 0:
            GATEWAY_DENIED.labels(reason="rate_limited").inc()
            raise ApiError(
                429,
                "rate_limited",
                f"token {principal.token_id!r} sent more requests than its rate limit allows: "
                f"retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
                retry_after=round(wait, 3),
            )
        return principal

    def require(self, permission: Permission) -> Callable[..., Awaitable[Principal]]:
        """A FastAPI dependency: the authenticated caller, whose role grants ``permission``."""

        async def authorised(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> Principal:
            principal = self.principal(request, credentials)
            try:
                require_permission(principal, permission)
            except ApiError:
                GATEWAY_DENIED.labels(reason="forbidden_role").inc()
                raise
            return principal

        return authorised
