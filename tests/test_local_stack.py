"""`dnc up` as a user runs it: everything starts, other shells find it, Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.services import free_port
from tests.harness import REPO, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(240)
def test_dnc_up_serves_oppose_and_check_then_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    kafka_port, redis_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DNC_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
        "DNC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DNC_WORKER_METRICS_PORT": str(metrics_port),
        "DNC_DATA_DIR": str(tmp_path / "state"),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "dnc", "up"], env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: "pipeline ready" in log_path.read_text(), timeout=150, interval=0.5,
                 what="dnc up to report the pipeline ready")  # fmt: skip
        text = log_path.read_text()
        assert f"127.0.0.1:{kafka_port}" in text and f"redis://127.0.0.1:{redis_port}/0" in text

        def dnc(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "dnc", *args], env=env, text=True,
                                  capture_output=True, timeout=60, cwd=REPO)  # fmt: skip

        assert dnc("oppose", "06 98 76 54 32", "--tenant", "demo").returncode == 0
        wait_for(lambda: dnc("check", "0698765432", "--tenant", "demo").returncode == 1,
                 timeout=30, what="suppressed through the local stack")  # fmt: skip
        assert dnc("status").returncode == 0
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
    for port in (kafka_port, redis_port, metrics_port):
        assert not listening(port), f"port {port} still open after dnc up stopped"
