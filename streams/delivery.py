"""Delivery continuity: find offsets the stream skipped and have them fetched again.

Faust's fetcher can abandon a message while the flow is suspended (rebalance, table
recovery): its read offset moves on, the message is never delivered to the agent, and
the partition's commits stall behind it. If the message had been applied before a crash
but its change was not emitted, nothing would ever emit it. Offsets are contiguous on the
oppositions topic (no compaction, no transactions from our producers), so any hole is
fetched again by seeking back to it; everything delivered twice is applied idempotently.
Faust's own gap bookkeeping is not trusted: after dropping messages it can record them as a
gap and commit past them. A real gap (control records of a transactional producer) costs at
most MAX_REPAIRS seeks and is then accepted, with an error in the log.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable

from schemas.metrics import DELIVERY_HOLES

log = logging.getLogger("dnc.streams")

MAX_REPAIRS = 3  # per hole: after that it is logged and accepted as a gap
REPAIR_TIMEOUT = 5.0  # seconds a seek may take to bring the hole's first offset back


class DeliveryHoles:
    """Tracks the next expected offset per partition and decides when to seek back."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._expected: dict[Hashable, int] = {}
        self._repairing: dict[Hashable, int] = {}
        self._sought_at: dict[Hashable, float] = {}
        self._attempts: Counter[tuple[Hashable, int]] = Counter()
        self._clock = clock

    def forget(self) -> None:
        """On rebalance: delivery restarts from the committed offsets."""
        self._expected.clear()
        self._repairing.clear()
        self._sought_at.clear()

    def overdue(self) -> dict[Hashable, int]:
        """Repairs whose first offset has not come back ``REPAIR_TIMEOUT`` after the seek.

        The fetcher may have been iterating an older batch when the seek was made: its next
        messages move Faust's read offset past the hole again and the refetched ones are
        dropped as already read. Seeking again, once that batch is drained, brings them.
        Returns ``{tp: offset}`` to seek again; after ``MAX_REPAIRS`` it is accepted as a gap.
        """
        now = self._clock()
        again: dict[Hashable, int] = {}
        for tp, offset in list(self._repairing.items()):
            if now - self._sought_at.get(tp, now) < REPAIR_TIMEOUT:
                continue
            self._attempts[(tp, offset)] += 1
            if self._attempts[(tp, offset)] > MAX_REPAIRS:
                log.error("offset %d of %s never came back after %d seeks: accepted as a gap",
                          offset, tp, MAX_REPAIRS)  # fmt: skip
                DELIVERY_HOLES.labels(outcome="accepted").inc()
                del self._repairing[tp]
                continue
            log.warning("offset %d of %s did not come back after the seek: seeking again",
                        offset, tp)  # fmt: skip
            DELIVERY_HOLES.labels(outcome="sought_again").inc()
            self._sought_at[tp] = now
            again[tp] = offset
        return again

    def seek_needed(self, tp: Hashable, offset: int) -> int | None:
        """The offset to seek ``tp`` back to, or None when delivery is continuous."""
        waiting_for = self._repairing.get(tp)
        if waiting_for is not None:
            if offset != waiting_for:
                return None  # messages fetched before the seek, still in the queue
            del self._repairing[tp]
            self._expected[tp] = offset + 1
            DELIVERY_HOLES.labels(outcome="repaired").inc()
            return None
        expected = self._expected.get(tp)
        self._expected[tp] = max(expected or 0, offset + 1)
        if expected is None or offset <= expected:
            return None
        self._attempts[(tp, expected)] += 1
        if self._attempts[(tp, expected)] > MAX_REPAIRS:
            log.error("offsets %d..%d of %s never arrived after %d seeks: accepted as a gap",
                      expected, offset - 1, tp, MAX_REPAIRS)  # fmt: skip
            DELIVERY_HOLES.labels(outcome="accepted").inc()
            return None
        log.error(
            "the stream skipped offsets %d..%d of %s (delivered %d): fetching them again",
            expected, offset - 1, tp, offset,
        )  # fmt: skip
        self._repairing[tp] = expected
        self._sought_at[tp] = self._clock()
        DELIVERY_HOLES.labels(outcome="detected").inc()
        return expected
