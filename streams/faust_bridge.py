"""The small amount of Faust plumbing the processor needs, kept apart from the domain logic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.metrics import BATCH_EVENTS
from streams.delivery import DeliveryHoles
from streams.freshness import AppliedFrontier
from streams.processor import OppositionProcessor, SourceMessage
from streams.progress import ProgressWatch


def source_message(event: Any) -> SourceMessage:
    """The processor's view of a Faust event."""
    message = event.message
    value = event.value if isinstance(event.value, bytes) else bytes(event.value or b"")
    raw_headers = message.headers or ()
    items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    return SourceMessage(
        key=message.key,
        value=value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        headers=tuple((str(k), v) for k, v in items),
        # timestamp_type 1: LogAppendTime, the broker's stamp (the topics are created so).
        appended_ms=round(message.timestamp * 1000)
        if message.timestamp is not None and message.timestamp_type == 1
        else None,
    )


class FaustStateTable:
    """The Faust table as the processor uses it: reads, and in-memory writes whose
    changelog records the batch produces itself (:class:`streams.kafka_sink.KafkaChangeSink`).
    """

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, key: str) -> Any:
        return self._table.data.get(key)

    def store(self, key: str, value: Any) -> None:
        self._table.data[key] = value


async def apply_in_batches(
    stream: Any,
    processor: OppositionProcessor,
    max_events: int,
    progress: ProgressWatch,
    holes: DeliveryHoles,
    frontiers: Mapping[str, AppliedFrontier],
    consumer: Any,
    log_topic: str,
) -> None:
    """Consume ``stream`` (created with ``noack()``) in adaptive batches, acking by hand.

    A batch is whatever has already been fetched, up to ``max_events``: it is applied as
    soon as the stream's queue runs dry, so latency stays low when traffic is light and
    batches grow under load. Events are acked only after :meth:`OppositionProcessor.process`
    returned, i.e. after every side effect is durable; a crash or a cancellation before
    that leaves them unacked, so they are replayed (every effect is idempotent). The
    applied offsets move each topic's frontier, which is what gets committed
    (:mod:`streams.commits`); Faust's acks only let a rebalance wait for the batch.

    Faust's ``take_events`` is not used: its buffer hand-off can drop an event from a
    batch under load (the event is neither applied nor acked, and commits stall).
    """
    batch: list[Any] = []
    queue = stream.channel.queue
    async for event in stream.events():
        message = event.message
        if message.topic == log_topic:  # the admin topic is only forwarded from
            progress.received(message.partition, message.offset)
        rewind = holes.seek_needed(message.tp, message.offset)
        if rewind is not None:
            await consumer.seek(message.tp, rewind)
        batch.append(event)
        if len(batch) < max_events and not queue.empty():
            continue
        await processor.process([source_message(e) for e in batch])
        BATCH_EVENTS.observe(len(batch))
        progress.applied()
        applied: dict[tuple[str, int], list[int]] = {}
        for done in batch:
            key = (done.message.topic, done.message.partition)
            applied.setdefault(key, []).append(done.message.offset)
        for (topic, partition), offsets in applied.items():
            # Durable: the view may be vouched for and the offsets committed now. Before
            # the acks, so that a rebalance waiting for them sees the frontier moved.
            frontiers[topic].applied(partition, offsets)
        for done in batch:
            await stream.ack(done)
        batch.clear()
