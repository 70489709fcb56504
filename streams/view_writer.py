"""Writes the Redis suppression view: members, readiness, layout and applied-through times."""

from __future__ import annotations

import os
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
    epoch_field,
    owner_field,
    ready_field,
)

# States per pipeline round trip when writing many states (rebuilds).
WRITE_CHUNK = 50_000
# Eviction policies that may remove keys without a TTL, i.e. view keys.
EVICTING_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random"})

# A vouch is fenced: each partition's epoch must still be the one this worker wrote last.
# A Redis flushed, restarted empty or restored from an older snapshot has another (or no)
# epoch, so the worker cannot vouch for a view it did not write: it rebuilds first.
# ARGV: owner, then per partition: epoch field, expected, next, applied field, time, owner field
_VOUCH = """
local refused = {}
for i = 2, #ARGV, 6 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
               ARGV[i + 5], ARGV[1])
  else
    table.insert(refused, ARGV[i])
  end
end
return refused
"""


class ViewBatch:
    """States turned into view members, grouped by key: a rebuild of a million states is a
    few thousand commands, not a million. Only keys and integers are kept, so the caller
    can decode states one at a time and let each go (see ``ViewMaintenance.rebuild``).
    """

    def __init__(self, layout: ViewLayout, now: datetime) -> None:
        self._locate = layout.locate
        self._now = now
        self.adds: dict[str, list[int]] = {}
        self.removes: dict[str, list[int]] = {}
        self.pending = 0  # states gathered since the last clear
        self.written = 0  # states gathered in all

    def put(self, state: SuppressionState) -> bool:
        """Gather ``state``'s member (added if suppressed at ``now``); True if suppressed."""
        key, member = self._locate(state.target, state.phone_e164)
        suppressed = state.effective(self._now) is not None
        (self.adds if suppressed else self.removes).setdefault(key, []).append(member)
        self.pending += 1
        self.written += 1
        return suppressed

    def clear(self) -> None:
        self.adds, self.removes, self.pending = {}, {}, 0


class SuppressionViewWriter:
    """The worker's side of the view: every write is idempotent (SADD/SREM of the current state)."""

    def __init__(self, redis: Redis, layout: ViewLayout, worker_id: str):
        self._redis = redis
        self._layout = layout
        self._worker_id = worker_id
        # Keys this worker put a member in since its last rebuild: each must exist. A key
        # that vanished (evicted, deleted) is found by :meth:`missing_keys`.
        self.filled_keys: set[str] = set()
        self._epochs: dict[int, str] = {}
        self._epoch_counter = 0
        self._vouch = redis.register_script(_VOUCH)

    def _next_epoch(self) -> str:
        self._epoch_counter += 1
        return f"{self._worker_id}:{os.getpid()}:{self._epoch_counter}"

    @property
    def layout(self) -> ViewLayout:
        """The layout this worker writes with."""
        return self._layout

    async def write(self, states: Iterable[SuppressionState], now: datetime) -> int:
        """Make the view match each state at ``now``; returns how many states were written."""
        batch = ViewBatch(self._layout, now)
        for state in states:
            batch.put(state)
            if batch.pending >= WRITE_CHUNK:
                await self.apply(batch)
        await self.apply(batch)
        return batch.written

    async def apply(self, batch: ViewBatch) -> None:
        """Send what ``batch`` gathered in one pipeline (one SREM and one SADD per key)."""
        if not batch.pending:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, members in batch.removes.items():
            pipe.srem(key, *members)
        for key, members in batch.adds.items():
            pipe.sadd(key, *members)
        await pipe.execute()
        self.filled_keys.update(batch.adds)
        batch.clear()

    async def mark_ready(self, partitions: Iterable[int], total_partitions: int) -> None:
        """Declare ``partitions`` fully materialised (after a rebuild), with the layout."""
        stamp = str(int(time.time() * 1000))
        mapping = {ready_field(p): stamp for p in partitions}
        for p in partitions:
            self._epochs[p] = self._next_epoch()
            mapping[epoch_field(p)] = self._epochs[p]
        mapping[META_PARTITIONS] = str(total_partitions)
        mapping[META_LAYOUT] = self._layout.fingerprint
        await self._redis.hset(META_KEY, mapping=cast(Any, mapping))

    async def unmark_ready(self, partitions: Iterable[int]) -> None:
        """Withdraw readiness (checks fail closed) before a rebuild starts."""
        fields = [ready_field(p) for p in partitions]
        if fields:
            await self._redis.hdel(META_KEY, *fields)

    async def vouch(self, applied_through_ms: Mapping[int, int]) -> set[int]:
        """Record each partition's applied-through time (ms, Redis clock) and this worker.

        Returns the partitions refused because their epoch is not the one this worker
        wrote last (the view was flushed, restarted or restored): they need a rebuild.
        """
        args: list[str] = [self._worker_id]
        nexts: dict[int, str] = {}
        for p, ms in applied_through_ms.items():
            expected = self._epochs.get(p)
            if expected is None:
                continue
            nexts[p] = self._next_epoch()
            args += [epoch_field(p), expected, nexts[p], applied_field(p), str(ms), owner_field(p)]
        if len(args) == 1:
            return set()
        refused_fields = await self._vouch(keys=[META_KEY], args=args)
        refused = {int(f.decode().split(":", 1)[1]) for f in refused_fields}
        for p, epoch in nexts.items():
            if p in refused:
                self._epochs.pop(p, None)
            else:
                self._epochs[p] = epoch
        return refused

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
