"""Kafka topics of the pipeline and their configurations."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.settings import Settings
from schemas.text import CONTROL_CHARACTERS

DAY_MS = 24 * 3600 * 1000
LOG_APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}
AUDIT_RETENTION_DAYS = 400

# Dead-letter headers: the value and key are the original bytes, untouched.
DLQ_REASON = "dnc.dlq.reason"
DLQ_DETAIL = "dnc.dlq.detail"
DLQ_TOPIC = "dnc.dlq.topic"
DLQ_PARTITION = "dnc.dlq.partition"
DLQ_OFFSET = "dnc.dlq.offset"
DLQ_FAILED_AT = "dnc.dlq.failed_at"
REPLAY_OF = "dnc.replay.of"  # header of a replayed message: the dead letter it came from

# What a dead-letter header may carry of text that came from outside (a receiver's answer).
MAX_HEADER_TEXT_BYTES = 256


def header_text(text: str, limit: int = MAX_HEADER_TEXT_BYTES) -> str:
    """``text`` made safe for a header, a log line or a terminal: one line, control characters
    removed, at most ``limit`` bytes of UTF-8 (cut on a character boundary)."""
    flat = " ".join(CONTROL_CHARACTERS.sub(" ", text).split())
    return flat.encode()[:limit].decode("utf-8", "ignore")


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project creates explicitly, with its configuration."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def pipeline_topics(settings: Settings) -> list[TopicSpec]:
    """The oppositions log of record, the compacted suppressions state, the dead letters (of
    the worker and of the reference-list sync) and the gateway's audit trail."""
    rf = settings.replication_factor
    min_isr = str(min(2, rf))
    return [
        TopicSpec(
            settings.oppositions_topic,
            settings.partitions,
            rf,
            # The log of record (audit trail): kept, never compacted. The broker stamps each
            # event when appended: the one clock lifts are ordered by across the two topics.
            {"retention.ms": "-1", "min.insync.replicas": min_isr, **LOG_APPEND_TIME},
        ),
        TopicSpec(
            settings.admin_topic,
            settings.partitions,
            rf,
            # Admin actions (lifts) are part of the record too: kept, never compacted.
            {"retention.ms": "-1", "min.insync.replicas": min_isr, **LOG_APPEND_TIME},
        ),
        TopicSpec(
            settings.consents_topic,
            settings.partitions,
            rf,
            # Consents and their proof references are part of the record too (the proof
            # duty outlives the consent by years): kept, never compacted.
            {"retention.ms": "-1", "min.insync.replicas": min_isr, **LOG_APPEND_TIME},
        ),
        TopicSpec(
            settings.suppressions_topic,
            settings.partitions,
            rf,
            {"cleanup.policy": "compact", "min.insync.replicas": min_isr},
        ),
        TopicSpec(
            settings.dead_letter_topic,
            1,
            rf,
            {"retention.ms": str(90 * DAY_MS), "min.insync.replicas": min_isr},
        ),
        TopicSpec(
            settings.reference_dead_letter_topic,
            1,
            rf,
            # Changes a reference list refused (4xx) or that could not be read: kept 90 days.
            {"retention.ms": str(90 * DAY_MS), "min.insync.replicas": min_isr},
        ),
        TopicSpec(
            settings.audit_topic,
            1,
            rf,
            # The gateway's audit trail (who read or wrote what): kept for 400 days.
            {"retention.ms": str(AUDIT_RETENTION_DAYS * DAY_MS), "min.insync.replicas": min_isr},
        ),
    ]
