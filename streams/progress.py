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
    """Per partition: what the stream delivered, what is being applied, and since when."""

    def __init__(self, stall_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stall_after = stall_after
        self._clock = clock
        self._expected: dict[int, int] = {}  # next offset the stream should deliver
        self._moved_at: dict[int, float] = {}  # input last delivered, or nothing was waiting
        self._in_flight_since: dict[int, float] = {}  # oldest delivered, not yet applied
        self._commit_seen: dict[int, tuple[int, float]] = {}  # committed offset, seen since
        self._last_received = float("-inf")  # the stream's last delivery, any partition
        # More was waiting when the last batch was taken (a backlog is being applied).
        self.backlogged = False

    def received(self, partition: int, offset: int) -> None:
        """The stream delivered ``offset`` to the agent."""
        now = self._clock()
        self._last_received = now
        if offset + 1 > self._expected.get(partition, -1):
            self._expected[partition] = offset + 1
        self._moved_at[partition] = now
        self._in_flight_since.setdefault(partition, now)

    def idle_for(self) -> float:
        """Seconds since the stream last delivered anything, on any partition."""
        return self._clock() - self._last_received

    def in_flight(self) -> bool:
        """A delivered batch is still being applied (its effects are not durable yet)."""
        return bool(self._in_flight_since)

    def busy(self) -> bool:
        """A batch is being applied or a backlog waits: background work can wait."""
        return self.backlogged or bool(self._in_flight_since)

    def in_flight_for(self) -> float:
        """Seconds the oldest delivered, not yet applied event has waited (0: none)."""
        if not self._in_flight_since:
            return 0.0
        return self._clock() - min(self._in_flight_since.values())

    def applied(self) -> None:
        """Everything delivered so far is applied (its side effects are durable)."""
        self._in_flight_since.clear()

    def forget(self) -> None:
        """On rebalance: positions are measured again from the new assignment."""
        self._expected.clear()
        self._moved_at.clear()
        self._in_flight_since.clear()
        self._commit_seen.clear()

    def stalled_for(
        self, highwaters: Mapping[int, int | None], committed: Mapping[int, int | None]
    ) -> dict[int, float]:
        """Partitions stuck for longer than the threshold, with how long.

        Stuck means a delivered batch is still not applied, the log has events the stream
        has not delivered, or the committed offset stays behind the log (an event the stream
        skipped holds commits back while later ones are applied: its refusal is missing).
        ``committed`` also seeds partitions nothing was delivered on yet (after an
        assignment, delivery starts at the committed offset).
        """
        now = self._clock()
        stalled: dict[int, float] = {}
        for partition, highwater in highwaters.items():
            since = self._in_flight_since.get(partition)
            if since is not None and now - since > self._stall_after:
                stalled[partition] = now - since
                continue
            stuck = self._commits_stuck_for(partition, highwater, committed.get(partition), now)
            if stuck > self._stall_after:
                stalled[partition] = stuck
                continue
            expected = self._expected.get(partition, committed.get(partition))
            if expected is None or highwater is None or highwater <= expected:
                self._moved_at[partition] = now  # nothing waiting: not stalled
                continue
            idle = now - self._moved_at.setdefault(partition, now)
            if idle > self._stall_after:
                stalled[partition] = idle
        return stalled

    def _commits_stuck_for(
        self, partition: int, highwater: int | None, committed: int | None, now: float
    ) -> float:
        """How long the committed offset has stayed put with events after it (0: moving)."""
        if highwater is None or committed is None or committed >= highwater:
            self._commit_seen.pop(partition, None)
            return 0.0
        seen = self._commit_seen.get(partition)
        if seen is None or seen[0] != committed:
            self._commit_seen[partition] = (committed, now)
            return 0.0
        return now - seen[1]
