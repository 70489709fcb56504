"""Kafka's side of fencing: only a partition's current owner can write its records.

A partition's records (its table's changelog records and its change records) are produced
in transactions under the partition's own transactional id, ``<group>-p<P>``. Initialising
that id bumps its epoch at the transaction coordinator, which aborts the previous holder's
open transaction and refuses everything that holder sends afterwards: a worker paused or
cut off past the session timeout, resumed after a new owner initialised the id, can append
nothing (librdkafka reports it fenced: :class:`streams.fencing.OwnershipLost`). This is how
Kafka Streams fenced zombies with one producer per task.

"Last to initialise wins" is only safe if the last to initialise is the owner: a worker
that initialises late, after losing the partition, would fence its new owner. So a producer
is trusted only once the worker has *confirmed its membership after initialising* (an
offset commit, which the group coordinator refuses from a member of an older generation,
or during a rebalance): a late initialiser fails that check and drops the producer without
writing anything, and the owner it fenced exits at its next transaction; the group then
rebalances.

The same fence orders the Redis view's owners: to claim a partition of the view (before a
rebuild), the owner appends a fence record to the partition of ``<group>-fences`` through
that producer. The record's offset is the claim's sequence (:func:`schemas.view.claim_token`):
offsets only grow and a fenced producer cannot append, so a newer owner's claim always has
a larger sequence, and the view's scripts refuse writes under an older one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producers.publisher import producer_config
from schemas.errors import PublishError
from schemas.settings import Settings
from schemas.view import claim_token
from streams.fencing import OwnershipLost

log = logging.getLogger("dnc.streams")


class PartitionRevoked(PublishError):
    """A write for a partition the settled group assigned to another worker: no producer
    is made for it. Work held for it (a batch applied in memory before the rebalance) can
    never be made durable by this worker; its new owner replays it from the committed
    offsets."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition} is not owned by this worker any more")
        self.partition = partition


def fence_topic(settings: Settings) -> str:
    """The worker group's fence topic (one partition per partition of the oppositions log)."""
    return f"{settings.worker_group}-fences"


def transactional_id(settings: Settings, partition: int) -> str:
    """The transactional id of ``partition``'s records: the same for every owner in turn."""
    return f"{settings.worker_group}-p{partition}"


class Record(NamedTuple):
    """One record of a partition's transaction (a tuple: thousands are made per batch)."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None  # None: the key's partition (murmur2, like every producer)


class _Transaction:
    """Delivery reports of one transaction (served by librdkafka's callbacks, on the thread
    that flushes): one bound callback for all its records, no closure per record."""

    def __init__(self) -> None:
        self.offsets: list[int] = []  # in the order Kafka acknowledged them
        self.last: dict[str, int] = {}  # topic -> offset of its last record (acks are in order)
        self.errors: list[str] = []

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            offset = msg.offset() or 0
            self.offsets.append(offset)
            self.last[msg.topic()] = offset  # type: ignore[index]
        else:
            self.errors.append(f"{msg.topic()}: {err.str()}")


class PartitionProducers:
    """One transactional producer per owned partition, created on first use.

    ``owned()``: the partitions the worker owns now (None while it rebalances): a producer
    is never created for another one. ``confirm(partition)``: True if the group coordinator
    still counts this worker as a member of the current generation (called after the
    producer is initialised, see the module).
    """

    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        *,
        era: str,
        owned: Callable[[], set[int] | None],
        confirm: Callable[[int], Awaitable[bool]],
    ) -> None:
        self._settings = settings
        self._worker_id = worker_id
        self._era = era
        self._owned = owned
        self._confirm = confirm
        self._timeout = settings.publish_timeout_seconds
        self._producers: dict[int, Producer] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, partition: int) -> asyncio.Lock:
        return self._locks.setdefault(partition, asyncio.Lock())

    async def _producer(self, partition: int) -> Producer:
        """The partition's producer; created, initialised and confirmed if need be."""
        producer = self._producers.get(partition)
        if producer is not None:
            return producer
        owned = self._owned()
        if owned is None:
            raise PublishError(f"partition {partition}: the group is rebalancing (retry)")
        if partition not in owned:
            raise PartitionRevoked(partition)
        s = self._settings
        producer = Producer(
            producer_config(
                s.kafka_bootstrap,
                self._timeout,
                **{
                    "client.id": f"{self._worker_id}-p{partition}",
                    "transactional.id": transactional_id(s, partition),
                    # An owner stalled this long in a transaction is fenced by the
                    # coordinator itself (and exits at its next call).
                    "transaction.timeout.ms": int(max(60.0, 4 * self._timeout) * 1000),
                    "linger.ms": 1,
                    "queue.buffering.max.messages": 500_000,
                },
                **s.kafka_client_config(),
            )
        )
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, producer.init_transactions, self._timeout)
        except KafkaException as exc:
            raise PublishError(f"cannot initialise the producer of partition {partition}: "
                               f"{exc.args[0]}") from exc  # fmt: skip
        if not await self._confirm(partition):
            # A rebalance in progress, or this worker lost the partition meanwhile (and may
            # have fenced the new owner's producer, which then stops at its next transaction:
            # safe). Either way this producer writes nothing; a later try makes a new one if
            # the partition is still ours.
            await loop.run_in_executor(None, _close, [producer], 0.0)
            raise PublishError(
                f"initialised partition {partition}'s producer, but the group coordinator did "
                "not confirm this worker as a member of its current generation (a rebalance?)"
            )
        self._producers[partition] = producer
        log.info("partition %d: transactional producer %s ready (previous owner fenced)",
                 partition, transactional_id(s, partition))  # fmt: skip
        return producer

    async def send(self, partition: int, records: Sequence[Record]) -> list[int]:
        """Produce ``records`` in one transaction of ``partition``'s producer; their offsets
        (in the order Kafka acknowledged them) once Kafka committed it. Raises
        :class:`OwnershipLost` when the producer was fenced (a newer owner),
        :class:`PublishError` for what a retry may fix."""
        if not records:
            return []
        return (await self._send(partition, records)).offsets

    async def _send(self, partition: int, records: Sequence[Record]) -> _Transaction:
        async with self._lock(partition):
            producer = await self._producer(partition)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self._transaction, partition, producer, records)

    async def send_all(
        self, by_partition: Mapping[int, Sequence[Record]]
    ) -> dict[int, dict[str, int]]:
        """:meth:`send` for several partitions at once (their transactions run in parallel):
        per partition, the offset of each topic's last record; an :class:`OwnershipLost`
        among their errors is the one raised."""
        sent = [(p, r) for p, r in by_partition.items() if r]
        outcomes = await asyncio.gather(*(self._send(p, r) for p, r in sent),
                                        return_exceptions=True)  # fmt: skip
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        lost = [e for e in errors if isinstance(e, OwnershipLost)]
        if lost or errors:
            raise (lost or errors)[0]
        return {p: o.last for (p, _r), o in zip(sent, outcomes, strict=True)
                if isinstance(o, _Transaction)}  # fmt: skip

    def _transaction(
        self, partition: int, producer: Producer, records: Sequence[Record]
    ) -> _Transaction:
        outcome = _Transaction()
        delivered, produce = outcome.delivered, producer.produce
        try:
            producer.begin_transaction()
            for record in records:
                while True:
                    try:
                        if record.partition is None:
                            produce(record.topic, record.value, record.key, on_delivery=delivered)
                        else:
                            produce(record.topic, record.value, record.key, record.partition,
                                    on_delivery=delivered)  # fmt: skip
                        break
                    except BufferError:  # the local queue is full: let librdkafka drain it
                        producer.poll(0.05)
            producer.flush(self._timeout)  # serves the delivery callbacks
            producer.commit_transaction(self._timeout)
        except KafkaException as exc:
            self._failed(partition, producer, exc.args[0])
        if outcome.errors:  # (a refused record makes the commit fail: not reached)
            raise PublishError(
                f"Kafka refused {len(outcome.errors)} record(s): {outcome.errors[0]}"
            )
        return outcome

    def _failed(self, partition: int, producer: Producer, err: KafkaError) -> None:
        """Abort what a retry may fix; a fatal error (fenced) ends this worker's writes."""
        if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            self._producers.pop(partition, None)
            raise OwnershipLost(
                f"partition {partition}'s transactional producer was fenced or failed for good "
                f"({err.str()}): a newer owner took the partition"
            )
        if err.txn_requires_abort():
            try:
                producer.abort_transaction(self._timeout)
            except KafkaException as again:
                self._producers.pop(partition, None)
                raise PublishError(f"cannot abort a transaction of partition {partition}: "
                                   f"{again.args[0]}") from None  # fmt: skip
        raise PublishError(f"transaction of partition {partition} failed: {err.str()}")

    async def claim(self, partition: int) -> str:
        """Append a fence record for ``partition`` and return the claim it gives this worker
        on the view's partition (see the module)."""
        value = json.dumps({"worker": self._worker_id, "pid": os.getpid(),
                            "claimed_at": datetime.now(UTC).isoformat()}).encode()  # fmt: skip
        record = Record(fence_topic(self._settings), value, str(partition).encode(), partition)
        [offset] = await self.send(partition, [record])
        if offset < 0:
            raise PublishError(f"no offset for partition {partition}'s fence record")
        return claim_token(self._era, offset, self._worker_id)

    async def release(self, partitions: Sequence[int]) -> None:
        """Drop the producers of ``partitions`` (revoked: the new owner initialises its own)."""
        dropped = [self._producers.pop(p) for p in partitions if p in self._producers]
        if dropped:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, _close, dropped, self._timeout)

    def close(self) -> None:
        """Flush and drop every producer (shutdown)."""
        _close(list(self._producers.values()), self._timeout)
        self._producers.clear()


def _close(producers: list[Producer], timeout: float) -> None:
    for producer in producers:
        producer.flush(timeout)
