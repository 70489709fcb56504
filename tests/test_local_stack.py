"""`dnc up` as a user runs it: everything starts, other shells find it, Ctrl-C stops it all,
and nothing it started outlives it (`| tee` dying first, SIGKILL, a second `dnc up`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest

from dnc.pidfiles import SUPERVISOR, RunDirectory
from infra.launch.process import free_port
from tests.harness import REPO, wait_for

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.prometheus,
]

PORT_NAMES = ("kafka", "redis", "worker", "sync", "gateway", "demo", "prometheus", "postgres")


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stack_env(tmp_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Environment for a `dnc up` of its own: free ports, its own data directory."""
    ports = {name: free_port() for name in PORT_NAMES}
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
    }
    return env, ports


def assert_nothing_left(tmp_path: Path, ports: dict[str, int]) -> None:
    """No process of the data directory alive, no port of the stack listening."""
    left = RunDirectory(tmp_path / "state").recorded()
    assert not left, f"still running: {[e.describe() for e in left]}"
    for name, port in ports.items():
        wait_for(lambda p=port: not listening(p), timeout=10, what=f"{name} port {port} closed")


@pytest.mark.timeout(300)
def test_dnc_up_demo_through_tee_serves_everything_then_ctrl_c_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    """`make up | tee up.log`, then Ctrl-C: `tee` dies with `dnc up`, whose output breaks."""
    env, ports = stack_env(tmp_path)
    log_path = tmp_path / "up.log"
    log_path.touch()
    # The shell, `dnc up` and `tee` share one process group, as in a terminal's foreground job.
    up = subprocess.Popen(
        ["bash", "-c", f'"{sys.executable}" -m dnc up --demo 2>&1 | tee "{log_path}" >/dev/null'],
        env=env, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: "pipeline ready" in log_path.read_text(), timeout=150, interval=0.5,
                 what="dnc up to report the pipeline ready")  # fmt: skip
        text = log_path.read_text()
        assert f"127.0.0.1:{ports['kafka']}" in text
        assert f"redis://127.0.0.1:{ports['redis']}/0" in text
        ops_page = f"http://127.0.0.1:{ports['prometheus']}/consoles/dnc.html"
        assert ops_page in text  # where the graphs are
        with urllib.request.urlopen(ops_page, timeout=10) as response:
            assert "Propagation to the suppression view" in response.read().decode()

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
        # The readiness probe of the worker in infra/k8s: the same verdict, no per-tenant scan.
        probe = dnc("status", "--probe", "--json")
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert json.loads(probe.stdout)["tenants"] == {}

        # The demo's live summary reads the real Prometheus, which scrapes every process.
        wait_for(lambda: "dnc demo (live" in log_path.read_text(), timeout=60,
                 what="the live summary")  # fmt: skip
        assert "answers by reason" in log_path.read_text()

        # The demo's web form records consents (the consents topic, under the ACLs) and
        # `dnc status` counts them in the view.
        def consents_recorded() -> bool:
            report = json.loads(dnc("status", "--json").stdout)
            return bool(report["tenants"]["demo"]["consents_valid"])

        wait_for(consents_recorded, timeout=60, interval=2, what="the web form's consents")

        def all_scraped() -> bool:
            url = f"http://127.0.0.1:{ports['prometheus']}/api/v1/targets"
            with urllib.request.urlopen(url, timeout=5) as response:
                targets = json.load(response)["data"]["activeTargets"]
            return {t["labels"]["job"] for t in targets if t["health"] == "up"} == {
                "dnc-worker", "dnc-sync", "dnc-gateway", "dnc-demo"}  # fmt: skip

        wait_for(all_scraped, timeout=60, interval=1, what="every process scraped")
    finally:
        state = RunDirectory(tmp_path / "state")
        supervisor = [e for e in state.recorded() if e.name == SUPERVISOR]
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C sends: to the whole foreground group
        up.wait(timeout=150)
        for entry in supervisor:  # `tee` is gone: `dnc up` goes on stopping, writing elsewhere
            wait_for(lambda e=entry: not e.alive, timeout=120, what="dnc up to finish stopping")
    assert_nothing_left(tmp_path, ports)
    worker_log = (tmp_path / "state" / "worker.log").read_text()
    assert "Signal received: 15" in worker_log  # the worker was stopped by `dnc up`, in order
    assert "Closing event loop" in worker_log  # ... and finished its shutdown cleanly
    after_pipe = (tmp_path / "state" / "up.log").read_text()  # what nobody could read any more
    assert "stopped." in after_pipe and "killed it" not in after_pipe


def up_process(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dnc", "up"], env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO, start_new_session=True,
        )  # fmt: skip


@pytest.mark.timeout(400)
def test_a_second_dnc_up_refuses_while_one_runs_and_stops_what_a_killed_one_left(
    tmp_path: Path,
) -> None:
    env, ports = stack_env(tmp_path)
    first_log, third_log = tmp_path / "first.log", tmp_path / "third.log"
    first = up_process(env, first_log)
    third: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: "pipeline ready" in first_log.read_text(), timeout=150, interval=0.5,
                 what="the first dnc up to be ready")  # fmt: skip
        second = subprocess.run([sys.executable, "-m", "dnc", "up"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"another `dnc up` (pid {first.pid}) is running" in second.stderr
        assert "kafka (pid" in second.stderr and str(ports["kafka"]) in second.stderr

        first.kill()  # SIGKILL: nothing is stopped; its processes are orphans now
        first.wait(timeout=10)
        orphans = RunDirectory(tmp_path / "state").recorded()
        assert {"kafka", "redis", "postgres", "prometheus", "worker"} <= {e.name for e in orphans}
        assert listening(ports["kafka"])

        third = up_process(env, third_log)
        wait_for(lambda: "pipeline ready" in third_log.read_text(), timeout=200, interval=0.5,
                 what="a new dnc up to clear the leftovers and be ready")  # fmt: skip
        text = third_log.read_text()
        assert "left these running" in text and f"port {ports['redis']}" in text
        assert not any(e.alive for e in orphans), "the orphans were stopped, not adopted"
        third.send_signal(signal.SIGTERM)  # a service manager's stop
        assert third.wait(timeout=120) == 0, third_log.read_text()[-3000:]
    finally:
        for proc in (first, third):
            if proc is not None and proc.poll() is None:
                proc.kill()
        RunDirectory(tmp_path / "state").stop_all(RunDirectory(tmp_path / "state").recorded())
    assert_nothing_left(tmp_path, ports)
