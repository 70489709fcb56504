"""`dnc dead-letters`: what the worker could not apply, and putting it back once the cause is fixed.

A dead letter (``dnc.dead-letter.v1``) is the original key and bytes of a message of the
oppositions topic, with headers saying why (``dnc.dlq.reason``, ``dnc.dlq.detail``), where it
came from (``dnc.dlq.topic``, ``.partition``, ``.offset``) and when it failed
(``dnc.dlq.failed_at``). Nothing reads it again by itself: an operator looks (``summary``,
``show``), fixes the cause (a tenant missing from the tenants file, a producer's bug), then
``replay`` re-publishes the letters' original bytes and key to the topic they were read
from. The worker treats an event id it has already applied as a duplicate, so replaying twice
changes nothing. A dead-lettered admin action (a lift) also holds its cutoff, signed by the
worker (:mod:`schemas.authority`): the replay carries it to the admin topic, so the lift ends
only what the log held when the admin recorded it, not what was recorded since (the person
may have opposed again meanwhile).

Phone numbers are masked (``+3361234****``) in everything shown, unless ``reveal`` is asked
for (administrators only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.keyed_scan import KeyedScanError, reader, scan_keys
from producers.publisher import producer_config
from schemas.authority import CARRIED_AUTHORITY_HEADER, CARRIED_CUTOFF_HEADER
from schemas.errors import DncError, InvalidEventError
from schemas.events import decode_event
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.topics import (
    DLQ_DETAIL,
    DLQ_FAILED_AT,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    REPLAY_OF,
    header_text,
)

READ_SECONDS = 60.0  # longest a command reads the dead-letter topic
READ_MAX_MESSAGES = 1_000_000
SHOWN_TEXT = 4000  # longest text shown for one field
_E164_LIKE = re.compile(r"\+\d{6,15}(?![\d*])")  # not one masked already
_NUMBER_LIKE = re.compile(r"\+?\d[\d .()/-]{4,}\d")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class DeadLetterError(DncError):
    """The dead-letter topic could not be read, or the letter asked for is not there."""


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: the original message and why the worker could not apply it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        """Why (a bounded label: unknown_tenant, malformed_json, invalid_phone, ...)."""
        return self.headers.get(DLQ_REASON, "unknown")

    @property
    def failed_at(self) -> datetime | None:
        """When the worker refused it."""
        try:
            return datetime.fromisoformat(self.headers[DLQ_FAILED_AT])
        except (KeyError, ValueError):
            return None

    @property
    def cutoff_headers(self) -> list[tuple[str, bytes]]:
        """The signed cutoff the worker recorded for an admin action (empty for anything else)."""
        names = (CARRIED_CUTOFF_HEADER, CARRIED_AUTHORITY_HEADER)
        return [(name, self.headers[name].encode()) for name in names if name in self.headers]

    @property
    def source(self) -> tuple[str, int | None, int | None]:
        """(topic, partition, offset) of the original message."""
        return (
            self.headers.get(DLQ_TOPIC, "?"),
            _int(self.headers.get(DLQ_PARTITION)),
            _int(self.headers.get(DLQ_OFFSET)),
        )


@dataclass
class ReasonSummary:
    """The letters of one reason."""

    reason: str
    count: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None


@dataclass
class Summary:
    """Counts by reason, oldest and newest failure."""

    topic: str
    total: int
    reasons: list[ReasonSummary]
    truncated: bool


@dataclass(frozen=True)
class Extent:
    """What a dead-letter topic holds, read from its ends only (cheap enough for `dnc status`):
    how many letters, when the oldest and the newest failed, and why the newest did."""

    topic: str
    count: int
    oldest: datetime | None = None
    newest: datetime | None = None
    newest_reason: str | None = None


@dataclass
class ReplayReport:
    """What a replay did (or would do, for a dry run)."""

    selected: list[DeadLetter] = field(default_factory=list)
    replayed: int = 0
    not_acknowledged: list[tuple[DeadLetter, str]] = field(default_factory=list)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)
    still_invalid_here: list[tuple[DeadLetter, str]] = field(default_factory=list)


# --- reading -------------------------------------------------------------------------------
def read_all(settings: Settings) -> tuple[list[DeadLetter], bool]:
    """Every dead letter (and whether the time or size bound stopped the read)."""
    consumer = reader(settings, "dnc-dead-letters")
    try:
        scan = scan_keys(
            consumer,
            settings.dead_letter_topic,
            set(),
            seconds=READ_SECONDS,
            max_messages=READ_MAX_MESSAGES,
            all_partitions=True,
        )
    except KeyedScanError as exc:
        raise DeadLetterError(str(exc)) from exc
    finally:
        consumer.close()
    letters = [
        DeadLetter(f.partition, f.offset, f.key or None, f.value, _headers(f.headers))
        for f in scan.found
    ]
    return letters, scan.truncated


def read_one(settings: Settings, partition: int, offset: int) -> DeadLetter:
    """The letter at ``partition``/``offset``; :class:`DeadLetterError` when there is none."""
    topic = settings.dead_letter_topic
    consumer = reader(settings, "dnc-dead-letters")
    try:
        tp = TopicPartition(topic, partition)
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as exc:
            raise DeadLetterError(f"cannot read {topic} partition {partition}: {exc}") from exc
        if not low <= offset < high:
            held = f"offsets {low} to {high - 1}" if high > low else "no letter"
            raise DeadLetterError(
                f"no dead letter at partition {partition} offset {offset}: {topic} partition "
                f"{partition} holds {held} (see `dnc dead-letters summary`)"
            )
        consumer.assign([TopicPartition(topic, partition, offset)])
        message = _first(consumer.consume(num_messages=1, timeout=10))
        if message is None or message.offset() != offset:
            raise DeadLetterError(
                f"the dead letter at partition {partition} offset {offset} could not be read "
                "(removed by retention, or a transaction marker)"
            )
        return DeadLetter(
            partition,
            offset,
            message.key() or None,
            message.value() or b"",
            _headers(_pairs(message.headers())),
        )
    finally:
        consumer.close()


def extent(settings: Settings, topic: str, timeout: float = 5.0) -> Extent:
    """The letters ``topic`` holds (offsets between each partition's ends: what retention
    kept) and the failure times of its first and last letters.

    Raises :class:`DeadLetterError` if the topic cannot be read.
    """
    consumer = reader(settings, "dnc-status")
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout)
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise DeadLetterError(f"topic {topic} does not exist (run `dnc acl apply`)")
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                for p in found.partitions
            }
        except KafkaException as exc:
            raise DeadLetterError(f"cannot read {topic}: {exc}") from exc
        count = sum(high - low for low, high in ends.values())
        firsts = [_letter_at(consumer, topic, p, low, timeout) for p, (low, high) in ends.items()
                  if high > low]  # fmt: skip
        lasts = [_letter_at(consumer, topic, p, high - 1, timeout)
                 for p, (low, high) in ends.items() if high > low]  # fmt: skip
    finally:
        consumer.close()
    oldest = min((t for t, _ in filter(None, firsts)), default=None)
    newest = max(filter(None, lasts), default=None, key=lambda letter: letter[0])
    return Extent(
        topic, count, oldest, newest[0] if newest else None, newest[1] if newest else None
    )


def _letter_at(
    consumer: Any, topic: str, partition: int, offset: int, timeout: float
) -> tuple[datetime, str] | None:
    """(failure time, reason) of the letter at ``offset``; None if it cannot be read (gone
    to retention meanwhile, a transaction marker)."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    message = _first(consumer.consume(num_messages=1, timeout=timeout))
    if message is None:
        return None
    letter = DeadLetter(partition, offset, None, b"", _headers(_pairs(message.headers())))
    _kind, millis = message.timestamp()
    failed_at = letter.failed_at or (
        datetime.fromtimestamp(millis / 1000, UTC) if millis > 0 else None
    )
    return (failed_at, letter.reason) if failed_at else None


def summarise(topic: str, letters: Sequence[DeadLetter], truncated: bool = False) -> Summary:
    """Counts by reason (most frequent first), with the oldest and newest failure times."""
    by_reason: dict[str, ReasonSummary] = {}
    for letter in letters:
        entry = by_reason.setdefault(letter.reason, ReasonSummary(letter.reason))
        entry.count += 1
        at = letter.failed_at
        if at is not None:
            entry.oldest = at if entry.oldest is None else min(entry.oldest, at)
            entry.newest = at if entry.newest is None else max(entry.newest, at)
    reasons = sorted(by_reason.values(), key=lambda r: (-r.count, r.reason))
    return Summary(topic, len(letters), reasons, truncated)


# --- showing -------------------------------------------------------------------------------
def mask_number(text: str) -> str:
    """``text`` with its last four digits masked: ``+33612345678`` -> ``+3361234****``."""
    positions = [i for i, c in enumerate(text) if c.isdigit()]
    hidden = set(positions[-4:])
    return "".join("*" if i in hidden else c for i, c in enumerate(text))


def describe(letter: DeadLetter, reveal: bool = False) -> dict[str, Any]:
    """What ``dnc dead-letters show`` prints: every field made safe for a terminal, and every
    phone number masked unless ``reveal``."""
    event, numbers = _event(letter.value)
    owner, _, key_number = (letter.key or b"").decode("utf-8", "replace").partition(":")
    if key_number:
        numbers.add(key_number)
    hide = (lambda s: s) if reveal else (lambda s: _mask_known(s, numbers))
    topic, partition, offset = letter.source
    shown: dict[str, Any] = {
        "partition": letter.partition,
        "offset": letter.offset,
        "reason": _safe(letter.reason),
        "detail": _safe(hide(letter.headers.get(DLQ_DETAIL, ""))),
        "source": {"topic": _safe(topic), "partition": partition, "offset": offset},
        "failed_at": letter.failed_at.isoformat() if letter.failed_at else None,
        "key": _safe(hide(f"{owner}:{key_number}" if key_number else owner)) or None,
        "phone_masked": not reveal,
    }
    if event is not None:
        shown["event"] = {
            name: _safe(hide(value)) if isinstance(value, str) else value
            for name, value in event.items()
        }
    else:
        text = letter.value.decode("utf-8", "replace")
        shown["value"] = _safe(text if reveal else _NUMBER_LIKE.sub(_mask_match, text))
        shown["value_bytes"] = len(letter.value)
    return shown


def _event(value: bytes) -> tuple[dict[str, Any] | None, set[str]]:
    """The message as a JSON object (or None), and the phone numbers it holds."""
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return None, set()
    if not isinstance(parsed, dict):
        return None, set()
    numbers = {
        v.strip() for k, v in parsed.items() if k in ("phone", "phone_e164") and isinstance(v, str)
    }
    return parsed, {n for n in numbers if n}


def _mask_known(text: str, numbers: Iterable[str]) -> str:
    for number in sorted(numbers, key=len, reverse=True):
        text = text.replace(number, mask_number(number))
    return _E164_LIKE.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    text = match.group()
    if sum(c.isdigit() for c in text) < 6 or _DATE.fullmatch(text):
        return text
    return mask_number(text)


def _safe(value: str) -> str:
    return header_text(value, SHOWN_TEXT)


# --- replaying -----------------------------------------------------------------------------
def select(
    letters: Sequence[DeadLetter],
    *,
    reason: str | None = None,
    positions: Iterable[tuple[int, int]] = (),
) -> list[DeadLetter]:
    """The letters of ``reason`` and/or at ``positions`` ((partition, offset) pairs)."""
    wanted = set(positions)
    return [
        letter
        for letter in letters
        if (reason is None or letter.reason == reason)
        and (not wanted or (letter.partition, letter.offset) in wanted)
    ]


def replay(
    settings: Settings,
    tenants: TenantDirectory,
    letters: Sequence[DeadLetter],
    dry_run: bool = False,
) -> ReplayReport:
    """Re-publish each letter's original key and bytes to the topic it was read from (the
    oppositions topic, or the admin topic for admin actions; idempotent, acks=all), in their
    order; a dry run only says what would be sent. An admin action goes to the admin topic
    with the signed cutoff its letter recorded. A lift forged on the oppositions topic goes
    back there without a signature and is refused again; a lift of the admin topic whose
    letter recorded no cutoff is skipped (the worker would refuse it: issue it again).

    A letter that came from neither topic is skipped. One that this
    machine's tenants file would still refuse is replayed all the same (the worker's file
    is the one that counts) and reported, so the operator knows it may come back.
    """
    report = ReplayReport(selected=list(letters))
    topics = (settings.oppositions_topic, settings.admin_topic)
    sendable = []
    for letter in letters:
        if letter.source[0] not in topics:
            report.skipped.append(
                (letter, f"it came from {letter.source[0]}, not {' or '.join(topics)}")
            )
            continue
        if (
            letter.source[0] == settings.admin_topic
            and _is_lift(letter)
            and not letter.cutoff_headers
        ):
            report.skipped.append((letter, _NO_CUTOFF))
            continue
        try:
            decode_event(letter.value, tenants, settings.max_event_bytes)
        except InvalidEventError as exc:
            report.still_invalid_here.append((letter, exc.reason))
        except RecursionError:
            report.still_invalid_here.append((letter, "too_deeply_nested"))
        sendable.append(letter)
    if dry_run or not sendable:
        return report
    producer = Producer(
        producer_config(
            settings.kafka_bootstrap,
            settings.publish_timeout_seconds,
            **{"client.id": "dnc-dead-letter-replay", **settings.kafka_client_config()},
        )
    )
    failures: dict[int, str] = {}
    acknowledged: set[int] = set()

    def on_delivery(index: int) -> Any:
        def done(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                acknowledged.add(index)
            else:
                failures[index] = str(err)

        return done

    for index, letter in enumerate(sendable):
        origin = f"{settings.dead_letter_topic}/{letter.partition}/{letter.offset}"
        cutoff = letter.cutoff_headers
        producer.produce(
            settings.admin_topic if cutoff else letter.source[0],
            key=letter.key,
            value=letter.value,
            headers=[(REPLAY_OF, origin.encode()), *cutoff],
            on_delivery=on_delivery(index),
        )
        producer.poll(0)
    producer.flush(settings.publish_timeout_seconds)
    for index, letter in enumerate(sendable):
        if index in acknowledged:
            report.replayed += 1
        else:
            why = failures.get(index, "not acknowledged in time")
            report.not_acknowledged.append((letter, why))
    return report


_NO_CUTOFF = (
    "a lift whose letter records no cutoff (dead-lettered by a worker older than signed "
    "cutoffs, or a replay that had lost it): the worker would refuse it. Issue the lift again "
    "(`dnc lift`) if it still stands"
)


def _is_lift(letter: DeadLetter) -> bool:
    event, _numbers = _event(letter.value)
    return event is not None and event.get("kind") == "lift"


def _headers(raw: Iterable[tuple[str, bytes | str | None]]) -> dict[str, str]:
    return {
        name: value.decode("utf-8", "replace") if isinstance(value, bytes) else value or ""
        for name, value in raw
    }


def _pairs(
    raw: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> list[tuple[str, str | bytes | None]]:
    return list(raw.items()) if isinstance(raw, dict) else list(raw or [])


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _first(messages: list[Message]) -> Message | None:
    for message in messages:
        if message.error() is None:
            return message
    return None
