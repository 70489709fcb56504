"""`dnc bench-sync`: propagation to the reference list, PostgreSQL and webhook, in one run.

A private stack (Kafka, Redis, PostgreSQL with fsync on), a real worker and a real
`dnc sync` with two tenants: ``benchpg`` (PostgreSQL sink) and ``benchwh`` (webhook sink
to a signed-request receiver in this process). Each phase publishes a distinct number per
event at a steady rate to one tenant, then reads per change, on the machine's one clock:

* ``view``: ``changed_at - occurred_at``, the worker's stamp when it applied the event (the
  Redis view write and the change record follow in the same batch);
* ``reference_list``: PostgreSQL ``updated_at`` (the writing transaction's start, the commit
  follows) or the webhook's arrival time, ``- occurred_at``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from consumers.sinks.webhook import SIGNATURE_HEADER, verify
from dnc.bench import mobile, percentile
from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION
from infra.launch.process import free_port
from infra.launch.stack import LocalStack
from infra.postgres_service import start_postgres
from infra.topics import ensure_pipeline_topics
from producers.publisher import OppositionPublisher
from schemas.errors import DncError
from schemas.events import Kind, OppositionEvent
from schemas.settings import Settings
from schemas.tenants import TenantDirectory

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-webhook-secret-0123456789"
Figures = dict[str, float]


class _Arrivals:
    """The webhook receiver's log: per change, arrival time and the change's stamps."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, tuple[float, dict[str, object]]] = {}
        self.bad_signatures = 0

    def record(self, body: bytes, signature: str) -> int:
        arrived = time.time()
        if not verify(SECRET.encode(), body, signature, arrived):
            with self.lock:
                self.bad_signatures += 1
            return 401
        change = json.loads(body)
        with self.lock:
            self.seen.setdefault(str(change["phone_e164"]), (arrived, change))
        return 204


def _serve(arrivals: _Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a production endpoint would

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(arrivals.record(body, self.headers.get(SIGNATURE_HEADER, "")))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _publish_steady(
    publisher: OppositionPublisher, tenant: str, first: int, rate: int, seconds: float
) -> list[str]:
    """Publish ``rate`` events/s for ``seconds`` (a batch every 20 ms); the numbers used."""
    phones: list[str] = []
    tick, started, sent = 0.02, time.monotonic(), 0
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        batch = []
        for i in range(sent, due):
            phone = mobile(first + i)
            phones.append(phone)
            batch.append(
                OppositionEvent(
                    event_id=uuid.uuid4(),
                    tenant=tenant,
                    phone=phone,
                    kind=Kind.OPPOSITION,
                    occurred_at=datetime.now(UTC),
                )
            )
        for outcome in publisher.publish_many(batch):
            if isinstance(outcome, DncError):
                raise outcome
        sent = due
        time.sleep(tick)
    return phones


def _wait(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise DncError(f"bench: timed out waiting for {what}")
        time.sleep(0.5)


def _figures(prefix: str, view: list[float], ref: list[float]) -> Figures:
    return {
        f"{prefix}_count": len(ref),
        f"{prefix}_view_p50_ms": percentile(view, 0.5) * 1000,
        f"{prefix}_view_p99_ms": percentile(view, 0.99) * 1000,
        f"{prefix}_ref_p50_ms": percentile(ref, 0.5) * 1000,
        f"{prefix}_ref_p99_ms": percentile(ref, 0.99) * 1000,
    }


def run_bench_sync(rate: int, seconds: float, console: Console) -> Figures:
    """Run both phases on a private stack, print the table, return the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="dnc-bench-sync-"))
    version = os.environ.get("DNC_KAFKA_VERSION", KAFKA_DEFAULT_VERSION)
    stack = LocalStack(tmp / "stack", kafka_version=version, partitions=3)
    arrivals = _Arrivals()
    receiver = _serve(arrivals)
    procs: list[subprocess.Popen[bytes]] = []
    pg = None
    try:
        with console.status("starting Kafka, Redis and PostgreSQL") as status:
            stack.start()
            pg = start_postgres(tmp / "pg")
            url = f"http://127.0.0.1:{receiver.server_address[1]}/dnc"
            (tmp / "tenants.toml").write_text(
                '[tenants.benchpg]\ndefault_region = "FR"\n'
                '[tenants.benchpg.reference_list]\nsink = "postgres"\n'
                '[tenants.benchwh]\ndefault_region = "FR"\n'
                f'[tenants.benchwh.reference_list]\nsink = "webhook"\nurl = "{url}"\n'
                'secret_env = "BENCH_WEBHOOK_SECRET"\n'
            )
            dnc = {
                "DNC_KAFKA_BOOTSTRAP": stack.bootstrap_servers,
                "DNC_REDIS_URL": stack.redis_url,
                "DNC_POSTGRES_DSN": pg.dsn,
                "DNC_TENANTS_FILE": str(tmp / "tenants.toml"),
                "DNC_WORKER_METRICS_PORT": str(free_port()),
                "DNC_SYNC_METRICS_PORT": str(free_port()),
                "DNC_VIEW_KEY": "bench-key",
                "DNC_AUTHORITY_KEY": "bench-authority-key",
                "DNC_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            }
            settings = Settings.model_validate({k[4:].lower(): v for k, v in dnc.items()})
            tenants = TenantDirectory.load(tmp / "tenants.toml")
            ensure_pipeline_topics(settings)
            env = {k: v for k, v in os.environ.items() if not k.startswith("DNC_")} | dnc
            env |= {"BENCH_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
            status.update("starting the worker and the sync")
            for name in ("worker", "sync"):
                with (tmp / f"{name}.log").open("wb") as log:
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "dnc", name],
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            cwd=REPO,
                            start_new_session=True,
                        )
                    )
            publisher = OppositionPublisher.from_settings(settings, tenants)
            # Warm up both paths (group joins, migrations, connections), then measure.
            _publish_steady(publisher, "benchpg", 9_000_000, 10, 1)
            _publish_steady(publisher, "benchwh", 9_100_000, 10, 1)
            _wait("the warm-up", lambda: len(arrivals.seen) >= 10, 120)
            figures: Figures = {"rate": rate, "seconds": seconds}

            status.update(f"PostgreSQL sink: {rate} events/s for {seconds:.0f}s")
            phones = _publish_steady(publisher, "benchpg", 0, rate, seconds)
            with psycopg.connect(pg.dsn) as conn:

                def pg_rows() -> list[tuple[float, float]]:
                    return conn.execute(
                        "SELECT extract(epoch FROM s.changed_at - s.occurred_at)::float8,"
                        " extract(epoch FROM r.updated_at - r.occurred_at)::float8"
                        " FROM reference_list r JOIN reference_list_scope s USING"
                        " (tenant, phone_e164) WHERE r.tenant = 'benchpg'"
                        " AND r.phone_e164 = ANY(%s)",
                        (phones,),
                    ).fetchall()

                _wait("PostgreSQL rows", lambda: len(pg_rows()) >= len(phones), 300)
                rows = pg_rows()
            figures |= _figures("pg", [v for v, _ in rows], [r for _, r in rows])

            status.update(f"webhook sink: {rate} events/s for {seconds:.0f}s")
            phones = _publish_steady(publisher, "benchwh", 1_000_000, rate, seconds)
            _wait("webhook arrivals", lambda: all(p in arrivals.seen for p in phones), 300)
            view, ref = [], []
            for phone in phones:
                arrived, change = arrivals.seen[phone]
                occurred = datetime.fromisoformat(str(change["occurred_at"])).timestamp()
                changed = datetime.fromisoformat(str(change["changed_at"])).timestamp()
                view.append(changed - occurred)
                ref.append(arrived - occurred)
            figures |= _figures("wh", view, ref)
            figures["bad_signatures"] = arrivals.bad_signatures
            figures["load_average"] = os.getloadavg()[0]
            publisher.close()
        _report(figures, console)
        return figures
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        receiver.shutdown()
        if pg is not None:
            pg.destroy()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _report(f: Figures, console: Console) -> None:
    table = Table(
        "sink",
        "changes",
        "view p50 / p99 (ms)",
        "reference list p50 / p99 (ms)",
        title=f"propagation at {f['rate']:.0f} events/s for {f['seconds']:.0f}s per sink",
    )
    for prefix, name in (("pg", "PostgreSQL"), ("wh", "webhook")):
        table.add_row(
            name,
            f"{f[f'{prefix}_count']:.0f}",
            f"{f[f'{prefix}_view_p50_ms']:.0f} / {f[f'{prefix}_view_p99_ms']:.0f}",
            f"{f[f'{prefix}_ref_p50_ms']:.0f} / {f[f'{prefix}_ref_p99_ms']:.0f}",
        )
    console.print(table)
    console.print(
        f"ratio reference list / view at p50: PostgreSQL "
        f"{f['pg_ref_p50_ms'] / max(f['pg_view_p50_ms'], 0.001):.1f}x, webhook "
        f"{f['wh_ref_p50_ms'] / max(f['wh_view_p50_ms'], 0.001):.1f}x; "
        f"bad signatures {f['bad_signatures']:.0f}; load average {f['load_average']:.2f}"
    )
