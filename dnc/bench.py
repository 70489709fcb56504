"""`dnc bench`: measure the pipeline on a private local stack (Kafka, Redis, a real worker).

1. single-check latency: ``SuppressionChecker.check`` vs one bare ``SISMEMBER`` round trip;
2. bulk-check throughput: ``check_many`` vs pipelined ``SMISMEMBER`` over the same slots;
3. propagation: publish call -> visible in a check, at a steady event rate;
4. worker throughput: a burst of distinct oppositions until all applied, vs a bare consumer
   and a bare Faust agent (the framework's own per-message cost);
5. `dnc import` of a large CSV, until every number is visible, vs publishing alone;
6. worker restart (SIGTERM, SIGKILL) until vouched for again, at growing numbers of states
   (dnc/bench_restart.py);
7. Redis bytes per suppressed number: bucketed intsets vs a plain set of E.164 strings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.status import Status
from rich.table import Table

from consumers.checker import Answer, SuppressionChecker, checker_client
from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION
from infra.launch.process import free_port
from infra.launch.stack import LocalStack
from infra.topics import ensure_pipeline_topics
from producers.publisher import OppositionPublisher, producer_config
from schemas.errors import DncError, PublishError
from schemas.events import GLOBAL_TARGET, Kind, OppositionEvent
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import FAMILY_OF_KIND, ViewLayout, view_layout

OPPOSED = FAMILY_OF_KIND["opposition"]  # (numbers suppressed straight in the view: oppositions)

TENANT = "bench"
RULES = "rules"  # a campaign with every dial rule
BENCH_TENANTS = f"""
[tenants.{TENANT}]
default_region = "FR"

[tenants.{TENANT}.campaigns.{RULES}]
legal_basis = "consent"
calling_hours = "FR"
max_attempts = 4
attempt_period = "P30D"
sector = "telecom"
"""
REPO = Path(__file__).resolve().parent.parent
_PREFIXES = ("61", "62", "64", "65", "66", "67", "68")  # mobile ranges phonenumbers accepts
SINGLE, BULK, PROPAGATION, MEMORY, BURST, IMPORT = (k * 10**7 for k in range(6))  # series
Figures = dict[str, float]
perf = time.perf_counter


def mobile(i: int) -> str:
    """The ``i``-th distinct valid French mobile number in E.164 (``+3361...``, ``+3362...``)."""
    return f"+33{_PREFIXES[i // 10**7]}{i % 10**7:07d}"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _sadd(client: redis.Redis, groups: Iterable[tuple[str, Sequence[int | str]]]) -> None:
    """SADD every (key, members), pipelined, about 10k members per round trip."""
    pipe, pending = client.pipeline(transaction=False), 0
    for key, members in groups:
        for start in range(0, len(members), 10_000):
            pipe.sadd(key, *members[start : start + 10_000])
            pending += len(members[start : start + 10_000])
            if pending >= 10_000:
                pipe.execute()
                pending = 0
    pipe.execute()


@dataclass
class Bench:
    """The private pipeline the measurements run on (the worker is up for phases 1 to 3)."""

    settings: Settings
    tenants: TenantDirectory
    layout: ViewLayout
    url: str
    metrics_port: int
    status: Status
    interrupted: threading.Event
    worker_log: Path | None = None
    worker: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # the pipeline's environment

    def start_worker(self, log: Path) -> None:
        """Start a worker (as `dnc worker` would run) writing to ``log``."""
        # Static membership, as a StatefulSet's pods: a restart gets the same partitions
        # and the same table directory back.
        env = self.env | {"DNC_WORKER_INSTANCE_ID": "bench"}
        with log.open("wb") as out:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "dnc", "worker", "--id", "bench"], env=env,
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )  # fmt: skip
        self.worker_log = log

    def tail(self) -> str:
        """The end of the current worker's log."""
        return self.worker_log.read_text(errors="replace")[-3000:] if self.worker_log else ""

    def wait_serving(self, timeout: float = 180) -> None:
        """Until a check gets an answer (the worker recovered, rebuilt and vouched)."""
        checker, deadline = self.checker(), time.monotonic() + timeout
        while checker.check(mobile(SINGLE), TENANT).answer is Answer.UNAVAILABLE:
            exited = self.worker is not None and self.worker.poll() is not None
            if exited or time.monotonic() > deadline or self.interrupted.is_set():
                raise DncError(f"the bench worker did not get ready; its log ends:\n{self.tail()}")
            time.sleep(0.05)

    def wait_vouched(self, since_ms: int, what: str, timeout: float = 1800) -> None:
        """Until every partition is applied and vouched for past ``since_ms`` (Redis's clock)."""
        checker, deadline = self.checker(), time.monotonic() + timeout
        while True:
            readiness = checker.readiness()
            applied = [p.applied_ms or 0 for p in readiness.partitions]
            if applied and min(applied) >= since_ms:
                return
            if self.worker is not None and self.worker.poll() is not None:
                log = self.tail()
                raise DncError(f"the bench worker exited during {what}; its log ends:\n{log}")
            if time.monotonic() > deadline or self.interrupted.is_set():
                raise DncError(f"the worker did not apply {what} in time ({readiness.why})")
            time.sleep(0.02)

    def checker(self) -> SuppressionChecker:
        """A checker as a dialer would build it, with its own Redis client."""
        return SuppressionChecker.from_settings(self.settings, self.tenants, self.client(2.0))

    def client(self, timeout: float) -> redis.Redis:
        """A client of the bench's Redis, or of its Redis Cluster (``--redis-cluster``)."""
        return checker_client(self.url, timeout, cluster=self.settings.redis_cluster)

    def flush(self) -> None:
        """Empty the bench's Redis (every master of a cluster)."""
        client = self.client(10.0)
        if self.settings.redis_cluster:
            client.flushall(target_nodes="primaries")
        else:
            client.flushall()
        client.close()


def bench_single(b: Bench, iterations: int = 20_000, block: int = 500) -> Figures:
    """p50/p99 of ``check`` vs one bare ``SISMEMBER`` round trip, in alternating blocks."""
    checker, bare = b.checker(), b.client(2.0)
    pool = [mobile(SINGLE + i) for i in range(2000)]
    slots = [b.layout.slot(TENANT, p) for p in pool]
    _sadd(bare, [(s.key + OPPOSED, [s.member]) for s in slots[::2]])  # half of them suppressed
    # "check_rules": under a campaign with every rule of issue #19 (consent, French hours and
    # holidays, an attempt cap): the consents and attempts are read in the same script.
    samples: dict[str, list[float]] = {"check": [], "check_rules": [], "sismember": []}
    unavailable = 0
    kinds = list(samples)
    for n in range(-2, iterations // block):  # two blocks of warm-up
        for kind in kinds[n % 3 :] + kinds[: n % 3]:  # each kind first in turn
            for j in range(block):
                k = (n * block + j) % len(pool)
                t = perf()
                if kind == "sismember":
                    bare.sismember(slots[k].key + OPPOSED, str(slots[k].member))
                else:
                    answer = checker.check(
                        pool[k], TENANT, RULES if kind == "check_rules" else None
                    ).answer
                if n >= 0:
                    samples[kind].append(perf() - t)
                    unavailable += kind != "sismember" and answer is Answer.UNAVAILABLE
        b.status.update(f"[1/7] single check latency: {max(0, n + 1) * block}/{iterations}")
    f = {f"{kind}_p{q}_ms": percentile(values, q / 100) * 1e3
         for kind, values in samples.items() for q in (50, 99)}  # fmt: skip
    for kind in ("check", "check_rules"):
        for q in (50, 99):
            f[f"{kind}_ratio_p{q}"] = f[f"{kind}_p{q}_ms"] / f[f"sismember_p{q}_ms"]
    return f | {"check_unavailable": float(unavailable)}


def bench_bulk(b: Bench, batches: int = 10, size: int = 10_000, chunk: int = 1000) -> Figures:
    """Numbers/s of ``check_many`` vs pipelined ``SMISMEMBER`` of the same (precomputed) slots."""
    checker, bare = b.checker(), b.client(5.0)
    totals = {"check_many": 0.0, "smismember": 0.0}
    checker.check_many([mobile(BULK + i) for i in range(1000)], TENANT)  # warm-up
    for n in range(batches):
        phones = [mobile(BULK + n * size + i) for i in range(size)]
        by_key: defaultdict[str, list[int]] = defaultdict(list)
        for slot in (b.layout.slot(t, p) for p in phones for t in (GLOBAL_TARGET, TENANT)):
            by_key[slot.key].append(slot.member)
        suppressed = [b.layout.slot(TENANT, p) for p in phones[::10]]  # 10% of them
        _sadd(bare, [(s.key + OPPOSED, [s.member]) for s in suppressed])
        for kind in list(totals) if n % 2 == 0 else list(totals)[::-1]:
            t = perf()
            if kind == "check_many":
                checker.check_many(phones, TENANT)
            else:
                pipe = bare.pipeline(transaction=False)
                for key, members in by_key.items():
                    for start in range(0, len(members), chunk):
                        pipe.smismember(key, members[start : start + chunk])
                pipe.execute()
            totals[kind] += perf() - t
        b.status.update(f"[2/7] bulk check throughput: batch {n + 1}/{batches}")
    ours, base = (batches * size / totals[k] for k in ("check_many", "smismember"))
    return {"bulk_numbers_per_s": ours, "smismember_numbers_per_s": base, "bulk_ratio": ours / base}


def bench_cli(b: Bench, runs: int = 11) -> Figures:
    """Wall time of `dnc check` from a shell (a new process: start-up, imports, settings, one
    check) vs its floors, run in turn: `redis-cli PING` against the same Redis and the bare
    interpreter (`python -c pass`); and the same check through the Typer command, which the
    lean entry point (:mod:`dnc.entry`) skips. Medians (and the ratios of the medians); the
    first run of each is a warm-up (the OS's file cache)."""
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    host, port = b.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    script = Path(sys.executable).parent / "dnc"  # the console script a dialer runs
    dnc = [str(script)] if script.exists() else [sys.executable, "-m", "dnc"]
    check = ["check", mobile(SINGLE), "--tenant", TENANT]
    commands = {
        "cli_check": [*dnc, *check],
        "cli_ping": [cli, "-h", host, "-p", port, "PING"],
        "cli_python": [sys.executable, "-c", "pass"],
        # the same check through the whole Typer CLI: what the lean entry point saves
        "cli_typer": [sys.executable, "-c", TYPER_CHECK, *check],
    }
    times: dict[str, list[float]] = {kind: [] for kind in commands}
    for n in range(runs + 1):
        for kind, command in commands.items():
            t = perf()
            done = subprocess.run(command, env=b.env, cwd=REPO, capture_output=True, timeout=60)
            if n:
                times[kind].append(perf() - t)
            if kind in ("cli_check", "cli_typer") and done.returncode not in (0, 1):
                raise DncError(f"dnc check failed: {done.stdout.decode()}{done.stderr.decode()}")
        b.status.update(f"[cli] `dnc check` from a shell: run {n}/{runs}")
    f = {f"{kind}_ms": percentile(values, 0.5) * 1e3 for kind, values in times.items()}
    f |= {f"{kind}_min_ms": min(values) * 1e3 for kind, values in times.items()}
    return f | {"cli_ratio": f["cli_check_ms"] / f["cli_ping_ms"],
                "cli_typer_ratio": f["cli_check_ms"] / f["cli_typer_ms"],
                "cli_python_ratio": f["cli_check_ms"] / f["cli_python_ms"],
                "cli_runs": float(runs)}  # fmt: skip


def _worker_histogram(port: int) -> dict[float, float]:
    """Cumulative bucket counts of the worker's suppression_view propagation histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        families = text_string_to_metric_families(resp.read().decode())
        return {float(s.labels["le"]): s.value for fam in families for s in fam.samples
                if s.name == "dnc_propagation_seconds_bucket"
                and s.labels.get("stage") == "suppression_view"}  # fmt: skip


def _worker_batches(port: int) -> tuple[float, float]:
    """(batches, messages) the worker applied so far, from its batch-size histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        families = text_string_to_metric_families(resp.read().decode())
        values = {s.name: s.value for fam in families for s in fam.samples
                  if s.name.startswith("dnc_worker_batch_events_")}  # fmt: skip
    return values.get("dnc_worker_batch_events_count", 0.0), values.get(
        "dnc_worker_batch_events_sum", 0.0
    )


def _bucket_bound_ms(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding quantile ``q`` of the observations."""
    cumulative = sorted((le, n - before.get(le, 0.0)) for le, n in after.items())
    total = cumulative[-1][1] if cumulative else 0.0
    return next((le * 1e3 for le, n in cumulative if total and n >= q * total), float("nan"))


def bench_propagation(b: Bench, rate: int, seconds: float) -> Figures:
    """Publish ``rate`` events/s for ``seconds``; a poller thread records when each is visible."""
    s, t, log = b.settings, b.settings.publish_timeout_seconds, logging.getLogger("dnc.bench.kafka")
    log.setLevel(logging.ERROR)  # librdkafka's logs, served by poll(), not from its own threads
    producer = Producer(producer_config(s.kafka_bootstrap, t, logger=log))
    publisher = OppositionPublisher(
        s.kafka_bootstrap, s.oppositions_topic, b.tenants, timeout_seconds=t, producer=producer
    )
    poller = b.checker()
    outstanding: dict[str, float] = {}  # number -> perf_counter() at its publish call
    latencies: list[float] = []
    lock, stop = threading.Lock(), threading.Event()

    def poll() -> None:
        while not stop.wait(0.002):
            with lock:
                phones = list(outstanding)
            results = poller.check_many(phones, TENANT) if phones else []
            seen = perf()
            with lock:
                for phone, result in zip(phones, results, strict=True):
                    if result.answer is Answer.SUPPRESSED:
                        latencies.append(seen - outstanding.pop(phone))

    def publish(first: int, count: int) -> int:
        phones = [mobile(PROPAGATION + first + i) for i in range(count)]
        events = [OppositionEvent.record(tenant=TENANT, phone=p, kind=Kind.OPPOSITION)
                  for p in phones]  # fmt: skip
        with lock:
            outstanding.update(dict.fromkeys(phones, perf()))
        try:
            results = publisher.publish_many(events)
        except SystemError:  # Ctrl-C inside a delivery callback loses the KeyboardInterrupt
            if b.interrupted.is_set():
                raise KeyboardInterrupt from None
            raise
        with lock:  # not recorded: will never become visible
            lost = [outstanding.pop(p, 0.0) for p, r in zip(phones, results, strict=True)
                    if isinstance(r, PublishError)]  # fmt: skip
        return len(lost)

    def drain(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while outstanding and time.monotonic() < deadline:
            time.sleep(0.02)

    thread = threading.Thread(target=poll, name="bench-poller", daemon=True)
    thread.start()
    try:
        warm, total, sent, failed = 50, int(rate * seconds), 0, 0
        publish(0, warm)  # producer metadata, idempotence PID, the worker's first batches
        drain(60)
        with lock:
            latencies.clear()
            outstanding.clear()
        before, start = _worker_histogram(b.metrics_port), perf()
        while sent < total:
            due = min(total, int((perf() - start) * rate) + 1)  # paced by the wall clock
            if due > sent:
                failed += publish(warm + sent, due - sent)
                sent = due
                b.status.update(f"[3/7] propagation: published {sent}/{total}, "
                                f"visible {len(latencies)}")  # fmt: skip
            else:
                time.sleep(0.001)
        elapsed = perf() - start
        b.status.update("[3/7] propagation: waiting (up to 30 s) for the last events")
        drain(30)
        time.sleep(0.5)  # the worker observes its histogram right after the write
        after = _worker_histogram(b.metrics_port)
    finally:
        stop.set()
        thread.join(5)
    publisher.close()  # not when interrupted: it would wait for Kafka, which may be gone
    return {"propagation_p50_ms": percentile(latencies, 0.5) * 1e3,
            "propagation_p99_ms": percentile(latencies, 0.99) * 1e3,
            "propagation_max_ms": max(latencies, default=float("nan")) * 1e3,
            "propagation_events": float(total), "propagation_visible": float(len(latencies)),
            "publish_failed": float(failed), "publish_rate": total / elapsed,
            "worker_p50_le_ms": _bucket_bound_ms(before, after, 0.5),
            "worker_p99_le_ms": _bucket_bound_ms(before, after, 0.99)}  # fmt: skip


FLOOR_TOPIC = "bench.floor"


def bench_floor(b: Bench, rate: int, seconds: float) -> Figures:
    """The floor of propagation: bare confluent-kafka produce -> consume on the same broker.

    Same producer settings as the publisher (acks=all, idempotent), same rate; the consumer
    is assigned and polling before the first timed message. Latency: from the produce call
    to the message in the consumer's hands.
    """
    s = b.settings
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap, **s.kafka_client_config()})
    futures = admin.create_topics([NewTopic(FLOOR_TOPIC, s.partitions, 1)])
    for future in futures.values():
        try:
            future.result(30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    log = logging.getLogger("dnc.bench.kafka")
    producer = Producer(producer_config(s.kafka_bootstrap, s.publish_timeout_seconds,
                                        **s.kafka_client_config() | {"logger": log}))  # fmt: skip
    consumer = _kafka_consumer(s, f"dnc-bench-floor-{time.monotonic_ns()}")
    ends = _end_offsets(s, FLOOR_TOPIC)
    consumer.assign([TopicPartition(FLOOR_TOPIC, p, o) for p, o in ends.items()])
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            msg = consumer.poll(0.05)  # returns as soon as a message is there
            if msg is not None and not msg.error() and (key := msg.key()) in sent_at:
                latencies.append(perf() - sent_at[key])

    thread = threading.Thread(target=consume, name="bench-floor", daemon=True)
    thread.start()
    total = int(rate * seconds)
    assert b.worker_log is not None
    faust_result = b.worker_log.parent / "faust-latency.txt"
    faust_floor = _start_faust_floor(b, ["latency", s.kafka_bootstrap, FLOOR_TOPIC, str(total),
                                         str(faust_result)])  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not faust_result.with_suffix(".ready").exists():  # warm: both consumers reading
            if faust_floor.poll() is not None or time.monotonic() > deadline:
                raise DncError("the bare Faust agent did not start reading: " + _faust_log(b))
            for i in range(50):  # metadata, idempotence PID, fetch sessions
                producer.produce(FLOOR_TOPIC, key=f"warm-{i}".encode(), value=b"{}")
            producer.flush(10)
            time.sleep(0.5)
        start = perf()
        for i in range(total):
            due = start + i / rate
            while (now := perf()) < due:
                time.sleep(min(0.001, due - now))
                producer.poll(0)
            key = f"floor-{i}".encode()
            sent_at[key] = perf()
            value = f'{{"kind":"opposition","sent":{time.time():.6f}}}'.encode()
            producer.produce(FLOOR_TOPIC, key=key, value=value)
            producer.poll(0)
            if i % 500 == 0:
                b.status.update(f"[3/7] propagation floor: bare Kafka {i}/{total}")
        producer.flush(10)
        deadline = time.monotonic() + 10
        while len(latencies) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            faust_floor.wait(30)
        if not faust_result.exists():
            raise DncError("the bare Faust agent did not get every message: " + _faust_log(b))
        faust = [float(line) for line in faust_result.read_text().split()]
    finally:
        stop.set()
        thread.join(5)
        consumer.close()
        _stop_worker(faust_floor)
    return {"floor_p50_ms": percentile(latencies, 0.5) * 1e3,
            "floor_p99_ms": percentile(latencies, 0.99) * 1e3,
            "floor_received": float(len(latencies)),
            "faust_floor_p50_ms": percentile(faust, 0.5) * 1e3,
            "faust_floor_p99_ms": percentile(faust, 0.99) * 1e3}  # fmt: skip


def bench_throughput(b: Bench, count: int) -> Figures:
    """A burst of ``count`` distinct oppositions published at once: events/s until all applied.

    Applied means in the view and vouched for: every partition's applied-through time (Redis's
    clock) reached the moment the last event was acknowledged, so every event of the burst is
    visible to checks (a sample is checked too). The floors, in the same run: the bare
    produce rate of the same payloads, and a bare consumer reading the burst back.
    """
    s, t = b.settings, b.settings.publish_timeout_seconds
    log = logging.getLogger("dnc.bench.kafka")
    publisher = OppositionPublisher(
        s.kafka_bootstrap, s.oppositions_topic, b.tenants, timeout_seconds=t,
        producer=Producer(producer_config(s.kafka_bootstrap, t, logger=log, **{"linger.ms": 20})),
    )  # fmt: skip
    phones = [mobile(BURST + i) for i in range(count)]
    b.status.update(f"[4/7] throughput: encoding {count:,} events")
    prepared = [publisher.prepare(OppositionEvent.record(tenant=TENANT, phone=p,
                kind=Kind.OPPOSITION)) for p in phones]  # fmt: skip
    checker, bare = b.checker(), b.client(5.0)
    starts = _end_offsets(s, s.oppositions_topic)
    b.status.update(f"[4/7] throughput: publishing {count:,} events at once")
    batches_before = _worker_batches(b.metrics_port)
    begin = perf()
    failed = sum(isinstance(r, PublishError) for r in publisher.publish_prepared(prepared))
    acked, (sec, usec) = perf(), bare.time()
    acked_ms = sec * 1000 + usec // 1000  # Redis's clock, as the view's applied-through times
    publisher.close()
    b.status.update(f"[4/7] throughput: published {count:,} in {acked - begin:.1f}s; "
                    "waiting for the worker to apply them")  # fmt: skip
    b.wait_vouched(acked_ms, "the burst", timeout=600)
    done = perf()
    batches_after = _worker_batches(b.metrics_port)
    batches = batches_after[0] - batches_before[0]
    mean_batch = (batches_after[1] - batches_before[1]) / batches if batches else float("nan")
    sample = phones[:: max(1, count // 2000)]
    missing = sum(r.answer is not Answer.SUPPRESSED for r in checker.check_many(sample, TENANT))
    b.status.update("[4/7] throughput: a bare consumer reads the burst back")
    consume_s = _bare_consume(s, s.oppositions_topic, starts, count)
    b.status.update("[4/7] throughput: a bare Faust agent reads the burst back")
    faust_s = _bare_faust(b, starts, count)
    return {"burst_events": float(count), "burst_failed": float(failed),
            "burst_publish_per_s": count / (acked - begin),
            "burst_worker_per_s": count / (done - begin),
            "burst_seconds": done - begin, "burst_after_ack_s": done - acked,
            "burst_sample": float(len(sample)), "burst_sample_missing": float(missing),
            "burst_mean_batch": mean_batch,
            "bare_consume_per_s": count / consume_s,
            "bare_faust_per_s": count / faust_s}  # fmt: skip


def bench_import(b: Bench, rows: int) -> Figures:
    """`dnc import` of a CSV of ``rows`` distinct numbers, until every one is visible.

    Timed from the command's start (reading and validating the file, publishing) until
    every partition is applied and vouched for past the moment the command ended.
    """
    assert b.worker_log is not None
    path = b.worker_log.parent / "import.csv"
    with path.open("w") as out:
        out.write("phone\n")
        out.writelines(f"{mobile(IMPORT + i)}\n" for i in range(rows))
    clock = b.client(5.0)
    b.status.update(f"[5/7] import: `dnc import` of {rows:,} rows")
    begin = perf()
    done = subprocess.run([sys.executable, "-m", "dnc", "import", str(path), "--tenant", TENANT],
                          env=b.env, cwd=REPO, capture_output=True, timeout=3600)  # fmt: skip
    if done.returncode != 0:
        raise DncError(f"dnc import failed: {done.stderr.decode(errors='replace')[-2000:]}")
    published, (sec, usec) = perf(), clock.time()
    b.status.update(f"[5/7] import: published in {published - begin:.0f}s; waiting for the worker")
    b.wait_vouched(sec * 1000 + usec // 1000, "the import")
    visible = perf()
    sample = [mobile(IMPORT + i) for i in range(0, rows, max(1, rows // 2000))]
    missing = sum(r.answer is not Answer.SUPPRESSED for r in b.checker().check_many(sample, TENANT))
    return {"import_rows": float(rows), "import_publish_s": published - begin,
            "import_visible_s": visible - begin, "import_sample": float(len(sample)),
            "import_sample_missing": float(missing)}  # fmt: skip


def _kafka_consumer(s: Settings, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": group,
                     "enable.auto.commit": False, "fetch.max.bytes": 64 * 2**20,
                     **s.kafka_client_config()})  # fmt: skip


_NO_LEADER_YET = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
)


def _end_offsets(s: Settings, topic: str) -> dict[int, int]:
    """Each partition's end offset; retried while a topic created a moment ago has no
    leader yet (the broker answers 'not leader for partition' for a while)."""
    consumer, deadline = _kafka_consumer(s, "dnc-bench-offsets"), time.monotonic() + 30
    try:
        while True:
            try:
                return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                        for p in range(s.partitions)}  # fmt: skip
            except KafkaException as exc:
                err = exc.args[0]
                if time.monotonic() > deadline or not (
                    err.retriable() or err.code() in _NO_LEADER_YET
                ):
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def _bare_consume(s: Settings, topic: str, starts: dict[int, int], count: int) -> float:
    """Seconds a bare confluent-kafka consumer takes to read ``count`` messages from ``starts``."""
    consumer = _kafka_consumer(s, f"dnc-bench-floor-{time.monotonic_ns()}")
    consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    consumer.consume(1, timeout=10)  # connected, fetching: timing starts warm
    got, begin, deadline = 1, perf(), time.monotonic() + 120
    try:
        while got < count and time.monotonic() < deadline:
            got += sum(not m.error() for m in consumer.consume(10_000, timeout=1.0))
        return perf() - begin
    finally:
        consumer.close()


def _start_faust_floor(b: Bench, args: list[str]) -> subprocess.Popen[bytes]:
    """Start :mod:`dnc.bench_faust` (a do-nothing Faust agent) with ``args``."""
    assert b.worker_log is not None
    with (b.worker_log.parent / "faust-floor.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dnc.bench_faust", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )


def _faust_log(b: Bench) -> str:
    assert b.worker_log is not None
    path = b.worker_log.parent / "faust-floor.log"
    return "its log ends:\n" + (path.read_text(errors="replace")[-3000:] if path.exists() else "")


def _bare_faust(b: Bench, starts: dict[int, int], count: int) -> float:
    """Seconds a do-nothing Faust agent takes to read ``count`` messages from ``starts``.

    Run in its own process (:mod:`dnc.bench_faust`), read as the worker's agent reads: the
    most a worker built on Faust's per-message stream can do here.
    """
    assert b.worker_log is not None
    result = b.worker_log.parent / "faust-floor.txt"
    result.unlink(missing_ok=True)
    offsets = ",".join(f"{p}:{o}" for p, o in starts.items())
    s = b.settings
    floor = _start_faust_floor(
        b, ["burst", s.kafka_bootstrap, s.oppositions_topic, offsets, str(count), str(result)]
    )
    try:
        floor.wait(timeout=300)
    except subprocess.TimeoutExpired:
        _stop_worker(floor)
    if not result.exists():
        raise DncError("the bare Faust agent did not read the burst; " + _faust_log(b))
    return float(result.read_text())


def bench_memory(b: Bench, numbers: int) -> Figures:
    """INFO used_memory per number: ViewLayout intsets vs one plain set of E.164 strings."""
    buckets = max(1024, numbers // 400)  # ~400 per set, under set-max-intset-entries (512)
    layout = ViewLayout(b.settings.view_key.get_secret_value().encode(), default_buckets=buckets)
    admin = redis.Redis.from_url(b.url)
    b.status.update(f"[7/7] memory: hashing {numbers:,} numbers into {buckets} buckets")
    phones = [mobile(MEMORY + i) for i in range(numbers)]
    by_key: defaultdict[str, list[int]] = defaultdict(list)
    for slot in (layout.slot(TENANT, phone) for phone in phones):
        by_key[slot.key].append(slot.member)

    def used_by(what: str, groups: Iterable[tuple[str, Sequence[int | str]]]) -> int:
        b.status.update(f"[7/7] memory: SADD {numbers:,} numbers ({what})")
        admin.flushall()
        time.sleep(0.2)
        before = int(admin.info("memory")["used_memory"])
        with redis.Redis.from_url(b.url) as writer:  # closing it frees its server-side buffers
            _sadd(writer, groups)
        time.sleep(0.5)
        return int(admin.info("memory")["used_memory"]) - before

    layout_bytes = used_by("view layout", by_key.items())
    encodings = Counter(admin.object("encoding", key) for key in by_key)
    plain_bytes = used_by("plain set of E.164 strings", [("bench:plain", phones)])
    admin.flushall()
    admin.close()
    return {"memory_numbers": float(numbers), "memory_buckets": float(buckets),
            "largest_bucket": float(max(len(m) for m in by_key.values())),
            "intset_keys": float(encodings[b"intset"]), "view_keys": float(len(by_key)),
            "layout_bytes_per_number": layout_bytes / numbers,
            "plain_bytes_per_number": plain_bytes / numbers,
            "memory_ratio": plain_bytes / layout_bytes}  # fmt: skip


CLI_GOAL_MS = 200  # `dnc check` from a shell: a dialer script's answer (issue #21)
# `dnc check` through the Typer command, bypassing the lean entry point (dnc/entry.py)
TYPER_CHECK = "import sys; sys.argv[0] = 'dnc'; from dnc.cli import main; main()"

STAGES = (
    "single", "bulk", "cli", "propagation", "throughput", "import", "restart", "memory", "scale",
    "failover",
)  # fmt: skip


def _report(f: Figures, console: Console) -> None:
    table = Table("measure", "dnc", "baseline", "dnc / baseline", title="dnc bench")
    notes: list[str] = []
    if "check_p50_ms" in f:
        for q in (50, 99):
            table.add_row(f"check latency p{q}", f"{f[f'check_p{q}_ms']:.3f} ms",
                          f"{f[f'sismember_p{q}_ms']:.3f} ms (SISMEMBER)",
                          f"{f[f'check_ratio_p{q}']:.2f}x")  # fmt: skip
        for q in (50, 99):
            table.add_row(f"check latency p{q}, every rule", f"{f[f'check_rules_p{q}_ms']:.3f} ms",
                          f"{f[f'sismember_p{q}_ms']:.3f} ms (SISMEMBER)",
                          f"{f[f'check_rules_ratio_p{q}']:.2f}x")  # fmt: skip
        notes.append(f"check: {f['check_unavailable']:.0f} unavailable answers; 'every rule': "
                     f"the campaign {RULES!r} (consent, French calling hours and holidays, 4 "
                     "attempts in 30 days): one script reads the suppressions, the consents "
                     "and the attempts")  # fmt: skip
    if "bulk_numbers_per_s" in f:
        table.add_row("bulk check", f"{f['bulk_numbers_per_s']:,.0f} numbers/s",
                      f"{f['smismember_numbers_per_s']:,.0f} numbers/s (SMISMEMBER)",
                      f"{f['bulk_ratio']:.2f}x")  # fmt: skip
        notes.append("bulk: the baseline times only the Redis round trips (slots precomputed, "
                     "grouped by key, pipelined)")  # fmt: skip
    if "cli_check_ms" in f:
        ping, ratio = f"{f['cli_ping_ms']:.0f} ms (redis-cli PING)", f"{f['cli_ratio']:.1f}x"
        table.add_row("`dnc check` from a shell (median)", f"{f['cli_check_ms']:.0f} ms", ping,
                      ratio)  # fmt: skip
        if "cli_python_ms" in f:
            table.add_row("", "", f"{f['cli_python_ms']:.0f} ms (python -c pass)",
                          f"{f['cli_python_ratio']:.1f}x")  # fmt: skip
            table.add_row("", "", f"{f['cli_typer_ms']:.0f} ms (the same check through Typer)",
                          f"{f['cli_typer_ratio']:.2f}x")  # fmt: skip
        notes.append(f"cli: goal <= {CLI_GOAL_MS} ms; {f['cli_runs']:.0f} runs of each in turn, "
                     f"wall time of the whole process; fastest {f['cli_check_min_ms']:.0f} ms "
                     f"vs {f['cli_ping_min_ms']:.0f} ms (PING) and "
                     f"{f.get('cli_python_min_ms', 0):.0f} ms (python)")  # fmt: skip
    if "propagation_p50_ms" in f:
        for k in ("p50", "p99"):
            ours, floor = f[f"propagation_{k}_ms"], f[f"floor_{k}_ms"]
            table.add_row(f"propagation {k}", f"{ours:.1f} ms",
                          f"{floor:.1f} ms (bare Kafka)", f"{ours / floor:.2f}x")  # fmt: skip
            faust = f[f"faust_floor_{k}_ms"]
            table.add_row("", "", f"{faust:.1f} ms (bare Faust agent)", f"{ours / faust:.2f}x")
        table.add_row("propagation max", f"{f['propagation_max_ms']:.1f} ms")
        notes.append(
            f"propagation: {f['propagation_visible']:.0f}/{f['propagation_events']:.0f} events "
            f"seen suppressed, {f['publish_failed']:.0f} not acknowledged, achieved publish rate "
            f"{f['publish_rate']:.1f} events/s; worker's dnc_propagation_seconds"
            f'{{stage="suppression_view"}}: p50 <= {f["worker_p50_le_ms"]:g} ms, p99 <= '
            f"{f['worker_p99_le_ms']:g} ms (bucket bounds); the floor: "
            f"{f['floor_received']:.0f} messages at the same rate on the same broker, consumer "
            "warm; ours is seen by a dialer polling every 2 ms"
        )
    if "burst_worker_per_s" in f:
        table.add_row("worker throughput (burst)", f"{f['burst_worker_per_s']:,.0f} events/s",
                      f"{f['bare_consume_per_s']:,.0f} events/s (bare consumer)",
                      f"{f['burst_worker_per_s'] / f['bare_consume_per_s']:.2f}x")  # fmt: skip
        table.add_row("", "", f"{f['bare_faust_per_s']:,.0f} events/s (bare Faust agent)",
                      f"{f['burst_worker_per_s'] / f['bare_faust_per_s']:.2f}x")  # fmt: skip
        notes.append(
            f"throughput: {f['burst_events']:,.0f} distinct oppositions published at once "
            f"({f['burst_publish_per_s']:,.0f} events/s acknowledged, {f['burst_failed']:.0f} "
            f"refused), all applied and vouched for {f['burst_seconds']:.1f} s after the first "
            f"({f['burst_after_ack_s']:.1f} s after the last acknowledgement), "
            f"{f['burst_mean_batch']:.0f} messages per batch on average; "
            f"{f['burst_sample_missing']:.0f}/{f['burst_sample']:.0f} sampled numbers not "
            "suppressed"
        )
    if "import_visible_s" in f:
        rows = f["import_rows"]
        table.add_row(f"`dnc import` of {rows:,.0f} rows, until all visible",
                      f"{f['import_visible_s']:.0f} s ({rows / f['import_visible_s']:,.0f} rows/s)",
                      f"{f['import_publish_s']:.0f} s (publishing alone)",
                      f"{f['import_visible_s'] / f['import_publish_s']:.2f}x")  # fmt: skip
        notes.append(f"import: {f['import_sample_missing']:.0f}/{f['import_sample']:.0f} sampled "
                     "numbers not suppressed")  # fmt: skip
    if "restart_sizes" in f:
        from dnc.bench_restart import report_rows

        for row in report_rows(f):
            table.add_row(*row)
        notes.append(
            "restart: the same worker id and table directory (static membership, RocksDB on "
            "disk): the new worker replays its changelog's tail, rebuilds the view and vouches; "
            "checks are answered from the last vouch until it is older than the staleness bound "
            f"({f['staleness_bound_s']:g} s), then unavailable until the new worker vouches; "
            "the baseline column is the longest view rebuild in the new worker's log"
        )
    if "layout_bytes_per_number" in f:
        table.add_row("Redis bytes per number", f"{f['layout_bytes_per_number']:.1f} B (intsets)",
                      f"{f['plain_bytes_per_number']:.1f} B (plain set)",
                      f"{1 / f['memory_ratio']:.2f}x")  # fmt: skip
        notes.append(
            f"memory at {f['memory_numbers']:,.0f} numbers: {f['memory_buckets']:.0f} buckets, "
            f"largest {f['largest_bucket']:.0f} members, {f['intset_keys']:.0f}/"
            f"{f['view_keys']:.0f} sets encoded intset; a plain set takes "
            f"{f['memory_ratio']:.2f}x the memory"
        )
    if "scale_1_per_s" in f:
        from dnc.bench_scale import report_rows

        for row in report_rows(f):
            table.add_row(*row)
        missing = sum(f[k] for k in f if k.startswith("scale_") and k.endswith("_missing"))
        notes.append(
            f"scale-out: the same burst of {f['scale_events']:,.0f} distinct oppositions with "
            f"1 to {f['scale_max_workers']:.0f} workers in one group (3 partitions; each count "
            f"its own topic, group and view), until all vouched for; {missing:.0f} sampled "
            "numbers not suppressed. On one machine the workers share its cores with the "
            "broker, Redis and the publisher: see the load average below"
        )
    if "failover_vouched_s" in f:
        from dnc.bench_failover import report_note, report_row

        table.add_row(*report_row(f))
        notes.append(report_note(f))
    if f.get("redis_cluster"):
        notes.append(
            "Redis: a Redis Cluster of 3 masters with a replica each on this machine; a check "
            "is one script on the node of the number's shard, the bare baseline one SISMEMBER "
            "sent to the node of its key"
        )
    console.print(table)
    notes.append(
        f"machine: {os.cpu_count()} cores, 1-minute load average {f['load_average']:.2f} at the "
        "end (the stack, the worker and the bench share them with anything else running)"
    )
    console.print("\n".join(notes))


def _stop_worker(worker: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    if worker is not None and worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def run_bench(
    numbers: int,
    rate: int,
    seconds: float,
    console: Console,
    burst: int = 100_000,
    only: Sequence[str] = STAGES,
    import_rows: int = 1_000_000,
    logs: Path | None = None,
    workers: int = 1,
    redis_cluster: bool = False,
    failover_states: int = 100_000,
    restart_states: Sequence[int] = (100_000, 1_000_000),
    session_timeout: float = 10.0,
) -> Figures:
    """Start a private stack and worker, run the measurements in ``only``, print them.

    Everything started here is stopped and its directory removed, also on Ctrl-C or SIGTERM.
    """
    tmp, interrupted = Path(tempfile.mkdtemp(prefix="dnc-bench-")), threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    infra_log = logging.getLogger("dnc.infra")
    level = infra_log.level
    infra_log.setLevel(logging.WARNING)
    version = os.environ.get("DNC_KAFKA_VERSION", KAFKA_DEFAULT_VERSION)
    stack = LocalStack(tmp / "stack", kafka_version=version, partitions=3,
                       redis_cluster=redis_cluster)  # fmt: skip
    b: Bench | None = None
    figures: Figures = {}
    try:
        what = "a Redis Cluster" if redis_cluster else "Redis"
        with console.status(f"starting Kafka {version} and {what}") as status:
            stack.start()
            (tmp / "tenants.toml").write_text(BENCH_TENANTS)
            port = free_port()
            dnc = {"DNC_KAFKA_BOOTSTRAP": stack.bootstrap_servers, "DNC_REDIS_URL": stack.redis_url,
                   "DNC_TENANTS_FILE": str(tmp / "tenants.toml"), "DNC_PARTITIONS": "3",
                   "DNC_OPPOSITIONS_TOPIC": "bench.oppositions", "DNC_VIEW_BUCKETS": "1024",
                   "DNC_SUPPRESSIONS_TOPIC": "bench.suppressions", "DNC_LOG_LEVEL": "INFO",
                   "DNC_DEAD_LETTER_TOPIC": "bench.dead-letter", "DNC_WORKER_GROUP": "bench",
                   "DNC_VIEW_KEY": "bench-key", "DNC_WORKER_METRICS_PORT": str(port),
                   "DNC_AUTHORITY_KEY": "bench-authority-key",
                   "DNC_DATA_DIR": str(tmp / "data"),  # the worker's table, with the stack
                   "DNC_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
                   "DNC_SESSION_TIMEOUT_SECONDS": f"{session_timeout:g}",
                   "DNC_REDIS_CLUSTER": "true" if redis_cluster else "false"}  # fmt: skip
            settings = Settings.model_validate({k[4:].lower(): v for k, v in dnc.items()})
            tenants = TenantDirectory.load(tmp / "tenants.toml")
            layout = view_layout(settings, tenants)
            env = {k: v for k, v in os.environ.items() if not k.startswith("DNC_")} | dnc
            env["PYTHONUNBUFFERED"] = "1"  # a readable log tail if it fails to start
            b = Bench(settings, tenants, layout, stack.redis_url, port, status, interrupted,
                      env=env)  # fmt: skip
            ensure_pipeline_topics(settings)
            status.update("starting the worker; waiting for the view to be ready")
            b.start_worker(tmp / "worker.log")
            b.wait_serving()
            if "single" in only:
                figures |= bench_single(b)
            if "bulk" in only:
                figures |= bench_bulk(b)
            if "cli" in only:
                figures |= bench_cli(b)
            if "propagation" in only:
                figures |= bench_floor(b, rate, seconds)
                figures |= bench_propagation(b, rate, seconds)
            if "throughput" in only:
                figures |= bench_throughput(b, burst)
            if "import" in only:
                figures |= bench_import(b, import_rows)
            if "restart" in only:
                from dnc.bench_restart import bench_restart

                figures |= bench_restart(b, list(restart_states))
            status.update("stopping the worker")
            _stop_worker(b.worker)
            if "memory" in only and not redis_cluster:  # (INFO used_memory of one server)
                figures |= bench_memory(b, numbers)
            if "scale" in only and workers > 1:
                from dnc.bench_scale import bench_scale

                figures |= bench_scale(b, burst, workers, tmp)
            if "failover" in only:
                from dnc.bench_failover import bench_failover

                figures |= bench_failover(b, failover_states, tmp)
        figures["load_average"] = os.getloadavg()[0]
        figures["redis_cluster"] = float(redis_cluster)
        _report(figures, console)
        return figures
    finally:
        for s in handlers:
            signal.signal(s, signal.SIG_IGN)  # the cleanup is not interrupted
        try:
            with console.status("stopping the worker, Kafka and Redis"):
                _stop_worker(b.worker if b is not None else None, timeout=30)
                stack.stop()
                if logs is not None:  # the worker's and the floors' logs, kept for a look
                    shutil.copytree(tmp, logs, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("stack", "*.csv"))  # fmt: skip
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
            infra_log.setLevel(level)
