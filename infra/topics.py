"""Creates the pipeline's Kafka topics explicitly, with their configurations (idempotent)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.errors import ConfigError
from schemas.settings import Settings
from schemas.topics import TopicSpec, pipeline_topics

log = logging.getLogger("dnc.infra")


def ensure_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    timeout: float = 30.0,
    client_config: dict[str, Any] | None = None,
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are.

    ``client_config``: extra librdkafka options, e.g. ``Settings.kafka_client_config()``.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise ConfigError(
            f"cannot reach Kafka at {bootstrap}: {exc} (is it running? `dnc up` starts one)"
        ) from exc
    wanted = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=s.replication_factor,
            config=s.config,
        )
        for s in specs
        if s.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
            log.info("created topic %s", name)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if code in (
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            ):
                # A principal only sees (and may create) its own topics under ACLs: the
                # administrator creates them all (`dnc acl apply`).
                log.info("not allowed to create topic %s: left to the administrator", name)
                continue
            raise ConfigError(f"cannot create topic {name}: {exc}") from exc
    return created


def ensure_pipeline_topics(settings: Settings) -> list[str]:
    """Create the oppositions, suppressions, dead-letter and audit topics if missing."""
    return ensure_topics(
        settings.kafka_bootstrap,
        pipeline_topics(settings),
        client_config=settings.kafka_client_config(),
    )


def check_partition_counts(settings: Settings, timeout: float = 30.0) -> None:
    """The oppositions and admin topics must have DNC_PARTITIONS partitions.

    The worker routes every event to the partition of its canonical key with the murmur2
    partitioner over that count; another count would apply a number's events on a partition
    the producers do not use.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap,
                         **settings.kafka_client_config()})  # fmt: skip
    topics = admin.list_topics(timeout=timeout).topics
    for name in (settings.oppositions_topic, settings.admin_topic, settings.consents_topic):
        found = len(topics[name].partitions) if name in topics else None
        if found is not None and found != settings.partitions:
            raise ConfigError(
                f"topic {name} has {found} partitions but DNC_PARTITIONS is "
                f"{settings.partitions}: set DNC_PARTITIONS={found} for every process"
            )
