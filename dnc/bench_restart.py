"""`dnc bench --only restart`: a worker restart, SIGTERM and SIGKILL, until vouched for again,
at growing numbers of states (does it grow with them?).

For each size the table is first filled to that many suppressed numbers through the pipeline
(distinct oppositions published at once, until all vouched for); then the worker is stopped
(SIGTERM, graceful) and started again, then killed (SIGKILL) and started again; each time
the figure is from the signal until every partition is vouched for past the moment of the
signal (Redis's clock), i.e. until checks are answered from a current view again. The new
worker reuses the same id and table directory (static membership, its RocksDB on disk), as a
restarted pod of the StatefulSet does.
"""

from __future__ import annotations

import re
import time
import urllib.request

from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from dnc.bench import TENANT, Bench, Figures, _stop_worker, mobile
from producers.publisher import OppositionPublisher, producer_config
from schemas.errors import PublishError
from schemas.events import Kind, OppositionEvent

SEED = 6 * 10**7  # the restart's series of numbers (see dnc.bench's series)
SEED_CHUNK = 100_000  # events encoded and published at once while seeding

perf = time.perf_counter


def suppressed_numbers(port: int) -> int:
    """The worker's own count of suppressed numbers (``dnc_suppressed_numbers``, all tenants)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    wanted = [f for f in text_string_to_metric_families(text) if f.name == "dnc_suppressed_numbers"]
    return int(sum(sample.value for family in wanted for sample in family.samples))


def _seed(b: Bench, first: int, count: int) -> None:
    """Publish ``count`` distinct oppositions from the ``first`` of the series; until vouched."""
    s, t = b.settings, b.settings.publish_timeout_seconds
    publisher = OppositionPublisher(
        s.kafka_bootstrap, s.oppositions_topic, b.tenants, timeout_seconds=t,
        producer=Producer(producer_config(s.kafka_bootstrap, t, **{"linger.ms": 20})),
    )  # fmt: skip
    clock = b.client(5.0)
    try:
        for start in range(first, first + count, SEED_CHUNK):
            n = min(SEED_CHUNK, first + count - start)
            b.status.update(f"[6/7] restart: seeding states {start - SEED:,} to "
                            f"{start - SEED + n:,}")  # fmt: skip
            prepared = [publisher.prepare(OppositionEvent.record(
                tenant=TENANT, phone=mobile(SEED + i), kind=Kind.OPPOSITION))
                for i in range(start - SEED, start - SEED + n)]  # fmt: skip
            results = publisher.publish_prepared(prepared)
            if any(isinstance(r, PublishError) for r in results):
                raise PublishError("seeding the restart measurement: Kafka refused events")
            sec, usec = clock.time()
            b.wait_vouched(sec * 1000 + usec // 1000, "the seeding", timeout=3600)
    finally:
        publisher.close()
        clock.close()


def _restart(b: Bench, kill: bool, log_name: str) -> tuple[float, float, bool]:
    """Stop the worker (SIGKILL if ``kill``, else SIGTERM), start it again: seconds until
    vouched for again, the longest view rebuild its log reports, and whether it adopted
    the view it left (every partition: nothing rewritten)."""
    assert b.worker is not None and b.worker_log is not None
    clock = b.client(5.0)
    sec, usec = clock.time()
    begin = perf()
    if kill:
        b.worker.kill()
        b.worker.wait()
    else:
        _stop_worker(b.worker)
    b.start_worker(b.worker_log.parent / log_name)
    b.wait_vouched(sec * 1000 + usec // 1000, "the restart", timeout=1200)
    vouched = perf() - begin
    clock.close()
    log = b.worker_log.read_text(errors="replace")
    rebuilds = re.findall(r"view ready: \d+ states written in ([\d.]+)s", log)
    adopted = "adopted as left at the last vouch" in log and "not adopted" not in log
    return vouched, max((float(t) for t in rebuilds), default=0.0), adopted


def bench_restart(b: Bench, sizes: list[int]) -> Figures:
    """Per size in ``sizes`` (suppressed numbers, ascending): SIGTERM and SIGKILL restarts."""
    figures: Figures = {}
    seeded = 0
    for size in sorted(sizes):
        have = suppressed_numbers(b.metrics_port)
        if have < size:
            _seed(b, SEED + seeded, size - have)
            seeded += size - have
        states = float(suppressed_numbers(b.metrics_port))
        for kill in (False, True):
            how = "sigkill" if kill else "sigterm"
            b.status.update(f"[6/7] restart: {how.upper()} with {states:,.0f} states")
            vouched, rebuild, adopted = _restart(b, kill, f"worker-{how}-{size}.log")
            figures[f"restart_{how}_{size}_s"] = vouched
            figures[f"restart_{how}_{size}_rebuild_s"] = rebuild
            figures[f"restart_{how}_{size}_adopted"] = float(adopted)
        figures[f"restart_{size}_states"] = states
    figures["restart_sizes"] = float(len(sizes))
    for i, size in enumerate(sorted(sizes)):
        figures[f"restart_size_{i}"] = float(size)
    figures["staleness_bound_s"] = b.settings.max_staleness_seconds
    return figures


def report_rows(f: Figures) -> list[tuple[str, str, str, str]]:
    """The restart rows of the bench's table: each size, and the largest against the smallest."""
    sizes = [int(f[f"restart_size_{i}"]) for i in range(int(f["restart_sizes"]))]
    rows: list[tuple[str, str, str, str]] = []
    for how, what in (("sigterm", "SIGTERM"), ("sigkill", "SIGKILL")):
        for size in sizes:
            states = f[f"restart_{size}_states"]
            rebuild = f[f"restart_{how}_{size}_rebuild_s"]
            if f.get(f"restart_{how}_{size}_adopted"):
                rebuilt = f"view adopted as left, nothing rewritten ({rebuild:.1f} s)"
            else:
                rebuilt = f"view rebuild {rebuild:.1f} s" if rebuild else "no view rebuild"
            rows.append((f"worker restart, {what} to vouched again, {states:,.0f} states",
                         f"{f[f'restart_{how}_{size}_s']:.1f} s", rebuilt, ""))  # fmt: skip
        if len(sizes) > 1:
            small, large = sizes[0], sizes[-1]
            growth = f[f"restart_{how}_{large}_s"] / f[f"restart_{how}_{small}_s"]
            ratio = f[f"restart_{large}_states"] / f[f"restart_{small}_states"]
            rows.append((f"  {what}: {ratio:.1f}x the states", f"{growth:.2f}x the time", "", ""))
    return rows
