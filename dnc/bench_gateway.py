"""`dnc bench-gateway`: the HTTP gateway against the library, measured side by side in one run.

On a private stack (Kafka, Redis, a real worker, a real `dnc gateway` process):

1. single check: ``GET /v1/suppressions/{phone}`` vs ``SuppressionChecker.check``, in
   alternating blocks (p50, p99, sequential throughput), then with 8 concurrent clients;
2. bulk check: ``POST /v1/checks`` vs ``check_many`` on the same lists (numbers/s);
3. propagation: ``POST /v1/oppositions`` (202 after Kafka's ack) then ``GET`` polled until
   it answers suppressed (p50, p99), one event at a time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from rich.console import Console
from rich.table import Table

from consumers.checker import Answer, SuppressionChecker, checker_client
from dnc.bench import percentile
from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION
from infra.launch.process import free_port
from infra.launch.stack import LocalStack
from infra.topics import ensure_pipeline_topics
from schemas.errors import DncError
from schemas.settings import Settings
from schemas.tenants import TenantDirectory, issue_token
from schemas.tokens import Role
from schemas.view import FAMILY_OF_KIND, ViewLayout, view_layout

TENANT = "bench"
REPO = Path(__file__).resolve().parent.parent
Figures = dict[str, float]
perf = time.perf_counter


def number(i: int) -> str:
    """The ``i``-th distinct valid French mobile number (E.164)."""
    return f"+3361{i:07d}"


@dataclass
class GatewayBench:
    """The private stack's clients: the library checker and the gateway's HTTP clients."""

    checker: SuppressionChecker
    url: str
    dialer_token: str
    agent_token: str
    redis_url: str
    layout: ViewLayout
    tenants: TenantDirectory

    def new_checker(self) -> SuppressionChecker:
        """A library checker with its own Redis client (one per thread)."""
        return SuppressionChecker(checker_client(self.redis_url, 2.0), self.layout, self.tenants)

    def client(self, token: str) -> httpx.Client:
        """A keep-alive HTTP client, as a dialer would hold one."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )


def bench_single(b: GatewayBench, iterations: int, block: int = 250) -> Figures:
    """p50/p99 and sequential throughput of one check: gateway vs library, alternating."""
    pool = [number(i) for i in range(2000)]
    samples: dict[str, list[float]] = {"gateway": [], "library": []}
    with b.client(b.dialer_token) as http:

        def via_gateway(phone: str) -> str:
            return str(http.get(f"/v1/suppressions/{phone}").json()["answer"])

        def via_library(phone: str) -> str:
            return b.checker.check(phone, TENANT).answer.value

        sides: dict[str, Callable[[str], str]] = {"gateway": via_gateway, "library": via_library}
        for n in range(-2, max(1, iterations // block)):  # two blocks of warm-up
            order = ("gateway", "library") if n % 2 == 0 else ("library", "gateway")
            for side in order:
                for j in range(block):
                    phone = pool[(n * block + j) % len(pool)]
                    started = perf()
                    answer = sides[side](phone)
                    if n >= 0:
                        samples[side].append(perf() - started)
                    if answer == Answer.UNAVAILABLE:
                        raise DncError(f"{side} answered unavailable during the benchmark")
    out: Figures = {}
    for side, values in samples.items():
        out[f"{side}_p50_ms"] = percentile(values, 0.5) * 1e3
        out[f"{side}_p99_ms"] = percentile(values, 0.99) * 1e3
        out[f"{side}_seq_per_s"] = len(values) / sum(values)
    return out


Asker = tuple[Callable[[str], object], Callable[[], None]]  # (ask one number, close)


def _throughput(new_asker: Callable[[], Asker], clients: int, seconds: float) -> float:
    """Answers per second of ``clients`` threads, each asking one number at a time."""
    counts = [0] * clients
    stop = threading.Event()

    def work(k: int) -> None:
        ask, close = new_asker()
        try:
            i = k
            while not stop.is_set():
                ask(number(i % 2000))
                counts[k] += 1
                i += clients
        finally:
            close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(10)
    return sum(counts) / seconds


def bench_concurrent(b: GatewayBench, clients: int = 8, seconds: float = 5.0) -> Figures:
    """Checks per second with ``clients`` concurrent dialers: gateway vs library."""

    def gateway_asker() -> Asker:
        http = b.client(b.dialer_token)
        return (lambda phone: http.get(f"/v1/suppressions/{phone}")), http.close

    def library_asker() -> Asker:
        checker = b.new_checker()
        return (lambda phone: checker.check(phone, TENANT)), (lambda: None)

    return {
        "gateway_concurrent_per_s": _throughput(gateway_asker, clients, seconds),
        "library_concurrent_per_s": _throughput(library_asker, clients, seconds),
    }


def bench_bulk(b: GatewayBench, size: int, batches: int = 20) -> Figures:
    """Numbers per second of a list scrub: POST /v1/checks vs check_many, alternating."""
    totals = {"gateway": 0.0, "library": 0.0}
    with b.client(b.dialer_token) as http:
        for n in range(-1, batches):
            phones = [number(100_000 + ((n + 1) * size + i) % 50_000) for i in range(size)]
            for side in ("gateway", "library") if n % 2 == 0 else ("library", "gateway"):
                started = perf()
                if side == "gateway":
                    response = http.post("/v1/checks", json={"phones": phones})
                    if response.status_code != 200:
                        raise DncError(f"bulk check answered {response.status_code}")
                else:
                    b.checker.check_many(phones, TENANT)
                if n >= 0:
                    totals[side] += perf() - started
    return {f"{side}_bulk_per_s": batches * size / total for side, total in totals.items()}


def bench_propagation(b: GatewayBench, events: int) -> Figures:
    """POST /v1/oppositions, then GET until suppressed: p50/p99 of both, one event at a time."""
    posted: list[float] = []
    visible: list[float] = []
    with b.client(b.agent_token) as agent, b.client(b.dialer_token) as dialer:
        for i in range(-10, events):  # ten of warm-up
            phone = number(500_000 + i + 10)
            started = perf()
            response = agent.post("/v1/oppositions", json={"phone": phone, "kind": "opposition"})
            if response.status_code != 202:
                raise DncError(f"POST answered {response.status_code}: {response.text}")
            acked = perf()
            deadline = started + 30
            while dialer.get(f"/v1/suppressions/{phone}").json()["answer"] != "suppressed":
                if perf() > deadline:
                    raise DncError(f"{phone} not suppressed 30 s after its POST")
            if i >= 0:
                posted.append(acked - started)
                visible.append(perf() - started)
    return {
        "post_p50_ms": percentile(posted, 0.5) * 1e3,
        "post_p99_ms": percentile(posted, 0.99) * 1e3,
        "propagation_p50_ms": percentile(visible, 0.5) * 1e3,
        "propagation_p99_ms": percentile(visible, 0.99) * 1e3,
        "propagation_events": float(len(visible)),
    }


def _report(f: Figures, console: Console) -> None:
    table = Table(
        "measure", "gateway (HTTP)", "library", "gateway / library", title="bench-gateway"
    )
    for q in ("p50", "p99"):
        g, lib = f[f"gateway_{q}_ms"], f[f"library_{q}_ms"]
        table.add_row(f"single check {q}", f"{g:.3f} ms", f"{lib:.3f} ms", f"{g / lib:.1f}x")
    rows = (
        ("seq_per_s", "single checks/s, 1 client"),
        ("concurrent_per_s", "single checks/s, 8 clients"),
        ("bulk_per_s", f"bulk numbers/s ({f['bulk_size']:.0f} per request)"),
    )
    for key, label in rows:
        g, lib = f[f"gateway_{key}"], f[f"library_{key}"]
        table.add_row(label, f"{g:,.0f}", f"{lib:,.0f}", f"{g / lib:.2f}x")
    for q in ("p50", "p99"):
        table.add_row(f"POST /v1/oppositions {q} (Kafka ack)", f"{f[f'post_{q}_ms']:.1f} ms")
        table.add_row(f"POST -> GET suppressed {q}", f"{f[f'propagation_{q}_ms']:.1f} ms")
    console.print(table)
    console.print(
        f"propagation over {f['propagation_events']:.0f} events, one at a time (POST, then GET "
        "polled back to back); machine: "
        f"{os.cpu_count()} cores, 1-minute load {f['load_average']:.2f} (stack, worker, gateway "
        "and bench share them)"
    )


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(args: list[str], env: dict[str, str], log: Path, out: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err, out.open("wb") as stdout:
        return subprocess.Popen(
            [sys.executable, "-m", "dnc", *args],
            env=env,
            stdout=stdout,
            stderr=err,
            cwd=REPO,
            start_new_session=True,
        )


def _wait(
    what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise DncError(f"the {what} did not get ready; its log ends:\n{tail}")
        time.sleep(0.2)


def run_gateway_bench(checks: int, bulk: int, events: int, console: Console) -> Figures:
    """Start a private stack, worker and gateway; measure; print and return the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="dnc-bench-gateway-"))
    # httpx logs every request at INFO, URL included: that would print phone numbers.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    version = os.environ.get("DNC_KAFKA_VERSION", KAFKA_DEFAULT_VERSION)
    stack = LocalStack(tmp / "stack", kafka_version=version, partitions=3)
    worker = gateway = None
    try:
        with console.status(f"starting Kafka {version} and Redis") as status:
            stack.start()
            tenants_file = tmp / "tenants.toml"
            tenants_file.write_text(f'[tenants.{TENANT}]\ndefault_region = "FR"\n')
            dialer_token = issue_token(tenants_file, TENANT, Role.DIALER, "bench-dialer")[1]
            agent_token = issue_token(tenants_file, TENANT, Role.AGENT, "bench-agent")[1]
            dnc = {"DNC_KAFKA_BOOTSTRAP": stack.bootstrap_servers, "DNC_REDIS_URL": stack.redis_url,
                   "DNC_TENANTS_FILE": str(tenants_file), "DNC_PARTITIONS": "3",
                   "DNC_OPPOSITIONS_TOPIC": "bench.oppositions", "DNC_VIEW_KEY": "bench-key",
                   "DNC_AUTHORITY_KEY": "bench-authority-key",
                   "DNC_SUPPRESSIONS_TOPIC": "bench.suppressions", "DNC_AUDIT_TOPIC": "bench.audit",
                   "DNC_DEAD_LETTER_TOPIC": "bench.dead-letter", "DNC_WORKER_GROUP": "bench",
                   "DNC_WORKER_METRICS_PORT": str(free_port()), "DNC_LOG_LEVEL": "INFO",
                   "DNC_GATEWAY_RATE_LIMIT_PER_SECOND": "1000000",
                   "DNC_GATEWAY_RATE_LIMIT_BURST": "1000000"}  # fmt: skip
            settings = Settings.model_validate({k[4:].lower(): v for k, v in dnc.items()})
            tenants = TenantDirectory.load(tenants_file)
            ensure_pipeline_topics(settings)
            env = {k: v for k, v in os.environ.items() if not k.startswith("DNC_")} | dnc
            status.update("starting the worker and the gateway")
            worker = _start(["worker", "--id", "bench"], env, tmp / "worker.log", tmp / "w.out")
            gateway = _start(["gateway", "--port", "0"], env, tmp / "gateway.log", tmp / "g.out")
            layout = view_layout(settings, tenants)
            checker = SuppressionChecker(checker_client(stack.redis_url, 2.0), layout, tenants)
            probe = number(0)
            _wait("worker", lambda: checker.check(probe, TENANT).answer is not Answer.UNAVAILABLE,
                  worker, tmp / "worker.log")  # fmt: skip
            found: list[str] = []

            def listening() -> bool:
                found.extend(re.findall(r"http://\S+", (tmp / "g.out").read_text()))
                return bool(found)

            _wait("gateway", listening, gateway, tmp / "gateway.log")
            b = GatewayBench(checker, found[0], dialer_token, agent_token, stack.redis_url,
                             layout, tenants)  # fmt: skip
            _suppress_half(stack.redis_url, layout)
            figures: Figures = {"bulk_size": float(bulk)}
            status.update("[1/3] single checks: gateway vs library")
            figures |= bench_single(b, checks)
            figures |= bench_concurrent(b)
            status.update("[2/3] bulk checks: gateway vs library")
            figures |= bench_bulk(b, bulk)
            status.update("[3/3] propagation: POST, then GET until suppressed")
            figures |= bench_propagation(b, events)
        figures["load_average"] = os.getloadavg()[0]
        _report(figures, console)
        return figures
    finally:
        with console.status("stopping the gateway, the worker, Kafka and Redis"):
            _stop(gateway)
            _stop(worker, timeout=60)
            stack.stop()
            shutil.rmtree(tmp, ignore_errors=True)


def _suppress_half(url: str, layout: ViewLayout) -> None:
    """Every other number of the single-check pool suppressed, straight in the view."""
    with redis.Redis.from_url(url) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(0, 2000, 2):
            slot = layout.slot(TENANT, number(i))
            pipe.sadd(slot.key + FAMILY_OF_KIND["opposition"], slot.member)  # (an opposition)
        pipe.execute()
