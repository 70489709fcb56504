"""`dnc bench`: measure the pipeline on a private local stack (Kafka, Redis, a real worker).

1. single-check latency: ``SuppressionChecker.check`` vs one bare ``SISMEMBER`` round trip;
2. bulk-check throughput: ``check_many`` vs pipelined ``SMISMEMBER`` over the same slots;
3. propagation: publish call -> visible in a check, at a steady event rate;
4. Redis bytes per suppressed number: bucketed intsets vs a plain set of E.164 strings.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterable
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.status import Status
from rich.table import Table

from consumers.checker import Answer, SuppressionChecker, checker_client
from infra.services import KAFKA_DEFAULT_VERSION, LocalStack, free_port
from infra.topics import ensure_pipeline_topics
from producers.publisher import OppositionPublisher
from schemas.errors import DncError, PublishError
from schemas.events import GLOBAL_TARGET, Kind, OppositionEvent
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import ViewLayout
from streams.app import view_layout

TENANT = "bench"
REPO = Path(__file__).resolve().parent.parent
_PREFIXES = ("61", "62", "64", "65", "66", "67", "68")  # mobile ranges phonenumbers accepts
SINGLE, BULK, PROPAGATION, MEMORY = 0, 10**7, 2 * 10**7, 3 * 10**7  # number series offsets
Figures = dict[str, float]
perf = time.perf_counter


def mobile(i: int) -> str:
    """The ``i``-th distinct valid French mobile number in E.164 (``+3361...``, ``+3362...``)."""
    return f"+33{_PREFIXES[i // 10**7]}{i % 10**7:07d}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _sadd_grouped(
    client: redis.Redis,
    groups: Iterable[tuple[str, list[int] | list[str]]],
    chunk: int = 10_000,
    progress: Callable[[int], None] | None = None,
) -> None:
    """SADD every (key, members), pipelined, about ``chunk`` members per round trip."""
    pipe, pending, done = client.pipeline(transaction=False), 0, 0
    for key, members in groups:
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            pipe.sadd(key, *part)
            pending += len(part)
            if pending >= chunk:
                pipe.execute()
                done, pending = done + pending, 0
                if progress:
                    progress(done)
    pipe.execute()


def bench_single(
    checker: SuppressionChecker,
    bare: redis.Redis,
    layout: ViewLayout,
    status: Status,
    iterations: int = 20_000,
    block: int = 500,
) -> Figures:
    """p50/p99 of ``check`` vs one ``SISMEMBER`` round trip, in alternating blocks."""
    pool = [mobile(SINGLE + i) for i in range(2000)]
    slots = [layout.slot(TENANT, p) for p in pool]
    _sadd_grouped(bare, [(s.key, [s.member]) for s in slots[::2]])  # half of them suppressed
    ours: list[float] = []
    base: list[float] = []
    answers: Counter[str] = Counter()

    def run_ours(k: int, out: list[float]) -> None:
        t = perf()
        answers[checker.check(pool[k], TENANT).answer.value] += 1
        out.append(perf() - t)

    def run_base(k: int, out: list[float]) -> None:
        t = perf()
        bare.sismember(slots[k].key, str(slots[k].member))
        out.append(perf() - t)

    for k in range(1000):  # warm-up
        run_ours(k, [])
        run_base(k, [])
    answers.clear()
    for b in range(iterations // block):
        pair = ((run_ours, ours), (run_base, base))
        for fn, out in pair if b % 2 == 0 else pair[::-1]:
            for j in range(block):
                fn((b * block + j) % len(pool), out)
        status.update(f"[1/4] single check latency: {len(ours)}/{iterations}")
    f = {"check_p50_ms": _pct(ours, 0.5) * 1e3, "check_p99_ms": _pct(ours, 0.99) * 1e3,
         "sismember_p50_ms": _pct(base, 0.5) * 1e3, "sismember_p99_ms": _pct(base, 0.99) * 1e3,
         "check_unavailable": float(answers["unavailable"])}  # fmt: skip
    f["check_ratio_p50"] = f["check_p50_ms"] / f["sismember_p50_ms"]
    f["check_ratio_p99"] = f["check_p99_ms"] / f["sismember_p99_ms"]
    return f


def bench_bulk(
    checker: SuppressionChecker,
    bare: redis.Redis,
    layout: ViewLayout,
    status: Status,
    batches: int = 10,
    size: int = 10_000,
    chunk: int = 1000,
) -> Figures:
    """Numbers/s of ``check_many`` vs pipelined ``SMISMEMBER`` of the same slots (precomputed)."""

    def run_ours(phones: list[str], _by_key: dict[str, list[int]]) -> float:
        t = perf()
        checker.check_many(phones, TENANT)
        return perf() - t

    def run_base(_phones: list[str], by_key: dict[str, list[int]]) -> float:
        t = perf()
        pipe = bare.pipeline(transaction=False)
        for key, members in by_key.items():
            for start in range(0, len(members), chunk):
                pipe.smismember(key, members[start : start + chunk])
        pipe.execute()
        return perf() - t

    totals = {run_ours: 0.0, run_base: 0.0}
    checker.check_many([mobile(BULK + i) for i in range(1000)], TENANT)  # warm-up
    for b in range(batches):
        phones = [mobile(BULK + b * size + i) for i in range(size)]
        by_key: defaultdict[str, list[int]] = defaultdict(list)
        for phone in phones:
            for target in (GLOBAL_TARGET, TENANT):
                slot = layout.slot(target, phone)
                by_key[slot.key].append(slot.member)
        suppressed = [layout.slot(TENANT, p) for p in phones[::10]]  # 10% of them
        _sadd_grouped(bare, [(s.key, [s.member]) for s in suppressed])
        for fn in list(totals) if b % 2 == 0 else list(totals)[::-1]:
            totals[fn] += fn(phones, by_key)
        status.update(f"[2/4] bulk check throughput: batch {b + 1}/{batches}")
    ours, base = totals[run_ours], totals[run_base]
    f = {
        "bulk_numbers_per_s": batches * size / ours,
        "smismember_numbers_per_s": batches * size / base,
    }
    f["bulk_ratio"] = f["bulk_numbers_per_s"] / f["smismember_numbers_per_s"]
    return f


def _worker_histogram(port: int) -> dict[float, float]:
    """Cumulative bucket counts of the worker's suppression_view propagation histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {float(s.labels["le"]): s.value
            for fam in text_string_to_metric_families(text) if fam.name == "dnc_propagation_seconds"
            for s in fam.samples
            if s.name.endswith("_bucket") and s.labels.get("stage") == "suppression_view"}  # fmt: skip


def _bucket_quantile(cumulative: dict[float, float], q: float) -> float:
    total = cumulative.get(float("inf"), 0.0)
    return next(
        (le for le, c in sorted(cumulative.items()) if total and c >= q * total), float("nan")
    )


def bench_propagation(
    settings: Settings,
    tenants: TenantDirectory,
    layout: ViewLayout,
    url: str,
    rate: int,
    seconds: float,
    metrics_port: int,
    status: Status,
) -> Figures:
    """Publish ``rate`` events/s for ``seconds``; a poller thread records when each is visible."""
    publisher = OppositionPublisher.from_settings(settings, tenants)
    poller = SuppressionChecker(checker_client(url, 2.0), layout, tenants,
                                partitions_hint=settings.partitions)  # fmt: skip
    outstanding: dict[str, float] = {}
    latencies: list[float] = []
    lock, stop = threading.Lock(), threading.Event()

    def poll() -> None:
        while not stop.is_set():
            with lock:
                phones = list(outstanding)
            if phones:
                results = poller.check_many(phones, TENANT)
                seen = perf()
                with lock:
                    for phone, result in zip(phones, results, strict=True):
                        if result.answer is Answer.SUPPRESSED:
                            latencies.append(seen - outstanding.pop(phone))
            stop.wait(0.002)

    def publish(first: int, count: int) -> int:
        batch = [mobile(PROPAGATION + first + i) for i in range(count)]
        events = [
            OppositionEvent.record(tenant=TENANT, phone=p, kind=Kind.OPPOSITION) for p in batch
        ]
        t0 = perf()
        with lock:
            outstanding.update(dict.fromkeys(batch, t0))
        return sum(isinstance(r, PublishError) for r in publisher.publish_many(events))

    def drain(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while outstanding and time.monotonic() < deadline:
            time.sleep(0.05)

    thread = threading.Thread(target=poll, name="bench-poller", daemon=True)
    thread.start()
    try:
        warm = 50
        publish(0, warm)
        drain(60)
        with lock:
            latencies.clear()
            outstanding.clear()
        before = _worker_histogram(metrics_port)
        total, sent, failed = int(rate * seconds), 0, 0
        start = perf()
        while sent < total:
            due = min(total, int((perf() - start) * rate) + 1)
            if due <= sent:
                time.sleep(0.001)
                continue
            failed += publish(warm + sent, due - sent)
            sent = due
            status.update(f"[3/4] propagation: published {sent}/{total}, visible {len(latencies)}")
        elapsed = perf() - start
        status.update("[3/4] propagation: waiting for the last events")
        drain(30)
        time.sleep(0.5)
        after = _worker_histogram(metrics_port)
    finally:
        stop.set()
        thread.join(5)
        publisher.close()
    diff = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    return {"propagation_p50_ms": _pct(latencies, 0.5) * 1e3,
            "propagation_p99_ms": _pct(latencies, 0.99) * 1e3,
            "propagation_max_ms": max(latencies, default=float("nan")) * 1e3,
            "propagation_events": float(total), "propagation_visible": float(len(latencies)),
            "propagation_not_visible": float(len(outstanding)), "publish_failed": float(failed),
            "publish_rate": total / elapsed,
            "worker_p50_le_ms": _bucket_quantile(diff, 0.5) * 1e3,
            "worker_p99_le_ms": _bucket_quantile(diff, 0.99) * 1e3}  # fmt: skip


def bench_memory(url: str, view_key: bytes, numbers: int, status: Status) -> Figures:
    """used_memory per number: ViewLayout intsets vs one plain set of E.164 strings."""
    buckets = max(1024, numbers // 400)
    layout = ViewLayout(view_key, default_buckets=buckets)
    admin = redis.Redis.from_url(url)
    admin.flushall()
    phones = [mobile(MEMORY + i) for i in range(numbers)]
    by_key: defaultdict[str, list[int]] = defaultdict(list)
    for i, phone in enumerate(phones):
        slot = layout.slot(TENANT, phone)
        by_key[slot.key].append(slot.member)
        if i % 100_000 == 0:
            status.update(f"[4/4] memory: hashing {i}/{numbers}")

    def measure(what: str, groups: list[tuple[str, list[int] | list[str]]]) -> int:
        admin.flushall()
        time.sleep(0.2)
        before = int(admin.info("memory")["used_memory"])
        writer = redis.Redis.from_url(url)
        _sadd_grouped(writer, groups, progress=lambda n: status.update(
            f"[4/4] memory: {what} {n}/{numbers}"))  # fmt: skip
        writer.close()  # frees the server's query buffer for this client
        time.sleep(0.5)
        return int(admin.info("memory")["used_memory"]) - before

    layout_bytes = measure("SADD view layout", list(by_key.items()))
    pipe = admin.pipeline(transaction=False)
    for key in by_key:
        pipe.object("encoding", key)
    encodings = Counter(e.decode() if isinstance(e, bytes) else str(e) for e in pipe.execute())
    plain_bytes = measure("SADD plain E.164 set", [("bench:plain", phones)])
    admin.flushall()
    admin.close()
    return {"memory_numbers": float(numbers), "memory_buckets": float(buckets),
            "largest_bucket": float(max(len(m) for m in by_key.values())),
            "intset_keys": float(encodings["intset"]), "view_keys": float(len(by_key)),
            "layout_bytes_per_number": layout_bytes / numbers,
            "plain_bytes_per_number": plain_bytes / numbers,
            "memory_ratio": plain_bytes / layout_bytes}  # fmt: skip


def _print(f: Figures, console: Console) -> None:
    table = Table("measure", "dnc", "baseline", "dnc / baseline", title="dnc bench")
    table.add_row(
        "check latency p50",
        f"{f['check_p50_ms']:.3f} ms",
        f"{f['sismember_p50_ms']:.3f} ms (SISMEMBER)",
        f"{f['check_ratio_p50']:.2f}x",
    )
    table.add_row(
        "check latency p99",
        f"{f['check_p99_ms']:.3f} ms",
        f"{f['sismember_p99_ms']:.3f} ms (SISMEMBER)",
        f"{f['check_ratio_p99']:.2f}x",
    )
    table.add_row(
        "bulk check throughput",
        f"{f['bulk_numbers_per_s']:,.0f} numbers/s",
        f"{f['smismember_numbers_per_s']:,.0f} numbers/s (SMISMEMBER)",
        f"{f['bulk_ratio']:.2f}x",
    )
    table.add_row(
        "propagation p50 / p99 / max",
        f"{f['propagation_p50_ms']:.1f} / "
        f"{f['propagation_p99_ms']:.1f} / {f['propagation_max_ms']:.1f} ms",
        "-",
        "-",
    )
    table.add_row("Redis bytes per number", f"{f['layout_bytes_per_number']:.1f} B (intsets)",
                  f"{f['plain_bytes_per_number']:.1f} B (plain set)",
                  f"{1 / f['memory_ratio']:.2f}x")  # fmt: skip
    console.print(table)
    console.print(
        f"single check: p50 {f['check_ratio_p50']:.2f}x / p99 {f['check_ratio_p99']:.2f}x a bare "
        f"SISMEMBER round trip ({f['check_unavailable']:.0f} unavailable answers)\n"
        f"bulk check: {f['bulk_ratio']:.2f}x the throughput of bare pipelined SMISMEMBER "
        "(baseline slots precomputed: Redis round trips only)\n"
        f"propagation: {f['propagation_visible']:.0f}/{f['propagation_events']:.0f} events visible "
        f"({f['propagation_not_visible']:.0f} not within 30 s, {f['publish_failed']:.0f} "
        f"publish failures), achieved publish rate {f['publish_rate']:.1f} events/s\n"
        f'worker dnc_propagation_seconds{{stage="suppression_view"}}: p50 <= '
        f"{f['worker_p50_le_ms']:g} ms, p99 <= {f['worker_p99_le_ms']:g} ms (bucket bounds)\n"
        f"memory at {f['memory_numbers']:,.0f} numbers: {f['memory_buckets']:.0f} buckets (largest "
        f"{f['largest_bucket']:.0f} members), {f['intset_keys']:.0f}/{f['view_keys']:.0f} keys "
        f"intset; {f['layout_bytes_per_number']:.1f} B/number vs {f['plain_bytes_per_number']:.1f} "
        f"B/number for a plain set: {f['memory_ratio']:.2f}x smaller"
    )


def run_bench(numbers: int, rate: int, seconds: float, console: Console) -> Figures:
    """Run all four measurements on a private stack, print them, return the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="dnc-bench-"))
    infra_log = logging.getLogger("dnc.infra")
    level = infra_log.level
    infra_log.setLevel(logging.WARNING)
    stack = LocalStack(tmp / "stack", kafka_version=os.environ.get("DNC_KAFKA_VERSION", KAFKA_DEFAULT_VERSION), partitions=3)
    worker: subprocess.Popen[bytes] | None = None
    figures: Figures = {}
    try:
        with console.status("starting Kafka and Redis") as status:
            stack.start()
            tenants_file = tmp / "tenants.toml"
            tenants_file.write_text(f'[tenants.{TENANT}]\ndefault_region = "FR"\n')
            port = free_port()
            dnc = {"DNC_KAFKA_BOOTSTRAP": stack.bootstrap_servers, "DNC_REDIS_URL": stack.redis_url,
                   "DNC_TENANTS_FILE": str(tenants_file), "DNC_OPPOSITIONS_TOPIC": "bench.oppositions",
                   "DNC_SUPPRESSIONS_TOPIC": "bench.suppressions",
                   "DNC_DEAD_LETTER_TOPIC": "bench.dead-letter", "DNC_WORKER_GROUP": "bench-worker",
                   "DNC_PARTITIONS": "3", "DNC_VIEW_BUCKETS": "1024", "DNC_LOG_LEVEL": "INFO",
                   "DNC_VIEW_KEY": "bench-view-key", "DNC_WORKER_METRICS_PORT": str(port)}  # fmt: skip
            settings = Settings.model_validate({k[4:].lower(): v for k, v in dnc.items()})
            tenants = TenantDirectory.load(tenants_file)
            layout = view_layout(settings, tenants)
            ensure_pipeline_topics(settings)
            status.update("starting the worker and waiting for the view to be ready")
            env = {k: v for k, v in os.environ.items() if not k.startswith("DNC_")} | dnc
            with (tmp / "worker.log").open("wb") as log:
                worker = subprocess.Popen([sys.executable, "-m", "dnc", "worker", "--id", "bench"],
                                          env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                          start_new_session=True)  # fmt: skip
            url = stack.redis_url
            checker = SuppressionChecker(
                checker_client(url, 2.0), layout, tenants, partitions_hint=3
            )
            deadline = time.monotonic() + 180
            while checker.check(mobile(SINGLE), TENANT).answer is Answer.UNAVAILABLE:
                if worker.poll() is not None or time.monotonic() > deadline:
                    tail = (tmp / "worker.log").read_text(errors="replace")[-3000:]
                    raise DncError(f"the bench worker did not become ready; its log:\n{tail}")
                time.sleep(0.2)
            bare = redis.Redis.from_url(url, socket_timeout=2.0)
            status.update("[1/4] single check latency")
            figures |= bench_single(checker, bare, layout, status)
            figures |= bench_bulk(checker, bare, layout, status)
            figures |= bench_propagation(
                settings, tenants, layout, url, rate, seconds, port, status
            )
            status.update("stopping the worker")
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
            figures |= bench_memory(url, settings.view_key.get_secret_value().encode(), numbers,
                                    status)  # fmt: skip
        _print(figures, console)
        return figures
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: still clean up
        try:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            stack.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
            infra_log.setLevel(level)
