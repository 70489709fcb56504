"""`dnc up`: the whole pipeline on loopback, in the foreground; Ctrl-C stops everything.

Services: Kafka, Redis, PostgreSQL (the reference list) and Prometheus (graphs and alert
rules), then the processes: the worker, the reference-list sync, the HTTP gateway, and with
``--demo`` simulated agent desktops and dialers plus a live summary. A process that dies is
restarted (a few times, with a pause); Ctrl-C stops the processes first, then the services.

Nothing it starts may outlive it: SIGINT, SIGTERM and SIGHUP (the terminal closed) all stop
everything in order, output that nobody reads any more (`dnc up | tee`, then Ctrl-C) goes to
``DATA_DIR/up.log`` instead of failing, and every process has a pid file
(:mod:`dnc.pidfiles`) so that what a killed `dnc up` left behind is found and stopped by the
next one, or by `dnc down`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from dnc.exits import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE
from dnc.health import sync_reports
from dnc.live_summary import read_snapshot, render
from dnc.pidfiles import SUPERVISOR, RunDirectory
from dnc.settled import SETTLED_FOR_SECONDS, group_settled
from infra.acls import SUPERUSER, apply_acls, client_env, stack_credentials
from infra.launch.kafka_config import KafkaSecurity
from infra.launch.process import RunningService, ServiceError
from infra.launch.stack import LocalStack
from infra.ports import PlannedPort, PortClash, check_ports
from infra.postgres_service import start_postgres
from infra.prometheus_service import (
    OPS_PAGE,
    local_prometheus_config,
    run_rules,
    start_prometheus,
)
from schemas.settings import AUTHORITY_KEY_FILE, REDIS_CLUSTER_FILE, VIEW_KEY_FILE, Settings
from schemas.tenants import TenantDirectory

SECURED_MARKER = "sasl-scram"  # in the Kafka data dir: formatted with the superuser
RULES_FILE = Path(__file__).resolve().parent.parent / "infra" / "prometheus" / "alerts.yml"
# Three scrapes (every 5 s): the processes of an earlier run are gone from the ops page's
# "now" tables 15 s after it stopped, not 5 minutes.
PROMETHEUS_LOOKBACK = "15s"
MAX_RESTARTS = 5
READY_TIMEOUT_SECONDS = 180  # then "pipeline started (not ready yet: ...)"


@dataclass
class Child:
    """A pipeline process `dnc up` runs and restarts if it dies."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    run_dir: RunDirectory
    ports: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        """Start (or restart) the process, its output appended to its log."""
        with self.log_path.open("ab") as log_handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dnc", *self.args],
                env=self.env,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches `dnc up`, which stops us in order
            )
        self.run_dir.record(self.name, self.process.pid, self.ports)
        self.started_at = time.monotonic()

    @property
    def exited(self) -> int | None:
        """The exit status once it has exited."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float, console: Console) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            self.run_dir.forget(self.name)
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            console.print(f"[red]the {self.name} did not stop within {timeout:.0f}s: killed it[/]")
            self.process.kill()
            self.process.wait()
        self.run_dir.forget(self.name)


def ensure_secret_file(path: Path) -> str:
    """The secret in ``path``, generated there once (mode 600) if the file does not exist."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def ensure_view_key(settings: Settings) -> str:
    """The stack's secret view key: DNC_VIEW_KEY, else one generated once per data directory.

    Every other command finds it there (see ``Settings``), so `dnc check` in another shell
    reads the view with the key the worker writes with.
    """
    if not settings.uses_default_view_key:
        return settings.view_key.get_secret_value()
    return ensure_secret_file(settings.data_dir / VIEW_KEY_FILE)


def ensure_authority_key(settings: Settings) -> str:
    """The workers' lift-signing key: DNC_AUTHORITY_KEY, else one generated once per data
    directory. Only the workers get it (no other command reads the file by itself)."""
    if settings.authority_key is not None:
        return settings.authority_key.get_secret_value()
    return ensure_secret_file(settings.data_dir / AUTHORITY_KEY_FILE)


def _env(settings: Settings, postgres_dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DNC_AUTHORITY_KEY", None)  # the workers' alone: see worker_children()
    env["DNC_VIEW_KEY"] = ensure_view_key(settings)
    # Static membership: the worker `dnc up` restarts takes its partitions back at once.
    env.setdefault("DNC_WORKER_INSTANCE_ID", "local-worker-1")
    env["DNC_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["DNC_REDIS_URL"] = settings.redis_url.get_secret_value()
    env["DNC_POSTGRES_DSN"] = postgres_dsn
    env["PYTHONUNBUFFERED"] = "1"  # the log must survive a crash
    env["DNC_VERBOSE"] = "1"  # a process's log file keeps its Kafka clients' own lines
    if settings.replication_factor > 1:
        env["DNC_REPLICATION_FACTOR"] = str(settings.replication_factor)
    if settings.redis_cluster:
        env["DNC_REDIS_CLUSTER"] = "true"
    return env


def worker_metrics_ports(settings: Settings, workers: int) -> list[int]:
    """The /metrics port of each worker: DNC_WORKER_METRICS_PORT for the first, then 10 up
    and on (9310, 9320, 9321, ...: the sync and the demo have 9311 and 9312)."""
    base = settings.worker_metrics_port
    if base == 0:
        return [0] * workers
    return [base] + [base + 9 + i for i in range(1, workers)]


def _postgres_port(settings: Settings) -> int:
    return urlsplit(settings.postgres_dsn.get_secret_value()).port or 5432


def _scrape_targets(settings: Settings, demo: bool, workers: int = 1) -> dict[str, list[str]]:
    host = settings.metrics_host
    targets = {
        "dnc-worker": [f"{host}:{port}" for port in worker_metrics_ports(settings, workers)],
        "dnc-sync": [f"{host}:{settings.sync_metrics_port}"],
        "dnc-gateway": [f"{settings.gateway_host}:{settings.gateway_port}"],
    }
    if demo:
        targets["dnc-demo"] = [f"{host}:{settings.demo_metrics_port}"]
    return targets


def stack_ports(settings: Settings, brokers: int, redis_cluster: bool) -> list[PlannedPort]:
    """The ports Kafka and Redis bind that a setting names (the other brokers' ports and
    the controllers' are picked free as they start: see ``check_picked_ports``)."""
    kafka_host, kafka_port = settings.kafka_host_port
    first = " (the first broker)" if brokers > 1 else ""
    planned = [
        PlannedPort(f"DNC_KAFKA_BOOTSTRAP{first}", kafka_port, kafka_host, "DNC_KAFKA_BOOTSTRAP")
    ]
    redis_host, redis_port = settings.redis_host_port
    if not redis_cluster:
        return [*planned, PlannedPort("DNC_REDIS_URL", redis_port, redis_host)]
    for i in range(6):  # as launch.redis_cluster runs them: the seed's port and the 5 after it
        name = "DNC_REDIS_URL" if i == 0 else f"DNC_REDIS_URL's port + {i}"
        label = f"{name} (Redis Cluster node {i + 1})"
        planned.append(PlannedPort(label, redis_port + i, redis_host, "DNC_REDIS_URL"))
    for i in range(6):  # each node's cluster bus: its port + 10000 (Redis's default)
        if redis_port + i <= 55535:
            planned.append(
                PlannedPort(
                    f"DNC_REDIS_URL's port + {10000 + i} (Redis Cluster node {i + 1}'s bus)",
                    redis_port + i + 10000,
                    redis_host,
                    "DNC_REDIS_URL",
                )
            )
    return planned


def process_ports(settings: Settings, workers: int, demo: bool) -> list[PlannedPort]:
    """The ports bound after Kafka and Redis: PostgreSQL, Prometheus, the gateway and
    every process's /metrics."""
    metrics = settings.metrics_host
    planned = [
        PlannedPort("DNC_POSTGRES_DSN", _postgres_port(settings)),
        PlannedPort("DNC_PROMETHEUS_PORT", settings.prometheus_port),
        PlannedPort("DNC_GATEWAY_PORT", settings.gateway_port, settings.gateway_host),
    ]
    for n, port in enumerate(worker_metrics_ports(settings, workers), start=1):
        name = "DNC_WORKER_METRICS_PORT"
        label = name if n == 1 else f"{name} + {8 + n} (worker-{n}'s /metrics)"
        planned.append(PlannedPort(label, port, metrics, name))
    planned.append(PlannedPort("DNC_SYNC_METRICS_PORT", settings.sync_metrics_port, metrics))
    if demo:
        planned.append(PlannedPort("DNC_DEMO_METRICS_PORT", settings.demo_metrics_port, metrics))
    return planned


class LocalStackBusy(RuntimeError):
    """Another `dnc up` runs on the same data directory."""


class LocalPipeline:
    """Everything `dnc up` runs, started and stopped in order."""

    def __init__(
        self,
        settings: Settings,
        kafka_version: str,
        demo: bool,
        console: Console,
        brokers: int = 1,
        workers: int = 1,
        redis_cluster: bool = False,
    ):
        # Everything below (readiness included) uses the stack's own secret view key, and
        # Kafka as its superuser (SASL/SCRAM; every process gets its own principal).
        key = SecretStr(ensure_view_key(settings))
        superuser, self.passwords = stack_credentials(settings.data_dir, settings.kafka_bootstrap)
        self.security = KafkaSecurity(SUPERUSER, superuser)
        self.settings = settings = settings.model_copy(
            update={
                "view_key": key,
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": self.security.mechanism,
                "kafka_sasl_username": SUPERUSER,
                "kafka_sasl_password": SecretStr(superuser),
            }
        )
        self.demo = demo
        self.console = console
        self.workers = workers
        _kafka_host, kafka_port = settings.kafka_host_port
        _redis_host, redis_port = settings.redis_host_port
        self.stack = LocalStack(
            settings.data_dir,
            kafka_version=kafka_version,
            kafka_port=kafka_port,
            redis_port=redis_port,
            partitions=settings.partitions,
            kafka_security=self.security,
            brokers=brokers,
            redis_cluster=redis_cluster,
        )
        self._recorded: list[str] = []  # pid-file names of the stack's services
        self.kafka_version = kafka_version
        self.postgres: object | None = None
        self.prometheus: RunningService | None = None
        self.children: list[Child] = []
        self.postgres_dsn = settings.postgres_dsn.get_secret_value()
        self.run_dir = RunDirectory(settings.data_dir)
        self.awaited = "the worker"  # what "pipeline ready" still waits for

    def clear_leftovers(self) -> None:
        """Stop what a previous `dnc up` on this data directory left running, or refuse.

        Refuses while that `dnc up` itself still runs (it owns them); otherwise its
        processes are orphans holding ports and data files, and are stopped in order.
        """
        leftovers = self.run_dir.recorded()
        owner = next((e for e in leftovers if e.name == SUPERVISOR), None)
        if owner is not None and owner.pid != os.getpid():
            others = ", ".join(e.describe() for e in leftovers if e is not owner) or "none yet"
            raise LocalStackBusy(
                f"another `dnc up` (pid {owner.pid}) is running on {self.settings.data_dir}; "
                f"its processes: {others}. Stop it first (Ctrl-C in its terminal, or "
                f"`dnc down`), or give this one its own DNC_DATA_DIR and ports."
            )
        orphans = [e for e in leftovers if e.name != SUPERVISOR]
        if orphans:
            self.console.print(
                "[yellow]a previous `dnc up` on this data directory left these running: "
                + ", ".join(e.describe() for e in orphans)
                + "; stopping them first[/]"
            )
            self.run_dir.stop_all(orphans, say=self.console.print)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.prometheus_port}"

    def _describe_services(self) -> str:
        brokers = self.stack.brokers
        kafka = f"a {brokers}-broker Kafka {self.kafka_version} cluster" if brokers > 1 else (
            f"Kafka {self.kafka_version}"
        )  # fmt: skip
        redis = (
            "a Redis Cluster (3 masters, 3 replicas)" if self.stack.use_redis_cluster else "Redis"
        )
        return f"{kafka} and {redis}"

    def planned_ports(self) -> list[PlannedPort]:
        """Every port `dnc up` will bind that a setting names."""
        s, cluster = self.settings, self.stack.use_redis_cluster
        return [*stack_ports(s, self.stack.brokers, cluster),
                *process_ports(s, self.workers, self.demo)]  # fmt: skip

    def check_picked_ports(self) -> None:
        """Kafka and Redis started: the ports they picked free (the controllers', the other
        brokers') must not be one that PostgreSQL, Prometheus or a process will bind."""
        later = {p.port: p for p in process_ports(self.settings, self.workers, self.demo)}
        for service in self.stack.services():
            for what, port in (
                ("port", service.port),
                ("controller port", service.controller_port),
            ):
                if port and port in later:
                    raise PortClash(
                        f"the {service.name}'s {what}, picked free as it started, is {port}, "
                        f"which {later[port].label} names too: change {later[port].moved_by}, "
                        "or run `dnc up` again (another free port is picked)"
                    )

    def start_services(self) -> None:
        data = self.settings.data_dir
        self.console.print(f"starting {self._describe_services()} (data in {data}) ...")
        kafka_dir = self.stack.kafka_cluster_dir if self.stack.brokers > 1 else self.stack.kafka_dir
        formatted = [*kafka_dir.glob("node-*/logs/meta.properties"),
                     *kafka_dir.glob("logs/meta.properties")]  # fmt: skip
        secured = kafka_dir / SECURED_MARKER
        if formatted and not secured.is_file():
            raise RuntimeError(
                f"{kafka_dir} holds a Kafka created without authentication by an "
                "older `dnc up`: delete that directory (its topics go with it) or set another "
                "DNC_DATA_DIR"
            )
        try:
            self.stack.start()
        finally:  # Kafka may fail after Redis started (LocalStack then stops Redis itself)
            self._record_stack()
        secured.touch()
        self.check_picked_ports()
        # With a cluster, what every process is given from now on: all the brokers and
        # replicated topics; the Redis Cluster's seed node.
        update: dict[str, object] = {}
        if self.stack.brokers > 1:
            update["kafka_bootstrap"] = self.stack.bootstrap_servers
            update["replication_factor"] = min(3, self.stack.brokers)
        if self.stack.use_redis_cluster:
            update |= {"redis_url": SecretStr(self.stack.redis_url), "redis_cluster": True}
        self.settings = self.settings.model_copy(update=update)
        self._say_whether_redis_is_a_cluster()
        applied = apply_acls(self.settings, self.passwords)  # topics, principals, ACLs
        self.console.print(f"Kafka principals and {applied} ACLs applied (see `dnc acl apply`)")
        self.console.print("starting PostgreSQL (the reference list) ...")
        pg = start_postgres(data / "postgres", port=_postgres_port(self.settings))
        self.postgres = pg
        self.postgres_dsn = pg.dsn
        # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for clients to leave).
        self.run_dir.record("postgres", pg.process.pid, [pg.port], signal.SIGINT)
        self.console.print("starting Prometheus ...")
        # This run's start, marked on the ops page (the TSDB keeps the earlier runs): taken
        # before any process of this run exports a metric, so all of them are right of it.
        this_run = run_rules(data / "prometheus" / "run.rules.yml", time.time())
        config = local_prometheus_config(
            _scrape_targets(self.settings, self.demo, self.workers), [RULES_FILE, this_run]
        )
        self.prometheus = start_prometheus(
            data / "prometheus",
            config,
            port=self.settings.prometheus_port,
            lookback_delta=PROMETHEUS_LOOKBACK,
        )
        self.run_dir.record("prometheus", self.prometheus.process.pid, [self.prometheus.port])

    def _say_whether_redis_is_a_cluster(self) -> None:
        """Leave the seed node's address in the data directory while a Redis Cluster runs,
        so that other commands read it as one with no configuration (see ``Settings``)."""
        path = self.settings.data_dir / REDIS_CLUSTER_FILE
        if self.stack.redis_cluster is None:
            path.unlink(missing_ok=True)
            return
        seed = f"{self.stack.host}:{self.stack.redis_cluster.seed_port}"
        path.write_text(json.dumps({"seed": seed}) + "\n")

    def _record_stack(self) -> None:
        for service in self.stack.services():
            ports = [service.port, *filter(None, [service.controller_port])]
            self.run_dir.record(service.name, service.process.pid, ports)
            self._recorded.append(service.name)

    def _env_of(self, role: str) -> dict[str, str]:
        """A child's environment: the stack's addresses and its own Kafka principal."""
        return {
            **_env(self.settings, self.postgres_dsn),
            **client_env(self.settings, role, self.passwords),
        }

    def worker_children(self) -> list[Child]:
        """One child per worker: ``worker`` alone, else ``worker-1`` .. ``worker-N``, each
        with its own id, static membership id (its partitions come back to it at once
        when restarted) and /metrics port."""
        s, data = self.settings, self.settings.data_dir
        ports = worker_metrics_ports(s, self.workers)
        worker_env = {**self._env_of("worker"), "DNC_AUTHORITY_KEY": ensure_authority_key(s)}
        if self.workers == 1:
            return [Child("worker", ["worker"], data / "worker.log", worker_env,
                          self.run_dir, (ports[0],))]  # fmt: skip
        children = []
        for i, port in enumerate(ports, start=1):
            env = {
                **worker_env,
                "DNC_WORKER_INSTANCE_ID": f"local-worker-{i}",
                "DNC_WORKER_METRICS_PORT": str(port),
            }
            name = f"worker-{i}"
            children.append(Child(name, ["worker", "--id", f"local-{name}"],
                                  data / f"{name}.log", env, self.run_dir, (port,)))  # fmt: skip
        return children

    def start_processes(self) -> None:
        s, data, run = self.settings, self.settings.data_dir, self.run_dir
        self.children = [
            *self.worker_children(),
            Child("sync", ["sync"], data / "sync.log", self._env_of("sync"), run,
                  (s.sync_metrics_port,)),
            Child("gateway", ["gateway"], data / "gateway.log", self._env_of("gateway"), run,
                  (s.gateway_port,)),
        ]  # fmt: skip
        for child in self.children:
            self.console.print(f"starting the {child.name} (log: {child.log_path}) ...")
            child.start()

    def start_demo(self) -> None:
        """Simulated agents and dialers, once the pipeline is ready to receive them."""
        # The gateway's principal: it records oppositions, lifts (as an admin would) and the
        # web form's consents (as a consent platform posting to the gateway would). The
        # desktops' principal could not write the consents topic, nor the admin topic.
        env = self._env_of("gateway")
        child = Child(
            "demo",
            ["demo-traffic"],
            self.settings.data_dir / "demo.log",
            env,
            self.run_dir,
            (self.settings.demo_metrics_port,),
        )
        self.console.print(f"starting simulated agents and dialers (log: {child.log_path}) ...")
        child.start()
        self.children.append(child)

    def supervise(self) -> None:
        """Restart a process that died (up to MAX_RESTARTS times, with a growing pause)."""
        for child in self.children:
            code = child.exited
            if code is None:
                continue
            if child.restarts >= MAX_RESTARTS:
                raise RuntimeError(
                    f"the {child.name} keeps exiting (status {code}); see {child.log_path}"
                )
            pause = min(30.0, 2.0**child.restarts)
            if time.monotonic() - child.started_at < pause:
                continue
            child.restarts += 1
            self.console.print(
                f"[yellow]the {child.name} exited ({code}); restarting it "
                f"({child.restarts}/{MAX_RESTARTS}), see {child.log_path}[/]"
            )
            child.start()

    def wait_ready(self, stopping: list[bool]) -> bool:
        """Until the worker group has settled (every worker joined, every partition assigned
        and vouched for by its assignee, the view current: :mod:`dnc.settled`) for
        SETTLED_FOR_SECONDS, and every reference-list lane reports running (3 min)."""
        tenants = TenantDirectory.load(self.settings.tenants_file)
        synced = [t for t in tenants.names if tenants.get(t).reference_list is not None]
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        since: float | None = None  # settled since then, without a break
        while not stopping and time.monotonic() < deadline:
            self.supervise()
            verdict = group_settled(self.settings, tenants, self.workers)
            reports = sync_reports(self.settings, synced)
            lanes = all(r and r.get("running") for r in reports.values())
            self.awaited = verdict.why or ("" if lanes else "the reference-list sync")
            if verdict.settled and lanes:
                since = since if since is not None else time.monotonic()
                if time.monotonic() - since >= SETTLED_FOR_SECONDS:
                    return True
            else:
                since = None
            time.sleep(0.5)
        return False

    def banner(self, ready: bool) -> str:
        s = self.settings
        pids = ", ".join(
            f"{c.name} {c.process.pid}" for c in self.children if c.process is not None
        )
        kafka = s.kafka_bootstrap
        if self.stack.brokers > 1:
            kafka += f" ({self.stack.brokers} brokers, replication factor {s.replication_factor})"
        redis = self.stack.redis_url
        if self.stack.redis_cluster is not None:
            nodes = ", ".join(map(str, self.stack.redis_cluster.ports))
            redis += f"   (Redis Cluster: this seed node; nodes on ports {nodes})"
        workers = ", ".join(f":{p}" for p in worker_metrics_ports(s, self.workers))
        plural = "s" if self.workers > 1 else ""
        return (
            f"\n[bold green]pipeline "
            f"{'ready' if ready else f'started (not ready yet: {escape(self.awaited)})'}[/]\n"
            f"  Kafka       {kafka}   topics {s.oppositions_topic}, "
            f"{s.suppressions_topic}, {s.dead_letter_topic}\n"
            f"  Redis       {redis}\n"
            f"  PostgreSQL  {self.postgres_dsn}   (table reference_list)\n"
            f"  gateway     http://{s.gateway_host}:{s.gateway_port}/docs\n"
            f"  metrics     worker{plural} {workers}, sync :{s.sync_metrics_port}"
            f"{f', demo :{s.demo_metrics_port}' if self.demo else ''} (/metrics)\n"
            f"  [bold]ops page    {self.prometheus_url}{OPS_PAGE}[/]   "
            f"alerts {self.prometheus_url}/alerts   PromQL {self.prometheus_url}/graph\n"
            f"  processes   {pids}; logs in {s.data_dir}\n\n"
            "In another shell:\n"
            "  dnc oppose '06 12 34 56 78' --tenant demo\n"
            "  dnc check  '06 12 34 56 78' --tenant demo\n"
            "  dnc status\n"
            "Ctrl-C stops everything."
        )

    def stop(self) -> None:
        timeout = self.settings.shutdown_timeout_seconds + 30
        for child in reversed(self.children):
            child.stop(timeout, self.console)
        if self.prometheus is not None:
            self.prometheus.stop()
            self.run_dir.forget("prometheus")
        stop_pg = getattr(self.postgres, "stop", None)
        if stop_pg is not None:
            stop_pg()
            self.run_dir.forget("postgres")
        self.stack.stop()
        for name in self._recorded:
            self.run_dir.forget(name)


def run_local_stack(
    settings: Settings,
    kafka_version: str,
    console: Console,
    demo: bool = False,
    brokers: int = 1,
    workers: int = 1,
    redis_cluster: bool = False,
) -> int:
    """Start everything, say where it listens, block until a stop signal, stop in reverse;
    return the exit code: 0 stopped on request, 2 gave up (a service could not start, or a
    process kept exiting), 3 two ports clash or one is in use (nothing was started).

    SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed) all stop everything. A
    failure of the output (EPIPE when `| tee` died first) never stops the stopping.
    """
    stopping: list[bool] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(True)

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, request_stop) for s in stop_signals}
    local = LocalPipeline(settings, kafka_version, demo, console, brokers, workers, redis_cluster)
    try:
        local.clear_leftovers()
        check_ports(local.planned_ports())  # before anything starts
    except LocalStackBusy as exc:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise SystemExit(f"error: {exc}") from None
    except PortClash as exc:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        console.print(f"[bold red]error:[/] {escape(str(exc))}; nothing was started")
        return EXIT_ERROR
    local.run_dir.record(SUPERVISOR, os.getpid())
    code = EXIT_OK
    try:
        local.start_services()
        local.start_processes()
        ready = local.wait_ready(stopping)
        if demo and not stopping:
            local.start_demo()
        console.print(local.banner(ready))
        if demo and not stopping:
            _live_summary(local, stopping, console)
        while not stopping:
            local.supervise()
            time.sleep(0.5)
    except (RuntimeError, ServiceError, PortClash) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        code = EXIT_ERROR if isinstance(exc, PortClash) else EXIT_UNAVAILABLE
    finally:
        console.print("stopping ...")
        try:
            local.stop()
        finally:
            local.run_dir.forget(SUPERVISOR)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        console.print("stopped." if code == EXIT_OK else f"stopped (exit status {code}).")
    return code


def stop_recorded(settings: Settings, console: Console) -> int:
    """`dnc down`: stop what `dnc up` runs (or left running) on this data directory."""
    run_dir = RunDirectory(settings.data_dir)
    entries = run_dir.recorded()
    owner = next((e for e in entries if e.name == SUPERVISOR), None)
    if owner is not None:
        # The supervisor stops its processes in order itself; wait for it, then sweep.
        run_dir.stop_all([owner], timeout=settings.shutdown_timeout_seconds + 90, say=console.print)
        entries = run_dir.recorded()
    run_dir.stop_all(entries, say=console.print)
    return len(entries) + (owner is not None)


def _live_summary(local: LocalPipeline, stopping: list[bool], console: Console) -> None:
    """Refresh the summary in place on a terminal; print it every 15 s into a log or pipe."""
    with httpx.Client(base_url=local.prometheus_url, timeout=2) as client:
        if not console.is_terminal:
            while not stopping:
                console.print(render(read_snapshot(client), local.prometheus_url))
                _sleep_unless(stopping, 15, local)
            return
        with Live(console=console, refresh_per_second=1, transient=False) as live:
            while not stopping:
                live.update(render(read_snapshot(client), local.prometheus_url))
                _sleep_unless(stopping, 2, local)


def _sleep_unless(stopping: list[bool], seconds: float, local: LocalPipeline) -> None:
    """Sleep up to ``seconds``, supervising the processes, until a stop is requested."""
    deadline = time.monotonic() + seconds
    while not stopping and time.monotonic() < deadline:
        local.supervise()
        time.sleep(0.5)
