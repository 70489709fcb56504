"""`dnc up`: Kafka, Redis and the worker on loopback, in the foreground; Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from rich.console import Console

from dnc.health import view_readiness
from infra.services import LocalStack
from infra.topics import ensure_pipeline_topics
from schemas.settings import Settings


def _worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["DNC_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["DNC_REDIS_URL"] = settings.redis_url.get_secret_value()
    env["PYTHONUNBUFFERED"] = "1"  # the log must survive a crash
    return env


def run_local_stack(settings: Settings, kafka_version: str, console: Console) -> None:
    """Start everything, say where it listens, block until SIGINT/SIGTERM, stop in reverse."""
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    kafka_host, kafka_port = settings.kafka_host_port
    _redis_host, redis_port = settings.redis_host_port
    stack = LocalStack(
        settings.data_dir,
        kafka_version=kafka_version,
        kafka_port=kafka_port,
        redis_port=redis_port,
        partitions=settings.partitions,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        console.print(f"starting Kafka {kafka_version} and Redis (data in {settings.data_dir}) ...")
        stack.start()
        ensure_pipeline_topics(settings)
        worker_log = settings.data_dir / "worker.log"
        console.print(f"starting the worker (log: {worker_log}) ...")
        with worker_log.open("ab") as log_handle:
            worker = subprocess.Popen(
                [sys.executable, "-m", "dnc", "worker"],
                env=_worker_env(settings),
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the worker first, in order
            )
        deadline = time.monotonic() + 120
        ready = False
        while not stopping and worker.poll() is None and time.monotonic() < deadline:
            ready, _why = view_readiness(settings)
            if ready:
                break
            time.sleep(0.5)
        if worker.poll() is not None:
            console.print(f"[red]the worker exited ({worker.returncode}); see {worker_log}[/]")
            return
        console.print(
            f"\n[bold green]pipeline {'ready' if ready else 'started (view not ready yet)'}[/]\n"
            f"  Kafka     {kafka_host}:{kafka_port}   topics {settings.oppositions_topic}, "
            f"{settings.suppressions_topic}, {settings.dead_letter_topic}\n"
            f"  Redis     {stack.redis_url}\n"
            f"  metrics   http://{settings.metrics_host}:{settings.worker_metrics_port}/metrics\n"
            f"  worker    pid {worker.pid}, log {worker_log}\n\n"
            "In another shell:\n"
            "  dnc oppose '06 12 34 56 78' --tenant demo\n"
            "  dnc check  '06 12 34 56 78' --tenant demo\n"
            "  dnc status\n"
            "Ctrl-C stops everything."
        )
        while not stopping:
            if worker.poll() is not None:
                console.print(f"[red]the worker exited ({worker.returncode}); see {worker_log}[/]")
                break
            time.sleep(0.5)
    finally:
        console.print("stopping ...")
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                console.print("[red]the worker did not stop within 60 s of SIGTERM: killed it[/]")
                worker.kill()
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        console.print("stopped.")
