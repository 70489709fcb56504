"""A data subject's access request: everything held about one number for one tenant.

The oppositions topic is the log of record, so the history is read from it, not from a
copy: every event is keyed ``tenant:E164`` (``_global:E164`` for the global scope) and
murmur2-partitioned, so only the partitions of those two keys are read, from the start,
keeping the events with exactly those keys. The current state is the history applied with
the worker's own rules (:func:`streams.rules.apply_event`). Only this tenant's events are
shown: a global-scope event recorded by another tenant belongs to that tenant.

The scan is bounded in time and messages; the report says when it was truncated.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import AwareDatetime, BaseModel, Field

from schemas.errors import DncError, InvalidEventError
from schemas.events import GLOBAL_TARGET, Kind, OppositionEvent, Scope, Source, decode_event
from schemas.partitioning import key_partition
from schemas.settings import Settings
from schemas.state import SuppressionChange, SuppressionState
from schemas.tenants import TenantDirectory
from streams.rules import apply_event


class SubjectScanError(DncError):
    """The event log could not be read (Kafka unreachable, topic missing)."""


class LoggedEvent(BaseModel):
    """One event about the subject, where it sits in the log, and what it did."""

    event_id: uuid.UUID
    kind: Kind
    scope: Scope
    campaign_id: str | None = None
    phone: str = Field(description="the number as it was given")
    source: Source
    agent_id: str | None = None
    reason_code: str | None = None
    justification: str | None = None
    occurred_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    partition: int
    offset: int
    logged_at: AwareDatetime | None = Field(None, description="Kafka timestamp of the message")
    effect: Literal["applied", "duplicate", "stale"] = Field(
        description="what the event did under the apply rules"
    )


class ScanInfo(BaseModel):
    """How the log was read."""

    topic: str
    partitions: list[int]
    messages_scanned: int
    events_found: int
    skipped_invalid: int = Field(description="messages with the key that the worker dead-letters")
    truncated: bool = Field(description="true when the time or size bound stopped the scan")
    seconds: float


class ReferenceListStatus(BaseModel):
    """Delivery to the client's reference list (the sync is not part of this release)."""

    status: Literal["not_configured"] = "not_configured"
    detail: str = (
        "no reference-list sync is configured: nothing about this number was delivered "
        "to a client reference list by this platform"
    )


class ViewAnswer(BaseModel):
    """What a dialer's check for this tenant answers right now (Redis view)."""

    answer: Literal["callable", "suppressed", "unavailable"]
    scope: Scope | None = None
    why: str | None = None


class SubjectReport(BaseModel):
    """Everything the platform holds about one number for one tenant."""

    tenant: str
    phone_e164: str
    generated_at: AwareDatetime
    current_state: list[SuppressionChange] = Field(
        description="per scope (tenant, campaigns, global), the state this tenant's events made"
    )
    view: ViewAnswer | None = None
    events: list[LoggedEvent]
    reference_list: ReferenceListStatus = Field(default_factory=ReferenceListStatus)
    scan: ScanInfo


@dataclass(frozen=True)
class _Found:
    raw: bytes
    partition: int
    offset: int
    timestamp_ms: int | None


class SubjectLog:
    """Reads a subject's events from the oppositions topic (sync: run it in a thread)."""

    def __init__(self, settings: Settings, tenants: TenantDirectory) -> None:
        self._settings = settings
        self._tenants = tenants

    def report(self, tenant: str, phone_e164: str) -> SubjectReport:
        """The history and current state of ``phone_e164`` for ``tenant``."""
        now = datetime.now(UTC)
        keys = {f"{tenant}:{phone_e164}".encode(), f"{GLOBAL_TARGET}:{phone_e164}".encode()}
        found, scan = self._scan(keys)
        cooldown = self._tenants.get(tenant).refusal_cooldown
        states: dict[str, SuppressionState] = {}
        events: list[LoggedEvent] = []
        for item in found:
            try:
                event = decode_event(item.raw, self._tenants, self._settings.max_event_bytes)
            except InvalidEventError:
                scan.skipped_invalid += 1
                continue
            if event.tenant != tenant or event.phone_e164 != phone_e164:
                continue
            applied = apply_event(
                states.get(event.target),
                event,
                now=now,
                refusal_cooldown=cooldown,
                partition=item.partition,
            )
            states[event.target] = applied.state
            events.append(_logged(event, item, applied.outcome.value))
        scan.events_found = len(events)
        return SubjectReport(
            tenant=tenant,
            phone_e164=phone_e164,
            generated_at=now,
            current_state=[SuppressionChange.of(s, now, "event") for s in states.values()],
            events=events,
            scan=scan,
        )

    def _scan(self, keys: set[bytes]) -> tuple[list[_Found], ScanInfo]:
        s = self._settings
        started = time.monotonic()
        consumer = Consumer(
            {
                "bootstrap.servers": s.kafka_bootstrap,
                "group.id": f"dnc-subject-access-{uuid.uuid4().hex}",  # never joined nor committed
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "client.id": "dnc-subject-access",
                **s.kafka_client_config(),
            }
        )
        try:
            ends = self._ends(consumer, keys)
            found, scanned, truncated = self._read(consumer, keys, ends, started)
        except KafkaException as exc:
            raise SubjectScanError(f"cannot read {s.oppositions_topic}: {exc}") from exc
        finally:
            consumer.close()
        info = ScanInfo(
            topic=s.oppositions_topic,
            partitions=sorted(ends),
            messages_scanned=scanned,
            events_found=0,
            skipped_invalid=0,
            truncated=truncated,
            seconds=round(time.monotonic() - started, 3),
        )
        return found, info

    def _ends(self, consumer: Consumer, keys: set[bytes]) -> dict[int, tuple[int, int]]:
        """(low, high) watermarks of the partitions holding ``keys``."""
        topic = self._settings.oppositions_topic
        wait = min(5.0, self._settings.gateway_subject_scan_seconds)
        metadata = consumer.list_topics(topic, timeout=wait)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise SubjectScanError(f"topic {topic} is not available")
        count = len(described.partitions)
        ends = {}
        for partition in sorted({key_partition(k, count) for k in keys}):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=wait
            )
            ends[partition] = (low, high)
        return ends

    def _read(
        self,
        consumer: Consumer,
        keys: set[bytes],
        ends: dict[int, tuple[int, int]],
        started: float,
    ) -> tuple[list[_Found], int, bool]:
        s = self._settings
        topic = s.oppositions_topic
        pending = {p for p, (low, high) in ends.items() if high > low}
        if not pending:
            return [], 0, False
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in sorted(pending)])
        deadline = started + s.gateway_subject_scan_seconds
        found: list[_Found] = []
        scanned = 0
        while pending:
            if time.monotonic() > deadline or scanned >= s.gateway_subject_scan_max_messages:
                return found, scanned, True
            batch = consumer.consume(num_messages=5000, timeout=0.2)
            for msg in batch:
                if msg.error() is not None:
                    continue
                scanned += 1
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if msg.key() in keys:
                    _ts_type, ts = msg.timestamp()
                    found.append(_Found(msg.value() or b"", partition, offset, ts))
                if offset >= ends[partition][1] - 1:
                    pending.discard(partition)
            if not batch:  # the last offsets may be markers that are never delivered
                for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= ends[tp.partition][1]:
                        pending.discard(tp.partition)
        return found, scanned, False


def _logged(event: OppositionEvent, item: _Found, effect: str) -> LoggedEvent:
    logged_at = (
        datetime.fromtimestamp(item.timestamp_ms / 1000, UTC)
        if item.timestamp_ms and item.timestamp_ms > 0
        else None
    )
    return LoggedEvent.model_validate(
        {
            **event.model_dump(
                include={
                    "event_id",
                    "kind",
                    "scope",
                    "campaign_id",
                    "phone",
                    "source",
                    "agent_id",
                    "reason_code",
                    "justification",
                    "occurred_at",
                    "expires_at",
                }
            ),
            "partition": item.partition,
            "offset": item.offset,
            "logged_at": logged_at,
            "effect": effect,
        }
    )
