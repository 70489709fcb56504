"""The worker's housekeeping: rebuild the view when it is lost, heartbeat, expire cooldowns."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from schemas.metrics import (
    EXPIRED,
    SUPPRESSED_NUMBERS,
    VIEW_READY,
    VIEW_REBUILDS,
    WORKER_HEARTBEAT,
)
from schemas.state import SuppressionChange, SuppressionState
from streams.expiry import ExpirySchedule
from streams.processor import ChangeSink, load_state
from streams.retry import until_done
from streams.view_writer import SuppressionViewWriter

log = logging.getLogger("dnc.streams")


class ViewMaintenance:
    """Keeps the Redis view complete, fresh and honest about its readiness.

    A rebuild happens when this worker's owned partitions change (start, rebalance),
    when the view's metadata is gone (Redis flushed or restarted empty), or when Redis
    restarted at all (it may have reloaded an old snapshot). It holds the view lock so
    the agent's writes cannot interleave with it, and marks partitions ready only at the end.
    """

    def __init__(
        self,
        *,
        table: Any,
        view: SuppressionViewWriter,
        sink: ChangeSink,
        expiry: ExpirySchedule,
        view_lock: asyncio.Lock,
        total_partitions: int,
        retry_backoff_max: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._table = table
        self._view = view
        self._sink = sink
        self._expiry = expiry
        self._lock = view_lock
        self._total = total_partitions
        self._retry_cap = retry_backoff_max
        self._clock = clock
        self._materialised: frozenset[int] | None = None
        self._run_id: str | None = None

    @property
    def materialised(self) -> frozenset[int]:
        """Partitions currently rebuilt and marked ready by this worker."""
        return self._materialised or frozenset()

    def forget(self) -> None:
        """Called on rebalance: the next tick rebuilds what is then owned."""
        self._materialised = None
        VIEW_READY.set(0)

    async def tick(self, owned: Iterable[int], stalled: Iterable[int] = ()) -> None:
        """One round: rebuild if needed, then heartbeat for the owned partitions not stalled."""
        partitions = frozenset(owned)
        run_id = await self._view.server_run_id()
        trigger = None
        if self._materialised != partitions:
            trigger = "startup" if self._materialised is None else "rebalance"
        elif self._run_id is not None and run_id != self._run_id:
            trigger = "redis_restarted"
        elif not await self._view.view_present():
            trigger = "view_lost"
        if trigger is not None:
            await self.rebuild(partitions, trigger)
            self._run_id = run_id
        beating = partitions - frozenset(stalled)
        await self._view.heartbeat(beating)
        for partition in beating:
            WORKER_HEARTBEAT.labels(partition=str(partition)).set_to_current_time()

    def _owned_states(self, partitions: frozenset[int]) -> list[SuppressionState]:
        states = []
        for _key, raw in list(self._table.items()):
            state = load_state(raw)
            if state is not None and state.partition in partitions:
                states.append(state)
        return states

    async def rebuild(self, partitions: frozenset[int], trigger: str) -> None:
        """Re-materialise the owned partitions from the table, then mark them ready."""
        VIEW_READY.set(0)
        log.info("rebuilding the Redis view for partitions %s (%s)", sorted(partitions), trigger)
        started = asyncio.get_running_loop().time()
        async with self._lock:
            await self._view.unmark_ready(partitions)
            now = self._clock()
            states = self._owned_states(partitions)
            await self._view.write(states, now)
            await self._view.mark_ready(partitions, self._total)
        self._materialised = partitions
        self._reschedule(states, now)
        VIEW_REBUILDS.labels(trigger=trigger).inc()
        VIEW_READY.set(1)
        log.info(
            "view ready: %d states in %.2fs for partitions %s",
            len(states),
            asyncio.get_running_loop().time() - started,
            sorted(partitions),
        )

    def _reschedule(self, states: list[SuppressionState], now: datetime) -> None:
        self._expiry.clear()
        counts: Tally[str] = Tally()
        for state in states:
            if state.effective(now) is None:
                continue
            counts[state.target.split("/", 1)[0]] += 1
            expiry = state.next_expiry(now)
            if expiry is not None:
                self._expiry.schedule(state.table_key, expiry)
        SUPPRESSED_NUMBERS.clear()
        for tenant, count in counts.items():
            SUPPRESSED_NUMBERS.labels(tenant=tenant).set(count)

    async def expire_due(self) -> int:
        """Remove suppressions whose cooldown ended from the view; emit their change."""
        now = self._clock()
        due = self._expiry.due(now)
        if not due:
            return 0
        ended: dict[str, SuppressionState] = {}

        async def write() -> None:
            # Decide under the lock, from the table as it is now: the agent may have
            # applied a newer suppression to the same number since the schedule was made.
            async with self._lock:
                ended.clear()
                for when, key in due:
                    state = self._ended_at(key, when, now)
                    if state is not None:
                        ended[key] = state
                await self._view.write(ended.values(), now)

        await until_done(
            write, what="expiry view write", dependency="redis", max_backoff=self._retry_cap
        )
        if not ended:
            return 0
        changes = [SuppressionChange.of(s, now, cause="expiry") for s in ended.values()]
        await until_done(
            lambda: self._sink.emit_changes(changes),
            what="expiry emit",
            dependency="kafka",
            max_backoff=self._retry_cap,
        )
        EXPIRED.inc(len(ended))
        for state in ended.values():
            SUPPRESSED_NUMBERS.labels(tenant=state.target.split("/", 1)[0]).dec()
        return len(ended)

    def _ended_at(self, key: str, when: datetime, now: datetime) -> SuppressionState | None:
        """The state of ``key`` if its suppression ended by itself at ``when``."""
        state = load_state(self._table.get(key))
        if state is None or state.partition not in self.materialised:
            return None
        current = state.effective(now)
        if current is not None:
            if current.expires_at is not None:
                self._expiry.schedule(key, current.expires_at)
            return None
        last_end = max((e.expires_at for e in state.active if e.expires_at), default=None)
        return state if last_end == when else None
