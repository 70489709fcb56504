"""A ready, current view on one Redis server, written as the worker writes it, with no
worker: for the tests of the read path (the checker, `dnc check`)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from consumers.checker import CheckResult, SuppressionChecker
from schemas.settings import BUNDLED_TENANTS_FILE
from schemas.tenants import TenantDirectory
from schemas.view import FAMILY_OF_KIND, ViewLayout, claim_token
from streams.view_writer import SuppressionViewWriter

PARTITIONS = 3
VIEW_KEY = "atomic-reads-test-key"  # DNC_VIEW_KEY of a process that reads this view
TENANTS = TenantDirectory.load(BUNDLED_TENANTS_FILE)


def numbers(n: int, first: int = 0) -> list[str]:
    """``n`` distinct valid French mobile numbers."""
    return [f"+3361{i:07d}" for i in range(first, first + n)]


class PlainView:
    """A ready, current view on one Redis server (``DNC_VIEW_SHARDS=0``): members written
    with the layout, metadata by the worker's writer (mark ready, vouch), no worker."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.layout = ViewLayout(VIEW_KEY.encode(), 1024)
        self.client = redis.Redis.from_url(url, socket_timeout=30)
        self.loop = asyncio.new_event_loop()
        self.async_client = AsyncRedis.from_url(url, socket_timeout=30)
        self.checker = SuppressionChecker(
            self.client, self.layout, TENANTS, async_client=self.async_client
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.checker.aclose())
        self.loop.close()
        self.client.close()

    def suppress(self, phones: list[str], target: str = "acme") -> None:
        """Add ``phones`` to ``target``'s list (a tenant, ``_global`` or ``tenant/campaign``)."""
        pipe = self.client.pipeline(transaction=False)
        for phone in phones:
            key, member = self.layout.locate(target, phone)
            pipe.sadd(key + FAMILY_OF_KIND["opposition"], member)  # its bucket's opposition set
        pipe.execute()

    def make_ready(self) -> None:
        """What the worker does after a rebuild: mark every partition ready, then vouch."""

        async def work() -> None:
            writer = SuppressionViewWriter(self.async_client, self.layout, "w-test")
            await writer.claim({p: claim_token("era", 1, "w-test") for p in range(PARTITIONS)})
            await writer.mark_ready(range(PARTITIONS), PARTITIONS)
            now = await writer.server_time_ms()
            assert await writer.vouch(dict.fromkeys(range(PARTITIONS), (now, 0)), {}) == set()

        self.loop.run_until_complete(work())

    def check_async(self, phone: str, campaign: str | None = None) -> CheckResult:
        return self.loop.run_until_complete(self.checker.check_async(phone, "acme", campaign))

    def answers(self, phones: list[str], campaign: str | None = None) -> dict[str, list[Any]]:
        """Each reader's results for ``phones``: single, asyncio (the gateway's), bulk."""
        return {
            "check": [self.checker.check(p, "acme", campaign) for p in phones],
            "check_async": [self.check_async(p, campaign) for p in phones],
            "check_many": self.checker.check_many(phones, "acme", campaign),
        }
