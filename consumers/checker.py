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
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis import Redis
from redis.asyncio import BlockingConnectionPool as AsyncBlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from consumers.readiness import (
    READ_VIEW,
    Readiness,
    ViewRead,
    judge,
    meta_hash,
    read_readiness,
    read_view,
    trusted,
)
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


# Most members one script reads in a bulk check (a script holds its node meanwhile).
_MEMBERS_PER_SCRIPT = 4000


class SuppressionChecker:
    """Checks numbers against the view: one script for one number, SMISMEMBER in bulk.

    A check is the :data:`READ_VIEW` script: one round trip that reads Redis's clock, the
    view's metadata and the number's members atomically. On a sharded view (Redis Cluster)
    it runs on the number's shard, the one node holding its lists and a copy of the metadata.
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
        self._redis = client
        self._async_redis = async_client
        self._layout = layout
        self._fingerprint = layout.fingerprint
        self._tenants = tenants
        self._max_staleness = max_staleness_seconds
        self._chunk = bulk_chunk_size
        # Outside a cluster, reading the node's identity costs an INFO: only a sharded view
        # records the node it was vouched on.
        self._with_node = 1 if layout.shards else 0
        self._read = client.register_script(READ_VIEW)
        self._read_async = (
            async_client.register_script(READ_VIEW) if async_client is not None else None
        )

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

    def _targets(self, tenant: str, campaign: str | None) -> list[tuple[Scope, str]]:
        targets = [(Scope.GLOBAL, scope_target(Scope.GLOBAL, tenant, None))]
        targets.append((Scope.TENANT, scope_target(Scope.TENANT, tenant, None)))
        if campaign:
            targets.append((Scope.CAMPAIGN, scope_target(Scope.CAMPAIGN, tenant, campaign)))
        return targets

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

    def _unready_reason(self, server_time: Any, meta: Any, node: Any = None) -> str | None:
        """Why the view cannot be trusted right now, or None."""
        if trusted(server_time, meta, self._fingerprint, self._max_staleness, node):
            return None
        verdict = judge(server_time, meta, self._fingerprint, self._max_staleness, node)
        return verdict.why or "not ready"

    def check(self, phone: str, tenant: str, campaign: str | None = None) -> CheckResult:
        """Answer for one number: invalid input raises, infrastructure trouble is unavailable."""
        started = time.perf_counter()
        e164, targets = self._ask(phone, tenant, campaign)
        try:
            keys, args = self._question(e164, targets)
            result = self._conclude(e164, targets, self._read(keys, args))
        except redis.RedisError as exc:
            result = CheckResult(e164, Answer.UNAVAILABLE, why=f"redis unreachable: {exc}")
        return _recorded(result, started)

    async def check_async(
        self, phone: str, tenant: str, campaign: str | None = None
    ) -> CheckResult:
        """:meth:`check` on the asyncio client (no thread per check): the gateway's GET.

        Same round trip and the same verdict; needs the checker built with ``async_client``.
        """
        if self._read_async is None:
            raise RuntimeError("this checker has no asyncio Redis client (async_client=...)")
        started = time.perf_counter()
        e164, targets = self._ask(phone, tenant, campaign)
        try:
            keys, args = self._question(e164, targets)
            result = self._conclude(e164, targets, await self._read_async(keys, args))
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

    def _question(self, e164: str, targets: list[tuple[Scope, str]]) -> ViewRead:
        """:data:`READ_VIEW`'s keys and arguments for one number: the metadata (its shard's
        copy on a sharded view) and one member per list."""
        keys, args = [self._layout.meta_key(e164)], [self._with_node]
        for _scope, target in targets:
            key, member = self._layout.locate(target, e164)
            keys.append(key)
            args += [1, member]
        return keys, args

    def _conclude(
        self, e164: str, targets: list[tuple[Scope, str]], reply: list[Any]
    ) -> CheckResult:
        server_time, node, flat, *members = reply
        why = self._unready_reason(server_time, meta_hash(flat), node)
        if why is not None:
            return CheckResult(e164, Answer.UNAVAILABLE, why=why)
        for (scope, _target), hit in zip(targets, members, strict=True):
            if hit[0]:
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
            self._after_pipeline_error()
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
        """Scripts of at most :data:`_MEMBERS_PER_SCRIPT` members, each reading the metadata
        with its members (on a sharded view, per shard: its copy of the metadata and its
        lists), pipelined (a cluster pipeline sends each node's scripts together). Each
        script is judged by its own metadata: a number is answered only if every script
        that asked for it found the view trusted."""
        # Per copy of the metadata (one per shard, or the one hash), members grouped by Redis
        # key so each key is asked once per chunk.
        by_meta: dict[int, dict[str, list[tuple[int, int, Scope]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        locate, shard_of = self._layout.locate, self._layout.shard_of
        sharded = bool(self._layout.shards)
        for i, e164 in valid:
            by_key = by_meta[shard_of(e164) if sharded else 0]
            for scope, target in targets:
                key, member = locate(target, e164)
                by_key[key].append((i, member, scope))
        meta_keys = self._layout.meta_keys()
        reads: list[ViewRead] = []
        calls: list[list[list[tuple[int, int, Scope]]]] = []
        for copy, by_key in by_meta.items():
            pieces = [
                (key, entries[start : start + self._chunk])
                for key, entries in by_key.items()
                for start in range(0, len(entries), self._chunk)
            ]
            for call in _scripts_of(pieces):
                args: list[Any] = [self._with_node]
                for _key, chunk in call:
                    args.append(len(chunk))
                    args.extend([member for _i, member, _s in chunk])
                reads.append(([meta_keys[copy], *(key for key, _chunk in call)], args))
                calls.append([chunk for _key, chunk in call])
        unready: dict[int, str] = {}
        asked, replies = [], []
        replied = read_view(self._redis, reads, self._read)
        for chunks, (server_time, node, flat, *answers) in zip(calls, replied, strict=True):
            why = self._unready_reason(server_time, meta_hash(flat), node)
            if why is None:
                asked += chunks
                replies += answers
            else:
                unready.update((i, why) for chunk in chunks for i, _m, _s in chunk)
        _answer(valid, _hits(asked, replies), unready, results)


def _scripts_of(
    pieces: list[tuple[str, list[tuple[int, int, Scope]]]],
) -> Iterator[list[tuple[str, list[tuple[int, int, Scope]]]]]:
    """Consecutive pieces grouped into scripts of at most :data:`_MEMBERS_PER_SCRIPT`."""
    call: list[tuple[str, list[tuple[int, int, Scope]]]] = []
    size = 0
    for piece in pieces:
        if call and size + len(piece[1]) > _MEMBERS_PER_SCRIPT:
            yield call
            call, size = [], 0
        call.append(piece)
        size += len(piece[1])
    if call:
        yield call


_RANK = {Scope.GLOBAL: 0, Scope.TENANT: 1, Scope.CAMPAIGN: 2}


def _hits(asked: list[list[tuple[int, int, Scope]]], replies: list[Any]) -> dict[int, Scope]:
    """The broadest list each number was found in, from SMISMEMBER replies."""
    hits: dict[int, Scope] = {}
    for chunk, reply in zip(asked, replies, strict=True):
        for (i, _member, scope), hit in zip(chunk, reply, strict=True):
            if hit and (i not in hits or _RANK[scope] < _RANK[hits[i]]):
                hits[i] = scope
    return hits


def _answer(
    valid: list[tuple[int, str]],
    hits: dict[int, Scope],
    unready: dict[int, str],
    results: list[CheckResult | None],
) -> None:
    for i, e164 in valid:
        if i in unready:
            results[i] = CheckResult(e164, Answer.UNAVAILABLE, why=unready[i])
        elif i in hits:
            results[i] = CheckResult(e164, Answer.SUPPRESSED, scope=hits[i])
        else:
            results[i] = CheckResult(e164, Answer.CALLABLE)


def _recorded(result: CheckResult, started: float) -> CheckResult:
    CHECKS.labels(outcome=result.answer).inc()
    CHECK_SECONDS.observe(time.perf_counter() - started)
    return result


def async_checker_client(
    url: str, timeout_seconds: float, max_connections: int = 64, *, cluster: bool = False
) -> AsyncRedis | AsyncRedisCluster:
    """The asyncio twin of :func:`checker_client`: a bounded pool, waited for at most the
    check timeout (then the check fails closed), short socket timeouts."""
    if cluster:
        return AsyncRedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
        )
    pool = AsyncBlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
    return AsyncRedis(connection_pool=pool)


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
