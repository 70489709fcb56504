"""The source topics' end (and start) offsets, read fresh from Kafka on a client of their own.

Bounded staleness needs the high watermark *now* (a ListOffsets request), never a value
cached from the last fetch: a worker cut from Kafka must not believe it is caught up.
Faust's consumer can answer that too, but its requests queue behind the consumer thread's
fetches (up to a second here); a small admin client answers in about a millisecond. The
same goes for the log's start, where delivery starts in a partition never committed: asked
of Faust's consumer, the first vouch after an assignment waited 1.2-1.4 s for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for type checkers
from faust.types import TP

from schemas.settings import Settings


class LogEndReader:
    """ListOffsets (latest) for a set of topic partitions, off the event loop."""

    def __init__(self, settings: Settings) -> None:
        self._admin = AdminClient(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "client.id": f"{settings.worker_group}-log-end",
                **settings.kafka_client_config(),  # Kafka SASL/TLS (empty for PLAINTEXT)
            }
        )

    def _read(self, tps: list[TP], timeout: float, earliest: bool = False) -> dict[TP, int]:
        offset_spec = OffsetSpec.earliest if earliest else OffsetSpec.latest
        spec = offset_spec()  # type: ignore[no-untyped-call]
        request = {TopicPartition(tp.topic, tp.partition): spec for tp in tps}
        futures = self._admin.list_offsets(request, request_timeout=timeout)
        return {
            TP(tp.topic, tp.partition): f.result(timeout=timeout).offset
            for tp, f in futures.items()
        }

    async def end_offsets(self, tps: Iterable[TP], wait: float) -> dict[TP, int]:
        """The end offset of each partition; raises when Kafka does not answer in time."""
        return await self._offsets(tps, wait, earliest=False)

    async def start_offsets(self, tps: Iterable[TP], wait: float) -> dict[TP, int]:
        """The log start offset of each partition (its first offset still held); raises
        when Kafka does not answer in time."""
        return await self._offsets(tps, wait, earliest=True)

    async def _offsets(self, tps: Iterable[TP], wait: float, earliest: bool) -> dict[TP, int]:
        wanted = sorted(set(tps))
        if not wanted:
            return {}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._read, wanted, wait, earliest)
