"""The publisher: idempotent, acks=all, and "recorded" only once Kafka acknowledged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.errors import InvalidEventError, PublishError
from schemas.events import Kind, OppositionEvent, check_clock
from schemas.settings import Settings
from schemas.tenants import TenantDirectory

log = logging.getLogger("dnc.producers")


def producer_config(bootstrap: str, timeout_seconds: float, **extra: Any) -> dict[str, Any]:
    """Configuration every producer of this project uses."""
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        # Same partitioner as the Java client and Faust, so one key always lands on one
        # partition whoever produces it.
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": int(timeout_seconds * 1000),
        "client.id": "dnc-publisher",
        # librdkafka's own log lines go through Python logging, errors only: transient
        # warnings (broker still starting) are retried internally and would only alarm.
        "logger": logging.getLogger("dnc.kafka"),
        "log_level": 3,
        **extra,
    }


@dataclass(frozen=True)
class Receipt:
    """Kafka's acknowledgement of one event."""

    event_id: str
    partition: int
    offset: int


class OppositionPublisher:
    """Publishes validated opposition events: to the oppositions topic, lifts to the admin topic.

    Only the admin principal may write the admin topic (Kafka ACLs): a desktop that builds a
    lift is refused by the broker, and a lift written to the oppositions topic is
    dead-lettered by the worker.

    ``publish`` returns only after the broker acknowledged (all in-sync replicas); if it
    raises :class:`PublishError`, the event was not recorded and the caller must retry.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        tenants: TenantDirectory,
        *,
        timeout_seconds: float = 15.0,
        max_event_bytes: int = 16 * 1024,
        producer: Producer | None = None,
        admin_topic: str = "dnc.admin.v1",
        consents_topic: str = "dnc.consents.v1",
    ) -> None:
        self._topic = topic
        self._admin_topic = admin_topic
        self._consents_topic = consents_topic
        self._tenants = tenants
        self._timeout = timeout_seconds
        self._max_bytes = max_event_bytes
        self._producer = producer or Producer(producer_config(bootstrap, timeout_seconds))

    @classmethod
    def from_settings(cls, settings: Settings, tenants: TenantDirectory) -> OppositionPublisher:
        """A publisher for the configured cluster and topic."""
        return cls(
            settings.kafka_bootstrap,
            settings.oppositions_topic,
            tenants,
            timeout_seconds=settings.publish_timeout_seconds,
            max_event_bytes=settings.max_event_bytes,
            admin_topic=settings.admin_topic,
            consents_topic=settings.consents_topic,
            # Kafka SASL/TLS options (empty for the local PLAINTEXT stack).
            producer=Producer(
                producer_config(
                    settings.kafka_bootstrap,
                    settings.publish_timeout_seconds,
                    **settings.kafka_client_config(),
                )
            ),
        )

    def prepare(self, event: OppositionEvent) -> tuple[OppositionEvent, bytes]:
        """Normalise and encode; raises InvalidEventError before anything is sent."""
        check_clock(event)
        normalised = event.normalised(self._tenants)
        payload = normalised.model_dump_json(exclude_none=True).encode()
        if len(payload) > self._max_bytes:
            raise InvalidEventError(
                "oversized", f"event is {len(payload)} bytes, the limit is {self._max_bytes}"
            )
        return normalised, payload

    def publish(self, event: OppositionEvent) -> Receipt:
        """Publish one event and wait for Kafka's acknowledgement."""
        receipts = self.publish_many([event])
        outcome = receipts[0]
        if isinstance(outcome, PublishError):
            raise outcome
        return outcome

    def publish_many(
        self,
        events: Iterable[OppositionEvent],
        on_done: Callable[[OppositionEvent, Receipt | PublishError], None] | None = None,
    ) -> list[Receipt | PublishError]:
        """Publish many events, pipelined; one receipt or error per event, in order."""
        return self.publish_prepared([self.prepare(e) for e in events], on_done)

    def publish_prepared(
        self,
        prepared: Sequence[tuple[OppositionEvent, bytes]],
        on_done: Callable[[OppositionEvent, Receipt | PublishError], None] | None = None,
    ) -> list[Receipt | PublishError]:
        """Publish events already returned by :meth:`prepare`, pipelined, waiting for the acks."""
        results: list[Receipt | PublishError | None] = [None] * len(prepared)

        def callback_for(index: int, event: OppositionEvent) -> Callable[..., None]:
            def delivered(err: KafkaError | None, msg: Message) -> None:
                result: Receipt | PublishError
                if err is not None:
                    result = PublishError(
                        f"Kafka did not acknowledge event {event.event_id}: {err.str()} "
                        "(not recorded: check the broker and retry)",
                        err.code(),
                        msg.topic(),
                    )
                else:
                    result = Receipt(str(event.event_id), msg.partition() or 0, msg.offset() or 0)
                results[index] = result
                if on_done is not None:
                    on_done(event, result)

            return delivered

        for index, (event, payload) in enumerate(prepared):
            try:
                self._produce(event, payload, callback_for(index, event))
            except PublishError as exc:  # refused before sending (e.g. known unauthorised)
                results[index] = exc
                if on_done is not None:
                    on_done(event, exc)
        deadline = time.monotonic() + self._timeout + 5
        while any(r is None for r in results):
            if time.monotonic() > deadline:
                break
            # Short waits: with concurrent callers another thread may serve our delivery
            # report, and a long poll would only notice it when the timeout ran out.
            self._producer.poll(0.005)
        return [
            r
            if r is not None
            else PublishError(
                "no acknowledgement from Kafka in time (not recorded: is the broker up?)"
            )
            for r in results
        ]

    def _produce(
        self, event: OppositionEvent, payload: bytes, callback: Callable[..., None]
    ) -> None:
        # Lifts are admin actions, consents a consent recorder's: each on the topic only its
        # principal may write (Kafka ACLs); the worker forwards them, signed, to the log.
        topic = {Kind.LIFT: self._admin_topic, Kind.CONSENT: self._consents_topic}.get(
            event.kind, self._topic
        )
        while True:
            try:
                self._producer.produce(
                    topic, value=payload, key=event.kafka_key, on_delivery=callback
                )
                return
            except BufferError:
                # Local queue full: serve delivery reports to make room.
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise PublishError(
                    f"cannot publish to {topic}: {exc}", exc.args[0].code(), topic
                ) from exc

    def close(self) -> None:
        """Deliver what is still queued (bounded by the publish timeout)."""
        remaining = self._producer.flush(self._timeout)
        if remaining:
            log.warning("%d events still unacknowledged at close", remaining)
