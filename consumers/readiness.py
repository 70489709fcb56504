"""May the view be trusted right now? The one judgement every reader of the view shares.

The checker (library, CLI, gateway), `dnc status`, the gateway's ``/readyz`` and
`dnc verify` all ask here, in the same round trip as their own reads where they can:
``TIME`` and ``HGETALL dnc:v1:_meta``. The view is trusted only when

* it exists and says how many partitions the oppositions topic has;
* its layout fingerprint is the reader's (same view key, same bucket counts): a reader
  with another key or bucket count would look in the wrong places and find nothing;
* every partition is materialised (``ready:P``) and **current**: its applied-through time
  is at most ``max_staleness`` behind Redis's clock. An opposition acknowledged by Kafka
  longer ago than that is therefore in the view, or the answer is "unavailable".

Every partition counts, not only the number's own: an event produced under another key
waits on another partition until the worker has forwarded it to its canonical one.

On a sharded view (Redis Cluster) each shard carries its own copy of the metadata, read
with the number's members by :data:`READ_SHARD` on the shard's node, with that node's
clock and identity: a copy is trusted only on the node the worker vouched on (``node:P``),
so a replica promoted by a failover fails closed until the worker has rebuilt.

This module imports neither Faust nor FastAPI: dialers read the view without the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from schemas.view import (
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

# One round trip to the node of a shard: its clock, its identity, the shard's metadata and
# the members asked. KEYS: the shard's metadata hash, then sets; ARGV: per set, a count and
# that many members. Replies: TIME, node id, HGETALL (flat), one SMISMEMBER list per set.
READ_SHARD = (
    LUA_NODE_ID
    + """
local out = {redis.call('TIME'), node, redis.call('HGETALL', KEYS[1])}
local a = 1
for i = 2, #KEYS do
  local n = tonumber(ARGV[a])
  out[i + 2] = redis.call('SMISMEMBER', KEYS[i], unpack(ARGV, a + 1, a + n))
  a = a + n + 1
end
return out
"""
)


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


def queue_readiness(pipe: Any) -> None:
    """Queue the two commands the judgement needs on a pipeline (keep them first)."""
    pipe.time()
    pipe.hgetall(META_KEY)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def shard_meta(flat: list[Any]) -> dict[Any, Any]:
    """A metadata hash from the flat field/value list HGETALL returns inside a script."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


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
    """The verdict alone (`dnc status`, ``/readyz``, verify): one round trip to Redis, or
    on a sharded view one script per shard (pipelined: one round trip per node)."""
    if layout is None or not layout.shards:
        pipe = client.pipeline(transaction=False)
        queue_readiness(pipe)
        server_time, meta = pipe.execute()
        return judge(server_time, meta, fingerprint, max_staleness)
    pipe = client.pipeline(transaction=False)
    keys = layout.meta_keys()
    for key in keys:
        pipe.execute_command("EVAL", READ_SHARD, 1, key)
    verdicts = [
        judge(server_time, shard_meta(flat), fingerprint, max_staleness, node)
        for server_time, node, flat in pipe.execute()
    ]
    return combine(keys, verdicts)


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
