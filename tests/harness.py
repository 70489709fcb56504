"""Test harness: one pipeline (topics, worker process, clients) on the session's real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from consumers.checker import CheckResult, SuppressionChecker, checker_client
from infra.launch.process import free_port
from infra.launch.stack import LocalStack
from infra.topics import ensure_pipeline_topics
from producers.publisher import OppositionPublisher
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import owner_field, view_layout

REPO = Path(__file__).resolve().parent.parent

TENANTS_TOML = """
[tenants.acme]
default_region = "FR"

# Campaigns with dial rules (acme's other campaigns keep the tenant's defaults).
[tenants.acme.campaigns.optin]
legal_basis = "consent"

[tenants.acme.campaigns.capped]
max_attempts = 2

[tenants.acme.campaigns.capped4]
max_attempts = 4
attempt_period = "P30D"

[tenants.acme.campaigns.weekdays]
calling_hours = "FR"

[tenants.globex]
default_region = "GB"

[tenants.umbrella]
default_region = "FR"
refusal_cooldown = "P30D"
"""
# acme's one consent campaign, ``optin-2027``, calls only numbers with a valid consent, 4
# times in 30 days; no calling hours, so that what a test sees does not depend on the day
# and hour it runs.
CONSENT_TENANTS_TOML = """
[tenants.acme]
default_region = "FR"

[tenants.acme.campaigns.optin-2027]
legal_basis = "consent"
max_attempts = 4

[tenants.globex]
default_region = "GB"
"""


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    """Poll until ``predicate`` returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def stop_process(
    process: subprocess.Popen[bytes] | None, timeout: float, what: str, tail: Callable[[], str]
) -> int | None:
    """SIGTERM, as an orchestrator would; wait, and fail with the log if it does not stop.

    Returns the exit status (None when it was never started)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                f"{what} did not stop within {timeout}s of SIGTERM:\n{tail()}"
            ) from None
    return process.returncode


def pipeline_env(stack: LocalStack, tenants_file: Path, prefix: str) -> dict[str, str]:
    """The DNC_* settings of a pipeline with its own topics and groups on ``stack``
    (replicated 3 times on a cluster of 3 brokers or more, as `dnc up --brokers 3` does; the
    view on a Redis Cluster when the stack runs one)."""
    cluster = {"DNC_REPLICATION_FACTOR": "3"} if stack.brokers >= 3 else {}
    if stack.use_redis_cluster:
        cluster["DNC_REDIS_CLUSTER"] = "true"
    return {
        **cluster,
        "DNC_KAFKA_BOOTSTRAP": stack.bootstrap_servers,
        "DNC_REDIS_URL": stack.redis_url,
        "DNC_TENANTS_FILE": str(tenants_file),
        "DNC_OPPOSITIONS_TOPIC": f"{prefix}.oppositions",
        "DNC_ADMIN_TOPIC": f"{prefix}.admin",
        "DNC_CONSENTS_TOPIC": f"{prefix}.consents",
        "DNC_SUPPRESSIONS_TOPIC": f"{prefix}.suppressions",
        "DNC_DEAD_LETTER_TOPIC": f"{prefix}.dead-letter",
        "DNC_AUDIT_TOPIC": f"{prefix}.audit",
        "DNC_REFERENCE_DEAD_LETTER_TOPIC": f"{prefix}.reference-dead-letter",
        "DNC_SYNC_GROUP_PREFIX": f"{prefix}-sync",
        "DNC_WORKER_GROUP": f"{prefix}-worker",
        "DNC_PARTITIONS": "3",
        "DNC_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "DNC_EXPIRY_INTERVAL_SECONDS": "0.2",
        "DNC_VIEW_KEY": "test-view-key-" + prefix,
        "DNC_AUTHORITY_KEY": "test-authority-key-" + prefix,
        "DNC_LOG_LEVEL": "INFO",
    }


class Pipeline:
    """Unique topics and group on the shared stack; a real `dnc worker` subprocess."""

    def __init__(
        self,
        stack: LocalStack,
        tmp: Path,
        prefix: str,
        tenants_toml: str = TENANTS_TOML,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.stack = stack
        self.tmp = tmp
        self.prefix = prefix
        tenants_file = tmp / "tenants.toml"
        tenants_file.write_text(tenants_toml)
        dnc = {**pipeline_env(stack, tenants_file, prefix), **(extra_env or {})}
        self.env = {**os.environ, **dnc}
        self.settings = Settings(
            **{k[4:].lower(): v for k, v in dnc.items() if k.startswith("DNC_")}
        )
        self.tenants = TenantDirectory.load(tenants_file)
        ensure_pipeline_topics(self.settings)
        self.publisher = OppositionPublisher.from_settings(self.settings, self.tenants)
        cluster = self.settings.redis_cluster
        self.redis = checker_client(stack.redis_url, 5, cluster=cluster)
        self.checker = SuppressionChecker.from_settings(
            self.settings, self.tenants, checker_client(stack.redis_url, 2, cluster=cluster)
        )
        # The view's metadata (the first shard's copy on a sharded view: all say the same
        # owners once ready).
        self.meta_key = view_layout(self.settings, self.tenants).meta_keys()[0]
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_id = ""
        self.metrics_port = 0
        self._worker_runs = 0
        # Every worker started by start_workers(), by worker id (several in one group).
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.worker_metrics_ports: dict[str, int] = {}  # (the workers of start_workers)

    # -- the worker process -------------------------------------------------------------
    def start_worker(self, wait_ready: bool = True, worker_id: str | None = None) -> None:
        """Start `dnc worker` and wait until the view is ready. ``worker_id``: the same id
        again is the same worker restarted (its table directory, its claims); default, a
        new one per start."""
        self._worker_runs += 1
        self.worker_id = worker_id or f"test-{self._worker_runs}"
        self.metrics_port = free_port()
        env = {
            **self.env,
            "DNC_WORKER_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
        }
        with (self.tmp / f"worker-{self._worker_runs}.log").open("wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "dnc", "worker", "--id", self.worker_id],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        if wait_ready:
            self.wait_ready()

    def start_workers(self, count: int, timeout: float = 120) -> list[str]:
        """Start ``count`` more workers in the group, as `dnc up --workers N` does (each its
        own id, static membership id, log and metrics port); wait until every partition
        is vouched for by one of them and checks are answered. Returns their ids."""
        ids = []
        for _ in range(count):
            self._worker_runs += 1
            worker_id = f"test-{self._worker_runs}"
            self.worker_metrics_ports[worker_id] = free_port()
            env = {
                **self.env,
                "DNC_WORKER_METRICS_PORT": str(self.worker_metrics_ports[worker_id]),
                "DNC_WORKER_INSTANCE_ID": f"{self.prefix}-{worker_id}",
                "PYTHONUNBUFFERED": "1",
                "PYTHONFAULTHANDLER": "1",
            }
            with (self.tmp / f"worker-{self._worker_runs}.log").open("wb") as log:
                self.workers[worker_id] = subprocess.Popen(
                    [sys.executable, "-m", "dnc", "worker", "--id", worker_id],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                )  # fmt: skip
            ids.append(worker_id)

        def ready() -> bool:
            owners = set(self.owners().values())
            if len(self.owners()) < self.settings.partitions or not owners <= set(self.workers):
                return False
            tenant = "acme" if "acme" in self.tenants else self.tenants.names[0]
            return self.check("+33612345678", tenant).answer.value != "unavailable"

        wait_for(ready, timeout=timeout, interval=0.2, what=f"{count} workers vouching")
        return ids

    def owners(self) -> dict[int, str]:
        """Per partition: the worker that last vouched for it in the view (``owner:P``)."""
        found = {}
        for p in range(self.settings.partitions):
            owner = self.redis.hget(self.meta_key, owner_field(p))
            if owner is not None:
                found[p] = owner.decode()
        return found

    def kill_worker_id(self, worker_id: str) -> None:
        """SIGKILL one of the workers of :meth:`start_workers`."""
        proc = self.workers[worker_id]
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def wait_ready(self, timeout: float = 90) -> None:
        """Until a check answers something other than unavailable."""

        me = self.worker_id.encode()

        def ready() -> bool:
            assert self.worker is not None and self.worker.poll() is None, self.worker_log()
            if self.redis.hget(self.meta_key, owner_field(0)) != me:  # vouched for by this worker
                return False
            tenant = "acme" if "acme" in self.tenants else self.tenants.names[0]
            return self.check("+33612345678", tenant).answer.value != "unavailable"

        try:
            wait_for(ready, timeout=timeout, interval=0.2, what="the view to be ready")
        except AssertionError as exc:  # what a person debugging it needs: why, and the log
            raise AssertionError(f"{exc}\n{self.diagnose()}") from None

    def stop_worker(self, timeout: float = 60) -> None:
        """Graceful stop (SIGTERM), as an orchestrator would."""
        if self.worker is not None and self.worker.poll() is not None:
            print(f"worker {self._worker_runs} had already exited with {self.worker.returncode}")
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
                raise AssertionError("worker did not stop within 60s of SIGTERM") from None

    def kill_worker(self) -> None:
        """Crash (SIGKILL): no chance to commit anything."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait()

    def worker_log(self, tail: int | None = 5000) -> str:
        """The latest worker log (its last ``tail`` characters; None: all of it)."""
        path = self.tmp / f"worker-{self._worker_runs}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return text if tail is None else text[-tail:]

    # -- helpers ------------------------------------------------------------------------
    def check(self, phone: str, tenant: str, campaign: str | None = None) -> CheckResult:
        """The library check."""
        return self.checker.check(phone, tenant, campaign)

    def wait_answer(
        self, phone: str, tenant: str, answer: str, campaign: str | None = None, timeout: float = 30
    ) -> CheckResult:
        """Poll the check until it gives ``answer``."""

        def got() -> CheckResult | None:
            result = self.check(phone, tenant, campaign)
            return result if result.answer.value == answer else None

        return wait_for(got, timeout=timeout, what=f"{phone}@{tenant}/{campaign} -> {answer}")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the real `dnc` CLI with this pipeline's environment."""
        return subprocess.run(
            [sys.executable, "-m", "dnc", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )

    def consume(
        self,
        topic: str,
        count: int,
        timeout: float = 30,
        idle: float | None = None,
        until: Callable[[list[Message]], bool] | None = None,
    ) -> list[Message]:
        """Read ``count`` messages of ``topic`` from the start (or until ``idle`` s of quiet)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.stack.bootstrap_servers,
                "group.id": f"reader-{time.monotonic_ns()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        try:
            while len(out) < count and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    if idle is not None and out and time.monotonic() - last > idle:
                        break
                    continue
                last = time.monotonic()
                out.append(msg)
                if until is not None and until(out):
                    break
        finally:
            consumer.close()
        return out

    def commit_lag(self, topic: str) -> dict[int, int]:
        """Per partition of ``topic``: end offset minus the worker group's committed offset."""
        consumer = Consumer(
            {"bootstrap.servers": self.stack.bootstrap_servers,
             "group.id": self.settings.worker_group, "enable.auto.commit": False}
        )  # fmt: skip
        try:
            tps = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
            committed = consumer.committed(tps, timeout=10)
            return {
                tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] - max(tp.offset, 0)
                for tp in committed
            }
        finally:
            consumer.close()

    def metrics(self, worker_id: str | None = None) -> str:
        """The worker's /metrics page (that of ``worker_id``, one of :meth:`start_workers`)."""
        import urllib.request

        port = self.metrics_port if worker_id is None else self.worker_metrics_ports[worker_id]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    def messages_done(self) -> float:
        """Messages this worker has taken to the end (view written, Kafka acknowledged):
        ``dnc_worker_batch_events_sum``, observed once a batch is done. A barrier for tests
        that must see what a message did, not only that it was read."""
        prefix = "dnc_worker_batch_events_sum "
        lines = [line for line in self.metrics().splitlines() if line.startswith(prefix)]
        return float(lines[0].removeprefix(prefix)) if lines else 0.0

    def diagnose(self) -> str:
        """What a person debugging a failure wants: status, counters, the worker's log tail."""
        parts = [self.cli("status", "--json").stdout]
        try:
            parts += [line for line in self.metrics().splitlines() if line.startswith("dnc_")]
        except OSError as exc:
            parts.append(f"(no metrics: {exc})")
        parts.append(self.worker_log())
        return "\n".join(parts)

    def close(self) -> None:
        """Stop the workers and release clients."""
        try:
            for worker_id, proc in self.workers.items():
                stop_process(proc, 60, f"worker {worker_id}", self.worker_log)
            self.stop_worker()
        finally:
            self.publisher.close()
            self.redis.close()


def raw_event(**fields: Any) -> bytes:
    """An event as a non-Python producer would write it."""
    return json.dumps(fields).encode()
