"""`dnc bench --workers N`: worker throughput with 1, 2, ... N workers in one group.

For each count, on the bench's private stack: a fresh oppositions topic, consumer group and
Redis view (flushed), the workers started as `dnc worker` would run them (each its own id
and metrics port), then the same burst as the throughput stage: distinct oppositions
published at once, timed until every partition's applied-through time has passed the last
acknowledgement (every event visible to checks; a sample is checked).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Producer

from consumers.checker import Answer
from dnc.bench import BURST, REPO, TENANT, Bench, Figures, _stop_worker, mobile, perf
from infra.launch.process import free_port
from infra.topics import ensure_pipeline_topics
from producers.publisher import OppositionPublisher, producer_config
from schemas.errors import PublishError
from schemas.events import Kind, OppositionEvent
from schemas.settings import Settings


def scaled(
    b: Bench, n: int, log_dir: Path, name: str = ""
) -> tuple[Bench, list[subprocess.Popen[bytes]]]:
    """A bench of its own for ``n`` workers (topics, group, view), and the workers."""
    name = name or f"scale{n}"
    env = b.env | {
        "DNC_OPPOSITIONS_TOPIC": f"bench.{name}.oppositions",
        "DNC_SUPPRESSIONS_TOPIC": f"bench.{name}.suppressions",
        "DNC_DEAD_LETTER_TOPIC": f"bench.{name}.dead-letter",
        "DNC_WORKER_GROUP": f"bench-{name}",
    }
    settings = Settings.model_validate(
        {k[4:].lower(): v for k, v in env.items() if k.startswith("DNC_")}
    )
    ensure_pipeline_topics(settings)
    own = Bench(settings, b.tenants, b.layout, b.url, b.metrics_port, b.status,
                   b.interrupted, env=env)  # fmt: skip
    workers = []
    for i in range(n):
        log = log_dir / f"{name}-worker{i}.log"
        worker_env = env | {"DNC_WORKER_METRICS_PORT": str(free_port())}
        with log.open("wb") as out:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "dnc", "worker", "--id", f"bench-{name}-{i}"],
                env=worker_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                start_new_session=True,
            ))  # fmt: skip
        own.worker_log = log
    own.worker = workers[0]
    return own, workers


def bench_scale(b: Bench, count: int, max_workers: int, log_dir: Path) -> Figures:
    """The burst with 1..``max_workers`` workers; figures ``scale_<n>_per_s`` and more."""
    figures: Figures = {"scale_events": float(count), "scale_max_workers": float(max_workers)}
    for n in range(1, max_workers + 1):
        b.flush()  # each count builds its own view from nothing
        group, workers = scaled(b, n, log_dir)
        try:
            b.status.update(f"[scale] {n} worker(s): waiting for the view to be ready")
            group.wait_serving()
            per_s, after_ack, missing = burst(group, n, count, workers)
        finally:
            for worker in workers:
                _stop_worker(worker, timeout=30)
        figures[f"scale_{n}_per_s"] = per_s
        figures[f"scale_{n}_after_ack_s"] = after_ack
        figures[f"scale_{n}_sample_missing"] = missing
    return figures


def burst(
    b: Bench, n: int, count: int, workers: list[subprocess.Popen[bytes]]
) -> tuple[float, float, float]:
    """Publish ``count`` distinct oppositions at once; (events/s until all vouched for,
    seconds after the last acknowledgement, sampled numbers not suppressed)."""
    s, t = b.settings, b.settings.publish_timeout_seconds
    publisher = OppositionPublisher(
        s.kafka_bootstrap, s.oppositions_topic, b.tenants, timeout_seconds=t,
        producer=Producer(producer_config(s.kafka_bootstrap, t, **{"linger.ms": 20})),
    )  # fmt: skip
    first = BURST + n * count  # distinct numbers per run
    phones = [mobile(first + i) for i in range(count)]
    b.status.update(f"[scale] {n} worker(s): encoding {count:,} events")
    prepared = [publisher.prepare(OppositionEvent.record(tenant=TENANT, phone=p,
                kind=Kind.OPPOSITION)) for p in phones]  # fmt: skip
    clock = b.client(5.0)
    b.status.update(f"[scale] {n} worker(s): publishing {count:,} events at once")
    begin = perf()
    failed = sum(isinstance(r, PublishError) for r in publisher.publish_prepared(prepared))
    acked, (sec, usec) = perf(), clock.time()
    clock.close()
    publisher.close()
    b.status.update(f"[scale] {n} worker(s): waiting for them to apply {count:,} events")
    deadline = time.monotonic() + 900
    checker = b.checker()
    while True:
        applied = [p.applied_ms or 0 for p in checker.readiness().partitions]
        if applied and min(applied) >= sec * 1000 + usec // 1000:
            break
        exited = [w for w in workers if w.poll() is not None]
        if exited or time.monotonic() > deadline or b.interrupted.is_set():
            raise (
                KeyboardInterrupt
                if b.interrupted.is_set()
                else RuntimeError(
                    f"{n} worker(s) did not apply the burst (exited: {len(exited)}); see the logs"
                )
            )
        time.sleep(0.02)
    done = perf()
    sample = phones[:: max(1, count // 2000)]
    missing = sum(r.answer is not Answer.SUPPRESSED for r in checker.check_many(sample, TENANT))
    if failed:
        raise RuntimeError(f"{failed} events of the burst were not acknowledged by Kafka")
    return count / (done - begin), done - acked, float(missing)


def report_rows(f: Figures) -> list[tuple[str, str, str, str]]:
    """Rows of the bench table: events/s with n workers, next to one worker's."""
    rows = []
    one = f["scale_1_per_s"]
    for n in range(1, int(f["scale_max_workers"]) + 1):
        per_s = f[f"scale_{n}_per_s"]
        rows.append((f"worker throughput, {n} worker(s) (burst)", f"{per_s:,.0f} events/s",
                     f"{one:,.0f} events/s (1 worker)", f"{per_s / one:.2f}x"))  # fmt: skip
    return rows
