"""Runs the Faust worker process: topics, metrics endpoint, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading

import faust
from prometheus_client import start_http_server

from infra.topics import check_partition_counts, ensure_pipeline_topics
from schemas.authority import authority_key
from schemas.errors import ConfigError
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from streams.app import build_worker

log = logging.getLogger("dnc.streams")


class BoundedShutdownWorker(faust.Worker):
    """A Faust worker whose graceful stop cannot hang forever.

    Faust can block in shutdown (e.g. SIGTERM while it is joining its group, or a broker
    gone). Events are acked only after their side effects are durable, so exiting without
    finishing loses nothing: what was not committed is replayed by the next worker.
    """

    shutdown_timeout: float = 30.0

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        freeze_startup_objects()

    def _on_sigint(self) -> None:
        self._arm_watchdog()
        super()._on_sigint()

    def _on_sigterm(self) -> None:
        self._arm_watchdog()
        super()._on_sigterm()

    def _arm_watchdog(self) -> None:
        def force_exit() -> None:
            log.error(
                "graceful shutdown still not done after %.0fs: exiting now "
                "(nothing uncommitted is lost; it replays on restart)",
                self.shutdown_timeout,
            )
            logging.shutdown()
            os._exit(1)

        timer = threading.Timer(self.shutdown_timeout, force_exit)
        timer.daemon = True
        timer.start()


def freeze_startup_objects() -> None:
    """Keep the garbage collector's full passes off what start-up built (once ready).

    A full collection walks every tracked object of the process: Faust's services,
    aiokafka, the pydantic schemas, the modules, hundreds of thousands of objects that live
    as long as the worker. At 500 events/s one ran every 3-5 s and stopped the event loop
    for 40-80 ms (up to 500 ms on a loaded machine): the periodic stall of propagation's
    p99. Collected once, then frozen (``gc.freeze``), they are no longer walked; what is
    created later is collected as before.
    """
    gc.collect()
    gc.freeze()
    log.info("start-up objects frozen out of the collector's passes: %d", gc.get_freeze_count())


def run_worker(settings: Settings, worker_id: str | None = None) -> None:
    """Start the worker and block until it is stopped (Faust handles the signals)."""
    if settings.uses_default_view_key:
        if not settings.allow_development_view_key:
            raise ConfigError(
                "DNC_VIEW_KEY is the public development default: anyone who knows it can tell "
                "from the view which numbers are suppressed. Set DNC_VIEW_KEY to a secret "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`), the same "
                "for every worker, checker and gateway; `dnc up` generates one per data "
                "directory. For a throwaway setup, DNC_ALLOW_DEVELOPMENT_VIEW_KEY=true."
            )
        log.warning("running on the public development view key (DNC_ALLOW_DEVELOPMENT_VIEW_KEY)")
    authority_key(settings)  # refuses a missing key (or the view key) before anything starts
    if settings.authority_key is None:
        log.warning(
            "signing lifts with a key derived from the view key (DNC_ALLOW_DEVELOPMENT_"
            "AUTHORITY_KEY): every holder of the view key can sign lifts"
        )
    tenants = TenantDirectory.load(settings.tenants_file)
    created = ensure_pipeline_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    check_partition_counts(settings)
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
    worker = BoundedShutdownWorker(built.app, loglevel=settings.log_level)
    worker.shutdown_timeout = settings.shutdown_timeout_seconds
    worker.execute_from_commandline()
