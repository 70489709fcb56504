"""Stall detection: input waiting on a partition but no progress means the view may be stale.

A worker can be alive (timers firing, heartbeat fresh) yet not consume: a client bug, a
stuck fetch, a poisoned dependency. Dialers must not keep hearing "callable" from a view
that no longer receives refusals, so a stalled partition loses its heartbeat (checks
answer unavailable) and, if it stays stalled, the worker exits for its supervisor to
restart it; uncommitted events are then replayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


class ProgressWatch:
    """Tracks, per partition, the next offset to apply and when it last moved."""

    def __init__(self, stall_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stall_after = stall_after
        self._clock = clock
        self._next: dict[int, int] = {}
        self._moved_at: dict[int, float] = {}

    def applied(self, partition: int, offset: int) -> None:
        """The processor finished ``offset`` (its side effects are durable)."""
        if offset + 1 > self._next.get(partition, -1):
            self._next[partition] = offset + 1
            self._moved_at[partition] = self._clock()

    def forget(self) -> None:
        """On rebalance: positions are measured again from the new assignment."""
        self._next.clear()
        self._moved_at.clear()

    def stalled_for(
        self, highwaters: Mapping[int, int | None], positions: Mapping[int, int | None]
    ) -> dict[int, float]:
        """Partitions with input waiting and no progress for longer than the threshold.

        ``positions`` (the consumer's fetch positions) seed partitions this worker has
        not applied anything on yet: after assignment that is the committed offset.
        """
        now = self._clock()
        stalled: dict[int, float] = {}
        for partition, highwater in highwaters.items():
            if partition not in self._next:
                seed = positions.get(partition)
                if seed is None:
                    continue
                self._next[partition] = seed
                self._moved_at[partition] = now
            if highwater is None or highwater <= self._next[partition]:
                self._moved_at[partition] = now  # nothing waiting: not stalled
                continue
            idle = now - self._moved_at[partition]
            if idle > self._stall_after:
                stalled[partition] = idle
        return stalled
