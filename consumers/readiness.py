"""May the view be trusted right now? The one judgement every reader of the view shares.

The checker (library, CLI, gateway), `dnc status`, the gateway's ``/readyz`` and
`dnc verify` all ask here, in the same atomic read as the members they ask (the script
:data:`READ_VIEW`): ``TIME`` and ``HGETALL dnc:v1:_meta``. The view is trusted only when

* it exists and says how many partitions the oppositions topic has;
* its layout fingerprint is the reader's (same view key, same bucket counts): a reader
  with another key or bucket count would look in the wrong places and find nothing;
* every partition is materialised (``ready:P``) and **current**: its applied-through time
  is at most ``max_staleness`` behind Redis's clock. An opposition acknowledged by Kafka
  longer ago than that is therefore in the view, or the answer is "unavailable".

Every partition counts, not only the number's own: an event produced under another key
waits on another partition until the worker has forwarded it to its canonical one.

Metadata and members are read in one script, so no write lands between them: a read
that took them apart (a pipeline) could see a ready view's metadata, then the members of
the same view flushed, restarted empty or wiped meanwhile, and answer "callable".

On a sharded view (Redis Cluster) each shard carries its own copy of the metadata, read
with the number's members by the same script on the shard's node, with that node's clock
and identity: a copy is trusted only on the node the worker vouched on (``node:P``), so a
replica promoted by a failover fails closed until the worker has rebuilt.

This module imports neither Faust nor FastAPI: dialers read the view without the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from schemas.view import (
    CONSENTS_FAMILY,
    FAMILY_OF_KIND,
    LUA_NODE_ID,
    META_KEY,
    META_LAYOUT,
    META_PARTITIONS,
    ViewLayout,
    applied_field,
    node_field,
    owner_field,
    ready_field,
)

_PARTITIONS_BYTES, _LAYOUT_BYTES = META_PARTITIONS.encode(), META_LAYOUT.encode()

# The one read of the view: Redis's clock, the node's identity (sharded view only: it costs an
# INFO outside a cluster), the metadata hash and what is asked of the keys after it,
# atomically. KEYS: the metadata hash (the number's shard's copy on a sharded view), then the
# keys asked. ARGV: 1 to read the node's identity (else 0); the reader's layout fingerprint
# and staleness bound (seconds), or '' and 0 to be given the metadata whatever it says; then
# per key an operation, a count n and n arguments:
#   'k' a bucket (schemas.view): for each member, the kinds whose suppression set holds it,
#       as a bit mask (bit i: the i-th kind of FAMILY_OF_KIND);
#   'c' a bucket: each member's field of its consents hash (None when absent);
#   'a' a tenant's attempts on a number: the times (ms) of those since the argument;
#   'm' a set: SMISMEMBER of the members.
# Replies: TIME, the node id (None when not asked; '' if unknown, which no copy was vouched
# for on), the metadata, then one reply per key. The metadata is an integer when the reader
# gave its fingerprint and the script found the view trusted by :func:`trusted`'s rules
# (HMGET of the fields they read: no metadata to send back and parse on every check): the
# oldest applied-through time (ms) of the partitions, so that the reader can tell how much
# of the bound is left once its answer is ready (:func:`oldest_applied_ms`); otherwise HGETALL
# (flat), which the reader judges itself (:func:`judge` says why). The script is stricter than
# :func:`trusted` where Lua reads numbers differently (only plain integers of at most 15
# digits, exact in its doubles): a view it does not vouch for gets the reader's own verdict,
# so every answer is the one :func:`trusted` gives. A script holds Redis while it runs:
# callers bound the members per script.
READ_VIEW = (
    "local function node_id()\n"
    + LUA_NODE_ID
    + """  return node
end
local function int(value)
  if value and #value <= 15 and string.match(value, '^%-?%d+$') then return tonumber(value) end
  return nil
end
local node = false
if ARGV[1] == '1' then node = node_id() or '' end
local now = redis.call('TIME')
local function trusted()
  local bound = tonumber(ARGV[3])
  if ARGV[2] == '' or not bound then return false end
  local head = redis.call('HMGET', KEYS[1], '"""
    + META_PARTITIONS
    + """', '"""
    + META_LAYOUT
    + """')
  local total = int(head[1])
  if not total or head[2] ~= ARGV[2] then return false end
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local per = node and 3 or 2
  local oldest = now_ms
  for first = 0, total - 1, 1000 do
    local fields = {}
    for p = first, math.min(total, first + 1000) - 1 do
      fields[#fields + 1] = 'ready:' .. p
      fields[#fields + 1] = 'applied:' .. p
      if node then fields[#fields + 1] = 'node:' .. p end
    end
    local got = redis.call('HMGET', KEYS[1], unpack(fields))
    for i = 1, #fields, per do
      local at = int(got[i + 1])
      if not got[i] or not at or (now_ms - at) / 1000 > bound then return false end
      if node and got[i + 2] ~= node then return false end
      if at < oldest then oldest = at end
    end
  end
  return oldest
end
local meta = trusted()
if not meta then meta = redis.call('HGETALL', KEYS[1]) end
local out = {now, node, meta}
local kinds = {"""
    + ", ".join(f"'{letter}'" for letter in FAMILY_OF_KIND.values())
    + """}
local a = 4
for i = 2, #KEYS do
  local key, op, n = KEYS[i], ARGV[a], tonumber(ARGV[a + 1])
  local first, last = a + 2, a + 1 + n
  if op == 'k' then
    local found = {}
    for j = 1, n do found[j] = 0 end
    local bit = 1
    for k = 1, #kinds do
      local hits = redis.call('SMISMEMBER', key .. kinds[k], unpack(ARGV, first, last))
      for j = 1, n do
        if hits[j] == 1 then found[j] = found[j] + bit end
      end
      bit = bit * 2
    end
    out[i + 2] = found
  elseif op == 'c' then
    out[i + 2] = redis.call('HMGET', key .. '"""
    + CONSENTS_FAMILY
    + """', unpack(ARGV, first, last))
  elseif op == 'a' then
    out[i + 2] = redis.call('ZRANGEBYSCORE', key, ARGV[first], '+inf', 'WITHSCORES')
  else
    out[i + 2] = redis.call('SMISMEMBER', key, unpack(ARGV, first, last))
  end
  a = last + 1
end
return out
"""
)

# (keys, args) of one READ_VIEW call.
ViewRead = tuple[Sequence[str], Sequence[Any]]


@dataclass(frozen=True)
class PartitionFreshness:
    """What the view says of one partition."""

    partition: int
    ready: bool
    staleness_seconds: float | None  # None: never vouched for
    owner: str | None
    applied_ms: int | None = None  # applied-through time, ms on Redis's clock


@dataclass(frozen=True)
class Readiness:
    """The verdict: ``why`` says what is wrong (and what to do) when not ready."""

    ready: bool
    why: str | None
    partitions: tuple[PartitionFreshness, ...] = field(default=())
    layout_mismatch: bool = False

    @property
    def worst_staleness(self) -> float | None:
        """The stalest partition's staleness in seconds (None if one was never vouched for)."""
        values = [p.staleness_seconds for p in self.partitions]
        if not values or any(v is None for v in values):
            return None
        return max(v for v in values if v is not None)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def meta_hash(flat: list[Any]) -> dict[Any, Any]:
    """A metadata hash from the flat field/value list HGETALL returns inside a script."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def read_view(client: Any, reads: Sequence[ViewRead], script: Any = None) -> list[Any]:
    """Each of ``reads`` as one :data:`READ_VIEW` script, pipelined: one round trip (per node
    on a Redis Cluster). Returns one reply per read.

    EVALSHA (``script``: ``client.register_script(READ_VIEW)``, made here if not given); a
    server that lost the script (restarted, ``SCRIPT FLUSH``, a promoted replica) is given it
    and the reads are sent again. redis-py's cluster pipeline refuses its ``evalsha`` method,
    hence the raw command.
    """
    from redis.exceptions import NoScriptError  # (the client is redis-py's: imported)

    script = script or client.register_script(READ_VIEW)
    try:
        return _evalsha_all(client, script.sha, reads)
    except NoScriptError:
        script.sha = client.script_load(READ_VIEW)
        return _evalsha_all(client, script.sha, reads)


def _evalsha_all(client: Any, sha: str, reads: Sequence[ViewRead]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args in reads:
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
    return list(pipe.execute())


def judge(
    server_time: tuple[int, int] | list[int],
    meta: Mapping[Any, Any],
    fingerprint: str,
    max_staleness: float,
    node: Any = None,
) -> Readiness:
    """The verdict from Redis's ``TIME`` reply and the view's metadata hash.

    ``node``: the identity of the node that answered (sharded view): each partition's
    copy must have been vouched for on it.
    """
    fields = {_text(k): _text(v) for k, v in meta.items()}
    raw_total = fields.get(META_PARTITIONS)
    if raw_total is None:
        return Readiness(False, "view not ready (empty, flushed, or being rebuilt by the worker)")
    written_with = fields.get(META_LAYOUT)
    if written_with is not None and written_with != fingerprint:
        return Readiness(
            False,
            f"view layout mismatch: the worker writes with layout {written_with}, this reader "
            f"uses {fingerprint}; give every process the same DNC_VIEW_KEY, DNC_VIEW_BUCKETS "
            "and tenants file (view_buckets)",
            layout_mismatch=True,
        )
    now_ms = int(server_time[0]) * 1000 + int(server_time[1]) // 1000
    partitions = []
    for p in range(int(raw_total)):
        applied = fields.get(applied_field(p))
        partitions.append(
            PartitionFreshness(
                partition=p,
                ready=ready_field(p) in fields,
                staleness_seconds=None if applied is None else (now_ms - int(applied)) / 1000,
                owner=fields.get(owner_field(p)),
                applied_ms=None if applied is None else int(applied),
            )
        )
    found = tuple(partitions)
    if written_with is None:
        return Readiness(False, "view not ready (no layout recorded yet)", found)
    unready = [p.partition for p in found if not p.ready]
    if unready:
        return Readiness(False, f"view not ready for partitions {unready} (being rebuilt)", found)
    if node is not None:
        moved = [p.partition for p in found if fields.get(node_field(p.partition)) != _text(node)]
        if moved:
            return Readiness(
                False,
                f"view of partitions {moved} not vouched for on this Redis node (a failover or "
                "restart since): the worker rebuilds it",
                found,
            )
    stale = [p for p in found if p.staleness_seconds is None or p.staleness_seconds > max_staleness]
    if stale:
        worst = ", ".join(
            f"{p.partition}: "
            + ("never" if p.staleness_seconds is None else f"{p.staleness_seconds:.1f}s")
            for p in stale[:8]
        )
        return Readiness(
            False,
            f"view not current: partitions applied longer ago than {max_staleness:g}s ({worst}); "
            "the worker is behind, stopped or cut from Kafka (is `dnc worker` running?)",
            found,
        )
    return Readiness(True, None, found)


@lru_cache(maxsize=32)
def _partition_fields(total: int, as_bytes: bool) -> tuple[tuple[Any, Any, Any], ...]:
    names = [(ready_field(p), applied_field(p), node_field(p)) for p in range(total)]
    if not as_bytes:
        return tuple(names)
    return tuple((r.encode(), a.encode(), n.encode()) for r, a, n in names)


def oldest_applied_ms(meta: Any, server_time: Any = None) -> int | None:
    """The oldest applied-through time (ms) of a view's partitions: the script's integer
    verdict, or read from the metadata hash (None: none recorded), never later than Redis's
    clock (``server_time``, as TIME gives it), as the script counts it: a time ahead of the
    clock must not leave a check more of the bound than it has."""
    if isinstance(meta, int):
        return meta
    fields = {_text(k): v for k, v in meta.items()}
    total = int(fields.get(META_PARTITIONS) or 0)
    times = [int(fields[applied_field(p)]) for p in range(total) if applied_field(p) in fields]
    if not times:
        return None
    if server_time is not None:
        times.append(int(server_time[0]) * 1000 + int(server_time[1]) // 1000)
    return min(times)


def trusted(
    server_time: tuple[int, int] | list[int],
    meta: Mapping[Any, Any],
    fingerprint: str,
    max_staleness: float,
    node: Any = None,
) -> bool:
    """``judge(...).ready``, without building the explanation: the question of every check.

    Same rules, same arithmetic; a test holds the two to the same verdict. When it says
    False, :func:`judge` says why.
    """
    as_bytes = _PARTITIONS_BYTES in meta
    raw_total = meta.get(_PARTITIONS_BYTES if as_bytes else META_PARTITIONS)
    if raw_total is None:
        return False
    layout = meta.get(_LAYOUT_BYTES if as_bytes else META_LAYOUT)
    if _text(layout) != fingerprint:
        return False
    now_ms = int(server_time[0]) * 1000 + int(server_time[1]) // 1000
    for ready, applied, on in _partition_fields(int(raw_total), as_bytes):
        at = meta.get(applied)
        if ready not in meta or at is None or (now_ms - int(at)) / 1000 > max_staleness:
            return False
        if node is not None and meta.get(on) != node:
            return False
    return True


def read_readiness(
    client: Any, fingerprint: str, max_staleness: float, layout: ViewLayout | None = None
) -> Readiness:
    """The verdict alone (`dnc status`, ``/readyz``, verify): one :data:`READ_VIEW` script
    with no members, or on a sharded view one per shard (pipelined: one round trip per node)."""
    sharded = layout is not None and bool(layout.shards)
    keys = layout.meta_keys() if layout is not None else [META_KEY]
    replies = read_view(client, [([key], [int(sharded), "", 0]) for key in keys])
    verdicts = [
        judge(server_time, meta_hash(flat), fingerprint, max_staleness, node)
        for server_time, node, flat in replies
    ]
    return combine(keys, verdicts) if sharded else verdicts[0]


def combine(keys: list[str], verdicts: list[Readiness]) -> Readiness:
    """One verdict for every shard's: the first shard not ready says why; otherwise the
    stalest copy of each partition."""
    for key, verdict in zip(keys, verdicts, strict=True):
        if not verdict.ready:
            return Readiness(
                False, f"{verdict.why} [{key}]", verdict.partitions, verdict.layout_mismatch
            )
    stalest: dict[int, PartitionFreshness] = {}
    for verdict in verdicts:
        for p in verdict.partitions:
            seen = stalest.get(p.partition)
            if seen is None or (p.staleness_seconds or 0) > (seen.staleness_seconds or 0):
                stalest[p.partition] = p
    return Readiness(True, None, tuple(stalest[p] for p in sorted(stalest)))
