"""Runs `dnc sync`: one lane per tenant with a reference list, metrics, graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from confluent_kafka import Producer
from prometheus_client import start_http_server

from consumers.checker import checker_client
from consumers.reference_sync import Lane
from consumers.sinks.base import Sink
from consumers.sinks.postgres import PostgresSink
from consumers.sinks.webhook import WebhookSink
from infra.topics import ensure_pipeline_topics
from schemas.errors import ConfigError
from schemas.reference import PostgresSinkConfig, WebhookSinkConfig
from schemas.settings import Settings
from schemas.tenants import TenantDirectory

log = logging.getLogger("dnc.sync")


def build_sink(tenant: str, tenants: TenantDirectory, settings: Settings) -> Sink | None:
    """The tenant's sink as configured in the tenants file (None: the tenant has none)."""
    config = tenants.get(tenant).reference_list
    if isinstance(config, PostgresSinkConfig):
        return PostgresSink(tenant, config.dsn(settings.postgres_dsn.get_secret_value()))
    if isinstance(config, WebhookSinkConfig):
        return WebhookSink(
            str(config.url),
            config.secret(),
            timeout=settings.webhook_timeout_seconds,
            max_in_flight=settings.webhook_max_in_flight,
        )
    return None


def dead_letter_producer(settings: Settings) -> Producer:
    """Idempotent, acks=all producer for the reference-list dead letters."""
    return Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "client.id": "dnc-sync-dlq",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            **settings.kafka_client_config(),
        }
    )


def build_lanes(
    settings: Settings, tenants: TenantDirectory, only: list[str] | None = None
) -> list[Lane]:
    """A lane for every tenant with a reference list (or the ``only`` ones)."""
    names = only or tenants.names
    for name in names:
        tenants.get(name)  # UnknownTenant for a typo
    producer = dead_letter_producer(settings)
    status = checker_client(
        settings.redis_url.get_secret_value(), 2, cluster=settings.redis_cluster
    )
    lanes = []
    for name in names:
        sink = build_sink(name, tenants, settings)
        if sink is None:
            if only:
                raise ConfigError(
                    f"tenant {name!r} declares no [tenants.{name}.reference_list] in "
                    f"{settings.tenants_file}"
                )
            continue
        lanes.append(Lane(name, sink, settings, producer, status))
    if not lanes:
        raise ConfigError(
            f"no tenant in {settings.tenants_file} declares a reference list: add a "
            '[tenants.NAME.reference_list] table (sink = "postgres" or "webhook")'
        )
    return lanes


def run_sync(settings: Settings, only: list[str] | None = None) -> int:
    """Deliver until SIGINT/SIGTERM; then every lane commits what was acknowledged and stops.

    Returns the exit status: 0 after a requested stop, 1 when a lane crashed.
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per webhook request
    tenants = TenantDirectory.load(settings.tenants_file)
    created = ensure_pipeline_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    lanes = build_lanes(settings, tenants, only)
    start_http_server(settings.sync_metrics_port, addr=settings.metrics_host)
    log.info(
        "sync: %d lanes (%s), metrics on http://%s:%d/metrics",
        len(lanes),
        ", ".join(f"{lane.tenant}->{lane.sink.name}" for lane in lanes),
        settings.metrics_host,
        settings.sync_metrics_port,
    )
    stopping = threading.Event()
    crashed = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("sync: %s received, stopping the lanes", signal.Signals(signum).name)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)
    threads = [
        threading.Thread(
            target=_run_lane, args=(lane, stopping, crashed), name=f"lane-{lane.tenant}"
        )
        for lane in lanes
    ]
    for thread in threads:
        thread.start()
    while not stopping.wait(0.5):
        if not any(t.is_alive() for t in threads):
            break
    for lane in lanes:
        lane.stop()
    for thread in threads:
        thread.join(settings.shutdown_timeout_seconds)
    log.info("sync stopped")
    return 1 if crashed.is_set() else 0


def _run_lane(lane: Lane, stopping: threading.Event, crashed: threading.Event) -> None:
    try:
        lane.run()
    except Exception:
        log.exception("lane %s crashed: stopping the sync (a supervisor restarts it)", lane.tenant)
        crashed.set()
        stopping.set()
