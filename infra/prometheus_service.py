"""Run a real Prometheus (Debian's package) on loopback, scraping the local pipeline.

The scrape jobs are the ones the alert rules and the Grafana dashboard know:
``dnc-worker``, ``dnc-sync``, ``dnc-gateway`` and ``dnc-demo``. The configuration is checked
with ``promtool check config`` before the server starts, so a broken rule file is a clear
error, not a Prometheus that silently evaluates nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from infra.services import RunningService, ServiceError, _log_tail, _register, _spawn, free_port

_START_TIMEOUT = 30.0
_SETUP_HINT = "run `bash infra/setup.sh` (installs Debian's prometheus package)"


def _tool(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        raise ServiceError(f"{name} not found: {_SETUP_HINT}")
    return found


def promtool_path() -> str:
    """Path of promtool (rule tests, config checks)."""
    return _tool("promtool")


def local_prometheus_config(
    targets: dict[str, list[str]], rule_files: list[Path], scrape_interval: str = "5s"
) -> str:
    """prometheus.yml scraping ``targets`` (job -> host:port list) with ``rule_files``."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }
    return str(yaml.safe_dump(config, sort_keys=False))


def check_config(path: Path) -> None:
    """``promtool check config``; ServiceError with its output when it fails."""
    done = subprocess.run(
        [promtool_path(), "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ServiceError(f"Prometheus config {path} is invalid:\n{done.stdout}{done.stderr}")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_prometheus(data_dir: Path, config_text: str, port: int | None = None) -> RunningService:
    """Write and check the config, start Prometheus on 127.0.0.1, wait until it is ready."""
    binary = _tool("prometheus")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(config_text)
    check_config(config_path)
    chosen = port or free_port()
    log_path = data_dir / "prometheus.log"
    process = _spawn(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{chosen}",
            "--web.enable-lifecycle",
        ],
        log_path,
        data_dir,
    )
    service = RunningService("prometheus", "127.0.0.1", chosen, process, log_path, data_dir)
    _register(service)
    deadline = time.monotonic() + _START_TIMEOUT
    while not _ready(chosen):
        if process.poll() is not None or time.monotonic() > deadline:
            service.kill()
            raise ServiceError(
                f"Prometheus did not become ready on port {chosen}; log {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        time.sleep(0.2)
    return service
