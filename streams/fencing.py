"""What a worker does when it finds it lost a partition: stop writing, at once.

A worker paused or cut off past the session timeout does not know yet that another
member took its partitions. Its writes are fenced (the view's scripts refuse a claim that
is not the latest, Kafka refuses a producer whose transactional id a newer owner
initialised: see :mod:`streams.ownership` and :mod:`streams.view_writer`); the first
refusal it meets raises :class:`OwnershipLost`, and the worker exits for its supervisor
to restart it: it rejoins the group as a new member with nothing stale in memory. Nothing
is lost: what it had not committed is replayed by the partitions' owners.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

log = logging.getLogger("dnc.streams")

EXIT_OWNERSHIP_LOST = 75  # EX_TEMPFAIL: restart me


class OwnershipLost(Exception):
    """A newer owner claimed a partition this worker still writes for: nothing it holds
    may be written any more."""


def give_up(reason: BaseException | str) -> None:
    """Log why and exit now, without a graceful stop (that would try to write or commit)."""
    log.critical(
        "%s: exiting so that a supervisor restarts this worker as a new member (nothing "
        "uncommitted is lost: the partitions' owners replay it)",
        reason,
    )
    logging.shutdown()
    os._exit(EXIT_OWNERSHIP_LOST)


class BatchAbandoned(OwnershipLost):
    """Every partition of a batch in flight was revoked meanwhile: the batch writes nothing
    and is dropped unacknowledged, its events fetched again from the committed offsets by
    whoever owns their partitions now (this worker too, if they came back)."""


class Revocations:
    """How many times each partition was revoked from this worker.

    A batch notes the counts when it starts and checks them before each of its writes. Faust
    may revoke a batch's partitions while it is in flight (a rebalance that did not wait
    for it, a worker paused past the session timeout). Its states were computed from a
    table that another owner may have moved on since, even if the partition came back
    (A to B to A): written, they would overwrite newer states. So it writes nothing:
    :meth:`check` raises :class:`BatchAbandoned` when all its partitions were revoked (their
    events are fetched again from the committed offsets, which exclude the batch), and
    :class:`OwnershipLost` (the worker exits) when only some were: the others' events would
    not be fetched again.
    """

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}

    def revoked(self, partitions: Iterable[int]) -> None:
        """``partitions`` were revoked (call first thing in the revocation handler)."""
        for partition in partitions:
            self._counts[partition] = self._counts.get(partition, 0) + 1

    def snapshot(self) -> dict[int, int]:
        """The counts now, for :meth:`check`."""
        return dict(self._counts)

    def check(self, seen: Mapping[int, int], partitions: Iterable[int]) -> None:
        """Raise if one of ``partitions`` was revoked since ``seen`` (see the class)."""
        mine = set(partitions)
        moved = sorted(p for p in mine if self._counts.get(p, 0) != seen.get(p, 0))
        if not moved:
            return
        what = (f"partitions {moved} were revoked from this worker while a batch applied to "
                "them was in flight (they may have been given back since, with newer states "
                "from another owner)")  # fmt: skip
        if len(moved) == len(mine):
            raise BatchAbandoned(f"{what}: the batch writes nothing, its events are fetched "
                                 "again from the committed offsets")  # fmt: skip
        raise OwnershipLost(f"{what}, not all of its partitions: the batch writes nothing")
