"""Fault drills: the promise, measured while real things fail.

A drill runs a private stack (Kafka with a listener behind Toxiproxy, Redis behind
Toxiproxy, PostgreSQL, a real `dnc worker` and `dnc sync`), publishes oppositions at a
steady rate, and has a dialer check every number Kafka acknowledged, all the time. Then it
injects one fault, heals it, and reports:

* answers, the share "unavailable", and the **oldest acknowledgement a "callable" answer
  was given for** (the promise: never older than ``DNC_MAX_STALENESS_SECONDS``);
* time to recover (fault healed -> every check answered again);
* nothing lost: every acknowledged number suppressed at the end, `dnc verify` clean
  (view and reference list).

The test suite (tests/test_faults.py) asserts on these figures; `dnc bench-faults` prints
them. Both use this module, so what is tested is what is measured.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import redis
from rich.console import Console
from rich.table import Table

from consumers.checker import Answer, SuppressionChecker
from consumers.verify import Reconciliation, reconcile
from infra.launch.process import free_port
from infra.launch.stack import LocalStack
from infra.postgres_service import PostgresService, start_postgres
from infra.topics import ensure_pipeline_topics
from infra.toxiproxy import Proxy, Toxiproxy, start_toxiproxy
from producers.publisher import OppositionPublisher
from schemas.errors import PublishError
from schemas.events import ConsentSource, Kind, OppositionEvent, Scope, Source
from schemas.partitioning import key_partition
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import owner_field, view_layout

log = logging.getLogger("dnc.drill")

TENANT = "drill"
CONSENT_CAMPAIGN = "optin"
CONSENT_EVERY = 4  # agents' ticks (50 ms) between two consents granted then withdrawn
TENANTS_TOML = f"""
[tenants.{TENANT}]
default_region = "FR"

[tenants.{TENANT}.reference_list]
sink = "postgres"

# A consent campaign (issue #19): consents granted then withdrawn under every fault.
[tenants.{TENANT}.campaigns.{CONSENT_CAMPAIGN}]
legal_basis = "consent"
"""
REPO = Path(__file__).resolve().parent.parent


@dataclass
class FaultResult:
    """What one drill measured."""

    fault: str
    answers: int = 0
    unavailable: int = 0
    callable_past_bound: int = 0  # the promise broken: must be 0
    max_callable_age: float = 0.0  # oldest acknowledgement answered "callable", seconds
    recovery_seconds: float | None = None  # healed -> serving again (None: never failed)
    outage_seconds: float | None = None  # injected -> serving again (None: never failed)
    published: int = 0
    lost: int = 0  # acknowledged, not suppressed at the end
    verify: Reconciliation | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def unavailable_share(self) -> float:
        """Share of answers that were "unavailable"."""
        return self.unavailable / self.answers if self.answers else 0.0

    def summary(self) -> str:
        """One line with every figure (what a failed assertion shows)."""
        return (
            f"{self.fault}: {self.answers} answers, {100 * self.unavailable_share:.0f}% "
            f"unavailable, {self.callable_past_bound} callable past the bound, oldest ack "
            f"answered callable {self.max_callable_age:.2f}s, outage {self.outage_seconds}, "
            f"recovery {self.recovery_seconds}, published {self.published}, lost {self.lost}, "
            f"verify differences {self.verify_differences} {self.notes}"
        )

    @property
    def verify_differences(self) -> int | None:
        """Differences `dnc verify` found at the end (None: not run)."""
        return None if self.verify is None else self.verify.differences


class TrafficTarget(Protocol):
    """What traffic runs against: a drill's stack, or a test's pipeline."""

    publisher: OppositionPublisher
    checker: SuppressionChecker


class Traffic:
    """Agents publishing at a steady rate and a dialer checking every acknowledged number
    (of tenant :data:`TENANT`, which ``drill``'s tenants must declare).

    ``watched``: numbers acknowledged earlier (number -> monotonic time of the ack) that
    the dialer checks every round too, e.g. a sample of a preloaded set under a rebuild.
    """

    def __init__(
        self,
        drill: TrafficTarget,
        first_number: int,
        rate: float,
        bound: float,
        chunk: int = 200,
        watched: dict[str, float] | None = None,
    ) -> None:
        self._drill = drill
        self.watched = dict(watched or {})
        self._next = first_number
        self._rate = rate
        self._bound = bound
        self._chunk = chunk
        self._stop_publishing = threading.Event()
        self._stop_checking = threading.Event()
        self._lock = threading.Lock()
        self.acked: dict[str, float] = {}  # number -> monotonic time of the acknowledgement
        # The consent campaign's numbers whose consent was withdrawn: number -> time the
        # withdrawal was acknowledged (never callable for the campaign past the bound).
        self.withdrawn: dict[str, float] = {}
        self.result = FaultResult(fault="")
        self.rounds: list[tuple[float, bool]] = []  # (time, every answer available)
        self._threads = [
            threading.Thread(target=self._publish, name="drill-agents", daemon=True),
            threading.Thread(target=self._check, name="drill-dialer", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop_publishing(self) -> None:
        self._stop_publishing.set()
        self._threads[0].join(timeout=60)

    def stop(self) -> None:
        self.stop_publishing()
        self._stop_checking.set()
        self._threads[1].join(timeout=60)

    def _number(self) -> str:
        self._next += 1
        return f"+336{self._next:08d}"

    def publish(self, events: list[OppositionEvent]) -> None:
        """Publish ``events`` (suppressions of :data:`TENANT`) now; every acknowledged one
        is checked like the agents' own (it must be suppressed within the bound)."""
        self._drill.publisher.publish_many(events, on_done=self._acknowledged)
        with self._lock:
            self.result.published = len(self.acked)

    def _acknowledged(self, event: OppositionEvent, outcome: object) -> None:
        if not isinstance(outcome, PublishError) and event.phone_e164:
            with self._lock:
                self.acked[event.phone_e164] = time.monotonic()

    def _publish(self) -> None:
        tick = 0.05
        per_tick = max(1, round(self._rate * tick))
        ticks = 0
        while not self._stop_publishing.is_set():
            started = time.monotonic()
            self.publish(
                [
                    OppositionEvent.record(
                        tenant=TENANT, phone=self._number(), kind=Kind.OPPOSITION
                    )
                    for _ in range(per_tick)
                ]
            )
            ticks += 1
            if ticks % CONSENT_EVERY == 0:
                self._consent_then_withdrawal()
            time.sleep(max(0.0, tick - (time.monotonic() - started)))

    def _consent_then_withdrawal(self) -> None:
        """The consent campaign: a consent recorded (the consents topic), then withdrawn
        (the log): once the withdrawal is acknowledged, past the bound, the campaign's
        dialer must never hear "callable" for the number."""
        number = self._number()
        grant = OppositionEvent.record(
            tenant=TENANT, phone=number, kind=Kind.CONSENT, scope=Scope.CAMPAIGN,
            campaign_id=CONSENT_CAMPAIGN, consent_source=ConsentSource.WEB_FORM,
            proof_ref=f"drill-form#{number}",
        )  # fmt: skip
        withdrawal = OppositionEvent.record(
            tenant=TENANT, phone=number, kind=Kind.CONSENT_WITHDRAWN, scope=Scope.CAMPAIGN,
            campaign_id=CONSENT_CAMPAIGN,
        )  # fmt: skip
        publisher = self._drill.publisher
        for event in (grant, withdrawal):
            if isinstance(publisher.publish_many([event])[0], PublishError):
                return  # (not acknowledged: nothing is promised about it)
        with self._lock:
            self.withdrawn[number] = time.monotonic()

    def _check(self) -> None:
        checker = self._drill.checker
        while not self._stop_checking.is_set():
            with self._lock:
                acked = list(self.acked.items()) + list(self.watched.items())
                withdrawn = list(self.withdrawn.items())
            if not acked:
                time.sleep(0.05)
                continue
            available = True
            broken = self.result.callable_past_bound
            rounds: list[tuple[list[tuple[str, float]], str | None]] = [
                (acked[i : i + self._chunk], None) for i in range(0, len(acked), self._chunk)
            ]
            rounds += [(withdrawn[i : i + self._chunk], CONSENT_CAMPAIGN)
                       for i in range(0, len(withdrawn), self._chunk)]  # fmt: skip
            for chunk, campaign in rounds:
                results = checker.check_many([n for n, _t in chunk], TENANT, campaign)
                answered_at = time.monotonic()  # after the call: the strictest reading
                for (_number, acked_at), result in zip(chunk, results, strict=True):
                    self._count(result.answer, answered_at - acked_at)
                    available = available and result.answer is not Answer.UNAVAILABLE
                time.sleep(0.005)  # a dialer between calls; leaves the agents their share
            self.rounds.append((time.monotonic(), available))
            if self.result.callable_past_bound > broken:
                log.warning(
                    "the dialer was answered callable %d times for numbers acknowledged "
                    "longer ago than the bound",
                    self.result.callable_past_bound - broken,
                )

    def _count(self, answer: Answer, age: float) -> None:
        r = self.result
        r.answers += 1
        if answer is Answer.UNAVAILABLE:
            r.unavailable += 1
        elif answer is Answer.CALLABLE:
            r.max_callable_age = max(r.max_callable_age, age)
            if age > self._bound:
                r.callable_past_bound += 1

    def serving_again_at(self) -> float | None:
        """When every answer was available again after the last unavailable round."""
        rounds = list(self.rounds)
        last_failed = max((i for i, (_t, ok) in enumerate(rounds) if not ok), default=None)
        if last_failed is None:
            return None
        after = [at for at, ok in rounds[last_failed:] if ok]
        return after[0] if after else float("nan")


@dataclass
class Fault:
    """A named failure: ``inject`` it, keep it for ``hold`` seconds, then ``heal`` it.

    ``prepare`` runs before the traffic starts (state to build, a worker to add);
    ``timeout`` is what the whole drill may take (the test's timeout)."""

    name: str
    inject: Callable[[FaultDrill], None]
    heal: Callable[[FaultDrill], None]
    hold: float
    description: str
    prepare: Callable[[FaultDrill], None] | None = None
    timeout: float = 240.0


class FaultDrill:
    """The private stack faults are injected into, with a supervised worker and sync."""

    def __init__(self, base_dir: Path | None = None, max_staleness: float = 5.0) -> None:
        self.base = base_dir or Path(tempfile.mkdtemp(prefix="dnc-drill-"))
        self._own_base = base_dir is None
        self.max_staleness = max_staleness
        self.toxiproxy: Toxiproxy = start_toxiproxy(self.base / "toxiproxy")
        self.kafka_proxy: Proxy = self.toxiproxy.proxy("drill-kafka", "127.0.0.1:9")
        self.stack = LocalStack(
            self.base / "stack", partitions=3, kafka_advertised_proxy_port=self.kafka_proxy.port
        )
        self.stack.start()
        assert self.stack.kafka is not None and self.stack.redis is not None
        self.kafka_proxy.set_upstream(self.stack.kafka.proxied_address)
        self.redis_proxy: Proxy = self.toxiproxy.proxy("drill-redis", self.stack.redis.address)
        self.postgres: PostgresService = start_postgres(self.base / "postgres", fast=True)
        tenants_file = self.base / "tenants.toml"
        tenants_file.write_text(TENANTS_TOML)
        common = {
            "DNC_TENANTS_FILE": str(tenants_file),
            "DNC_PARTITIONS": "3",
            "DNC_VIEW_KEY": secrets.token_hex(16),
            "DNC_AUTHORITY_KEY": secrets.token_hex(16),
            "DNC_MAX_STALENESS_SECONDS": str(max_staleness),
            "DNC_POSTGRES_DSN": self.postgres.dsn,
            "DNC_LOG_LEVEL": "INFO",
            # The workers' tables (RocksDB, one directory per instance) go with the drill.
            "DNC_DATA_DIR": str(self.base / "data"),
        }
        direct = {
            **common,
            "DNC_KAFKA_BOOTSTRAP": self.stack.bootstrap_servers,
            "DNC_REDIS_URL": self.stack.redis_url,
        }
        # The worker reaches Kafka and Redis through the proxies; everybody else directly.
        self.worker_env = {
            **os.environ,
            **common,
            "DNC_KAFKA_BOOTSTRAP": self.kafka_proxy.listen,
            "DNC_REDIS_URL": f"redis://{self.redis_proxy.listen}/0",
            "PYTHONUNBUFFERED": "1",
        }
        self.sync_env = {**os.environ, **direct, "PYTHONUNBUFFERED": "1"}
        self.settings = Settings.model_validate({k[4:].lower(): v for k, v in direct.items()})
        self.tenants = TenantDirectory.load(tenants_file)
        ensure_pipeline_topics(self.settings)
        self.publisher = OppositionPublisher.from_settings(self.settings, self.tenants)
        self.redis = redis.Redis.from_url(self.stack.redis_url, socket_timeout=5)
        self.checker = SuppressionChecker.from_settings(
            self.settings,
            self.tenants,
            redis.Redis.from_url(self.stack.redis_url, socket_timeout=2, socket_connect_timeout=2),
        )
        # Workers by instance (1: the drill's worker; 2: a second one in the group, for the
        # faults that need two), and the id each vouches under (``owner:P``).
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.worker_ids: dict[int, str] = {}
        self.sync: subprocess.Popen[bytes] | None = None
        # Numbers a fault preloaded (number -> monotonic time of the ack): every later
        # drill checks that each is still suppressed at its end.
        self.standing: dict[str, float] = {}
        self.traffic: Traffic | None = None  # the drill running now (faults publish with it)
        self._runs = 0
        self._supervising = True
        self._stopped_by_drill = False
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    # -- processes ------------------------------------------------------------------------
    def _spawn(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        self._runs += 1
        env = {**env, "DNC_WORKER_METRICS_PORT": str(free_port()),
               "DNC_SYNC_METRICS_PORT": str(free_port())}  # fmt: skip
        with (self.base / f"{name}-{self._runs}.log").open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "dnc", *args], env=env, stdout=out,
                stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )  # fmt: skip

    def start(self) -> None:
        """Start the worker and the sync, and wait until checks are answered."""
        self.start_worker()
        self.sync = self._spawn(["sync"], self.sync_env, "sync")
        self._supervisor.start()
        self.wait_serving(timeout=120)

    def start_worker(self, instance: int = 1) -> None:
        """A new worker process for ``instance`` (its previous one must be gone), with the
        instance's static group membership id, as `dnc up` and a StatefulSet give each."""
        self.worker_ids[instance] = worker_id = f"drill-{self._runs + 1}"
        env = {**self.worker_env, "DNC_WORKER_INSTANCE_ID": f"drill-worker-{instance}"}
        self.workers[instance] = self._spawn(["worker", "--id", worker_id], env, "worker")

    @property
    def worker(self) -> subprocess.Popen[bytes] | None:
        """The drill's worker (instance 1)."""
        return self.workers.get(1)

    def kill_worker(self, instance: int = 1) -> None:
        """SIGKILL: no chance to commit anything."""
        proc = self.workers.get(instance)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def retire_worker(self, instance: int) -> None:
        """SIGKILL ``instance`` and leave it down (no longer supervised)."""
        self.kill_worker(instance)
        self.workers.pop(instance, None)
        self.worker_ids.pop(instance, None)

    def restart_worker(self, instance: int = 1) -> None:
        """SIGTERM ``instance`` (as an orchestrator would) and start it again."""
        self._stopped_by_drill = True
        try:
            _terminate(self.workers[instance])
            self.start_worker(instance)
        finally:
            self._stopped_by_drill = False

    def owners(self) -> dict[int, str]:
        """Per partition: the worker id that last vouched for it (``owner:P``)."""
        meta_key = view_layout(self.settings, self.tenants).meta_keys()[0]
        found = {}
        for partition in range(self.settings.partitions):
            owner = self.redis.hget(meta_key, owner_field(partition))
            if isinstance(owner, bytes):
                found[partition] = owner.decode()
        return found

    def _supervise(self) -> None:
        """Restart a worker or sync that exits on its own (as `dnc up` or Kubernetes would)."""
        while self._supervising:
            time.sleep(0.5)
            if self._stopped_by_drill:
                continue
            for instance, proc in list(self.workers.items()):
                if proc.poll() is not None and self.workers.get(instance) is proc:
                    log.warning("worker %d exited (%s): restarting it", instance, proc.returncode)
                    self.start_worker(instance)
            if self.sync is not None and self.sync.poll() is not None:
                self.sync = self._spawn(["sync"], self.sync_env, "sync")

    def serving(self) -> bool:
        """A check is answered (callable or suppressed), not "unavailable"."""
        return self.checker.check("+33699999999", TENANT).answer is not Answer.UNAVAILABLE

    def wait_serving(self, timeout: float) -> float:
        """Seconds until checks are answered again; raises after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.serving():
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"checks still 'unavailable' after {timeout:.0f}s")

    def close(self) -> None:
        """Stop everything the drill started."""
        self._supervising = False
        for proc in (*self.workers.values(), self.sync):
            if proc is not None:
                _terminate(proc)
        self.publisher.close()
        self.postgres.stop()
        self.stack.stop()
        self.toxiproxy.stop()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    # -- one drill ------------------------------------------------------------------------
    def run(self, fault: Fault, first_number: int, rate: float = 100.0) -> FaultResult:
        """Traffic, the fault, recovery, and the end-to-end checks; the figures."""
        if fault.prepare is not None:
            fault.prepare(self)
        watched = random.sample(sorted(self.standing), min(WATCHED, len(self.standing)))
        traffic = Traffic(self, first_number, rate, self.max_staleness,
                          watched={n: self.standing[n] for n in watched})  # fmt: skip
        traffic.result.fault = fault.name
        self.traffic = traffic
        traffic.start()
        time.sleep(3.0)  # steady state first
        injected_at = time.monotonic()
        fault.inject(self)
        time.sleep(fault.hold)
        fault.heal(self)
        healed_at = time.monotonic()
        try:
            self.wait_serving(timeout=120)
        except TimeoutError as exc:
            traffic.result.notes.append(str(exc))
        time.sleep(3.0)  # steady state again
        traffic.stop_publishing()
        traffic.result.lost = self._wait_all_suppressed(traffic)
        traffic.stop()
        result = traffic.result
        self._sweep_standing(result)
        serving_at = traffic.serving_again_at()
        if serving_at is not None:
            result.recovery_seconds = max(0.0, serving_at - healed_at)
            result.outage_seconds = serving_at - injected_at
        result.verify = self._verify_until_clean()
        return result

    def _wait_all_suppressed(self, traffic: Traffic, timeout: float = 60.0) -> int:
        return wait_all_suppressed(self.checker, traffic, timeout)

    def _sweep_standing(self, result: FaultResult, timeout: float = 60.0) -> None:
        """Every preloaded number, until each is answered suppressed: a "callable" answer
        breaks the promise (they were acknowledged long ago), one never suppressed is lost."""
        pending, called = settle(self.checker, list(self.standing), timeout)
        result.lost += len(pending)
        for number, answered_at in called.items():
            age = answered_at - self.standing[number]
            result.max_callable_age = max(result.max_callable_age, age)
            result.callable_past_bound += 1 if age > self.max_staleness else 0

    def _verify_until_clean(self, timeout: float = 60.0) -> Reconciliation:
        """`dnc verify` until clean (the reference list may still be catching up)."""
        deadline = time.monotonic() + timeout
        found = reconcile(self.settings, self.tenants)
        while found.differences and time.monotonic() < deadline:
            time.sleep(1.0)
            found = reconcile(self.settings, self.tenants)
        return found


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 40.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_all_suppressed(checker: SuppressionChecker, traffic: Traffic, timeout: float) -> int:
    """Until every number ``traffic`` had acknowledged is answered suppressed; how many
    are not after ``timeout`` seconds (lost, unless the pipeline is still catching up)."""
    asks = [(list(traffic.acked), None), (list(traffic.withdrawn), CONSENT_CAMPAIGN)]
    deadline = time.monotonic() + timeout
    missing = sum(len(numbers) for numbers, _campaign in asks)
    while time.monotonic() < deadline:
        missing = 0
        for numbers, campaign in asks:
            results = checker.check_many(numbers, TENANT, campaign)
            missing += sum(1 for r in results if r.answer is not Answer.SUPPRESSED)
        if missing == 0:
            return 0
        time.sleep(0.5)
    return missing


def settle(
    checker: SuppressionChecker, numbers: list[str], timeout: float, chunk: int = 20_000
) -> tuple[list[str], dict[str, float]]:
    """Check ``numbers`` in bulk until each is answered suppressed or ``timeout`` runs out.

    Returns those still not suppressed, and the numbers answered "callable" meanwhile with
    the (monotonic) time of their last such answer."""
    pending = list(numbers)
    called: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while True:
        unsuppressed = []
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            results = checker.check_many(part, TENANT)
            answered_at = time.monotonic()
            for number, result in zip(part, results, strict=True):
                if result.answer is Answer.CALLABLE:
                    called[number] = answered_at
                if result.answer is not Answer.SUPPRESSED:
                    unsuppressed.append(number)
        pending = unsuppressed
        if not pending or time.monotonic() >= deadline:
            return pending, called
        time.sleep(0.5)


# -- the faults ---------------------------------------------------------------------------
def _kill_twice(d: FaultDrill) -> None:
    d._stopped_by_drill = True
    d.kill_worker()
    d.start_worker()
    time.sleep(2.0)  # the new one is joining, perhaps mid-batch: kill it too
    d.kill_worker()
    d.start_worker()
    d._stopped_by_drill = False


def _sigstop(d: FaultDrill) -> None:
    assert d.worker is not None
    d.worker.send_signal(signal.SIGSTOP)


def _sigcont(d: FaultDrill) -> None:
    assert d.worker is not None
    d.worker.send_signal(signal.SIGCONT)


def _restart_redis(d: FaultDrill, keep_snapshot: bool) -> None:
    redis_dir = d.stack.redis_dir
    if not keep_snapshot:
        (redis_dir / "dump.rdb").unlink(missing_ok=True)
    d.stack.restart_redis()


def _snapshot_now(d: FaultDrill) -> None:
    d.redis.save()  # the snapshot the restart will load, older by the hold time


def _flushall(d: FaultDrill) -> None:
    d.redis.flushall()


# Faults during a rebuild of many states: the worker re-materialises the view from its
# table in chunks (streams/maintenance.py), and a rebuild's chunks written to a Redis that
# lost the earlier ones must never be marked ready (issue #20, holes 1 and 6).
PRELOAD = 200_000  # oppositions preloaded once per stack: a rebuild writes them in chunks
PRELOAD_FIRST = 50_000_000  # their numbers: +33650000000 on (the traffic's stay below)
WATCHED = 3_000  # of them, checked by the dialer every round while a fault runs


def _preload(d: FaultDrill) -> None:
    """Once per stack, :data:`PRELOAD` oppositions published and applied; before every
    drill, each of them answered suppressed (a view left partial by an earlier drill is
    rebuilt first, so that each drill is judged on what it did itself)."""
    if not d.standing:
        acked: dict[str, float] = {}

        def done(event: OppositionEvent, outcome: object) -> None:
            if not isinstance(outcome, PublishError) and event.phone_e164:
                acked[event.phone_e164] = time.monotonic()

        numbers = [f"+336{PRELOAD_FIRST + i:08d}" for i in range(PRELOAD)]
        for start in range(0, PRELOAD, 20_000):
            d.publisher.publish_many(
                [OppositionEvent.record(tenant=TENANT, phone=n, kind=Kind.OPPOSITION)
                 for n in numbers[start : start + 20_000]], on_done=done,
            )  # fmt: skip
        d.standing = acked
    pending, called = settle(d.checker, list(d.standing), timeout=0)  # one pass
    if any(at - d.standing[n] > d.max_staleness for n, at in called.items()):
        log.warning("%d preloaded numbers answered callable before the drill: the view is "
                    "flushed for a full rebuild first", len(called))  # fmt: skip
        d.redis.flushall()
    # About 3,000 states/s applied on an idle machine; 250/s allowed for one shared with
    # other work (the burst is vouched for only once all of it is applied).
    pending, _called = settle(d.checker, pending, timeout=PRELOAD / 250)
    if pending:
        raise RuntimeError(f"{len(pending)} preloaded numbers still not suppressed")


def _await_rebuild(d: FaultDrill, share: float, timeout: float = 60.0) -> None:
    """Until ``share`` of a sample of the preloaded numbers is back in the view's sets, i.e.
    until the rebuild has written about that share of its chunks."""
    layout = view_layout(d.settings, d.tenants)
    sample = random.sample(sorted(d.standing), min(2_000, len(d.standing)))
    slots = [layout.locate(TENANT, number) for number in sample]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipe = d.redis.pipeline(transaction=False)
        for key, member in slots:
            pipe.sismember(key, str(member))
        if sum(1 for present in pipe.execute() if present) >= share * len(slots):
            log.info("the rebuild has written %.0f%% of the view", 100 * share)
            return
        time.sleep(0.005)
    log.warning("the rebuild did not write %.0f%% of the view within %.0fs", 100 * share, timeout)


def _flush_during_rebuild(d: FaultDrill) -> None:
    d.redis.flushall()  # the view is lost: the worker rebuilds it from its table
    _await_rebuild(d, 0.1)
    d.redis.flushall()  # again, as the rebuild's first chunk reappears


def _restart_during_rebuild(d: FaultDrill) -> None:
    d.redis.flushall()  # the view is lost: the worker rebuilds it from its table
    _await_rebuild(d, 0.1)
    d.redis.save()  # a snapshot taken during the rebuild (its first chunk)...
    _await_rebuild(d, 0.4)
    _restart_redis(d, keep_snapshot=True)  # ...reloaded once the next chunk was written


def _restore_during_rebuild(d: FaultDrill) -> None:
    """As :func:`_restart_during_rebuild`, without the restart: the copy is swapped in
    (SWAPDB), so the worker keeps its connections and Redis its run id."""
    d.redis.flushall()  # the view is lost: the worker rebuilds it from its table
    _await_rebuild(d, 0.1)
    pipe = d.redis.pipeline(transaction=False)
    for key in d.redis.scan_iter(match=view_layout(d.settings, d.tenants).pattern(), count=1000):
        pipe.copy(key, key, destination_db="1", replace=True)  # a copy of its first chunk...
    pipe.execute()
    _await_rebuild(d, 0.4)
    d.redis.swapdb(0, 1)  # ...restored once the next chunk was written
    redis.Redis.from_url(d.stack.redis_url, db=1).flushdb()


# Faults of the worker's table on disk (RocksDB, streams/table_store.py), with the preloaded
# states, so that replaying the whole changelog takes a while: whatever is left of the
# database, the worker rebuilds it from the changelog and fails closed meanwhile.
def _table_dir(d: FaultDrill, instance: int = 1) -> Path:
    settings = d.settings.model_copy(update={"worker_instance_id": f"drill-worker-{instance}"})
    return settings.worker_table_dir(d.worker_ids.get(instance, ""))


def _worker_log(d: FaultDrill) -> Path:
    return d.base / f"worker-{d._runs}.log"  # (the latest process started)


def _await_log(d: FaultDrill, text: str, timeout: float) -> bool:
    """Until the latest worker's log holds ``text``; noted in the drill's result if never."""
    log_file, deadline = _worker_log(d), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_file.exists() and text in log_file.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    if d.traffic is not None:
        d.traffic.result.notes.append(f"{log_file.name} never said {text!r} in {timeout:.0f}s")
    return False


def _with_worker_stopped(d: FaultDrill, damage: Callable[[Path], None]) -> None:
    """SIGKILL the worker, ``damage`` its table directory, start it again."""
    d._stopped_by_drill = True
    try:
        d.kill_worker()
        damage(_table_dir(d))
        d.start_worker()
    finally:
        d._stopped_by_drill = False


def _delete(table: Path) -> None:
    shutil.rmtree(table, ignore_errors=True)


def _corrupt(table: Path) -> None:
    """Every file of every partition's database overwritten with garbage (the lock aside)."""
    for file in table.rglob("*"):
        if file.is_file() and file.name != "LOCK":
            file.write_bytes(b"\x00not rocksdb\xff" * 256)


def _kill_during_recovery(d: FaultDrill) -> None:
    """The table deleted (the whole changelog to replay), and the worker SIGKILLed again
    while it replays it: the next one resumes from what the first wrote to its database."""
    _with_worker_stopped(d, _delete)
    if _await_log(d, "Restoring state from changelog", timeout=60):
        time.sleep(2.0)  # part of it written to RocksDB, with its persisted offsets
    _with_worker_stopped(d, lambda _table: None)


def _replayed(d: FaultDrill) -> None:
    """Until the new worker has replayed its changelog and rebuilt the view (the whole
    changelog of the preloaded states: minutes on a loaded machine; the drill's dialer
    checks all along that nothing acknowledged is answered "callable" meanwhile)."""
    _await_log(d, "view ready", timeout=900)


def _corrupted_was_replaced(d: FaultDrill) -> None:
    _await_log(d, "its states are recovered from the whole changelog", timeout=60)
    _replayed(d)


class StaleOwner:
    """Two workers in the group; the drill's worker (1) SIGSTOPped past the session timeout
    while it applies a burst of refusals and admin lifts of its partitions, so worker 2
    takes its partitions; objections to those numbers, published meanwhile, are applied by
    worker 2. Then worker 1 resumes (its batch in flight finishes late), worker 2 is
    SIGKILLed (worker 1 takes everything back) and worker 1 is restarted (it recovers from
    the changelog). Every objection must still be in force once the refusals have expired
    (issue #20, hole 2: writes of a worker that lost its partition are not fenced)."""

    LIFTED = 1_000  # numbers refused, then lifted in the burst
    REFUSED = 3_000  # numbers refused in the burst
    EXPIRY = 60.0  # seconds a refusal suppresses (its explicit expires_at)

    def __init__(self, first_number: int) -> None:
        self._next = first_number
        self._expired_by = 0.0  # monotonic time every refusal has ended by

    def prepare(self, d: FaultDrill) -> None:
        d.start_worker(2)
        _wait(lambda: set(d.owners().values()) == set(d.worker_ids.values()) and d.serving(),
              120, "both workers vouching for partitions")  # fmt: skip

    def inject(self, d: FaultDrill) -> None:
        assert d.traffic is not None
        frozen = {p for p, owner in d.owners().items() if owner == d.worker_ids[1]}
        if not frozen:
            raise RuntimeError(f"worker 1 vouches for no partition: {d.owners()}")
        numbers = self._numbers_of(d, frozen, self.LIFTED + self.REFUSED)
        lifted = numbers[: self.LIFTED]
        until = datetime.now(UTC) + timedelta(seconds=self.EXPIRY)
        self._expired_by = time.monotonic() + self.EXPIRY
        d.publisher.publish_many([self._refusal(n, until) for n in lifted])
        settle(d.checker, lifted, timeout=60)
        burst = [self._refusal(n, until) for n in numbers[self.LIFTED :]]
        for i, number in enumerate(lifted):  # lifts spread through the refusals
            burst.insert(i * 4, OppositionEvent.record(
                tenant=TENANT, phone=number, kind=Kind.LIFT, source=Source.ADMIN,
                justification="drill: a lift in flight on a worker about to freeze",
            ))  # fmt: skip
        d.publisher.publish_many(burst)
        time.sleep(0.5)  # worker 1 is fetching and applying the burst...
        d.workers[1].send_signal(signal.SIGSTOP)  # ...and freezes past the session timeout
        d.traffic.publish(
            [OppositionEvent.record(tenant=TENANT, phone=n, kind=Kind.OPPOSITION) for n in numbers]
        )
        survivor = d.worker_ids[2]
        _wait(lambda: set(d.owners().values()) == {survivor}, 120,
              "worker 2 vouching for every partition")  # fmt: skip
        pending, _called = settle(d.checker, numbers, timeout=60)
        if pending:
            d.traffic.result.notes.append(f"{len(pending)} objections not applied by worker 2")

    def heal(self, d: FaultDrill) -> None:
        d.workers[1].send_signal(signal.SIGCONT)  # its batch in flight lands now
        try:  # (back in the group; the scenario goes on if it got no partition)
            _wait(lambda: d.worker_ids[1] in d.owners().values(), 60,
                  "worker 1 vouching again after it resumed")  # fmt: skip
        except TimeoutError as exc:
            log.warning("%s", exc)
        d.retire_worker(2)  # the survivor SIGKILLed: worker 1 takes everything back
        _wait(lambda: set(d.owners().values()) == {d.worker_ids[1]}, 120,
              "worker 1 vouching for every partition")  # fmt: skip
        d.restart_worker(1)  # the surviving worker restarted: its state from the changelog
        d.wait_serving(timeout=120)
        time.sleep(max(0.0, self._expired_by - time.monotonic()) + 3.0)  # refusals over

    def _numbers_of(self, d: FaultDrill, partitions: set[int], count: int) -> list[str]:
        """``count`` new numbers of :data:`TENANT` whose events land on ``partitions``."""
        found: list[str] = []
        while len(found) < count:
            self._next += 1
            number = f"+336{self._next:08d}"
            if key_partition(f"{TENANT}:{number}".encode(), d.settings.partitions) in partitions:
                found.append(number)
        return found

    @staticmethod
    def _refusal(number: str, until: datetime) -> OppositionEvent:
        return OppositionEvent.record(
            tenant=TENANT, phone=number, kind=Kind.REFUSAL, expires_at=until
        )


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def _kill_broker(d: FaultDrill) -> None:
    assert d.stack.kafka is not None
    d.stack.kafka.kill()


def _nothing(_d: FaultDrill) -> None:
    return None


_STALE_OWNER = StaleOwner(first_number=60_000_000)

FAULTS: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault("worker SIGKILL twice", _kill_twice, _nothing, 0.0,
              "the worker killed mid-batch, restarted, killed again while joining"),
        Fault("worker SIGSTOP 8 s", _sigstop, _sigcont, 8.0,
              "the worker frozen longer than the bound, then resumed"),
        Fault("Redis FLUSHALL", _flushall, _nothing, 2.0,
              "the whole view deleted"),
        Fault("Redis restart, empty", _nothing, lambda d: _restart_redis(d, False), 0.0,
              "Redis restarted without persistence"),
        Fault("Redis restart, old snapshot", _snapshot_now, lambda d: _restart_redis(d, True), 4.0,
              "Redis restarted from a snapshot taken 4 s earlier"),
        Fault("broker SIGKILL", _kill_broker, lambda d: d.stack.restart_kafka(), 3.0,
              "the Kafka broker killed, restarted 3 s later"),
        Fault("worker cut from Kafka 8 s", lambda d: d.kafka_proxy.disable(),
              lambda d: d.kafka_proxy.enable(), 8.0,
              "worker to Kafka connections refused (desktops still publish)"),
        Fault("worker cut from Redis 8 s", lambda d: d.redis_proxy.disable(),
              lambda d: d.redis_proxy.enable(), 8.0,
              "worker to Redis connections refused (dialers still read)"),
        Fault("Redis +200 ms latency", lambda d: d.redis_proxy.add_latency(200),
              lambda d: d.redis_proxy.remove_toxics(), 8.0,
              "200 ms added to every worker to Redis reply"),
        Fault("PostgreSQL down 8 s", lambda d: d.postgres.stop(),
              lambda d: d.postgres.restart(), 8.0,
              "the reference list's database stopped, then started"),
        # (issue #20)
        Fault("2 workers, one SIGSTOPped past the session timeout",
              _STALE_OWNER.inject, _STALE_OWNER.heal, 0.0,
              "refusals and lifts in flight on a frozen worker; objections applied by the "
              "other; it resumes; the other SIGKILLed; it restarts",
              prepare=_STALE_OWNER.prepare, timeout=600),
        Fault("worker SIGKILL during recovery from RocksDB", _kill_during_recovery, _replayed,
              0.0, f"{PRELOAD:,} states: the worker's table directory deleted, the worker "
              "restarted, and SIGKILLed again while it replays the changelog",
              prepare=_preload, timeout=1800),
        Fault("RocksDB directory deleted", lambda d: _with_worker_stopped(d, _delete),
              _replayed, 0.0, f"{PRELOAD:,} states: the worker SIGKILLed, its table "
              "directory deleted, the worker restarted", prepare=_preload, timeout=1800),
        Fault("RocksDB directory corrupted", lambda d: _with_worker_stopped(d, _corrupt),
              _corrupted_was_replaced, 0.0, f"{PRELOAD:,} states: the worker SIGKILLed, every "
              "file of its databases overwritten, the worker restarted", prepare=_preload,
              timeout=1800),
        Fault("Redis FLUSHALL during a rebuild", _flush_during_rebuild, _nothing, 0.0,
              f"{PRELOAD:,} states: flushed, and flushed again as the rebuild's first chunk "
              "reappears", prepare=_preload, timeout=900),
        Fault("Redis restart during a rebuild", _restart_during_rebuild, _nothing, 0.0,
              f"{PRELOAD:,} states: flushed; a snapshot after the rebuild's first chunk, "
              "reloaded by a restart after its next", prepare=_preload, timeout=900),
        Fault("Redis restored during a rebuild", _restore_during_rebuild, _nothing, 0.0,
              f"{PRELOAD:,} states: flushed; a copy after the rebuild's first chunk, swapped "
              "in after its next (same server, connections and run id)", prepare=_preload,
              timeout=900),
    ]
}  # fmt: skip


def render_results(results: list[FaultResult], bound: float) -> Table:
    """The drill table `dnc bench-faults` prints (and the README shows)."""
    table = Table(
        "fault",
        "answers",
        "unavailable",
        f"callable > {bound:g}s after ack",
        "oldest ack answered callable",
        "outage (fault -> serving)",
        "recovery (healed -> serving)",
        "lost",
        "verify",
        title=f"fault drills (staleness bound {bound:g} s)",
    )
    for r in results:
        outage = "none" if r.outage_seconds is None else f"{r.outage_seconds:.1f} s"
        recovery = "-" if r.recovery_seconds is None else f"{r.recovery_seconds:.1f} s"
        table.add_row(
            r.fault,
            f"{r.answers:,}",
            f"{100 * r.unavailable_share:.0f}%",
            str(r.callable_past_bound),
            f"{r.max_callable_age:.2f} s",
            outage,
            recovery,
            str(r.lost),
            "clean" if r.verify_differences == 0 else f"{r.verify_differences} differences",
        )
    return table


def run_drills(names: list[str] | None, rate: float, console: Console) -> list[FaultResult]:
    """`dnc bench-faults`: every fault (or the named ones) on one private stack."""
    chosen = [FAULTS[n] for n in names] if names else list(FAULTS.values())
    console.print("starting a private stack (Kafka, Redis, PostgreSQL, Toxiproxy, worker, sync)")
    drill = FaultDrill()
    results: list[FaultResult] = []
    try:
        drill.start()
        for i, fault in enumerate(chosen):
            console.print(f"[{i + 1}/{len(chosen)}] {fault.name}: {fault.description} ...")
            started = time.monotonic()
            results.append(drill.run(fault, first_number=(i + 1) * 1_000_000, rate=rate))
            console.print(f"    done in {time.monotonic() - started:.0f} s")
    finally:
        drill.close()
    console.print(render_results(results, drill.max_staleness))
    return results
