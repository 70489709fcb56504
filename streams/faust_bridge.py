"""The small amount of Faust plumbing the processor needs, kept apart from the domain logic."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import faust
from faust.streams import _current_event

from schemas.state import SuppressionChange
from schemas.topics import (
    DLQ_DETAIL,
    DLQ_FAILED_AT,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
)
from streams.delivery import DeliveryHoles
from streams.freshness import AppliedFrontier
from streams.processor import DeadLetter, Forward, OppositionProcessor, SourceMessage
from streams.progress import ProgressWatch


@contextmanager
def bound_event(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event, so table writes go to its changelog partition.

    ``take_events`` hands over a list; Faust only binds the current event while it
    iterates one at a time, so the batch processor binds each event itself.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


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


class FaustChangeSink:
    """Emits change records and dead letters with the Faust producer, waiting for the acks."""

    def __init__(
        self,
        app: faust.App,
        changes: faust.TopicT,
        dead_letters: faust.TopicT,
        oppositions: faust.TopicT,
    ):
        self._app = app
        self._changes = changes
        self._dead_letters = dead_letters
        self._oppositions = oppositions

    async def emit_changes(self, changes: Sequence[SuppressionChange]) -> None:
        """Send each change keyed by ``target|E164`` (compacted topic), wait for all acks."""
        futures = []
        for change in changes:
            key = f"{change.target}|{change.phone_e164}".encode()
            # force=True: send now instead of attaching to the current event, so that
            # the acknowledgement can be awaited before the offsets are acked.
            fut = await self._changes.send(
                key=key, value=change.model_dump_json().encode(), force=True
            )
            futures.append(fut)
        await asyncio.gather(*futures)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Send the original bytes with the reason in headers, wait for all acks."""
        failed_at = datetime.now(UTC).isoformat().encode()
        futures = []
        for letter in letters:
            m = letter.message
            headers = [
                (DLQ_REASON, letter.reason.encode()),
                (DLQ_DETAIL, letter.detail.encode()[:2000]),
                (DLQ_TOPIC, m.topic.encode()),
                (DLQ_PARTITION, str(m.partition).encode()),
                (DLQ_OFFSET, str(m.offset).encode()),
                (DLQ_FAILED_AT, failed_at),
            ]
            fut = await self._dead_letters.send(
                key=m.key, value=m.value, headers=headers, force=True
            )
            futures.append(fut)
        await asyncio.gather(*futures)

    async def forward(self, events: Sequence[Forward]) -> None:
        """Append each event to its canonical partition (original bytes), wait for the acks."""
        futures = []
        for item in events:
            fut = await self._oppositions.send(
                key=item.key,
                value=item.message.value,
                partition=item.partition,
                headers=list(item.headers),
                force=True,
            )
            futures.append(fut)
        await asyncio.gather(*futures)

    async def flush(self) -> None:
        """Flush the producer: the table's changelog writes are durable after this."""
        await self._app.producer.flush()


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
        await processor.process([(e, source_message(e)) for e in batch])
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
