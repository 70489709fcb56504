"""Consumer offsets for the source topics: committed by the worker, from what it applied.

Faust's own commits are switched off for the oppositions and admin topics (``acks=False``).
Its bookkeeping treats an offset it skipped as a "gap" and commits past it: after a
rebalance or a seek its fetcher can abandon messages, and they were then committed without
ever being applied, i.e. an acknowledged opposition lost for good, and a restarted worker
vouching for a view without it. Here a partition is committed at its applied frontier
(:class:`streams.freshness.AppliedFrontier`): the first offset not contiguously applied.
So the committed offset never passes an unapplied message, whichever member committed
it, and a new owner can start its frontier there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from faust.types import TP

from streams.freshness import AppliedFrontier

log = logging.getLogger("dnc.streams")


class AppliedCommits:
    """Commits each owned partition's applied frontier when it moved."""

    def __init__(self, consumer: Any, frontiers: Mapping[str, AppliedFrontier]) -> None:
        self._consumer = consumer  # Faust's consumer: its commit goes through its client
        self._frontiers = frontiers
        self._committed: dict[TP, int] = {}

    def pending(self, tps: Iterable[TP]) -> dict[TP, int]:
        """The offsets to commit: frontiers that moved past the last commit."""
        out: dict[TP, int] = {}
        for tp in tps:
            frontier = self._frontiers.get(tp.topic)
            nxt = frontier.next_offset(tp.partition) if frontier is not None else None
            if nxt is not None and nxt > self._committed.get(tp, -1):
                out[tp] = nxt
        return out

    async def commit(self, tps: Iterable[TP]) -> None:
        """Commit the frontiers of ``tps`` that moved; a failure is retried next time."""
        try:
            # Only what the client still holds: Faust's commit would crash the worker on a
            # partition no longer assigned, or on an empty request.
            assigned = {TP(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            offsets = {tp: o for tp, o in self.pending(tps).items() if tp in assigned}
            if not offsets:
                return
            done = await self._consumer._commit(offsets)
        except Exception as exc:  # the broker away, a rebalance: commit again next time
            log.warning("cannot commit applied offsets (%s): retrying", exc)
            return
        if done:
            self._committed.update(offsets)

    def forget(self) -> None:
        """On rebalance: the next commits follow the new assignment's frontiers."""
        self._committed.clear()
