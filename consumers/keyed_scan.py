"""Read every message of a few keys from a topic, from the start, visiting only their partitions.

Every producer of this project (and Faust/aiokafka) places a key with Kafka's murmur2
partitioner (:mod:`schemas.partitioning`), so the messages of a key are all on one partition:
a subject access request reads those partitions, never the whole topic. The read is bounded
in time and messages; the caller learns when it stopped early.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from schemas.errors import DncError
from schemas.partitioning import key_partition
from schemas.settings import Settings


class KeyedScanError(DncError):
    """The topic could not be read (Kafka unreachable, topic missing)."""


@dataclass(frozen=True)
class Found:
    """One message with one of the keys, and where it sits."""

    key: bytes
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class KeyedScan:
    """What a scan found, and how far it read."""

    found: list[Found]
    partitions: list[int]
    scanned: int
    truncated: bool  # the time or message bound stopped it


def reader(settings: Settings, client_id: str) -> Consumer:
    """A consumer that only reads: a group of its own that it never joins nor commits."""
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{client_id}-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": client_id,
            **settings.kafka_client_config(),
        }
    )


def partition_count(consumer: Consumer, topic: str, timeout: float) -> int:
    """Partitions of ``topic``; :class:`KeyedScanError` when it is not available."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise KeyedScanError(f"cannot read {topic}: {exc}") from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise KeyedScanError(f"topic {topic} is not available")
    return len(described.partitions)


def scan_keys(
    consumer: Consumer,
    topic: str,
    keys: set[bytes],
    *,
    seconds: float,
    max_messages: int,
    all_partitions: bool = False,
) -> KeyedScan:
    """Every message of ``keys`` in ``topic`` (all of them with ``all_partitions``, for a
    topic keyed otherwise, e.g. dead letters: ``keys`` empty keeps every message)."""
    started = time.monotonic()
    wait = min(5.0, seconds)
    try:
        count = partition_count(consumer, topic, wait)
        wanted = set(range(count)) if all_partitions else {key_partition(k, count) for k in keys}
        ends = {}
        for partition in sorted(wanted):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=wait
            )
            ends[partition] = (low, high)
        found, scanned, truncated = _read(
            consumer, topic, keys, ends, started + seconds, max_messages
        )
    except KafkaException as exc:
        raise KeyedScanError(f"cannot read {topic}: {exc}") from exc
    return KeyedScan(found, sorted(ends), scanned, truncated)


def _read(
    consumer: Consumer,
    topic: str,
    keys: set[bytes],
    ends: dict[int, tuple[int, int]],
    deadline: float,
    max_messages: int,
) -> tuple[list[Found], int, bool]:
    pending = {p for p, (low, high) in ends.items() if high > low}
    if not pending:
        return [], 0, False
    consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in sorted(pending)])
    found: list[Found] = []
    scanned = 0
    while pending:
        if time.monotonic() > deadline or scanned >= max_messages:
            return found, scanned, True
        batch = consumer.consume(num_messages=5000, timeout=0.2)
        for msg in batch:
            if msg.error() is not None:
                continue
            scanned += 1
            partition, offset = msg.partition() or 0, msg.offset() or 0
            key = msg.key() or b""
            if not keys or key in keys:
                found.append(_found(msg, key, partition, offset))
            if offset >= ends[partition][1] - 1:
                pending.discard(partition)
        if not batch:  # the last offsets may be markers that are never delivered
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                if tp.offset >= ends[tp.partition][1]:
                    pending.discard(tp.partition)
    return found, scanned, False


def _found(msg: Any, key: bytes, partition: int, offset: int) -> Found:
    _ts_type, ts = msg.timestamp()
    headers = tuple((k, v or b"") for k, v in msg.headers() or [])
    return Found(key, msg.value() or b"", partition, offset, ts, headers)
