"""Runs the Faust worker process: topics, metrics endpoint, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import socket

import faust
from prometheus_client import start_http_server

from infra.topics import ensure_pipeline_topics
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from streams.app import build_worker

log = logging.getLogger("dnc.streams")


def run_worker(settings: Settings, worker_id: str | None = None) -> None:
    """Start the worker and block until it is stopped (Faust handles the signals)."""
    tenants = TenantDirectory.load(settings.tenants_file)
    created = ensure_pipeline_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    if settings.uses_default_view_key:
        log.warning(
            "DNC_VIEW_KEY is the public development default: set a secret key in production "
            "(changing it later means a view rebuild)"
        )
    ident = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    start_http_server(settings.worker_metrics_port, addr=settings.metrics_host)
    log.info(
        "worker %s: Kafka %s, topic %s, metrics on http://%s:%d/metrics",
        ident,
        settings.kafka_bootstrap,
        settings.oppositions_topic,
        settings.metrics_host,
        settings.worker_metrics_port,
    )
    built = build_worker(settings, tenants, ident)
    worker = faust.Worker(built.app, loglevel=settings.log_level)
    worker.execute_from_commandline()
