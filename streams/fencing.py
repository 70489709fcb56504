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
