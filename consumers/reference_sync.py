"""`dnc sync`: every suppression change reaches the tenant's reference list, acknowledged.

One *lane* per tenant with a sink, each with its own consumer group (``dnc-sync-TENANT``)
on ``dnc.suppressions.v1``: a client whose CRM is down holds its own backlog and delays
nobody else, and its lag is its own. A lane reads ahead (at most ``sync_max_buffered``
changes), hands its sink batches in offset order, and commits an offset only once every
change up to it was acknowledged by the sink or dead-lettered (a 4xx, an unreadable record:
the dead-letter record is acknowledged by Kafka first). Changes not acknowledged stay at the
head and are tried again with exponential backoff and full jitter, so a sink that comes back
receives the backlog in order per number. Redelivery after a crash is harmless: sinks are
idempotent.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError

from consumers.sinks.base import Delivery, Result, Sink, Verdict
from schemas.events import GLOBAL_TARGET
from schemas.metrics import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    REFERENCE_DELIVERED,
    REFERENCE_ERRORS,
    REFERENCE_OLDEST_PENDING,
    REFERENCE_PENDING,
    observe_propagation,
)
from schemas.settings import Settings
from schemas.state import SuppressionChange
from schemas.topics import (
    DLQ_DETAIL,
    DLQ_FAILED_AT,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
)

log = logging.getLogger(__name__)

STAGE = "reference_list"
DLQ_TENANT = "dnc.dlq.tenant"
DLQ_SINK = "dnc.dlq.sink"
STATUS_PREFIX = "dnc:sync"  # dnc:sync:TENANT, a hash `dnc status` reads (expires by itself)
STATUS_TTL_SECONDS = 30
_POLL_SECONDS = 0.2
_LAG_EVERY_SECONDS = 5.0
_STATUS_EVERY_SECONDS = 2.0
_COMMIT_EVERY_SECONDS = 0.5


def concerns(change: SuppressionChange, tenant: str) -> bool:
    """Whether ``tenant``'s reference list must hear ``change``: its own changes, and every
    platform-wide (global scope) one, whichever tenant recorded it."""
    return change.tenant == tenant or change.target == GLOBAL_TARGET


def status_key(tenant: str) -> str:
    """Redis hash where a tenant's lane reports pending, oldest pending age and lag."""
    return f"{STATUS_PREFIX}:{tenant}"


def lane_group(settings: Settings, tenant: str) -> str:
    """The consumer group of a tenant's lane."""
    return f"{settings.sync_group_prefix}-{tenant}"


@dataclass
class Pending:
    """A record of the lane's tenant, read and not yet acknowledged (or dead-lettered)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    delivery: Delivery | None  # None: unreadable, goes to the dead letters
    letter: tuple[str, str] | None = None  # (reason, detail) once refused
    read_at: float = field(default_factory=time.time)

    @property
    def since(self) -> float:
        """When the change was made (the worker's clock), else when it was read."""
        if self.delivery is not None:
            return self.delivery.change.changed_at.timestamp()
        return self.read_at


def backoff_seconds(failures: int, initial: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, initial * 2**failures)]."""
    ceiling = min(cap, initial * (2 ** min(failures, 30)))
    return rng.uniform(initial / 2, max(initial / 2, ceiling))


def propagation_origin(change: SuppressionChange) -> datetime:
    """When the change began: the causing event's occurred_at, else when the worker made it
    (an expiry, a re-emission)."""
    return change.event_occurred_at or change.changed_at


class Lane:
    """One tenant's delivery to its reference list. Runs in its own thread (:meth:`run`)."""

    def __init__(
        self,
        tenant: str,
        sink: Sink,
        settings: Settings,
        dead_letters: Producer,
        status: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant = tenant
        self.sink = sink
        self._settings = settings
        self._dlq = dead_letters
        self._status = status
        self._clock = clock
        self.group = lane_group(settings, tenant)
        self._topic = settings.suppressions_topic
        self._pending: list[Pending] = []
        self._consumed: dict[int, int] = {}  # partition -> next offset to read
        self._committed: dict[int, int] = {}  # partition -> offset committed
        self._failures = 0
        self._next_attempt = 0.0
        self._paused = False
        self._stop = threading.Event()
        self._rng = random.Random()
        self._last_lag = 0.0
        self._last_status = 0.0
        self._last_commit = 0.0
        self._lag: dict[int, int] = {}
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": self.group,
                "client.id": f"dnc-sync-{tenant}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": int(settings.session_timeout_seconds * 1000),
                "max.poll.interval.ms": 300_000,
                **settings.kafka_client_config(),
            }
        )

    # --- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to finish: it commits what was acknowledged and returns."""
        self._stop.set()

    def run(self) -> None:
        """Read, deliver, commit until :meth:`stop`; never raises for a sink or Kafka outage."""
        self.consumer.subscribe([self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("lane %s: delivering %s to its %s sink", self.tenant, self._topic, self.sink.name)
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self._commit()
            self.consumer.close()
            self.sink.close()
            self._publish_status(force=True, stopped=True)
            log.info("lane %s stopped (%d changes pending)", self.tenant, len(self._pending))

    def step(self) -> None:
        """One round: read what fits, deliver if due, commit, report."""
        self._read(self._poll_timeout())
        if self._pending and self._clock() >= self._next_attempt:
            self._attempt()
        self._commit(force=False)
        self._report()

    # --- reading ---------------------------------------------------------------------------
    def _poll_timeout(self) -> float:
        if not self._pending:
            return _POLL_SECONDS
        return max(0.0, min(_POLL_SECONDS, self._next_attempt - self._clock()))

    def _read(self, timeout: float) -> None:
        room = self._settings.sync_max_buffered - len(self._pending)
        self._pause(room <= 0)
        # consume(n, timeout) waits for n messages or the timeout: block for the first one
        # only, then take what is already fetched, so a change never waits for a batch to fill.
        messages = self.consumer.consume(1, timeout=timeout)
        wanted = min(room, self._settings.sync_batch_max) - 1
        if messages and wanted > 0:
            messages += self.consumer.consume(wanted, timeout=0)
        for message in messages:
            self._take(message)
        if not messages:
            self._skip_control_records()

    def _skip_control_records(self) -> None:
        """Nothing left to read: what the consumer skipped (the transaction markers that end
        the worker's transactions, never delivered) counts as read, so a caught-up lane
        commits up to the end of the log and its lag is 0."""
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except KafkaException:
            return
        for tp in positions:
            if tp.offset >= 0 and tp.offset > self._consumed.get(tp.partition, tp.offset):
                self._consumed[tp.partition] = tp.offset

    def _pause(self, full: bool) -> None:
        """Stop fetching while the buffer is full; keep polling (group membership)."""
        if full == self._paused:
            return
        assignment = self.consumer.assignment()
        if full:
            self.consumer.pause(assignment)
            log.warning(
                "lane %s: %d changes waiting for the sink: reading paused",
                self.tenant,
                len(self._pending),
            )
        else:
            self.consumer.resume(assignment)
        self._paused = full

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("lane %s: Kafka: %s", self.tenant, error)
            return
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:  # not a record (never for a consumed message)
            return
        self._consumed[partition] = offset + 1
        value = message.value()
        try:
            if value is None:
                raise ValueError("empty record (tombstone)")
            change = SuppressionChange.model_validate_json(value)
        except (ValidationError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[:300]
            REFERENCE_ERRORS.labels(self.tenant, self.sink.name, "invalid_change").inc()
            entry = Pending(partition, offset, message.key(), value, None)
            entry.letter = ("invalid_change", detail)
            self._pending.append(entry)
            return
        if not concerns(change, self.tenant):
            return  # another tenant's change: its own lane delivers it
        delivery = Delivery(change, value, message.key(), partition, offset)
        self._pending.append(Pending(partition, offset, message.key(), value, delivery))

    # --- delivering ------------------------------------------------------------------------
    def _attempt(self) -> None:
        head = self._pending[: self._settings.sync_batch_max]
        batch = [p for p in head if p.delivery is not None and p.letter is None]
        deliveries = [p.delivery for p in batch if p.delivery is not None]
        results = self.sink.deliver(deliveries) if deliveries else []
        if len(results) != len(batch):  # a broken sink must not lose changes
            raise RuntimeError(f"sink {self.sink.name} answered {len(results)} of {len(batch)}")
        acked_at = datetime.now(UTC)
        retry: Result | None = None
        done: set[int] = set()
        for entry, result in zip(batch, results, strict=True):
            if result.verdict is Verdict.DELIVERED:
                assert entry.delivery is not None
                observe_propagation(STAGE, propagation_origin(entry.delivery.change), acked_at)
                REFERENCE_DELIVERED.labels(self.tenant, self.sink.name).inc()
                done.add(id(entry))
            elif result.verdict is Verdict.REJECTED:
                REFERENCE_ERRORS.labels(self.tenant, self.sink.name, "rejected").inc()
                entry.letter = ("reference_list_rejected", result.detail or "rejected")
            else:
                REFERENCE_ERRORS.labels(self.tenant, self.sink.name, result.kind or "error").inc()
                retry = retry or result
        done |= self._dead_letter([p for p in head if p.letter is not None])
        self._pending = [p for p in self._pending if id(p) not in done]
        if retry is None:
            self._failures = 0
            self._next_attempt = 0.0
            return
        delay = backoff_seconds(
            self._failures,
            self._settings.sync_retry_initial_seconds,
            self._settings.sync_retry_max_seconds,
            self._rng,
        )
        self._failures += 1
        self._next_attempt = self._clock() + delay
        log.warning(
            "lane %s: %s sink did not acknowledge (%s: %s); %d pending, retry in %.1fs",
            self.tenant,
            self.sink.name,
            retry.kind,
            retry.detail,
            len(self._pending),
            delay,
        )

    def _dead_letter(self, refused: list[Pending]) -> set[int]:
        """Send refused records to the dead-letter topic; the ones Kafka acknowledged."""
        if not refused:
            return set()
        acked: set[int] = set()
        failed_at = datetime.now(UTC).isoformat()

        def on_delivery(entry: Pending) -> Callable[[KafkaError | None, Message], None]:
            def done(err: KafkaError | None, _msg: Message) -> None:
                if err is None:
                    acked.add(id(entry))

            return done

        for entry in refused:
            assert entry.letter is not None
            reason, detail = entry.letter
            self._dlq.produce(
                self._settings.reference_dead_letter_topic,
                key=entry.key,
                value=entry.value,
                headers=[
                    (DLQ_REASON, reason.encode()),
                    (DLQ_DETAIL, detail.encode()),
                    (DLQ_TENANT, self.tenant.encode()),
                    (DLQ_SINK, self.sink.name.encode()),
                    (DLQ_TOPIC, self._topic.encode()),
                    (DLQ_PARTITION, str(entry.partition).encode()),
                    (DLQ_OFFSET, str(entry.offset).encode()),
                    (DLQ_FAILED_AT, failed_at.encode()),
                ],
                on_delivery=on_delivery(entry),
            )
        self._dlq.flush(self._settings.publish_timeout_seconds)
        for entry in refused:
            if id(entry) in acked:
                assert entry.letter is not None
                DEAD_LETTERS.labels(reason=entry.letter[0]).inc()
                log.warning(
                    "lane %s: dead-lettered %s[%d]@%d: %s",
                    self.tenant,
                    self._topic,
                    entry.partition,
                    entry.offset,
                    entry.letter[0],
                )
            else:
                log.error("lane %s: dead-letter not acknowledged: will retry", self.tenant)
        return acked

    # --- committing ------------------------------------------------------------------------
    def _commit_targets(self) -> dict[int, int]:
        """Per partition, the offset below which everything is acknowledged."""
        targets = dict(self._consumed)
        for entry in self._pending:
            if entry.offset < targets.get(entry.partition, entry.offset + 1):
                targets[entry.partition] = entry.offset
        return {p: o for p, o in targets.items() if self._committed.get(p) != o}

    def _commit(self, force: bool = True) -> None:
        """Commit what is acknowledged; unforced, at most every ``_COMMIT_EVERY_SECONDS``
        (a crash redelivers the rest, which the idempotent sinks absorb)."""
        now = time.monotonic()
        if not force and now - self._last_commit < _COMMIT_EVERY_SECONDS:
            return
        self._last_commit = now
        targets = self._commit_targets()
        if not targets:
            return
        offsets = [TopicPartition(self._topic, p, o) for p, o in targets.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("lane %s: commit failed (%s); will retry", self.tenant, exc)
            return
        self._committed.update(targets)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("lane %s: assigned partitions %s", self.tenant, [p.partition for p in partitions])
        self._paused = False

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what was acknowledged; what was not is read again by the next owner."""
        self._commit()
        revoked = {p.partition for p in partitions}
        self._pending = [p for p in self._pending if p.partition not in revoked]
        for partition in revoked:
            self._consumed.pop(partition, None)
            self._committed.pop(partition, None)
            self._lag.pop(partition, None)

    # --- reporting -------------------------------------------------------------------------
    def oldest_pending_seconds(self) -> float:
        """Age of the oldest change not yet acknowledged (0 when none)."""
        if not self._pending:
            return 0.0
        return max(0.0, self._clock() - min(p.since for p in self._pending))

    @property
    def pending(self) -> int:
        """Changes read and not yet acknowledged."""
        return len(self._pending)

    def _report(self) -> None:
        REFERENCE_PENDING.labels(self.tenant).set(len(self._pending))
        REFERENCE_OLDEST_PENDING.labels(self.tenant).set(self.oldest_pending_seconds())
        now = time.monotonic()
        if now - self._last_lag >= _LAG_EVERY_SECONDS:
            self._last_lag = now
            self._measure_lag()
        self._publish_status()

    def _measure_lag(self) -> None:
        """Messages not yet committed, per owned partition (end offset - committed)."""
        for tp in self.consumer.assignment():
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, timeout=1.0)
            except KafkaException:
                continue
            done = self._committed.get(tp.partition)
            if done is None:
                continue  # nothing read yet: the next round knows
            self._lag[tp.partition] = max(0, high - done)
            CONSUMER_LAG.labels(self.group, self._topic, str(tp.partition)).set(
                self._lag[tp.partition]
            )

    def _publish_status(self, force: bool = False, stopped: bool = False) -> None:
        now = time.monotonic()
        if self._status is None or (not force and now - self._last_status < _STATUS_EVERY_SECONDS):
            return
        self._last_status = now
        report = {
            "tenant": self.tenant,
            "sink": self.sink.name,
            "pending": len(self._pending),
            "oldest_pending_seconds": round(self.oldest_pending_seconds(), 3),
            "lag": sum(self._lag.values()),
            "retrying": self._failures > 0,
            "running": not stopped,
            "reported_at": datetime.now(UTC).isoformat(),
        }
        try:
            self._status.set(status_key(self.tenant), json.dumps(report), ex=STATUS_TTL_SECONDS)
        except redis.RedisError as exc:  # status only: delivery goes on
            log.debug("lane %s: cannot publish status: %s", self.tenant, exc)
