"""Writes the Redis suppression view: members, readiness, layout and applied-through times."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from redis.asyncio import Redis

from schemas.state import SuppressionState
from schemas.view import (
    META_KEY,
    META_LAYOUT,
    META_PARTITIONS,
    ViewLayout,
    applied_field,
    owner_field,
    ready_field,
)

# Commands per pipeline round trip when writing many states (rebuilds).
WRITE_CHUNK = 5000
# Eviction policies that may remove keys without a TTL, i.e. view keys.
EVICTING_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random"})


class SuppressionViewWriter:
    """The worker's side of the view: every write is idempotent (SADD/SREM of the current state)."""

    def __init__(self, redis: Redis, layout: ViewLayout, worker_id: str):
        self._redis = redis
        self._layout = layout
        self._worker_id = worker_id
        # Keys this worker put a member in since its last rebuild: each must exist. A key
        # that vanished (evicted, deleted) is found by :meth:`missing_keys`.
        self.filled_keys: set[str] = set()

    @property
    def layout(self) -> ViewLayout:
        """The layout this worker writes with."""
        return self._layout

    async def write(self, states: Iterable[SuppressionState], now: datetime) -> int:
        """Make the view match each state at ``now``; returns how many states were written."""
        written = 0
        pipe = self._redis.pipeline(transaction=False)
        for state in states:
            slot = self._layout.slot(state.target, state.phone_e164)
            if state.effective(now) is not None:
                pipe.sadd(slot.key, slot.member)
                self.filled_keys.add(slot.key)
            else:
                pipe.srem(slot.key, slot.member)
            written += 1
            if len(pipe) >= WRITE_CHUNK:
                await pipe.execute()
                pipe = self._redis.pipeline(transaction=False)
        if len(pipe):
            await pipe.execute()
        return written

    async def mark_ready(self, partitions: Iterable[int], total_partitions: int) -> None:
        """Declare ``partitions`` fully materialised (after a rebuild), with the layout."""
        stamp = str(int(time.time() * 1000))
        mapping = {ready_field(p): stamp for p in partitions}
        mapping[META_PARTITIONS] = str(total_partitions)
        mapping[META_LAYOUT] = self._layout.fingerprint
        await self._redis.hset(META_KEY, mapping=cast(Any, mapping))

    async def unmark_ready(self, partitions: Iterable[int]) -> None:
        """Withdraw readiness (checks fail closed) before a rebuild starts."""
        fields = [ready_field(p) for p in partitions]
        if fields:
            await self._redis.hdel(META_KEY, *fields)

    async def vouch(self, applied_through_ms: Mapping[int, int]) -> None:
        """Record each partition's applied-through time (ms, Redis clock) and this worker."""
        mapping: dict[str, str] = {}
        for p, ms in applied_through_ms.items():
            mapping[applied_field(p)] = str(ms)
            mapping[owner_field(p)] = self._worker_id
        if mapping:
            await self._redis.hset(META_KEY, mapping=cast(Any, mapping))

    async def server_time_ms(self) -> int:
        """Redis's clock, the one clock of the staleness contract."""
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def meta(self) -> dict[str, str]:
        """The view's metadata hash, decoded."""
        raw = await self._redis.hgetall(META_KEY)
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }

    async def wipe(self) -> int:
        """Delete every view key and the metadata (the layout changed: members are garbage)."""
        deleted = 0
        batch: list[Any] = []
        async for key in self._redis.scan_iter(match=self._layout.pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self._redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self._redis.unlink(*batch)
        self.filled_keys.clear()
        return deleted

    async def missing_keys(self) -> set[str]:
        """Keys this worker filled that no longer exist (evicted or deleted)."""
        keys = list(self.filled_keys)
        missing: set[str] = set()
        for start in range(0, len(keys), WRITE_CHUNK):
            chunk = keys[start : start + WRITE_CHUNK]
            if await self._redis.exists(*chunk) == len(chunk):
                continue
            pipe = self._redis.pipeline(transaction=False)
            for key in chunk:
                pipe.exists(key)
            missing.update(k for k, n in zip(chunk, await pipe.execute(), strict=True) if not n)
        return missing

    async def eviction_policy(self) -> str:
        """Redis's ``maxmemory-policy`` (from INFO, which managed services keep enabled)."""
        info = await self._redis.info("memory")
        return str(info.get("maxmemory_policy", "noeviction"))

    async def server_run_id(self) -> str:
        """Redis's run id: it changes on every restart, even one that reloads an old snapshot."""
        info = await self._redis.info("server")
        return str(info.get("run_id", ""))
