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
YIELD_EVERY = 500  # states read between two returns to the event loop (a page)


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
        self._left: list[int] = []  # partitions the current pass has yet to read
        self._after: str | None = None  # the last key read of the first of them
        self._suspects: dict[str, Any] = {}  # table key -> its value when found missing
        self._cycle: Tally[str] = Tally()  # confirmed missing members this cycle, by tenant
        self._reported: set[str] = set()  # tenants with a non-zero gauge

    async def step(self, partitions: Iterable[int], now: datetime, budget: int) -> set[int]:
        """Audit up to ``budget`` states of ``partitions``; the partitions with a member
        confirmed missing (to rebuild).

        A pass reads each partition's states in key order, a page at a time from where the
        last step stopped: the table is never listed as a whole (a million keys held the
        event loop for seconds)."""
        owned = set(partitions)
        confirmed = await self._recheck(owned, now)
        if not self._left:
            self._end_cycle()
            self._left, self._after = sorted(owned), None
        chosen: list[tuple[str, Any]] = []
        while self._left and len(chosen) < budget:
            partition = self._left[0]
            owned_yet = partition in owned  # (revoked since the pass began: skipped)
            page = self._table.scan(partition, self._after, YIELD_EVERY) if owned_yet else []
            read = 0
            for key, raw in page:
                read += 1
                self._after = key
                if in_force_partition(raw, now) in owned:
                    chosen.append((key, raw))
                    if len(chosen) >= budget:
                        break
            if read == len(page) < YIELD_EVERY:  # the partition's end: the next one
                del self._left[0]
                self._after = None
            await asyncio.sleep(0)  # a page at a time: let the agent's batches run
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
