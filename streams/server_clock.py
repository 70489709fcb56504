"""Redis's clock as the worker's clock: the one clock of the staleness contract.

Readers judge freshness on Redis's clock; the worker also decides on it when a cooldown
ends (the expiry timer removes the number from the view) and whether an event is still in
force when applied. A worker host whose clock runs ahead would otherwise end refusals
early. The worker keeps the offset between its clock and Redis's, measured at every vouch
(``TIME``): the estimate is never ahead of Redis's clock (the reply's time is taken as
"now" at the moment the reply arrived), so expiries happen late, never early.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class ServerClock:
    """``now()`` on Redis's clock, from the last measured offset (the host's clock before)."""

    def __init__(self) -> None:
        self._offset = 0.0  # Redis's clock minus the host's, seconds

    def observe(self, server_ms: int, received_at: float) -> None:
        """Redis said ``server_ms`` in a reply that arrived at ``received_at`` (host clock,
        ``time.time()``)."""
        self._offset = server_ms / 1000 - received_at

    def now(self) -> datetime:
        """The current time on Redis's clock (a little behind it: the reply's latency)."""
        return datetime.fromtimestamp(time.time() + self._offset, UTC)
