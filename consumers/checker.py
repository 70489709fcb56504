"""The dialer's question, "may I call this number?", answered from the Redis view.

Fail closed: when Redis cannot be reached, the view is not complete (empty after a
restart, mid-rebuild), was written with another layout, or is not current (a partition's
applied-through time is older than the staleness bound: see :mod:`consumers.readiness`),
the answer is ``unavailable`` (do not call), never ``callable``.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis import Redis
from redis.asyncio import BlockingConnectionPool as AsyncBlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis

from consumers.readiness import Readiness, judge, queue_readiness, read_readiness, trusted
from schemas.errors import InvalidPhoneNumber
from schemas.events import Scope, scope_target
from schemas.metrics import CHECK_SECONDS, CHECKS
from schemas.phone import normalise
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import ViewLayout, view_layout


class Answer(StrEnum):
    """A check's answer; the CLI exits 0, 1, 2 for them."""

    CALLABLE = "callable"
    SUPPRESSED = "suppressed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class CheckResult:
    """The answer for one number; ``scope`` when suppressed, ``why`` when unavailable."""

    phone_e164: str | None
    answer: Answer
    scope: Scope | None = None
    why: str | None = None

    @property
    def may_call(self) -> bool:
        """Only an explicit ``callable`` allows a call."""
        return self.answer is Answer.CALLABLE


class SuppressionChecker:
    """Checks numbers against the view: one round trip for one number, SMISMEMBER in bulk."""

    def __init__(
        self,
        client: Redis,
        layout: ViewLayout,
        tenants: TenantDirectory,
        *,
        max_staleness_seconds: float = 5.0,
        bulk_chunk_size: int = 1000,
        async_client: AsyncRedis | None = None,
    ) -> None:
        self._redis = client
        self._async_redis = async_client
        self._layout = layout
        self._fingerprint = layout.fingerprint
        self._tenants = tenants
        self._max_staleness = max_staleness_seconds
        self._chunk = bulk_chunk_size

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        tenants: TenantDirectory,
        client: Redis | None = None,
        *,
        with_async: bool = False,
    ) -> SuppressionChecker:
        """A checker configured like every other reader of this deployment.

        ``with_async``: also an asyncio client, for :meth:`check_async` (the gateway).
        """
        url, timeout = settings.redis_url.get_secret_value(), settings.check_timeout_seconds
        return cls(
            client or checker_client(url, timeout),
            view_layout(settings, tenants),
            tenants,
            max_staleness_seconds=settings.max_staleness_seconds,
            bulk_chunk_size=settings.bulk_chunk_size,
            async_client=async_checker_client(url, timeout) if with_async else None,
        )

    def _targets(self, tenant: str, campaign: str | None) -> list[tuple[Scope, str]]:
        targets = [(Scope.GLOBAL, scope_target(Scope.GLOBAL, tenant, None))]
        targets.append((Scope.TENANT, scope_target(Scope.TENANT, tenant, None)))
        if campaign:
            targets.append((Scope.CAMPAIGN, scope_target(Scope.CAMPAIGN, tenant, campaign)))
        return targets

    def readiness(self) -> Readiness:
        """The view's readiness alone, as this checker judges it (``/readyz``, `dnc status`)."""
        try:
            return read_readiness(self._redis, self._fingerprint, self._max_staleness)
        except redis.RedisError as exc:
            return Readiness(False, f"redis unreachable: {exc}")

    def _unready_reason(self, server_time: Any, meta: Any) -> str | None:
        """Why the view cannot be trusted right now, or None."""
        if trusted(server_time, meta, self._fingerprint, self._max_staleness):
            return None
        return judge(server_time, meta, self._fingerprint, self._max_staleness).why or "not ready"

    def check(self, phone: str, tenant: str, campaign: str | None = None) -> CheckResult:
        """Answer for one number: invalid input raises, infrastructure trouble is unavailable."""
        started = time.perf_counter()
        e164, targets = self._ask(phone, tenant, campaign)
        try:
            pipe = self._redis.pipeline(transaction=False)
            self._queue(pipe, e164, targets)
            result = self._conclude(e164, targets, pipe.execute())
        except redis.RedisError as exc:
            result = CheckResult(e164, Answer.UNAVAILABLE, why=f"redis unreachable: {exc}")
        return _recorded(result, started)

    async def check_async(
        self, phone: str, tenant: str, campaign: str | None = None
    ) -> CheckResult:
        """:meth:`check` on the asyncio client (no thread per check): the gateway's GET.

        Same round trip and the same verdict; needs the checker built with ``async_client``.
        """
        if self._async_redis is None:
            raise RuntimeError("this checker has no asyncio Redis client (async_client=...)")
        started = time.perf_counter()
        e164, targets = self._ask(phone, tenant, campaign)
        try:
            pipe = self._async_redis.pipeline(transaction=False)
            self._queue(pipe, e164, targets)
            result = self._conclude(e164, targets, await pipe.execute())
        except (redis.RedisError, OSError, TimeoutError) as exc:
            result = CheckResult(e164, Answer.UNAVAILABLE, why=f"redis unreachable: {exc}")
        return _recorded(result, started)

    async def aclose(self) -> None:
        """Release the asyncio client's connections (the synchronous client needs nothing)."""
        if self._async_redis is not None:
            await self._async_redis.aclose()

    def _ask(
        self, phone: str, tenant: str, campaign: str | None
    ) -> tuple[str, list[tuple[Scope, str]]]:
        """The number in E.164 (raises on invalid input) and the lists to look it up in."""
        region = self._tenants.get(tenant).default_region
        return normalise(phone, region), self._targets(tenant, campaign)

    def _queue(self, pipe: Any, e164: str, targets: list[tuple[Scope, str]]) -> None:
        """One round trip: Redis's clock, the view's metadata, one SISMEMBER per list."""
        queue_readiness(pipe)
        for _scope, target in targets:
            key, member = self._layout.locate(target, e164)
            pipe.sismember(key, str(member))

    def _conclude(
        self, e164: str, targets: list[tuple[Scope, str]], replies: list[Any]
    ) -> CheckResult:
        server_time, meta, *members = replies
        why = self._unready_reason(server_time, meta)
        if why is not None:
            return CheckResult(e164, Answer.UNAVAILABLE, why=why)
        for (scope, _target), hit in zip(targets, members, strict=True):
            if hit:
                return CheckResult(e164, Answer.SUPPRESSED, scope=scope)
        return CheckResult(e164, Answer.CALLABLE)

    def check_many(
        self, phones: Sequence[str], tenant: str, campaign: str | None = None
    ) -> list[CheckResult]:
        """Answer for many numbers (a campaign list scrub); one result per input, in order.

        Numbers that are not valid come back ``unavailable`` with the reason rather than
        failing the whole list.
        """
        started = time.perf_counter()
        region = self._tenants.get(tenant).default_region
        targets = self._targets(tenant, campaign)
        results: list[CheckResult | None] = [None] * len(phones)
        valid: list[tuple[int, str]] = []
        for i, phone in enumerate(phones):
            try:
                valid.append((i, normalise(phone, region)))
            except InvalidPhoneNumber as exc:
                results[i] = CheckResult(None, Answer.UNAVAILABLE, why=exc.message)
        try:
            self._check_bulk(valid, targets, results)
        except redis.RedisError as exc:
            for i, e164 in valid:
                results[i] = CheckResult(e164, Answer.UNAVAILABLE, why=f"redis unreachable: {exc}")
        final = [r for r in results if r is not None]
        for answer, count in Counter(r.answer for r in final).items():
            CHECKS.labels(outcome=answer).inc(count)
        CHECK_SECONDS.observe(time.perf_counter() - started)
        return final

    def _check_bulk(
        self,
        valid: list[tuple[int, str]],
        targets: list[tuple[Scope, str]],
        results: list[CheckResult | None],
    ) -> None:
        # Group members by Redis key so each key is asked once per chunk.
        by_key: dict[str, list[tuple[int, int, Scope]]] = defaultdict(list)
        locate = self._layout.locate
        for i, e164 in valid:
            for scope, target in targets:
                key, member = locate(target, e164)
                by_key[key].append((i, member, scope))
        pipe = self._redis.pipeline(transaction=False)
        queue_readiness(pipe)
        asked: list[list[tuple[int, int, Scope]]] = []
        for key, entries in by_key.items():
            for start in range(0, len(entries), self._chunk):
                chunk = entries[start : start + self._chunk]
                pipe.smismember(key, [str(member) for _i, member, _s in chunk])
                asked.append(chunk)
        server_time, meta, *replies = pipe.execute()
        why = self._unready_reason(server_time, meta)
        hits: dict[int, Scope] = {}
        rank = {Scope.GLOBAL: 0, Scope.TENANT: 1, Scope.CAMPAIGN: 2}
        if why is None:
            for chunk, reply in zip(asked, replies, strict=True):
                for (i, _member, scope), hit in zip(chunk, reply, strict=True):
                    if hit and (i not in hits or rank[scope] < rank[hits[i]]):
                        hits[i] = scope
        for i, e164 in valid:
            if why is not None:
                results[i] = CheckResult(e164, Answer.UNAVAILABLE, why=why)
            elif i in hits:
                results[i] = CheckResult(e164, Answer.SUPPRESSED, scope=hits[i])
            else:
                results[i] = CheckResult(e164, Answer.CALLABLE)


def _recorded(result: CheckResult, started: float) -> CheckResult:
    CHECKS.labels(outcome=result.answer).inc()
    CHECK_SECONDS.observe(time.perf_counter() - started)
    return result


def async_checker_client(url: str, timeout_seconds: float, max_connections: int = 64) -> AsyncRedis:
    """The asyncio twin of :func:`checker_client`: a bounded pool, waited for at most the
    check timeout (then the check fails closed), short socket timeouts."""
    pool = AsyncBlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
    return AsyncRedis(connection_pool=pool)


def checker_client(url: str, timeout_seconds: float) -> Redis:
    """A Redis client tuned for checks: short timeouts, so a dead Redis answers fast."""
    return Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
