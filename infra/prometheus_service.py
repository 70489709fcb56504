"""Run a real Prometheus (Debian's ``prometheus`` package) as a local child process.

Like :mod:`infra.launch`, no Docker and no systemd: ``/usr/bin/prometheus`` runs in the
foreground as a child of the Python process, bound to ``127.0.0.1`` on a free (or given)
port, with its configuration, TSDB and log in one directory.  Typical use::

    from infra.prometheus_service import local_prometheus_config, start_prometheus

    config = local_prometheus_config(
        {"dnc-worker": ["127.0.0.1:9310"], "dnc-sync": ["127.0.0.1:9311"]},
        [Path("infra/prometheus/alerts.yml")],
    )
    prom = start_prometheus(tmp_path / "prometheus", config)
    prom.address    # "127.0.0.1:40126"; the UI is http://127.0.0.1:40126/graph
    # the ops page (infra/prometheus/consoles/dnc.html): http://127.0.0.1:40126/consoles/dnc.html
    prom.stop()

The scrape jobs the alert rules and the Grafana dashboard know are ``dnc-worker``,
``dnc-sync``, ``dnc-gateway`` and ``dnc-demo``.  The configuration (and the rule files it
names) is checked with ``promtool check config`` before the server starts, so a broken
rule file is a clear error, not a Prometheus that silently evaluates nothing.

A system Prometheus installed by the same package (``prometheus.service`` on port 9090)
is neither needed nor touched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from infra.launch.process import (
    RunningService,
    ServiceError,
    file_size,
    register,
    service_error,
    spawn,
    start_with_port_retries,
    wait_until_ready,
)

__all__ = [
    "OPS_PAGE",
    "RUN_STARTED",
    "ServiceError",
    "check_config",
    "local_prometheus_config",
    "prometheus_path",
    "promtool_path",
    "start_prometheus",
]

log = logging.getLogger("dnc.infra")

HOST = "127.0.0.1"
_SETUP_HINT = "run `bash infra/setup.sh` (it installs Debian's `prometheus` package)."
_START_TIMEOUT = 30.0
_PROMTOOL_TIMEOUT = 60.0
_BIND_ERRORS = ("address already in use",)
# Prometheus durations: units from years down to milliseconds, largest first, e.g. "1m30s".
_DURATION = re.compile(r"(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
_JOB_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]*")
_TARGET = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}")
# Loopback never goes through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# The ops page (console templates) every Prometheus started here serves at OPS_PAGE.
CONSOLES = Path(__file__).resolve().parent / "prometheus" / "consoles"
CONSOLE_LIBRARIES = Path(__file__).resolve().parent / "prometheus" / "console_libraries"
OPS_PAGE = "/consoles/dnc.html"
# Recorded by the rule run_rules() writes: when this `dnc up` run started (Unix seconds). The
# ops page marks it on every graph, so the earlier run's series (same data directory, same
# TSDB) are not read as the current run's.
RUN_STARTED = "dnc_run_started_timestamp_seconds"


# --------------------------------------------------------------------------- binaries


def _find_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidate = f"/usr/bin/{name}"
    if os.access(candidate, os.X_OK):
        return candidate
    raise service_error(f"{name} was not found on PATH or at {candidate}.", _SETUP_HINT)


def prometheus_path() -> str:
    """Path of the ``prometheus`` server binary; :class:`ServiceError` if not installed."""
    return _find_tool("prometheus")


def promtool_path() -> str:
    """Path of ``promtool`` (config checks, rule unit tests); :class:`ServiceError` if absent."""
    return _find_tool("promtool")


# --------------------------------------------------------------------------- configuration


def _check_duration(value: str, name: str = "scrape_interval") -> None:
    if not value or not _DURATION.fullmatch(value) or not re.search(r"[1-9]", value):
        raise ValueError(
            f"{name} {value!r} is not a Prometheus duration; use e.g. '5s', '1m' or '1m30s'."
        )


def _check_targets(job: str, targets: Sequence[str]) -> None:
    if not _JOB_NAME.fullmatch(job):
        raise ValueError(
            f"job name {job!r} is not usable; use letters, digits, '_', '-', e.g. 'dnc-worker'."
        )
    if isinstance(targets, str) or not targets:
        raise ValueError(f"job {job!r} needs a non-empty list of 'host:port' targets.")
    for target in targets:
        if not _TARGET.fullmatch(target):
            raise ValueError(
                f"target {target!r} of job {job!r} is not 'host:port' (no scheme, no path); "
                "use e.g. '127.0.0.1:9310'."
            )


def local_prometheus_config(
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "5s",
) -> str:
    """A ``prometheus.yml`` scraping ``targets`` and evaluating ``rule_files``.

    ``targets`` maps a job name (``"dnc-worker"``, ``"dnc-sync"``, ...) to its
    ``host:port`` targets, one scrape job per key, scraped over plain HTTP at
    ``/metrics``.  Rules are evaluated as often as targets are scraped
    (``evaluation_interval = scrape_interval``).  Rule files are written as absolute
    paths, so the config works from any directory.  Raises :class:`ValueError` for a
    malformed job name, target or interval.
    """
    _check_duration(scrape_interval)
    for job, hosts in targets.items():
        _check_targets(job, hosts)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(hosts)}]}
            for job, hosts in targets.items()
        ],
    }
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return f"# Generated by infra/prometheus_service.py for local use.\n{body}"


def run_rules(path: Path, started_at: float) -> Path:
    """Write at ``path`` a rule file recording ``RUN_STARTED`` = ``started_at`` (Unix seconds).

    Each `dnc up` run writes its own start, so the page tells this run from the previous
    one kept in the same TSDB. Returns ``path``, to pass among the rule files.
    """
    if not started_at > 0:
        raise ValueError(f"started_at {started_at!r} is not a Unix time in seconds.")
    rule = {"record": RUN_STARTED, "expr": f"vector({started_at:.3f})"}
    document = {"groups": [{"name": "dnc-run", "rules": [rule]}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def check_config(path: Path) -> None:
    """Run ``promtool check config`` on ``path`` (and the rule files it names).

    Raises :class:`ServiceError` with promtool's output if the check fails.
    """
    cmd = [promtool_path(), "check", "config", str(path)]
    try:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_PROMTOOL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise service_error(
            f"`promtool check config {path}` did not finish within {_PROMTOOL_TIMEOUT:.0f} s.",
            "the machine may be overloaded; retry.",
        ) from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise ServiceError(
            f"the Prometheus configuration {path} is invalid (promtool exit code "
            f"{result.returncode}).\n"
            "  What to do: fix the configuration or the rule file named below, then retry.\n"
            f"  --- promtool check config ---\n{output}"
        )


# --------------------------------------------------------------------------- server


def _get(port: int, path: str) -> bytes | None:
    """Body of ``GET http://127.0.0.1:port/path`` if it answers 200, else ``None``."""
    try:
        with _NO_PROXY.open(f"http://{HOST}:{port}{path}", timeout=1) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def _ready(port: int, tsdb_path: Path) -> bool:
    """True if ``GET /-/ready`` answers 200 (503 while the TSDB loads) and it is ours.

    "Ours" means it runs with ``tsdb_path``, not another Prometheus that grabbed the port
    first (ours then exits with a bind error).
    """
    if _get(port, "/-/ready") is None:
        return False
    flags = _get(port, "/api/v1/status/flags")
    try:
        data = json.loads(flags or b"{}").get("data", {})
    except (ValueError, AttributeError):
        return False
    return bool(data.get("storage.tsdb.path") == str(tsdb_path))


def _tsdb_path(data_dir: Path) -> Path:
    return data_dir / "tsdb"


def _prometheus_command(
    data_dir: Path, config_path: Path, port: int, flags: Sequence[str]
) -> list[str]:
    return [
        prometheus_path(),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={_tsdb_path(data_dir)}",
        f"--web.listen-address={HOST}:{port}",
        f"--web.console.templates={CONSOLES}",
        f"--web.console.libraries={CONSOLE_LIBRARIES}",
        *flags,
    ]


def _start_once(
    data_dir: Path, config_path: Path, port: int, flags: Sequence[str]
) -> RunningService | str:
    """Start Prometheus on ``port``; return the bind error line if the port was taken."""
    log_path = data_dir / "prometheus.log"
    offset = file_size(log_path)
    proc = spawn(_prometheus_command(data_dir, config_path, port, flags), log_path, data_dir)
    bind_error = wait_until_ready(
        proc,
        lambda: _ready(port, _tsdb_path(data_dir)),
        what=f"Prometheus on {HOST}:{port}",
        log_path=log_path,
        offset=offset,
        timeout=_START_TIMEOUT,
        bind_errors=_BIND_ERRORS,
        exit_hint="read the log below; if another Prometheus uses this data directory (TSDB "
        "lock), stop it first.",
        not_ready="was not ready (GET /-/ready)",
        slow_hint="read the log below; replaying a large write-ahead log or an overloaded "
        "machine can be slow.",
    )
    if bind_error is not None:
        return bind_error
    service = RunningService("prometheus", HOST, port, proc, log_path, data_dir=data_dir)
    register(service)
    return service


def start_prometheus(
    data_dir: Path,
    config_text: str,
    port: int | None = None,
    *,
    enable_lifecycle: bool = False,
    lookback_delta: str | None = None,
) -> RunningService:
    """Start Prometheus on ``127.0.0.1:port`` with ``config_text`` as its configuration.

    ``data_dir`` receives ``prometheus.yml`` (rewritten on every start), the TSDB in
    ``tsdb/`` (kept across starts) and the server output in ``prometheus.log``.  The
    configuration is checked with ``promtool`` first.  ``port=None`` picks a free port
    (retrying with another if it was taken meanwhile); a scrape job that targets
    Prometheus itself needs a fixed ``port``.  ``enable_lifecycle`` turns on
    ``POST /-/reload`` and ``/-/quit``.  ``lookback_delta`` (e.g. ``"15s"``, a few scrape
    intervals) replaces the 5 minutes during which an instant query still returns a series
    that stopped: a restarted Prometheus writes no staleness marker for the targets of its
    earlier run, whose last values would otherwise read as current that long.

    Returns once ``GET /-/ready`` answers 200, registered for termination at exit;
    raises :class:`ServiceError` (with promtool's output or the log tail) otherwise.
    """
    flags = ["--web.enable-lifecycle"] if enable_lifecycle else []
    if lookback_delta is not None:
        _check_duration(lookback_delta, "lookback_delta")
        flags.append(f"--query.lookback-delta={lookback_delta}")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(config_text, encoding="utf-8")
    check_config(config_path)
    started = time.monotonic()
    service, _port = start_with_port_retries(
        "Prometheus",
        HOST,
        port,
        lambda chosen: _start_once(data_dir, config_path, chosen, flags),
        data_dir / "prometheus.log",
    )
    log.info(
        "prometheus started at %s in %.2f s (pid %d, log %s)",
        service.address,
        time.monotonic() - started,
        service.process.pid,
        service.log_path,
    )
    return service
