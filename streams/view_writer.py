"""Writes the Redis suppression view: members, readiness, layout and applied-through times."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from infra.redis_packing import pack_with_hiredis
from schemas.settings import Settings
from schemas.state import SuppressionState
from schemas.view import (
    CONSENTS_FAMILY,
    FAMILY_OF_KIND,
    LUA_NODE_ID,
    LUA_RUN_ID,
    META_LAYOUT,
    ViewLayout,
    applied_field,
    consent_value,
    covered_field,
    epoch_field,
    fence_field,
    frontier_field,
    instance_field,
    node_field,
    owner_field,
    ready_field,
    writes_field,
)
from streams.fencing import OwnershipLost
from streams.rules import ATTEMPTS_KEPT  # (the view keeps the attempts the state keeps)

# States gathered before a rebuild sends them (one pipeline of write scripts).
WRITE_CHUNK = 50_000
# Most arguments one write script carries: a script holds Redis meanwhile (checks wait).
MEMBERS_PER_SCRIPT = 8_000
# Eviction policies that may remove keys without a TTL, i.e. view keys.
EVICTING_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random"})

# Lua: ``(era, sequence)`` of a claim token (see schemas.view.claim_token).
_LUA_CLAIM_PARTS = """
local function claim_parts(token)
  local era, seq = string.match(token or '', '^([^:]*):(%d+):')
  return era, tonumber(seq)
end
"""

# Claim partitions for a rebuild, on one copy of the metadata: each partition's claim is
# replaced by ours, its write counter reset and its readiness withdrawn (checks fail
# closed), unless a newer claim of the same era holds it (we lost the partition: refused).
# Returns the instance (run id) and the refused claims' fields.
# ARGV: our token, then per partition: fence field, ready field, writes field.
_CLAIM = (
    LUA_RUN_ID
    + _LUA_CLAIM_PARTS
    + """
local era, seq = claim_parts(ARGV[1])
local out = {run_id}
for i = 2, #ARGV, 3 do
  local held_era, held_seq = claim_parts(redis.call('HGET', KEYS[1], ARGV[i]))
  if held_seq ~= nil and held_era == era and held_seq > seq then
    table.insert(out, ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1], ARGV[i + 2], 0)
    redis.call('HDEL', KEYS[1], ARGV[i + 1])
  end
end
return out
"""
)

# Fenced writes on one copy of the metadata and the keys of its slot: per partition, the
# operations run only while the partition's claim is ours. Operations: '+' SADD and '-'
# SREM members, 'h' HSET field/value pairs, 'z' ZADD score/member pairs, 'x' remove the
# members of a sorted set scored below the argument. Each partition's write counter
# (``writes:P``) counts the scripts that wrote for it since the claim: a view that lost
# writes since (a restore, a swapped database) has a smaller one, and is neither marked
# ready nor vouched for. Returns {refused claims as (field, claim held or '') pairs, the
# counters as (partition's fence field, count) pairs}.
# KEYS: the metadata, then the keys. ARGV, per partition: fence field, our token, count of
# operations, then per operation: index of its key in KEYS, the operation, n, n arguments.
_WRITE = """
local commands = {['+'] = 'SADD', ['-'] = 'SREM', h = 'HSET', z = 'ZADD'}
local refused, counters = {}, {}
local a = 1
while a <= #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[a])
  local ours = held == ARGV[a + 1]
  if not ours then
    table.insert(refused, ARGV[a])
    table.insert(refused, held or '')
  else
    table.insert(counters, ARGV[a])
    table.insert(counters, redis.call('HINCRBY', KEYS[1], 'writes' .. string.sub(ARGV[a], 6), 1))
  end
  local ops = tonumber(ARGV[a + 2])
  a = a + 3
  for _ = 1, ops do
    local key, op, n = KEYS[tonumber(ARGV[a])], ARGV[a + 1], tonumber(ARGV[a + 2])
    a = a + 3
    if ours and op == 'x' then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[a])
    elseif ours then
      for s = a, a + n - 1, 4000 do
        redis.call(commands[op], key, unpack(ARGV, s, math.min(s + 3999, a + n - 1)))
      end
    end
    a = a + n
  end
end
return {refused, counters}
"""

# Mark rebuilt partitions ready on one copy of the metadata, if nothing was lost since
# the claim: the claims are still ours (a flush, an empty restart or a newer owner would
# have removed or replaced them), every write made since is there (the write counter: a
# view restored or swapped for an earlier copy has a smaller one) and the instance is
# still the one claimed on (a restart that reloaded a snapshot, or a promoted replica).
# The partition count only grows (two workers configured differently: the larger).
# Returns {'ok'}, {'moved'} or {'lost', field, claim held or ''}.
# ARGV: instance at the claim, ready stamp, layout, partition count, then per partition:
# fence field, our token, ready field, epoch field, epoch, instance field, node field,
# writes field, writes made.
_MARK = (
    LUA_RUN_ID
    + LUA_NODE_ID
    + """
if ARGV[1] ~= run_id then return {'moved'} end
for i = 5, #ARGV, 9 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held ~= ARGV[i + 1] then return {'lost', ARGV[i], held or ''} end
  if redis.call('HGET', KEYS[1], ARGV[i + 7]) ~= ARGV[i + 8] then return {'moved'} end
end
for i = 5, #ARGV, 9 do
  redis.call('HSET', KEYS[1], ARGV[i + 2], ARGV[2], ARGV[i + 3], ARGV[i + 4],
             ARGV[i + 5], run_id, ARGV[i + 6], node)
end
local total = tonumber(redis.call('HGET', KEYS[1], 'partitions') or '0') or 0
if tonumber(ARGV[4]) > total then redis.call('HSET', KEYS[1], 'partitions', ARGV[4]) end
redis.call('HSET', KEYS[1], 'layout', ARGV[3])
return {'ok'}
"""
)

# A vouch, on one copy of the metadata: per partition, only if its epoch is the one this
# worker wrote last (a view restored from an older snapshot has another), its claim is
# still ours (flushed, or claimed by a newer owner: no), every write made is there (the
# write counter) and it is on the instance it was rebuilt on (a restart or a promotion
# since: no). Returns the refused epoch fields.
# With it, the changelog offset the view covers (every state of the table up to that record
# is in it: see SuppressionViewWriter.adopt).
# ARGV: owner, then per partition: epoch field, expected, next, applied field, time,
# owner field, fence field, our token, instance field, frontier field, frontier, writes
# field, writes made, covered field, covered offset.
_VOUCH = (
    LUA_RUN_ID
    + """
local refused = {}
for i = 2, #ARGV, 15 do
  local held = redis.call('HMGET', KEYS[1], ARGV[i], ARGV[i + 6], ARGV[i + 8], ARGV[i + 11])
  if held[1] == ARGV[i + 1] and held[2] == ARGV[i + 7] and held[3] == run_id
     and held[4] == ARGV[i + 12] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
               ARGV[i + 5], ARGV[1], ARGV[i + 9], ARGV[i + 10], ARGV[i + 13], ARGV[i + 14])
  else
    table.insert(refused, ARGV[i])
  end
end
return refused
"""
)


# Adopt partitions on one copy of the metadata instead of rebuilding them (a restarted
# owner, or one that keeps them through a rebalance): each partition's claim is replaced by
# ours and its write counter reset, its readiness and last vouch kept (the view is the one
# vouched for), only if the view is exactly as this owner left it: the claim held is of our
# era, by this worker and older than ours (no other owner claimed it since), the partition
# is ready on this very instance (no flush, restart, restore or failover since), and the
# changelog offset its last vouch covered is the one the table holds now (no state was
# stored after that vouch: ``covered`` is written only by a vouch, which checks the claim,
# the instance and the write counter). Returns the run id and the adopted fence fields.
# ARGV: our token, this worker, then per partition: fence field, ready field, instance
# field, covered field, the table's changelog offset, writes field.
_ADOPT = (
    LUA_RUN_ID
    + _LUA_CLAIM_PARTS
    + """
local era, seq = claim_parts(ARGV[1])
local out = {run_id}
for i = 3, #ARGV, 6 do
  local held = redis.call('HMGET', KEYS[1], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  local held_era, held_seq = claim_parts(held[1])
  local by = string.match(held[1] or '', '^[^:]*:%d+:(.*)$')
  if held_seq ~= nil and held_era == era and held_seq < seq and by == ARGV[2]
     and held[2] and held[3] == run_id and held[4] == ARGV[i + 4] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1], ARGV[i + 5], 0)
    table.insert(out, ARGV[i])
  end
end
return out
"""
)


class ViewMoved(Exception):
    """The Redis instance changed during a rebuild (a restart, a restore, a failover): the
    rebuild's writes may be lost there, so it is not marked ready; the worker rebuilds."""


class ViewLost(Exception):
    """A claim vanished from the view during a rebuild (Redis flushed or restarted empty):
    the rebuild's first writes may be gone, so it is not marked ready; the worker rebuilds."""


def writer_client(settings: Settings) -> Redis | RedisCluster:
    """The worker's asyncio client: Redis, or a Redis Cluster (``DNC_REDIS_CLUSTER``)."""
    url = settings.redis_url.get_secret_value()
    if settings.redis_cluster:
        return pack_with_hiredis(
            RedisCluster.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        )
    return pack_with_hiredis(
        Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10)
    )


Operations = dict[tuple[str, str], list[Any]]  # (key, operation) -> its arguments


class ViewBatch:
    """States turned into view writes, grouped by metadata copy, partition, key and
    operation: a rebuild of a million states is a few hundred scripts, not a million
    commands. Only keys, integers and short strings are kept, so the caller can decode
    states one at a time and let each go (see ``ViewMaintenance.rebuild``).

    A state's number goes into the suppression set of the kind in force (and out of the
    others, or out of all of them when nothing is in force); its consents hash field and
    its attempts are written when it has any.
    """

    def __init__(self, layout: ViewLayout, now: datetime) -> None:
        self._layout = layout
        self._locate = layout.locate
        self._meta_key_of = layout.meta_key_of
        self._now = now
        self._attempts_since = _ms(now - ATTEMPTS_KEPT)
        # metadata copy -> partition -> (key, operation) -> arguments
        self.ops: dict[str, dict[int, Operations]] = {}
        self.pending = 0  # states gathered since the last clear
        self.written = 0  # states gathered in all

    @property
    def now(self) -> datetime:
        """The moment the states are written as of."""
        return self._now

    def put(self, state: SuppressionState) -> bool:
        """Gather ``state``'s writes at ``now``; True if suppressed."""
        base, member = self._locate(state.target, state.phone_e164)
        effective = state.effective(self._now)
        kind = effective.kind.value if effective is not None else None
        groups = self.ops.setdefault(self._meta_key_of(base), {})
        ops = groups.setdefault(state.partition, {})
        for kind_name, letter in FAMILY_OF_KIND.items():
            op = "+" if kind_name == kind else "-"
            ops.setdefault((base + letter, op), []).append(member)
        if state.consents or state.withdrawn_ms is not None:
            latest = max(state.consents, key=lambda c: c.granted_ms, default=None)
            value = consent_value(state.withdrawn_ms) if latest is None else consent_value(
                state.withdrawn_ms, latest.granted_ms, _ms(latest.expires_at),
                str(latest.event_id), latest.proof_ref,
            )  # fmt: skip
            ops.setdefault((base + CONSENTS_FAMILY, "h"), []).extend((member, value))
        if state.attempts:
            key = self._layout.attempts_key(state.tenant, state.phone_e164)
            scored = ops.setdefault((key, "z"), [])
            for attempt in state.attempts:
                scored += [_ms(attempt.at), str(attempt.event_id)]
            ops[(key, "x")] = [self._attempts_since]
        self.pending += 1
        self.written += 1
        return effective is not None

    def clear(self) -> None:
        self.ops, self.pending = {}, 0


class _WriteScripts:
    """The :data:`_WRITE` calls of a batch, each of at most :data:`MEMBERS_PER_SCRIPT`
    arguments."""

    def __init__(self, tokens: Mapping[int, str]) -> None:
        self._tokens = tokens
        self.calls: list[tuple[list[str], list[Any]]] = []  # (KEYS, ARGV)
        self._meta = ""
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._args: list[Any] = []
        self._size = 0
        self._group: int | None = None  # where the open group's operation count is

    def add(self, meta_key: str, groups: Mapping[int, Operations]) -> None:
        self._flush()
        self._meta = meta_key
        for partition, ops in groups.items():
            self._group = None
            for (key, op), args in ops.items():
                for start in range(0, len(args), MEMBERS_PER_SCRIPT):  # (even: pairs stay whole)
                    self._operation(partition, key, op, args[start : start + MEMBERS_PER_SCRIPT])
        self._flush()

    def _operation(self, partition: int, key: str, op: str, args: list[Any]) -> None:
        if self._args and self._size + len(args) > MEMBERS_PER_SCRIPT:
            self._flush()
        if self._group is None:
            self._args += [fence_field(partition), self._tokens[partition], 0]
            self._group = len(self._args) - 1
        if key not in self._index:
            self._keys.append(key)
            self._index[key] = len(self._keys) + 1  # KEYS[1] is the metadata
        self._args += [self._index[key], op, len(args), *args]
        self._args[self._group] += 1
        self._size += len(args)

    def _flush(self) -> None:
        if self._args:
            self.calls.append(([self._meta, *self._keys], self._args))
        self._keys, self._index, self._args, self._size, self._group = [], {}, [], 0, None


class SuppressionViewWriter:
    """The worker's side of the view. Every write is idempotent (SADD/SREM of the current
    state) and fenced: a script writes a partition's members only while the partition's
    claim in the metadata is this worker's (:meth:`claim`)."""

    def __init__(self, redis: Redis | RedisCluster, layout: ViewLayout, worker_id: str):
        self._redis: Any = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._layout = layout
        self._worker_id = worker_id
        # Keys this worker put a member in since its last rebuild: each must exist. A key
        # that vanished (evicted, deleted) is found by :meth:`missing_keys`.
        self.filled_keys: set[str] = set()
        self._epochs: dict[int, str] = {}
        self._tokens: dict[int, str] = {}  # partition -> this worker's claim on it
        self._instances: dict[str, str] = {}  # metadata copy -> run id at the last claim
        # (metadata copy, partition) -> its write counter after this worker's last write
        self._writes: dict[tuple[str, int], int] = {}
        # Partitions whose claim vanished from the view (flushed, restarted empty): their
        # writes are skipped until the worker rebuilds them (the table has their states).
        self.lost: set[int] = set()
        self._epoch_counter = 0

    def _next_epoch(self) -> str:
        self._epoch_counter += 1
        return f"{self._worker_id}:{os.getpid()}:{self._epoch_counter}"

    @property
    def layout(self) -> ViewLayout:
        """The layout this worker writes with."""
        return self._layout

    @property
    def claimed(self) -> frozenset[int]:
        """Partitions this worker holds a claim on (it writes their members)."""
        return frozenset(self._tokens)

    async def write(self, states: Iterable[SuppressionState], now: datetime) -> int:
        """Make the view match each state at ``now``; returns how many states were written.

        States of partitions this worker holds no claim on are skipped: the rebuild that
        claims them materialises them from the table.
        """
        batch = ViewBatch(self._layout, now)
        for state in states:
            if state.partition not in self._tokens:
                continue
            batch.put(state)
            if batch.pending >= WRITE_CHUNK:
                await self.apply(batch)
        await self.apply(batch)
        return batch.written

    async def apply(self, batch: ViewBatch) -> None:
        """Send what ``batch`` gathered: fenced write scripts, pipelined.

        Raises :class:`OwnershipLost` when a newer owner claimed one of its partitions; a
        partition whose claim vanished joins :attr:`lost` (its writes were not made).
        """
        if not batch.pending:
            return
        scripts = _WriteScripts(self._tokens)
        for meta_key, groups in batch.ops.items():
            scripts.add(meta_key, {p: g for p, g in groups.items() if p in self._tokens})
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in scripts.calls:
            pipe.execute_command("EVAL", _WRITE, len(keys), *keys, *args)
        replies = await pipe.execute()
        for (keys, _args), (_refused, counters) in zip(scripts.calls, replies, strict=True):
            for field, count in _pairs(counters):  # (the counts Redis has now: a retry's too)
                self._writes[(keys[0], int(_text(field).split(":", 1)[1]))] = int(count)
        refused = {_text(f): _text(h) for reply, _c in replies for f, h in _pairs(reply)}
        self._refused(refused)
        for groups in batch.ops.values():
            for partition, ops in groups.items():
                if partition in self._tokens:
                    self.filled_keys.update(key for key, op in ops if op == "+")
        batch.clear()

    def _refused(self, refused: Mapping[str, str]) -> None:
        """Act on claims the view refused: newer owners end this worker, vanished ones
        make their partitions lost (to be rebuilt)."""
        for field, held in refused.items():
            partition = int(field.split(":", 1)[1])
            mine = self._tokens.get(partition)
            if mine is not None and held and _supersedes(held, mine):
                raise OwnershipLost(
                    f"partition {partition} was claimed by a newer owner ({held}; mine "
                    f"{mine}): this worker lost it and must not write for it any more"
                )
            self._tokens.pop(partition, None)
            self._epochs.pop(partition, None)
            self.lost.add(partition)

    async def claim(self, tokens: Mapping[int, str]) -> None:
        """Take ``tokens`` (this worker's fenced claims, see streams/ownership.py) as the
        partitions' claims on every copy of the metadata, and withdraw their readiness
        (checks fail closed) before a rebuild. Raises :class:`OwnershipLost` if a newer
        claim holds one of them."""
        self.lost.difference_update(tokens)
        for partition in tokens:
            self._tokens.pop(partition, None)
            self._epochs.pop(partition, None)
        by_token: dict[str, list[Any]] = {}
        for partition, token in tokens.items():
            by_token.setdefault(token, []).extend(
                [fence_field(partition), ready_field(partition), writes_field(partition)]
            )
            for key in self._layout.meta_keys():
                self._writes[(key, partition)] = 0
        keys = self._layout.meta_keys()
        pipe = self._redis.pipeline(transaction=False)
        order: list[str] = []
        for token, fields in by_token.items():
            for key in keys:
                pipe.execute_command("EVAL", _CLAIM, 1, key, token, *fields)
                order.append(key)
        replies = await pipe.execute()
        refused: list[str] = []
        for key, (run_id, *held) in zip(order, replies, strict=True):
            self._instances[key] = _text(run_id)
            refused += [_text(f) for f in held]
        if refused:
            raise OwnershipLost(
                f"claims {sorted(set(refused))} are held by a newer owner: this worker lost "
                "those partitions"
            )
        self._tokens.update(tokens)

    async def adopt(self, tokens: Mapping[int, str], covered: Mapping[int, int | None]) -> set[int]:
        """Take ``tokens`` as the claims of the partitions whose view is exactly as this
        worker left it at its last vouch (see ``_ADOPT``: same era, same worker, no claim
        since, ready on this instance, ``covered`` the table's changelog offset now), on
        every copy of the metadata; returns those adopted everywhere (mark them ready to
        serve them: nothing to rewrite). The others are left for :meth:`claim` and a
        rebuild (a copy that took the claim is claimed again, with a newer token)."""
        if not tokens:
            return set()
        keys = self._layout.meta_keys()
        pipe = self._redis.pipeline(transaction=False)
        order: list[tuple[str, list[int]]] = []
        by_token: dict[str, list[int]] = {}
        for partition, token in tokens.items():
            by_token.setdefault(token, []).append(partition)
        for token, partitions in by_token.items():
            fields: list[Any] = []
            for p in partitions:
                fields += [fence_field(p), ready_field(p), instance_field(p), covered_field(p),
                           _offset_text(covered.get(p)), writes_field(p)]  # fmt: skip
            for key in keys:
                pipe.execute_command("EVAL", _ADOPT, 1, key, token, self._worker_id, *fields)
                order.append((key, partitions))
        adopted = set(tokens)
        for (key, partitions), (run_id, *fences) in zip(order, await pipe.execute(), strict=True):
            self._instances[key] = _text(run_id)
            taken = {_text(f) for f in fences}
            adopted -= {p for p in partitions if fence_field(p) not in taken}
        for partition in adopted:
            self.lost.discard(partition)
            self._tokens[partition] = tokens[partition]
            self._epochs.pop(partition, None)
            for key in keys:
                self._writes[(key, partition)] = 0
        return adopted

    def release(self, partitions: Iterable[int]) -> None:
        """Forget this worker's claims on ``partitions`` (revoked: another owner takes them)."""
        for partition in partitions:
            self._tokens.pop(partition, None)
            self._epochs.pop(partition, None)
            self.lost.discard(partition)

    async def mark_ready(self, partitions: Iterable[int], total_partitions: int) -> None:
        """Declare ``partitions`` fully materialised (after a rebuild), with the layout.

        Refused, on any copy, if a claim vanished or changed (:class:`ViewLost`, or
        :class:`OwnershipLost` for a newer owner) or the Redis instance changed since the
        claim (:class:`ViewMoved`): the rebuild's writes may be lost; the worker rebuilds.
        """
        stamp = str(int(time.time() * 1000))
        chosen = sorted(partitions)
        missing = [p for p in chosen if p not in self._tokens]
        if missing:
            raise ViewLost(f"the claims on partitions {missing} vanished during the rebuild")
        epochs = {p: self._next_epoch() for p in chosen}
        head = [stamp, self._layout.fingerprint, total_partitions]
        keys = self._layout.meta_keys()
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            fields: list[Any] = []
            for p in chosen:
                fields += [fence_field(p), self._tokens[p], ready_field(p), epoch_field(p),
                           epochs[p], instance_field(p), node_field(p), writes_field(p),
                           self._writes.get((key, p), 0)]  # fmt: skip
            pipe.execute_command(
                "EVAL", _MARK, 1, key, self._instances.get(key, ""), *head, *fields
            )
        replies = [[_text(x) for x in reply] for reply in await pipe.execute()]
        for key, reply in zip(keys, replies, strict=True):
            if reply[0] == "moved":
                raise ViewMoved(f"{key} lost writes or changed instance during the rebuild "
                                "(a restart, a restore, a failover): rebuilding again")  # fmt: skip
            if reply[0] == "lost":
                self._refused({reply[1]: reply[2]})
                raise ViewLost(f"the claim {reply[1]} vanished from {key} during the rebuild "
                               "(Redis flushed or restarted): rebuilding again")  # fmt: skip
        self._epochs.update(epochs)

    async def vouch(
        self, applied: Mapping[int, tuple[int, int]], covered: Mapping[int, int | None]
    ) -> set[int]:
        """Record each partition's applied-through time (ms, Redis clock), its applied
        frontier (the first offset not applied), this worker, and the last changelog record
        whose state the view holds (``covered``: the table's changelog offset, read under
        the view lock; for :meth:`adopt`).

        Returns the partitions refused because their epoch is not the one this worker
        wrote last (the view was flushed, restarted or restored), their claim is no longer
        this worker's, or the Redis instance is not the one they were rebuilt on: they
        need a rebuild (or, for a newer owner's claim, this worker stops writing them).
        """
        vouched: list[tuple[int, list[Any]]] = []
        nexts: dict[int, str] = {}
        for p, (ms, frontier) in applied.items():
            expected, token = self._epochs.get(p), self._tokens.get(p)
            if expected is None or token is None:
                continue
            nexts[p] = self._next_epoch()
            vouched.append((p, [epoch_field(p), expected, nexts[p], applied_field(p), ms,
                                owner_field(p), fence_field(p), token, instance_field(p),
                                frontier_field(p), frontier, writes_field(p)]))  # fmt: skip
        offsets = {p: _offset_text(covered.get(p)) for p, _fields in vouched}
        if not vouched:
            return set()
        pipe = self._redis.pipeline(transaction=False)
        for key in self._layout.meta_keys():
            args: list[Any] = [self._worker_id]
            for p, fields in vouched:
                args += [*fields, self._writes.get((key, p), 0), covered_field(p), offsets[p]]
            pipe.execute_command("EVAL", _VOUCH, 1, key, *args)
        refused_fields = {_text(f) for reply in await pipe.execute() for f in reply}
        refused = {int(f.split(":", 1)[1]) for f in refused_fields}
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
        pipe = self._redis.pipeline(transaction=False)
        for key in self._layout.meta_keys():
            pipe.hgetall(key)
        copies = [_decoded(raw) for raw in await pipe.execute()]
        agreed = dict(copies[0])
        for copy in copies[1:]:
            agreed = {k: v for k, v in agreed.items() if copy.get(k) == v}
        others = {c[META_LAYOUT] for c in copies if c.get(META_LAYOUT)} - {self._layout.fingerprint}
        if others:
            agreed[META_LAYOUT] = sorted(others)[0]
        return agreed

    async def frontiers(self, partitions: Iterable[int]) -> dict[int, int]:
        """The applied frontiers the owners of ``partitions`` last vouched with (the
        smallest of the copies'); partitions with none are left out."""
        wanted = sorted(partitions)
        if not wanted:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for key in self._layout.meta_keys():
            pipe.hmget(key, [frontier_field(p) for p in wanted])
        found: dict[int, int] = {}
        missing: set[int] = set()
        for reply in await pipe.execute():
            for p, value in zip(wanted, reply, strict=True):
                if value is None:
                    missing.add(p)
                else:
                    found[p] = min(int(value), found.get(p, int(value)))
        return {p: v for p, v in found.items() if p not in missing}

    async def withdraw(self, partitions: Iterable[int]) -> None:
        """Withdraw the readiness of ``partitions`` on every copy (checks fail closed).

        Not fenced: it can only make checks more careful."""
        fields = [ready_field(p) for p in partitions]
        if not fields:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in self._layout.meta_keys():
            pipe.hdel(key, *fields)
        await pipe.execute()

    async def wipe(self) -> int:
        """Delete every view key and the metadata (the layout changed: members are garbage).

        The metadata first: while members go, no reader may take the view as ready."""
        deleted = 0
        for key in self._layout.meta_keys():
            deleted += await self._redis.unlink(key)
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


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


def _supersedes(held: str, mine: str) -> bool:
    """True when the claim ``held`` is newer than ``mine`` (same era, larger sequence)."""
    held_era, held_seq, _ = held.split(":", 2)
    era, seq, _ = mine.split(":", 2)
    return held_era == era and int(held_seq) > int(seq)


def _decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def _offset_text(offset: int | None) -> str:
    """A changelog offset as the metadata holds it (-1: no record yet)."""
    return "-1" if offset is None else str(offset)
