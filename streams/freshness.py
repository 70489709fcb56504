"""How current the view is, per partition: the worker's side of bounded staleness.

Every ``DNC_FRESHNESS_INTERVAL_SECONDS`` the worker reads Redis's clock (``T``), then the
log's end offsets (a ListOffsets request to Kafka, never a cached value). Once everything
below those end offsets is applied to the view, it writes ``applied:P = T``: "every message
the log held for P at time T is in the view". Readers compare that with Redis's clock.

The claim is kept honest by construction:

* ``T`` is read *before* the end offsets, so a message acknowledged before ``T`` is below
  them (acks=all: acknowledged means below the high watermark);
* applied means contiguously applied: an offset the stream skipped holds the frontier
  back until it is delivered (see :mod:`streams.delivery`), and the frontier starts from
  the committed offset, never from whatever arrived first;
* nothing is vouched for while the worker is cut from Kafka or Redis, stopped, stalled,
  rebuilding or behind: the applied-through time then simply ages, and checks answer
  "unavailable" once it is older than the bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

# Observations kept per partition while the worker is behind; dropping the oldest only
# delays vouching (a later observation needs more applied), it never overstates.
MAX_OBSERVATIONS = 4096


class AppliedFrontier:
    """Per partition: the offset below which every message is applied, and pending claims."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._ahead: dict[int, set[int]] = {}
        self._observations: dict[int, deque[tuple[int, int]]] = {}  # (end offset, time ms)
        # Offsets forwarded to their canonical partition, not applied until its frontier
        # passes the copy: partition -> offset -> (canonical partition, the copy's offset).
        self._held: dict[int, dict[int, tuple[int, int]]] = {}

    def forget(self) -> None:
        """On rebalance: positions restart from the committed offsets."""
        self._next.clear()
        self._ahead.clear()
        self._observations.clear()
        self._held.clear()

    def forwarded(self, partition: int, offset: int, canonical: int, landed: int) -> None:
        """``offset`` was forwarded to ``canonical``, where it landed at ``landed``: it counts
        as applied here only once ``canonical``'s frontier passes ``landed``
        (:meth:`release`). Vouching for it earlier would let a check trust this partition
        while the event is applied in neither (the canonical partition may have vouched for
        a log end read before the copy landed, then stalled)."""
        self._held.setdefault(partition, {})[offset] = (canonical, landed)

    def held(self) -> dict[int, dict[int, tuple[int, int]]]:
        """The forwarded offsets waiting for their canonical partitions, per partition."""
        return {p: dict(offsets) for p, offsets in self._held.items() if offsets}

    def is_held(self, partition: int, offset: int) -> bool:
        """True while ``offset`` waits for its canonical partition (not a skipped offset)."""
        return offset in self._held.get(partition, {})

    def is_applied(self, partition: int, offset: int) -> bool:
        """True once ``offset`` of ``partition`` is applied and durable (contiguously or not)."""
        nxt = self._next.get(partition)
        return (nxt is not None and offset < nxt) or offset in self._ahead.get(partition, ())

    def release(self, partition: int, offsets: Iterable[int]) -> None:
        """The canonical partitions passed these forwarded offsets: they are applied."""
        held = self._held.get(partition, {})
        done = [o for o in offsets if held.pop(o, None) is not None]
        self.applied(partition, done)

    def seed(self, partition: int, committed: int | None) -> None:
        """Start ``partition`` at its committed offset (delivery resumes there)."""
        if committed is not None and committed >= 0 and partition not in self._next:
            self._next[partition] = committed
            self._drain(partition)

    def next_offset(self, partition: int) -> int | None:
        """The first offset of ``partition`` not known to be applied."""
        return self._next.get(partition)

    def applied(self, partition: int, offsets: Iterable[int]) -> None:
        """``offsets`` of ``partition`` are applied and their effects durable."""
        ahead = self._ahead.setdefault(partition, set())
        ahead.update(offsets)
        self._drain(partition)

    def _drain(self, partition: int) -> None:
        nxt = self._next.get(partition)
        ahead = self._ahead.get(partition)
        if nxt is None or not ahead:
            return
        while nxt in ahead:
            ahead.discard(nxt)
            nxt += 1
        # Offsets below the frontier were applied again (a replay): nothing to keep.
        if ahead and min(ahead) < nxt:
            ahead.difference_update([o for o in ahead if o < nxt])
        self._next[partition] = nxt

    def observe(self, time_ms: int, end_offsets: Mapping[int, int | None]) -> None:
        """At ``time_ms`` (Redis's clock, read first) the log ended at ``end_offsets``."""
        for partition, end in end_offsets.items():
            if end is None:
                continue
            queue = self._observations.setdefault(partition, deque(maxlen=MAX_OBSERVATIONS))
            if queue and queue[-1][0] == end:
                queue[-1] = (end, time_ms)  # same end, later time: a stronger claim
            else:
                queue.append((end, time_ms))

    def gap(self, partition: int) -> tuple[int, int] | None:
        """``(first missing, first applied after it)`` when later offsets are applied but an
        earlier one never was: the stream skipped it (e.g. Faust dropping the first messages
        after an assignment), and it must be fetched again."""
        nxt = self._next.get(partition)
        ahead = self._ahead.get(partition)
        if nxt is None or not ahead:
            return None
        first = min(ahead)
        return (nxt, first) if first > nxt else None

    def waiting(self) -> dict[int, tuple[int | None, int]]:
        """Partitions with an unmet claim: (first offset not applied, the end offset awaited)."""
        return {
            p: (self._next.get(p), queue[0][0]) for p, queue in self._observations.items() if queue
        }

    def vouchable(self) -> dict[int, int]:
        """Per partition, the latest observed time whose end offset is now all applied."""
        out: dict[int, int] = {}
        for partition, queue in self._observations.items():
            nxt = self._next.get(partition)
            if nxt is None:
                continue
            while queue and queue[0][0] <= nxt:
                out[partition] = queue.popleft()[1]
        return out
