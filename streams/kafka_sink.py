"""What a batch sends to Kafka, produced with librdkafka and acknowledged as one.

A batch's records of partition P of the oppositions log, i.e. the table's changelog records
and the change records of its numbers, go in one transaction of P's transactional producer
(:mod:`streams.ownership`): only P's current owner can append them, so a worker that lost P
cannot land a stale state after the new owner's. Forwarded events and dead letters go
through a plain idempotent producer (a copy of an event already in the log, or of a
refusal: appended twice they change nothing). Everything is produced without waiting one
by one, then the batch waits once for all of it: one flush and one commit per partition,
in parallel. Faust's producer is not used for these records; the changelog records go where
Faust would write them (same topic and partition, Faust's own key bytes) with the state's
JSON as value, so Faust recovers the table from them.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from producers.publisher import producer_config
from schemas.errors import PublishError
from schemas.settings import Settings
from schemas.topics import (
    DLQ_DETAIL,
    DLQ_FAILED_AT,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
)
from streams.fencing import OwnershipLost
from streams.ownership import PartitionProducers, Record
from streams.processor import Outgoing


class _Deliveries:
    """Acknowledgements awaited for one publish call (served by librdkafka's callbacks).

    Callbacks run on whichever thread serves them: they only assign and append (atomic in
    CPython).
    """

    def __init__(self) -> None:
        self.produced = 0
        self.reports: list[str | None] = []  # None: acknowledged; else the error
        self.offsets: dict[int, int] = {}  # index of a record asked for -> its offset

    def delivered(self, index: int | None = None) -> Any:
        def done(err: KafkaError | None, msg: Message) -> None:
            if err is None and index is not None:
                self.offsets[index] = msg.offset() or 0
            self.reports.append(None if err is None else f"{msg.topic()}: {err.str()}")

        return done

    @property
    def pending(self) -> int:
        return self.produced - len(self.reports)

    @property
    def errors(self) -> list[str]:
        return [r for r in self.reports if r is not None]


def changelog_key(key: str) -> bytes:
    """The key bytes Faust's JSON codec writes for a string key (compaction matches on them)."""
    return json.dumps(key).encode()


def changelog_value(value: Any) -> bytes:
    """A table value as its changelog record: JSON bytes as they are, anything else as JSON."""
    if isinstance(value, bytes):
        return value
    return json.dumps(value, separators=(",", ":")).encode()


class KafkaChangeSink:
    """Produces a batch's records to Kafka and waits until all are acknowledged."""

    def __init__(
        self,
        settings: Settings,
        changelog_topic: str,
        client_id: str,
        partitions: PartitionProducers,
    ) -> None:
        self._settings = settings
        self._changelog = changelog_topic
        self._timeout = settings.publish_timeout_seconds
        self._partitions = partitions
        self._producer = Producer(
            producer_config(
                settings.kafka_bootstrap,
                self._timeout,
                **{"client.id": client_id, "linger.ms": 1, "queue.buffering.max.messages": 500_000},
                **settings.kafka_client_config(),  # Kafka SASL/TLS (empty for PLAINTEXT)
            )
        )

    def _produce(self, deliveries: _Deliveries, topic: str, index: int | None = None,
                 **fields: Any) -> None:  # fmt: skip
        while True:
            try:
                self._producer.produce(topic, on_delivery=deliveries.delivered(index), **fields)
                deliveries.produced += 1
                return
            except BufferError:  # the local queue is full: let librdkafka drain it
                self._producer.poll(0.05)

    async def publish(self, out: Outgoing) -> list[int]:
        """Produce everything in ``out``; return once Kafka acknowledged all of it, with the
        offsets the forwarded events landed at (in ``out.forwards``' order).

        Raises :class:`PublishError` when a record is refused or not acknowledged in time
        (the caller retries the whole batch: every record is idempotent in effect), and
        :class:`streams.fencing.OwnershipLost` when a partition's producer was fenced.
        """
        deliveries = _Deliveries()
        s = self._settings
        for index, item in enumerate(out.forwards):
            self._produce(deliveries, s.oppositions_topic, index, key=item.key,
                          value=item.message.value, partition=item.partition,
                          headers=list(item.headers))  # fmt: skip
        if out.dead:
            failed_at = datetime.now(UTC).isoformat().encode()
        for letter in out.dead:
            m = letter.message
            headers = [
                (DLQ_REASON, letter.reason.encode()),
                (DLQ_DETAIL, letter.detail.encode()[:2000]),
                (DLQ_TOPIC, m.topic.encode()),
                (DLQ_PARTITION, str(m.partition).encode()),
                (DLQ_OFFSET, str(m.offset).encode()),
                (DLQ_FAILED_AT, failed_at),
                *letter.headers,  # an admin action's signed cutoff, for its replay
            ]
            self._produce(deliveries, s.dead_letter_topic, key=m.key, value=m.value,
                          headers=headers)  # fmt: skip
        owned: dict[int, list[Record]] = {}
        for partition, change in out.changes:
            owned.setdefault(partition, []).append(
                Record(
                    s.suppressions_topic,
                    change.model_dump_json().encode(),
                    f"{change.target}|{change.phone_e164}".encode(),
                )
            )
        for key, (partition, value) in out.states.items():
            # Faust's own key bytes (compaction keeps the latest per key), the state's JSON.
            owned.setdefault(partition, []).append(
                Record(self._changelog, changelog_value(value), changelog_key(key), partition)
            )
        plain = self._wait(deliveries) if deliveries.pending else asyncio.sleep(0)
        outcomes = await asyncio.gather(
            plain, self._partitions.send_all(owned), return_exceptions=True
        )
        for outcome in sorted((o for o in outcomes if isinstance(o, BaseException)),
                              key=lambda e: not isinstance(e, OwnershipLost)):  # fmt: skip
            raise outcome  # (a lost ownership first: it must not go unseen)
        last: Any = outcomes[1]  # partition -> topic -> offset of its last record
        out.changelog_offsets = {
            partition: topics[self._changelog]
            for partition, topics in last.items()
            if self._changelog in topics
        }
        return [deliveries.offsets.get(i, -1) for i in range(len(out.forwards))]

    async def _wait(self, deliveries: _Deliveries) -> None:
        loop = asyncio.get_running_loop()
        # flush() serves the delivery callbacks and returns when nothing is in flight (any
        # concurrent publish's records too: a superset of ours), off the event loop.
        await loop.run_in_executor(None, self._producer.flush, self._timeout)
        if deliveries.errors:
            raise PublishError(
                f"Kafka refused {len(deliveries.errors)} record(s): {deliveries.errors[0]}"
            )
        if deliveries.pending:
            raise PublishError(f"{deliveries.pending} record(s) not acknowledged in time")
