"""The dialer's question, "may I call this number?", answered from the Redis view.

Every answer comes from one atomic read of the view's metadata with the members asked
(:data:`consumers.readiness.READ_VIEW`): a bulk check is several such reads, each judged
by its own metadata.

Fail closed: when Redis cannot be reached, the view is not complete (empty after a
restart, mid-rebuild), was written with another layout, or is not current (a partition's
applied-through time is older than the staleness bound: see :mod:`consumers.readiness`),
the answer is ``unavailable`` (do not call), never ``callable``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import redis
from redis import Redis
from redis.asyncio import BlockingConnectionPool as AsyncBlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from consumers.dial_rules import Reason, ReasonCode, only_oppositions
from consumers.readiness import READ_VIEW, Readiness, meta_hash, read_readiness, read_view
from consumers.verdicts import (
    Answer,
    CheckResult,
    ViewVerdicts,
    attempts_since_ms,
)
from consumers.view_reads import ViewAnswers, ViewQuestions
from infra.redis_packing import pack_with_hiredis
from schemas.errors import InvalidPhoneNumber
from schemas.metrics import CHECK_REASONS, CHECK_SECONDS, CHECKS
from schemas.phone import normalise
from schemas.policy import CampaignPolicy, LegalBasis
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import LUA_NODE_ID, ViewLayout, view_layout

__all__ = ["Answer", "CheckResult", "SuppressionChecker", "async_checker_client", "checker_client"]

# Most members one script reads (a script holds its node meanwhile).
_MEMBERS_PER_SCRIPT = 4000


class _HeldConnection(threading.local):
    """This thread's connection for single checks (see :meth:`SuppressionChecker._read_one`)."""

    connection: Any = None
    pid = 0


class SuppressionChecker(ViewVerdicts):
    """Answers "may I call this number now?" from the view, with every rule of the campaign.

    A check is the :data:`READ_VIEW` script: one round trip that reads Redis's clock, the
    view's metadata and everything the campaign's rules need of the number atomically
    (its suppression sets of every kind on the global, tenant and campaign lists; its
    consents when the campaign needs one; the tenant's attempts when it caps them). On a
    sharded view (Redis Cluster) it runs on the number's shard, the one node holding its
    keys and a copy of the metadata. The decision is :func:`consumers.dial_rules.decide`.
    """

    def __init__(
        self,
        client: Redis,
        layout: ViewLayout,
        tenants: TenantDirectory,
        *,
        max_staleness_seconds: float = 5.0,
        bulk_chunk_size: int = 1000,
        async_client: AsyncRedis | AsyncRedisCluster | None = None,
    ) -> None:
        super().__init__(layout, tenants, max_staleness_seconds)
        self._redis = client
        self._async_redis = async_client
        self._chunk = bulk_chunk_size
        self._read = client.register_script(READ_VIEW)
        self._read_async = (
            async_client.register_script(READ_VIEW) if async_client is not None else None
        )
        self._reserve = client.register_script(RESERVE_ATTEMPT)
        # Single checks on one Redis server go on a connection of this thread (a cluster's
        # client picks the node: it keeps redis-py's path).
        self._held = None if isinstance(client, RedisCluster) else _HeldConnection()

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
        cluster = settings.redis_cluster
        return cls(
            client or checker_client(url, timeout, cluster=cluster),
            view_layout(settings, tenants),
            tenants,
            max_staleness_seconds=settings.max_staleness_seconds,
            bulk_chunk_size=settings.bulk_chunk_size,
            async_client=async_checker_client(url, timeout, cluster=cluster)
            if with_async
            else None,
        )

    def readiness(self) -> Readiness:
        """The view's readiness alone, as this checker judges it (``/readyz``, `dnc status`)."""
        try:
            return read_readiness(self._redis, self._fingerprint, self._max_staleness, self._layout)
        except redis.RedisError as exc:
            self._after_pipeline_error()
            return Readiness(False, f"redis unreachable: {exc}")

    def _after_pipeline_error(self) -> None:
        """On a Redis Cluster, learn its topology again after a failed pipeline.

        redis-py's cluster pipeline keeps sending to a master that died (seen after a
        failover: every later bulk check failed on the dead node while single commands had
        moved to the promoted replica). This call fails closed; the next one asks the nodes
        that serve the slots now.
        """
        if isinstance(self._redis, RedisCluster):
            with contextlib.suppress(redis.RedisError):
                self._redis.nodes_manager.initialize()

    def _questions(
        self, tenant: str, campaign: str | None, policy: CampaignPolicy, at: datetime | None
    ) -> ViewQuestions:
        since = attempts_since_ms(policy, at)
        return ViewQuestions(
            self._layout, tenant, campaign,
            consents=policy.legal_basis is LegalBasis.CONSENT, attempts_since_ms=since,
            with_node=self._with_node, per_script=min(self._chunk, _MEMBERS_PER_SCRIPT),
            trust=(self._fingerprint, self._max_staleness),
        )  # fmt: skip

    def check(
        self, phone: str, tenant: str, campaign: str | None = None, at: datetime | None = None
    ) -> CheckResult:
        """Answer for one number: invalid input raises, infrastructure trouble is unavailable.

        ``at``: judge hours, holidays, expiries and the attempts window at that instant
        (campaign planning) against the view as it is now; default: now on Redis's clock.
        """
        started = time.perf_counter()
        e164, plan, keys, args = self._single(phone, tenant, campaign, at)
        try:
            reply = self._read_one(keys, args)
            result = self._answer(e164, plan, reply, at, started)
        except redis.RedisError as exc:
            result = CheckResult(e164, Answer.UNAVAILABLE, why=f"redis unreachable: {exc}")
        return _recorded(result, started)

    def _read_one(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One :data:`READ_VIEW` call, the reply returned.

        On a single Redis server, on this thread's own connection of the client's pool, held
        from one check to the next: redis-py's command path (a checkout that polls the socket,
        the retry wrapper, its instrumentation) cost more than the rest of a check. Any
        failure on it drops the connection (a reply left half-read must never answer the
        next question) and the call is made again the ordinary way, with its retries.
        """
        held = self._held
        if held is not None:
            connection = held.connection if held.pid == os.getpid() else None
            try:
                if connection is None:
                    connection = held.connection = _own_connection(self._redis.connection_pool)
                    held.pid = os.getpid()
                connection.send_packed_command(connection.pack_command(
                    "EVALSHA", self._read.sha, len(keys), *keys, *args))  # fmt: skip
                return connection.read_response()
            except ResponseError:  # the reply was read (e.g. the script not loaded yet)
                pass
            except BaseException as exc:
                if connection is not None:
                    connection.disconnect()
                if not isinstance(exc, redis.RedisError):
                    raise
        return self._read(keys=keys, args=args)

    async def check_async(
        self, phone: str, tenant: str, campaign: str | None = None, at: datetime | None = None
    ) -> CheckResult:
        """:meth:`check` on the asyncio client (no thread per check): the gateway's GET.

        Same round trip and the same verdict; needs the checker built with ``async_client``.
        """
        if self._read_async is None:
            raise RuntimeError("this checker has no asyncio Redis client (async_client=...)")
        started = time.perf_counter()
        e164, plan, keys, args = self._single(phone, tenant, campaign, at)
        try:
            reply = await self._read_async(keys=keys, args=args)
            result = self._answer(e164, plan, reply, at, started)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            result = CheckResult(e164, Answer.UNAVAILABLE, why=f"redis unreachable: {exc}")
        return _recorded(result, started)

    async def aclose(self) -> None:
        """Release the asyncio client's connections (the synchronous client needs nothing)."""
        if self._async_redis is not None:
            await self._async_redis.aclose()

    def _all_in_time(
        self,
        results: list[CheckResult | None],
        valid: Sequence[tuple[int, str]],
        found: ViewAnswers,
        started: float,
    ) -> None:
        """:meth:`_in_time` for every callable answer of a bulk check, with the time spent
        taken once, when all are decided (later than each: never more lenient)."""
        spent = time.perf_counter() - started
        ages: dict[tuple[datetime, int], float] = {}  # (one per script reply, not per number)
        nows, olds = found.now, found.oldest_ms
        for slot, (i, _e164) in enumerate(valid):
            answer = results[i]
            if answer is None or answer.answer is not Answer.CALLABLE:
                continue
            now, oldest = nows[slot], olds[slot]
            if now is None or oldest is None:
                continue
            age = ages.get((now, oldest))
            if age is None:
                age = ages[(now, oldest)] = now.timestamp() - oldest / 1000
            results[i] = self._past_bound(answer, age, spent)

    def check_many(
        self,
        phones: Sequence[str],
        tenant: str,
        campaign: str | None = None,
        at: datetime | None = None,
    ) -> list[CheckResult]:
        """Answer for many numbers (a campaign list scrub); one result per input, in order.

        Numbers that are not valid come back ``unavailable`` with the reason rather than
        failing the whole list.
        """
        started = time.perf_counter()
        region = self._tenants.get(tenant).default_region
        policy = self._tenants.policy(tenant, campaign)
        questions = self._questions(tenant, campaign, policy, at)
        results: list[CheckResult | None] = [None] * len(phones)
        valid: list[tuple[int, str]] = []
        for i, phone in enumerate(phones):
            try:
                valid.append((i, normalise(phone, region)))
            except InvalidPhoneNumber as exc:
                results[i] = CheckResult(None, Answer.UNAVAILABLE, why=exc.message)
        questions.add_many(valid)
        try:
            replies = read_view(self._redis, questions.reads(), self._read) if valid else []
            found = questions.answers(replies, self._unready_reason)
            # Under a policy of oppositions alone, numbers opposed alike get the same verdict:
            # decided once per combination of kinds and lists (the same code decides it).
            alike: dict[tuple[int, ...], CheckResult] | None = (
                {} if only_oppositions(policy) else None
            )
            columns = list(zip(*found.masks, strict=True))  # slot -> its kinds' bits per list
            whys = found.why
            for slot, (i, e164) in enumerate(valid):
                if alike is None or whys[slot] is not None:
                    results[i] = self._decide(e164, policy, found.found(slot), at)
                    continue
                masks = columns[slot]
                verdict = alike.get(masks)
                if verdict is None:
                    verdict = alike[masks] = self._decide(e164, policy, found.found(slot), at)
                results[i] = CheckResult(
                    e164, verdict.answer, verdict.scope, verdict.why, verdict.reasons,
                    verdict.next_allowed_at, verdict.consent,
                    at or found.now[slot] or datetime.now(UTC),
                )  # fmt: skip
            self._all_in_time(results, valid, found, started)
        except redis.RedisError as exc:
            self._after_pipeline_error()
            for i, e164 in valid:
                results[i] = CheckResult(e164, Answer.UNAVAILABLE, why=f"redis unreachable: {exc}")
        final = [r for r in results if r is not None]
        _count(final)
        CHECK_SECONDS.observe(time.perf_counter() - started)
        return final

    def reserve(
        self, result: CheckResult, tenant: str, campaign: str | None, attempt_id: str
    ) -> CheckResult:
        """Reserve one attempt for a number ``result`` said callable, if its campaign caps
        them: atomically, only while the tenant's attempts on it within the period are
        below the cap (eight dialers at once on a fresh number under a cap of 4: exactly
        4 reservations, :data:`RESERVE_ATTEMPT`). Returns the answer to give: ``result``
        (its ``at`` the reservation's instant on Redis's clock) when reserved or when nothing
        caps attempts; else the cap reached, or the view unavailable. The caller records
        the attempt in the log (id ``attempt_id``, at that instant) before it says "go".
        """
        policy = self._tenants.policy(tenant, campaign)
        if not result.may_call or policy.max_attempts is None or result.phone_e164 is None:
            return result
        e164 = result.phone_e164
        keys = [self._layout.meta_key(e164), self._layout.attempts_key(tenant, e164)]
        period_ms = int(policy.attempt_period.total_seconds() * 1000)
        try:
            reply = self._reserve(keys=keys, args=[self._with_node, period_ms, policy.max_attempts,
                                                   attempt_id])  # fmt: skip
        except redis.RedisError as exc:
            return CheckResult(e164, Answer.UNAVAILABLE, why=f"redis unreachable: {exc}")
        server_time, node, flat, count, reserved = reply
        at = datetime.fromtimestamp(int(server_time[0]) + int(server_time[1]) / 1e6, UTC)
        why = self._unready_reason(server_time, meta_hash(flat), node)
        if why is not None:
            return CheckResult(e164, Answer.UNAVAILABLE, why=why, at=at)
        if int(reserved):
            return replace(result, at=at)
        capped = Reason(ReasonCode.ATTEMPT_CAP, detail=f"{int(count)} attempts within "
                        f"{policy.attempt_period} (cap {policy.max_attempts})")  # fmt: skip
        return CheckResult(e164, Answer.SUPPRESSED, reasons=(capped,), at=at)


# A reservation: Redis's clock, the node, the metadata, the tenant's attempts on the number
# within the period, and whether one more was added (the cap not reached). KEYS: the
# metadata (the number's shard's copy), the attempts; ARGV: 1 to read the node's identity,
# the period (ms), the cap, the attempt's id.
RESERVE_ATTEMPT = (
    "local function node_id()\n"
    + LUA_NODE_ID
    + """  return node
end
local node = false
if ARGV[1] == '1' then node = node_id() or '' end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local count = redis.call('ZCOUNT', KEYS[2], '(' .. (now_ms - tonumber(ARGV[2])), '+inf')
local reserved = 0
if count < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[2], now_ms, ARGV[4])
  reserved = 1
end
return {now, node, redis.call('HGETALL', KEYS[1]), count, reserved}
"""
)


def _own_connection(pool: Any) -> Any:
    """A connection of ``pool`` for this thread alone (kept, never released to the pool)."""
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 6 wants the command's name
        return pool.get_connection("EVALSHA")


def _recorded(result: CheckResult, started: float) -> CheckResult:
    _count([result])
    CHECK_SECONDS.observe(time.perf_counter() - started)
    return result


def _count(results: Sequence[CheckResult]) -> None:
    """``dnc_checks_total`` by answer, ``dnc_check_reasons_total`` by reason."""
    if len(results) == 1:  # a single check: no tallies to build
        [result] = results
        _outcome_counter(result.answer).inc()
        for reason in result.reasons:
            _reason_counter(reason.code).inc()
        return
    for answer, count in Counter(r.answer for r in results).items():
        _outcome_counter(answer).inc(count)
    reasons = Counter(reason.code for r in results for reason in r.reasons)
    for code, count in reasons.items():
        _reason_counter(code).inc(count)


# The labelled counters, looked up once each (``labels()`` takes a lock and builds a key).
_OUTCOME_COUNTERS: dict[Answer, Any] = {}
_REASON_COUNTERS: dict[ReasonCode, Any] = {}


def _outcome_counter(answer: Answer) -> Any:
    counter = _OUTCOME_COUNTERS.get(answer)
    if counter is None:
        counter = _OUTCOME_COUNTERS[answer] = CHECKS.labels(outcome=answer)
    return counter


def _reason_counter(code: ReasonCode) -> Any:
    counter = _REASON_COUNTERS.get(code)
    if counter is None:
        counter = _REASON_COUNTERS[code] = CHECK_REASONS.labels(reason=code.value)
    return counter


def async_checker_client(
    url: str, timeout_seconds: float, max_connections: int = 64, *, cluster: bool = False
) -> AsyncRedis | AsyncRedisCluster:
    """The asyncio twin of :func:`checker_client`: a bounded pool, waited for at most the
    check timeout (then the check fails closed), short socket timeouts."""
    if cluster:
        return pack_with_hiredis(
            AsyncRedisCluster.from_url(
                url,
                max_connections=max_connections,
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
            )
        )
    pool = AsyncBlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
    return pack_with_hiredis(AsyncRedis(connection_pool=pool))


def checker_client(url: str, timeout_seconds: float, *, cluster: bool = False) -> Redis:
    """A Redis client tuned for checks: short timeouts, so a dead Redis answers fast.

    ``cluster``: ``url`` is one node of a Redis Cluster (the client finds the others).
    """
    if cluster:
        return RedisCluster.from_url(  # type: ignore[return-value]
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
    return Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
