"""The small amount of Faust plumbing the processor needs, kept apart from the domain logic."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

from schemas.metrics import BATCH_EVENTS
from streams.batch_transport import stale
from streams.delivery import DeliveryHoles
from streams.fencing import BatchAbandoned
from streams.freshness import AppliedFrontier
from streams.processor import OppositionProcessor, SourceMessage
from streams.progress import ProgressWatch
from streams.table_store import DurableRocksDBStore

log = logging.getLogger("dnc.streams")


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
    """The Faust table as the worker uses it: states read by partition, and written only
    once their changelog records are acknowledged (the batch produces them itself:
    :class:`streams.kafka_sink.KafkaChangeSink`), see :mod:`streams.table_store`.

    Between a batch's view write and that acknowledgement its states are *staged*: the view
    already shows them, so whatever rebuilds, audits or expires the view from the table
    meanwhile (the maintenance tick runs while the batch waits for Kafka: ``items``,
    ``keys``, ``get`` without a partition) reads them too, or a rebuild would write an older
    state over the view's and mark it ready (an opposition gone from a view vouched for).
    A batch that fails or is abandoned unstages them (its events are applied again); a
    revoked partition's staged states go at once (a rebuild after it comes back must not
    read a stale batch's states).
    """

    def __init__(self, table: Any) -> None:
        self._store: DurableRocksDBStore = table.data
        self._staged: dict[str, tuple[int, bytes]] = {}  # key -> (partition, value)

    def get(self, key: str, partition: int | None = None) -> bytes | None:
        staged = self._staged.get(key)
        if staged is not None:
            return staged[1]
        if partition is None:  # (maintenance and the audit: whichever database holds it)
            return self._store.find(key)
        return self._store.read(key, partition)

    def stage(self, states: Mapping[str, tuple[int, bytes]]) -> None:
        self._staged.update(states)

    def unstage(self, states: Mapping[str, tuple[int, bytes]]) -> None:
        staged = self._staged
        for key, entry in states.items():
            if staged.get(key) is entry:  # (not staged again by a later batch)
                del staged[key]

    def unstage_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the staged states of ``partitions`` (revoked: the batch that staged them
        writes nothing any more, see :class:`streams.fencing.Revocations`); how many."""
        gone = set(partitions)
        keys = [key for key, (partition, _v) in self._staged.items() if partition in gone]
        for key in keys:
            del self._staged[key]
        return len(keys)

    def persist(self, states: Mapping[str, tuple[int, bytes]], offsets: Mapping[int, int]) -> None:
        self._store.persist(states, offsets)

    def changelog_offset(self, partition: int) -> int | None:
        """The last changelog record of ``partition`` the store holds (see the store)."""
        return self._store.changelog_offset(partition)

    def open_partitions(self) -> set[int]:
        """Partitions whose database the store holds (Faust drops one when its partition is
        revoked, and every one when the worker stops)."""
        return set(self._store._dbs)

    def staged_partitions(self) -> set[int]:
        """Partitions with a batch's states staged (in flight between the view and Kafka)."""
        return {partition for partition, _v in self._staged.values()}

    def scan(self, partition: int, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """A page of ``partition``'s states in key order past ``after`` (see the store's
        :meth:`~streams.table_store.DurableRocksDBStore.scan`), staged ones as staged; keys
        only staged (a batch's new states in flight) are not listed."""
        staged = self._staged
        return [(key, staged[key][1] if key in staged else value)
                for key, value in self._store.scan(partition, after, limit)]  # fmt: skip

    def items(self, partitions: Iterable[int] | None = None) -> Iterator[tuple[str, bytes]]:
        """Every state of the active partitions (of those among ``partitions`` if given),
        staged ones as staged. Lazy over the store (a million states are not copied
        twice): take a list before any wait, as the maintenance does."""
        wanted = None if partitions is None else set(partitions)
        staged = {key: entry for key, entry in self._staged.items()
                  if wanted is None or entry[0] in wanted}  # fmt: skip
        for key, value in self._store.states(wanted):
            yield key, staged.pop(key, (0, value))[1]
        for key, (_partition, value) in staged.items():
            yield key, value


async def apply_in_batches(
    stream: Any,
    processor: OppositionProcessor,
    max_events: int,
    progress: ProgressWatch,
    holes: DeliveryHoles,
    frontiers: Mapping[str, AppliedFrontier],
    app: Any,
    log_topic: str,
    decided: Callable[[], Awaitable[None]],
) -> None:
    """Consume ``stream`` (of a :class:`~streams.batch_transport.BatchTopic`, created with
    ``noack()``: lists of events, a partition's fetch each) in batches, acking by hand.

    A batch is whatever has already been fetched, up to ``max_events``: it is applied as
    soon as the stream's queue runs dry, so latency stays low when traffic is light and
    batches grow under load. Events are acked only after :meth:`OppositionProcessor.process`
    returned, i.e. after every side effect is durable; a crash or a cancellation before
    that leaves them unacked, so they are replayed (every effect is idempotent). The
    applied offsets move each topic's frontier, which is what gets committed
    (:mod:`streams.commits`); Faust's acks only let a rebalance wait for the batch.
    A list fetched before a rebalance is skipped, as Faust's stream skips such an event.
    """
    pending: list[Any] = []
    queue = stream.channel.queue
    consumer = app.consumer
    async for fetched in stream:
        if stale(app, fetched):
            for event in fetched:
                await stream.ack(event)
            continue
        last = fetched[-1].message
        if last.topic == log_topic:  # the admin topic is only forwarded from
            progress.received(last.partition, last.offset)
        for event in fetched:
            message = event.message
            rewind = holes.seek_needed(message.tp, message.offset)
            if rewind is not None:
                await consumer.seek(message.tp, rewind)
        pending += fetched
        if len(pending) < max_events and not queue.empty():
            continue
        while pending:
            batch, pending = pending[:max_events], pending[max_events:]
            progress.backlogged = bool(pending) or not queue.empty()
            await decided()  # (the view adopted or rebuilt first: ViewMaintenance.decided)
            batch = await _drop_stale(stream, batch, app)
            if batch:  # (no await before the processor notes the revocations it starts from)
                await _apply(stream, batch, processor, progress, frontiers, log_topic)


async def _drop_stale(stream: Any, batch: list[Any], app: Any) -> list[Any]:
    """``batch`` without the events fetched before the current rebalance, acked unapplied.

    A batch applied before them may have waited through a rebalance (a worker paused past
    the session timeout): the events still pending behind it were fetched by the old
    assignment, and their partitions may have moved on under another owner meanwhile, even
    if they came back. Applied now, their states would be computed from what this worker
    held before and overwrite newer ones. Their partitions were sought back to the committed
    offsets, so they come again, as Faust's own stream skips such events. Returns after its
    last check without waiting, so that no rebalance comes in between."""
    if not stale(app, batch[:1]):  # (the oldest is current: so is every later fetch)
        return batch
    while True:
        kept = [event for event in batch if not stale(app, (event,))]
        if len(kept) == len(batch):
            return batch
        log.info("%d events fetched before a rebalance were not applied (fetched again from "
                 "the committed offsets)", len(batch) - len(kept))  # fmt: skip
        keep = {id(event) for event in kept}
        for event in batch:
            if id(event) not in keep:
                await stream.ack(event)
        batch = kept


async def _apply(
    stream: Any,
    batch: list[Any],
    processor: OppositionProcessor,
    progress: ProgressWatch,
    frontiers: Mapping[str, AppliedFrontier],
    log_topic: str,
) -> None:
    """Apply ``batch``, move the frontiers, then ack its events."""
    try:
        result = await processor.process([source_message(e) for e in batch])
    except BatchAbandoned as exc:
        # Acked only so that Faust stops waiting for them: the frontiers did not move, so
        # nothing past the committed offsets is committed, and the events come again.
        log.warning("%s (%d events)", exc, len(batch))
        for done in batch:
            await stream.ack(done)
        return
    BATCH_EVENTS.observe(len(batch))
    progress.applied()
    forwarded = {(f.partition, f.offset): f for f in result.forwards}
    applied: dict[tuple[str, int], list[int]] = {}
    for done in batch:
        message = done.message
        copy = forwarded.get((message.partition, message.offset))
        if copy is not None and message.topic == log_topic:
            frontiers[log_topic].forwarded(copy.partition, copy.offset, copy.canonical, copy.landed)
            continue
        applied.setdefault((message.topic, message.partition), []).append(message.offset)
    for (topic, partition), offsets in applied.items():
        # Durable: the view may be vouched for and the offsets committed now. Before
        # the acks, so that a rebalance waiting for them sees the frontier moved.
        frontiers[topic].applied(partition, offsets)
    for done in batch:
        await stream.ack(done)


# --------------------------------------------------------------------------- recovery
# The table's changelog records are produced in transactions (streams/ownership.py), so a
# changelog partition usually ends with a transaction marker: a control record, which no
# consumer ever delivers. Faust's recovery waits for the record at the log's end offset
# minus one, which is that marker: it would wait for ever (its own exactly_once mode only
# gives up after two 5 s timeouts). The recovery below waits for the last *data* record
# instead, found by reading the partition's tail. It reads the log's end offsets on that
# same client too: asked of Faust's consumer (its requests queue behind the consumer
# thread), they took about a second of every rebalance, a failover's included.

_TAIL = 16  # offsets read before the end at first (a transaction ends with one marker)


def log_start_offsets(
    client_config: Mapping[str, Any], tps: Iterable[TP], timeout: float = 30.0
) -> dict[TP, int]:
    """Per partition, the first offset the log still holds (its start)."""
    consumer = Consumer({**client_config, "group.id": f"dnc-recovery-start-{uuid.uuid4().hex}"})
    try:
        return {
            tp: consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=timeout, cached=False
            )[0]
            for tp in tps
        }
    finally:
        consumer.close()


@dataclass(frozen=True)
class _LogStarts:
    """What Faust's recovery asks its consumer for when it builds its start offsets,
    answered from offsets read on a client of our own."""

    starts: Mapping[TP, int]

    async def earliest_offsets(self, *tps: TP) -> Mapping[TP, int]:
        return {tp: self.starts[tp] for tp in tps}


def last_data_offsets(
    client_config: Mapping[str, Any], tps: Iterable[TP], timeout: float = 30.0
) -> dict[TP, int]:
    """Per partition, the offset of the last record a consumer delivers below the log's
    end now (-1 when there is none): control records (transaction markers) are skipped,
    and so are the offsets of records compacted away. Read as Faust's recovery reads
    (aborted records included)."""
    found: dict[TP, int] = {}
    consumer = Consumer(
        {
            **client_config,
            "group.id": f"dnc-recovery-tail-{uuid.uuid4().hex}",  # never committed
            "fetch.wait.max.ms": 10,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        ends = {
            tp: consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=timeout, cached=False
            )[1]
            for tp in tps
        }
        pending = {tp: end for tp, end in ends.items() if end > 0}
        window = _TAIL
        while pending:
            consumer.assign(
                [
                    TopicPartition(tp.topic, tp.partition, max(0, end - window))
                    for tp, end in pending.items()
                ]
            )
            at_end: set[TP] = set()
            deadline = time.monotonic() + timeout
            while len(at_end) < len(pending) and time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is None:
                    continue
                tp = TP(str(message.topic()), int(message.partition() or 0))
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(tp)
                    continue
                offset = message.offset() or 0
                if tp in pending and offset < pending[tp]:
                    found[tp] = max(found.get(tp, -1), offset)
            if len(at_end) < len(pending):
                raise TimeoutError(f"cannot read the end of {sorted(set(pending) - at_end)}")
            pending = {tp: end for tp, end in pending.items()
                       if tp not in found and end - window > 0}  # fmt: skip
            window *= _TAIL
    finally:
        consumer.close()
    return {tp: found.get(tp, -1) for tp in ends}


class _TailAwareRecovery(Recovery):
    """Faust's recovery, waiting for each changelog partition's last data record."""

    client_config: Mapping[str, Any] = {}

    async def _build_highwaters(
        self, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        last: dict[TP, int] = {}
        if tps:
            loop = asyncio.get_running_loop()
            last = await loop.run_in_executor(None, last_data_offsets, self.client_config, tps)
        self.log.info(
            "Last data record of the %s changelog partitions:\n%s",
            title,
            self._highwater_logtable(last, title=title),
        )
        destination.clear()
        for tp, offset in last.items():  # (a Counter: update() would add)
            destination[tp] = offset

    async def _build_offsets(self, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        starts: dict[TP, int] = {}
        if tps:
            loop = asyncio.get_running_loop()
            starts = await loop.run_in_executor(None, log_start_offsets, self.client_config, tps)
        answers: Any = _LogStarts(starts)  # (only its earliest_offsets is asked)
        await super()._build_offsets(answers, tps, destination, title)


def table_manager(client_config: Mapping[str, Any]) -> type[TableManager]:
    """Faust's table manager with the tail-aware recovery (``App(TableManager=...)``).

    ``client_config``: bootstrap servers and the Kafka security settings."""
    recovery = type("TailAwareRecovery", (_TailAwareRecovery,), {"client_config": client_config})

    class TailAwareTableManager(TableManager):
        async def on_start(self) -> None:
            # Faust's sleeps a second first, for tables defined after the app started; this
            # worker defines its table before: a restart would only wait that second.
            if not self.should_stop:
                await self._update_channels()
                await self.recovery.start()

        @property
        def recovery(self) -> Recovery:
            if self._recovery is None:
                self._recovery = recovery(self.app, self, beacon=self.beacon, loop=self.loop)
            return self._recovery

    return TailAwareTableManager
