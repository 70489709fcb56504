"""When cooldowns end: a min-heap of (expiry, table key), rebuilt from the table on start."""

from __future__ import annotations

import heapq
from datetime import datetime


class ExpirySchedule:
    """Due times of suppressions that end by themselves (refusal cooldowns, expires_at)."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, str]] = []

    def schedule(self, key: str, when: datetime) -> None:
        """Remember that ``key`` may stop being suppressed at ``when``."""
        heapq.heappush(self._heap, (when, key))

    def due(self, now: datetime) -> list[tuple[datetime, str]]:
        """Pop every entry due at ``now`` (entries may be stale: the caller re-reads the state)."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap))
        return out

    def clear(self) -> None:
        """Forget everything (before a rebuild from the table)."""
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)
