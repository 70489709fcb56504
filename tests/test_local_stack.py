"""`dnc up` as a user runs it: everything starts, other shells find it, Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from infra.services import free_port
from tests.harness import REPO, wait_for

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.prometheus,
]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(300)
def test_dnc_up_demo_serves_oppose_check_reference_list_graphs_then_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    names = ("kafka", "redis", "worker", "sync", "gateway", "demo", "prometheus", "postgres")
    ports = {name: free_port() for name in names}
    env = {
        **os.environ,
        "DNC_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
        "DNC_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "DNC_POSTGRES_DSN": f"postgresql://dnc@127.0.0.1:{ports['postgres']}/dnc",
        "DNC_WORKER_METRICS_PORT": str(ports["worker"]),
        "DNC_SYNC_METRICS_PORT": str(ports["sync"]),
        "DNC_GATEWAY_PORT": str(ports["gateway"]),
        "DNC_DEMO_METRICS_PORT": str(ports["demo"]),
        "DNC_PROMETHEUS_PORT": str(ports["prometheus"]),
        "DNC_DATA_DIR": str(tmp_path / "state"),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "160",
    }
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "dnc", "up", "--demo"], env=env, stdout=log,
            stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: "pipeline ready" in log_path.read_text(), timeout=150, interval=0.5,
                 what="dnc up to report the pipeline ready")  # fmt: skip
        text = log_path.read_text()
        assert f"127.0.0.1:{ports['kafka']}" in text
        assert f"redis://127.0.0.1:{ports['redis']}/0" in text
        assert f"http://127.0.0.1:{ports['prometheus']}/graph" in text  # where the graphs are

        def dnc(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "dnc", *args], env=env, text=True,
                                  capture_output=True, timeout=60, cwd=REPO)  # fmt: skip

        assert dnc("oppose", "06 98 76 54 32", "--tenant", "demo").returncode == 0
        wait_for(lambda: dnc("check", "0698765432", "--tenant", "demo").returncode == 1,
                 timeout=30, what="suppressed through the local stack")  # fmt: skip

        # The reference list (PostgreSQL) gets it too.
        def in_reference_list() -> bool:
            with psycopg.connect(env["DNC_POSTGRES_DSN"]) as conn:
                found = conn.execute(
                    "SELECT do_not_call FROM reference_list"
                    " WHERE tenant = 'demo' AND phone_e164 = '+33698765432'"
                ).fetchone()
            return bool(found and found[0])

        wait_for(in_reference_list, timeout=60, what="the row in the reference list")
        status = dnc("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        tenants = json.loads(status.stdout)["tenants"]
        assert tenants["demo"]["reference_list_sink"] == "postgres"
        assert tenants["demo"]["sync_running"] is True
        assert tenants["demo"]["suppressed_numbers"] >= 1

        # The demo's live summary reads the real Prometheus, which scrapes every process.
        wait_for(lambda: "dnc demo (live" in log_path.read_text(), timeout=60,
                 what="the live summary")  # fmt: skip

        def all_scraped() -> bool:
            url = f"http://127.0.0.1:{ports['prometheus']}/api/v1/targets"
            with urllib.request.urlopen(url, timeout=5) as response:
                targets = json.load(response)["data"]["activeTargets"]
            return {t["labels"]["job"] for t in targets if t["health"] == "up"} == {
                "dnc-worker", "dnc-sync", "dnc-gateway", "dnc-demo"}  # fmt: skip

        wait_for(all_scraped, timeout=60, interval=1, what="every process scraped")
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C sends: to the whole foreground group
        code = up.wait(timeout=90)
    assert code == 0, log_path.read_text()[-3000:]
    worker_log = (tmp_path / "state" / "worker.log").read_text()
    assert "Signal received: 15" in worker_log  # the worker was stopped by `dnc up`, in order
    assert "Closing event loop" in worker_log  # ... and finished its shutdown cleanly
    assert "killed it" not in log_path.read_text()
    assert "stopped." in log_path.read_text()
    time.sleep(0.5)
    for port in ports.values():
        assert not listening(port), f"port {port} still open after dnc up stopped"
