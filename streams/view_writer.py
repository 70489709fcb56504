"""Writes the Redis suppression view: members, readiness and the worker heartbeat."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from redis.asyncio import Redis

from schemas.state import SuppressionState
from schemas.view import META_KEY, META_PARTITIONS, ViewLayout, heartbeat_key, ready_field

# Commands per pipeline round trip when writing many states (rebuilds).
WRITE_CHUNK = 5000


class SuppressionViewWriter:
    """The worker's side of the view: every write is idempotent (SADD/SREM of the current state)."""

    def __init__(self, redis: Redis, layout: ViewLayout, worker_id: str, heartbeat_ttl: float):
        self._redis = redis
        self._layout = layout
        self._worker_id = worker_id
        self._heartbeat_ttl_ms = int(heartbeat_ttl * 1000)

    async def write(self, states: Iterable[SuppressionState], now: datetime) -> int:
        """Make the view match each state at ``now``; returns how many states were written."""
        written = 0
        pipe = self._redis.pipeline(transaction=False)
        for state in states:
            slot = self._layout.slot(state.target, state.phone_e164)
            if state.effective(now) is not None:
                pipe.sadd(slot.key, slot.member)
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
        """Declare ``partitions`` fully materialised (after a rebuild)."""
        stamp = str(int(time.time() * 1000))
        mapping = {ready_field(p): stamp for p in partitions}
        mapping[META_PARTITIONS] = str(total_partitions)
        await self._redis.hset(META_KEY, mapping=cast(Any, mapping))

    async def unmark_ready(self, partitions: Iterable[int]) -> None:
        """Withdraw readiness (checks fail closed) before a rebuild starts."""
        fields = [ready_field(p) for p in partitions]
        if fields:
            await self._redis.hdel(META_KEY, *fields)

    async def heartbeat(self, partitions: Iterable[int]) -> None:
        """Refresh the heartbeat keys; they expire on their own if this worker stops."""
        pipe = self._redis.pipeline(transaction=False)
        for p in partitions:
            pipe.set(heartbeat_key(p), self._worker_id, px=self._heartbeat_ttl_ms)
        if len(pipe):
            await pipe.execute()

    async def view_present(self) -> bool:
        """False when the view's metadata is gone (Redis flushed or restarted empty)."""
        return bool(await self._redis.exists(META_KEY))

    async def server_run_id(self) -> str:
        """Redis's run id: it changes on every restart, even one that reloads an old snapshot."""
        info = await self._redis.info("server")
        return str(info.get("run_id", ""))
