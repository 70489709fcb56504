"""Retry a side effect until it succeeds: the worker holds its position rather than skip."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from schemas.metrics import RETRIES
from streams.fencing import OwnershipLost

T = TypeVar("T")
log = logging.getLogger("dnc.streams")


async def until_done(
    step: Callable[[], Awaitable[T]], *, what: str, dependency: str, max_backoff: float
) -> T:
    """Run ``step`` until it returns; back off exponentially (capped) between failures.

    The batch's offsets are acked only after every step returned, so holding here
    never loses an event: checks fail closed once the heartbeat goes stale.
    """
    delay = 0.05
    attempt = 0
    while True:
        try:
            return await step()
        except (asyncio.CancelledError, OwnershipLost):
            raise  # a worker that lost a partition retries nothing (streams/fencing.py)
        except Exception as exc:
            attempt += 1
            RETRIES.labels(dependency=dependency).inc()
            log.warning(
                "%s failed (attempt %d, %s unreachable?): %s; retrying in %.2fs",
                what,
                attempt,
                dependency,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
