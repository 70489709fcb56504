"""Writes the Redis suppression view: members, readiness, layout and applied-through times."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from schemas.settings import Settings
from schemas.state import SuppressionState
from schemas.view import (
    LUA_NODE_ID,
    META_KEY,
    META_LAYOUT,
    META_PARTITIONS,
    ViewLayout,
    applied_field,
    epoch_field,
    node_field,
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

# Sharded view: the same fence on each shard's copy of the metadata, and the copy must still
# be on the node the worker marked it ready on (``node:P``): after a failover the promoted
# replica may miss the last writes, so the worker rebuilds before vouching there.
# ARGV: owner, then per partition the six of _VOUCH and the node field.
_VOUCH_SHARD = (
    LUA_NODE_ID
    + """
local refused = {}
for i = 2, #ARGV, 7 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1]
     and redis.call('HGET', KEYS[1], ARGV[i + 6]) == node then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
               ARGV[i + 5], ARGV[1])
  else
    table.insert(refused, ARGV[i])
  end
end
return refused
"""
)

# Sharded view: mark partitions ready on a shard's copy, recording the node it is on, if
# that is still the node the rebuild started on (a failover meanwhile may have lost some of
# the rebuild's writes: returns false, and the worker rebuilds again).
# ARGV: the node at the start ('' if unknown), k, then k node fields, then field/value pairs.
_MARK_SHARD = (
    LUA_NODE_ID
    + """
if ARGV[1] ~= '' and ARGV[1] ~= node then return false end
local k = tonumber(ARGV[2])
for i = 3, k + 2 do redis.call('HSET', KEYS[1], ARGV[i], node) end
for i = k + 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
)

# Sharded view: withdraw readiness on a shard's copy; returns the node it is on.
_UNMARK_SHARD = (
    LUA_NODE_ID
    + """
if #ARGV > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV)) end
return node
"""
)


class ViewMoved(Exception):
    """A shard of the view moved to another Redis node during a rebuild (a failover): the
    rebuild's writes may be lost there, so it is not marked ready; the worker rebuilds."""


def writer_client(settings: Settings) -> Redis | RedisCluster:
    """The worker's asyncio client: Redis, or a Redis Cluster (``DNC_REDIS_CLUSTER``)."""
    url = settings.redis_url.get_secret_value()
    if settings.redis_cluster:
        return RedisCluster.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10)


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

    def __init__(self, redis: Redis | RedisCluster, layout: ViewLayout, worker_id: str):
        self._redis: Any = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._layout = layout
        self._worker_id = worker_id
        # Keys this worker put a member in since its last rebuild: each must exist. A key
        # that vanished (evicted, deleted) is found by :meth:`missing_keys`.
        self.filled_keys: set[str] = set()
        self._epochs: dict[int, str] = {}
        self._nodes_at_unmark: dict[str, str] = {}  # sharded: shard key -> node
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
        if not self._layout.shards:
            await self._redis.hset(META_KEY, mapping=cast(Any, mapping))
            return
        nodes = [node_field(p) for p in partitions]
        args = [len(nodes), *nodes, *(x for pair in mapping.items() for x in pair)]
        started_on = self._nodes_at_unmark
        marked = await self._on_every_shard(
            "EVAL", _MARK_SHARD, args, lead=lambda key: started_on.get(key, "")
        )
        moved = [key for key, ok in zip(self._layout.meta_keys(), marked, strict=True) if not ok]
        if moved:
            raise ViewMoved(f"{len(moved)} shards of the view moved to another Redis node "
                            f"during the rebuild (e.g. {moved[0]}): rebuilding again")  # fmt: skip

    async def _on_every_shard(
        self, command: str, *args: Any, lead: Callable[[str], str] | None = None
    ) -> list[Any]:
        """``command`` on every copy of the metadata, pipelined (one round trip per node).

        ``EVAL``: ``args`` are the script and its ARGV (after ``lead(key)`` if given); the
        shard's key goes between.
        """
        pipe = self._redis.pipeline(transaction=False)
        for key in self._layout.meta_keys():
            if command == "EVAL":
                script, argv = args
                first = [lead(key)] if lead is not None else []
                pipe.execute_command("EVAL", script, 1, key, *first, *argv)
            else:
                pipe.execute_command(command, key, *args)
        return list(await pipe.execute())

    async def unmark_ready(self, partitions: Iterable[int]) -> None:
        """Withdraw readiness (checks fail closed) before a rebuild starts; on a sharded
        view, note the node each shard is on (see :meth:`mark_ready`)."""
        fields = [ready_field(p) for p in partitions]
        if not self._layout.shards:
            if fields:
                await self._redis.hdel(META_KEY, *fields)
            return
        nodes = await self._on_every_shard("EVAL", _UNMARK_SHARD, fields)
        self._nodes_at_unmark = {
            key: node.decode() if isinstance(node, bytes) else str(node)
            for key, node in zip(self._layout.meta_keys(), nodes, strict=True)
        }

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
            if self._layout.shards:
                args.append(node_field(p))
        if len(args) == 1:
            return set()
        if self._layout.shards:
            replies = await self._on_every_shard("EVAL", _VOUCH_SHARD, args)
            refused_fields = [f for reply in replies for f in reply]
        else:
            refused_fields = await self._vouch(keys=[META_KEY], args=args)
        refused = {int(f.decode().split(":", 1)[1]) for f in refused_fields}
        for p, epoch in nexts.items():
            if p in refused:
                self._epochs.pop(p, None)
            else:
                self._epochs[p] = epoch
        return refused

    async def server_time_ms(self) -> int:
        """Redis's clock, the one clock of the staleness contract.

        On a Redis Cluster, the earliest clock of all its nodes (replicas included, as any
        may be promoted): a check compares it with its own node's clock, so a node whose
        clock is ahead overstates staleness (fails closed sooner), never understates it.
        """
        if self._cluster:
            replies = await self._redis.execute_command("TIME", target_nodes=RedisCluster.ALL_NODES)
            times = replies.values() if isinstance(replies, dict) else [replies]
            return min(int(s) * 1000 + int(us) // 1000 for s, us in times)
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def meta(self) -> dict[str, str]:
        """The view's metadata hash, decoded; on a sharded view, what every copy agrees on
        (a field missing or different in one copy is missing), except a layout written
        with another fingerprint, which is reported as such."""
        copies = [_decoded(raw) for raw in await self._on_every_shard("HGETALL")]
        agreed = dict(copies[0])
        for copy in copies[1:]:
            agreed = {k: v for k, v in agreed.items() if copy.get(k) == v}
        others = {c[META_LAYOUT] for c in copies if c.get(META_LAYOUT)} - {self._layout.fingerprint}
        if others:
            agreed[META_LAYOUT] = sorted(others)[0]
        return agreed

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

    async def _info(self, section: str) -> list[dict[str, Any]]:
        """INFO ``section`` of Redis, or of every master of a Redis Cluster."""
        if not self._cluster:
            return [await self._redis.info(section)]
        replies = await self._redis.info(section, target_nodes=RedisCluster.PRIMARIES)
        if isinstance(replies, dict) and all(isinstance(v, dict) for v in replies.values()):
            return list(replies.values())
        return [replies]

    async def eviction_policy(self) -> str:
        """Redis's ``maxmemory-policy`` (from INFO, which managed services keep enabled);
        on a cluster, an evicting one if any master has one."""
        infos = await self._info("memory")
        policies = [str(i.get("maxmemory_policy", "noeviction")) for i in infos]
        return next((p for p in policies if p in EVICTING_POLICIES), policies[0])

    async def server_run_id(self) -> str:
        """Redis's run id: it changes on every restart, even one that reloads an old snapshot
        (on a cluster, the masters' run ids: a failover changes them too)."""
        return ",".join(sorted(str(i.get("run_id", "")) for i in await self._info("server")))


def _decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }
