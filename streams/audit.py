"""The worker's continuous reconciliation: is every suppression in force in the view?

Fencing keeps a stale worker, a flush or a restart from undoing the view; this catches what
fencing cannot see (a member deleted by hand, a bug). The worker walks its table a slice
per maintenance tick (``DNC_AUDIT_STATES_PER_SECOND``), asks Redis whether each state in
force has its member (SMISMEMBER, grouped by set), and asks again at the next tick for the
ones it did not find: a batch in flight may have stored a state that its view write has not
reached yet. A member still missing with the state unchanged is a lost suppression: it is
counted in ``dnc_verify_missing{tenant}`` (alerted on) and its partition is rebuilt, failing
closed meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from schemas.metrics import VERIFY_AUDITED, VERIFY_MISSING
from schemas.view import FAMILY_OF_KIND, ViewLayout, suppression_keys

# The state's JSON lists its fields in order: ``"active":[...]`` then ``"version":N,
# "partition":P``. The pattern cannot match inside a JSON string (its quotes would be
# escaped), so it finds the real end of the active list and the state's partition.
_ACTIVE_END = re.compile(rb'\],"version":\d+,"partition":(\d+)')
_ACTIVE = b'"active":['
_FOR_EVER = b'"expires_at":null'
YIELD_EVERY = 500  # states read between two returns to the event loop


def in_force_partition(raw: Any, now: datetime) -> int | None:
    """The partition of a table value (a state's JSON) holding a suppression in force at
    ``now``; None if it holds none.

    Reads the JSON without building the state: the audit reads every state, all the time.
    A suppression without an end (an opposition, a withdrawal) is found without decoding.
    """
    if isinstance(raw, bytes | bytearray):
        if b'"active":[]' in raw:
            return None
        start = raw.find(_ACTIVE)
        end = _ACTIVE_END.search(raw, start) if start >= 0 else None
        if end is not None and raw.find(_FOR_EVER, start, end.start()) >= 0:
            return int(end.group(1))
    state = json.loads(raw) if isinstance(raw, bytes | bytearray | str) else raw
    for entry in state.get("active", ()):
        expires = entry.get("expires_at")
        if expires is None or datetime.fromisoformat(expires) > now:
            return int(state.get("partition", 0))
    return None


class ViewAudit:
    """Compares the table with the view, a slice at a time."""

    def __init__(self, table: Any, redis: Any, layout: ViewLayout) -> None:
        self._table = table
        self._redis = redis
        self._layout = layout
        self._keys: list[str] = []  # the current cycle's table keys
        self._position = 0
        self._suspects: dict[str, Any] = {}  # table key -> its value when found missing
        self._cycle: Tally[str] = Tally()  # confirmed missing members this cycle, by tenant
        self._reported: set[str] = set()  # tenants with a non-zero gauge

    async def step(self, partitions: Iterable[int], now: datetime, budget: int) -> set[int]:
        """Audit up to ``budget`` states of ``partitions``; the partitions with a member
        confirmed missing (to rebuild)."""
        owned = set(partitions)
        confirmed = await self._recheck(owned, now)
        if not self._keys or self._position >= len(self._keys):
            self._end_cycle()
            self._keys = list(self._table.keys())
            self._position = 0
        chosen: list[tuple[str, Any]] = []
        read = 0
        while self._position < len(self._keys) and len(chosen) < budget:
            key = self._keys[self._position]
            self._position += 1
            raw = self._table.get(key)
            if raw is not None and in_force_partition(raw, now) in owned:
                chosen.append((key, raw))
            read += 1
            if read % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a slice of thousands: let the agent's batches run
        VERIFY_AUDITED.inc(len(chosen))
        for key, raw in await self._missing(chosen):
            self._suspects[key] = raw
        return confirmed

    async def _recheck(self, owned: set[int], now: datetime) -> set[int]:
        """Suspects from the last step: still missing, state unchanged, still in force."""
        suspects, self._suspects = self._suspects, {}
        still = [
            (key, raw)
            for key, raw in suspects.items()
            if self._table.get(key) == raw and in_force_partition(raw, now) in owned
        ]
        partitions: set[int] = set()
        for key, raw in await self._missing(still):
            tenant = key.split("|", 1)[0].split("/", 1)[0]
            self._cycle[tenant] += 1
            VERIFY_MISSING.labels(tenant=tenant).set(self._cycle[tenant])
            self._reported.add(tenant)
            partitions.add(in_force_partition(raw, now) or 0)
        return partitions

    def _end_cycle(self) -> None:
        """A full pass is over: the gauge says what it found (0 where nothing)."""
        for tenant in self._reported - set(self._cycle):
            VERIFY_MISSING.labels(tenant=tenant).set(0)
        self._reported = set(self._cycle)
        self._cycle = Tally()

    async def _missing(self, states: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """The states whose member is in none of its bucket's suppression sets (in the
        set of another kind than the one in force, the number is still suppressed)."""
        if not states:
            return []
        by_bucket: dict[str, list[tuple[int, tuple[str, Any]]]] = {}
        for key, raw in states:
            target, _, phone = key.rpartition("|")
            base, member = self._layout.locate(target, phone)
            by_bucket.setdefault(base, []).append((member, (key, raw)))
        pipe = self._redis.pipeline(transaction=False)
        for base, entries in by_bucket.items():
            for set_key in suppression_keys(base):
                pipe.smismember(set_key, [m for m, _ in entries])
        found = iter(await pipe.execute())
        missing = []
        for entries in by_bucket.values():
            flags = [next(found) for _ in FAMILY_OF_KIND]
            missing += [item for i, (_m, item) in enumerate(entries)
                        if not any(f[i] for f in flags)]  # fmt: skip
        return missing
