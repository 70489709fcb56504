"""The agent waits for the view's first tick after a start or a rebalance, within a limit.

A batch applied before the worker adopted or rebuilt its view (events replayed past the
last commit, after a restart) stores states past the view's last vouch: a view left intact
could then not be adopted. So the agent waits for that first tick's end (adopted, rebuilt,
or failed: Redis down), but never more than ``DECISION_WAIT_SECONDS`` after the rebalance.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from streams import maintenance as maintenance_module
from streams.maintenance import ViewMaintenance


class _RedisDown:
    async def eviction_policy(self) -> str:
        raise ConnectionError("Redis is down")


def _maintenance() -> ViewMaintenance:
    none: Any = None
    return ViewMaintenance(table=none, view=_RedisDown(), sink=none, ownership=none,  # type: ignore[arg-type]
                           expiry=none, view_lock=asyncio.Lock(), total_partitions=3,
                           retry_backoff_max=1.0)  # fmt: skip


def test_the_agent_waits_for_the_first_tick_even_a_failed_one() -> None:
    async def scenario() -> None:
        m = _maintenance()
        waiting = asyncio.ensure_future(m.decided())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        with pytest.raises(ConnectionError):
            await m.tick([0, 1, 2])
        await asyncio.wait_for(waiting, 1.0)  # (decided: batches go on, as before)
        await asyncio.wait_for(m.decided(), 0.1)  # (and stays so until a rebalance)

    asyncio.run(scenario())


def test_a_rebalance_makes_it_wait_again_but_never_past_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(maintenance_module, "DECISION_WAIT_SECONDS", 0.3)

    async def scenario() -> float:
        m = _maintenance()
        m.forget()  # (a rebalance; no tick follows: the view's owner cannot reach Redis)
        begun = time.monotonic()
        await asyncio.wait_for(m.decided(), 5.0)
        return time.monotonic() - begun

    waited = asyncio.run(scenario())
    assert 0.2 <= waited < 5.0
