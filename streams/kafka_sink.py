"""What a batch sends to Kafka, produced with librdkafka and acknowledged as one.

Forwarded events, change records, dead letters and the table's changelog records of a
batch are produced without waiting one by one, then the batch waits once for every
acknowledgement (acks=all, idempotent producer): one flush per batch instead of a round
of awaits per record in pure Python. Faust's producer is not used for these records;
the changelog records go where Faust would write them (same topic and partition, Faust's
own key bytes) with the state's JSON as value, so Faust recovers the table from them.
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
from streams.processor import Outgoing


class _Deliveries:
    """Acknowledgements awaited for one publish call (served by librdkafka's callbacks).

    Callbacks run on whichever thread serves them: they only append (atomic in CPython).
    """

    def __init__(self) -> None:
        self.produced = 0
        self.reports: list[str | None] = []  # None: acknowledged; else the error

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        self.reports.append(None if err is None else f"{msg.topic()}: {err.str()}")

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

    def __init__(self, settings: Settings, changelog_topic: str, client_id: str) -> None:
        self._settings = settings
        self._changelog = changelog_topic
        self._timeout = settings.publish_timeout_seconds
        self._producer = Producer(
            producer_config(
                settings.kafka_bootstrap,
                self._timeout,
                **{"client.id": client_id, "linger.ms": 1, "queue.buffering.max.messages": 500_000},
                **settings.kafka_client_config(),  # Kafka SASL/TLS (empty for PLAINTEXT)
            )
        )

    def _produce(self, deliveries: _Deliveries, topic: str, **fields: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, on_delivery=deliveries.delivered, **fields)
                deliveries.produced += 1
                return
            except BufferError:  # the local queue is full: let librdkafka drain it
                self._producer.poll(0.05)

    async def publish(self, out: Outgoing) -> None:
        """Produce everything in ``out``; return once Kafka acknowledged all of it.

        Raises :class:`PublishError` when a record is refused or not acknowledged in time:
        the caller retries the whole batch (every record is idempotent in effect).
        """
        deliveries = _Deliveries()
        s = self._settings
        for item in out.forwards:
            self._produce(deliveries, s.oppositions_topic, key=item.key,
                          value=item.message.value, partition=item.partition,
                          headers=list(item.headers))  # fmt: skip
        for change in out.changes:
            self._produce(deliveries, s.suppressions_topic,
                          key=f"{change.target}|{change.phone_e164}".encode(),
                          value=change.model_dump_json().encode())  # fmt: skip
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
        for key, (partition, value) in out.states.items():
            # Faust's own key bytes (compaction keeps the latest per key), the state's JSON.
            self._produce(deliveries, self._changelog, key=changelog_key(key),
                          value=changelog_value(value), partition=partition)  # fmt: skip
        if deliveries.pending:
            await self._wait(deliveries)

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
