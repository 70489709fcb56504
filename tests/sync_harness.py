"""Test harness for the reference-list sync: a real `dnc sync` process, its metrics, a webhook."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from consumers.sinks.base import Delivery
from consumers.sinks.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from infra.launch.process import free_port
from schemas.events import Kind, Scope
from schemas.state import SuppressionChange
from tests.harness import REPO, Pipeline, stop_process


class SyncProcess:
    """`dnc sync` for a pipeline, as an operator runs it."""

    def __init__(self, pipeline: Pipeline, env: dict[str, str] | None = None) -> None:
        self.pipeline = pipeline
        self.env = {**pipeline.env, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self._runs = 0

    def start(self) -> None:
        """Start it and wait until its /metrics answers."""
        self._runs += 1
        self.metrics_port = free_port()
        env = {
            **self.env,
            "DNC_SYNC_METRICS_PORT": str(self.metrics_port),
            "DNC_SYNC_RETRY_INITIAL_SECONDS": "0.1",
            "DNC_SYNC_RETRY_MAX_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dnc", "sync"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

        def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                self.metrics_text()
            except OSError:
                return False
            return True

        deadline = time.monotonic() + 60
        while not up():
            assert time.monotonic() < deadline, f"sync /metrics never answered\n{self.log()}"
            time.sleep(0.2)

    @property
    def log_path(self) -> Path:
        """Log of the latest run."""
        return self.pipeline.tmp / f"sync-{self._runs}.log"

    def log(self) -> str:
        """The latest sync log."""
        path = self.log_path
        return path.read_text(errors="replace")[-6000:] if path.exists() else "(no log)"

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        return stop_process(self.process, timeout, "the sync", self.log)

    def metrics_text(self) -> str:
        """Its /metrics page."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            return str(response.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        """The value of one sample (0 when absent)."""
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0


@dataclass
class WebhookCall:
    """One request the receiver got."""

    key: str
    signature_ok: bool
    body: dict[str, object]
    status: int


@dataclass
class Receiver:
    """A client's webhook endpoint, scripted by the test: verifies, dedupes, fails on demand."""

    secret: bytes
    calls: list[WebhookCall] = field(default_factory=list)
    applied: dict[str, dict[str, object]] = field(default_factory=dict)  # key -> change
    fail_next: int = 0  # answer 503 to this many requests
    reject: Callable[[dict[str, object]], bool] = lambda _body: False  # answer 422
    # What the endpoint answers in the body, for a status.
    response_body: Callable[[int], bytes] = lambda status: json.dumps(
        {"status": status, "error": "scripted"}
    ).encode()
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        """Status for one request (what the endpoint answers)."""
        ok = verify(self.secret, body, headers.get(SIGNATURE_HEADER.lower(), ""), time.time())
        change = json.loads(body)
        key = headers.get(IDEMPOTENCY_HEADER.lower(), "")
        with self.lock:
            if not ok:
                status = 401
            elif self.fail_next > 0:
                self.fail_next -= 1
                status = 503
            elif self.reject(change):
                status = 422
            else:
                self.applied.setdefault(key, change)  # a duplicate is acknowledged, not applied
                status = 200
            self.calls.append(WebhookCall(key, ok, change, status))
        return status


class WebhookServer:
    """A real HTTP server on loopback in a thread, serving a :class:`Receiver`."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a production endpoint would

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                status = receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
                payload = receiver.response_body(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Where the endpoint listens."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/dnc"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def delivery(
    phone: str,
    version: int = 1,
    *,
    tenant: str = "acme",
    kind: Kind | None = Kind.OPPOSITION,
    cause: str = "event",
    at: datetime | None = None,
) -> Delivery:
    """A change as the worker writes it, ready for a sink (suppressed unless a lift/expiry)."""
    stamp = at or datetime.now(UTC)
    change = SuppressionChange(
        target=tenant,
        tenant=tenant,
        scope=Scope.TENANT,
        campaign_id=None,
        phone_e164=phone,
        suppressed=kind not in (None, Kind.LIFT),
        kind=kind,
        expires_at=None,
        erasure_requested=False,
        cause=cause,
        source_event_id=uuid.uuid4() if cause == "event" else None,
        occurred_at=stamp if cause == "event" else None,
        event_occurred_at=stamp if cause == "event" else None,
        reason_code=None,
        version=version,
        changed_at=stamp,
    )
    return Delivery(change, change.model_dump_json().encode(), None, 0, version)
