"""The audit trail writer: audit records to Kafka (idempotent, acks=all), awaited or not.

A successful write or subject access is answered only once its audit record is
acknowledged (:meth:`AuditLog.write`); refusals and failures are recorded without making
the caller wait for Kafka (:meth:`AuditLog.write_nowait`), since their answer must not
depend on Kafka being up. One background thread serves the producer's delivery reports
and resolves the waiting requests' futures on their event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producers.publisher import producer_config
from schemas.audit import AuditRecord
from schemas.errors import AuditError
from schemas.metrics import AUDIT_RECORDS
from schemas.settings import Settings

log = logging.getLogger("dnc.audit")


class AuditLog:
    """Writes :class:`AuditRecord` values to the audit topic, key = the caller's tenant."""

    def __init__(self, producer: Producer, topic: str, timeout_seconds: float) -> None:
        self._producer = producer
        self._topic = topic
        self._timeout = timeout_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog:
        """An audit log on the configured cluster and audit topic."""
        config = producer_config(
            settings.kafka_bootstrap,
            settings.audit_timeout_seconds,
            **settings.kafka_client_config(),
            **{"client.id": "dnc-audit", "linger.ms": 0},
        )
        return cls(Producer(config), settings.audit_topic, settings.audit_timeout_seconds)

    def start(self) -> None:
        """Start serving delivery reports (call once, before the first write)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="dnc-audit", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def write(self, record: AuditRecord) -> None:
        """Write ``record`` and wait for Kafka's acknowledgement; :class:`AuditError` if none."""
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()

        def settle(err: KafkaError | None, _msg: Message) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle_future, acked, err)

        try:
            self._produce(record, settle)
            await asyncio.wait_for(acked, self._timeout + 1)
        except (TimeoutError, AuditError) as exc:
            AUDIT_RECORDS.labels(action=record.action, result="failed").inc()
            raise AuditError(
                f"audit record not acknowledged by Kafka: {exc or 'timed out'}"
            ) from None
        AUDIT_RECORDS.labels(action=record.action, result="written").inc()

    def write_nowait(self, record: AuditRecord) -> None:
        """Queue ``record``; a delivery failure is logged and counted, never raised."""

        def report(err: KafkaError | None, _msg: Message) -> None:
            result = "failed" if err is not None else "written"
            AUDIT_RECORDS.labels(action=record.action, result=result).inc()
            if err is not None:
                log.error("audit record %s not written: %s", record.audit_id, err.str())

        try:
            self._produce(record, report)
        except AuditError as exc:
            AUDIT_RECORDS.labels(action=record.action, result="failed").inc()
            log.error("audit record %s not written: %s", record.audit_id, exc)

    def _produce(self, record: AuditRecord, callback: Any) -> None:
        try:
            self._producer.produce(
                self._topic,
                key=record.kafka_key,
                value=record.model_dump_json(exclude_none=True).encode(),
                on_delivery=callback,
            )
        except (BufferError, KafkaException) as exc:
            raise AuditError(f"cannot queue an audit record on {self._topic}: {exc}") from exc

    def reachable(self, timeout: float, topics: Sequence[str] = ()) -> bool:
        """True when the cluster answers and has the audit topic (and ``topics``)."""
        try:
            metadata = self._producer.list_topics(timeout=timeout)
        except KafkaException:
            return False
        for name in (self._topic, *topics):
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                return False
        return True

    def close(self) -> None:
        """Deliver what is queued (bounded by the audit timeout), then stop the thread."""
        remaining = self._producer.flush(self._timeout)
        if remaining:
            log.error("%d audit records still unacknowledged at shutdown", remaining)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


def _settle_future(future: asyncio.Future[None], err: KafkaError | None) -> None:
    if future.done():  # the request gave up waiting
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(AuditError(err.str()))
