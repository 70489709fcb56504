"""The local PostgreSQL and Prometheus helpers against the real Debian binaries."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from infra.launch.process import ServiceError, free_port
from infra.postgres_service import PostgresService, restart_postgres, start_postgres
from infra.prometheus_service import (
    RUN_STARTED,
    local_prometheus_config,
    promtool_path,
    run_rules,
    start_prometheus,
)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresService]:
    """A durable PostgreSQL (as `dnc up` runs it) in ``tmp_path/pg``, destroyed afterwards."""
    server = start_postgres(tmp_path / "pg")
    try:
        yield server
    finally:
        server.destroy()


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute("SELECT note FROM notes ORDER BY id").fetchall()


@pytest.mark.postgres
def test_postgres_keeps_data_across_stop_restart_and_crash(postgres: PostgresService) -> None:
    assert postgres.dsn == f"postgresql://dnc@127.0.0.1:{postgres.port}/dnc"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "dnc",
            "dnc",
        )
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO notes (note) VALUES ('before stop')")

    port = postgres.port
    postgres.stop()
    assert not postgres.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres.dsn, connect_timeout=2).close()

    restarted = restart_postgres(postgres)
    assert restarted.running and restarted.port == port
    assert _rows(restarted.dsn) == [("before stop",)]

    with psycopg.connect(restarted.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO notes (note) VALUES ('before crash')")
    restarted.kill()
    restart_postgres(restarted)
    assert _rows(restarted.dsn) == [("before stop",), ("before crash",)]


@pytest.mark.postgres
def test_postgres_starts_again_on_an_existing_cluster(tmp_path: Path) -> None:
    first = start_postgres(tmp_path / "pg", fast=True)
    try:
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
        first.stop()
        second = start_postgres(tmp_path / "pg", fast=True)  # a new port, the same data
        try:
            with psycopg.connect(second.dsn) as conn:
                assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        finally:
            second.stop()
    finally:
        first.destroy()


def test_prometheus_config_has_one_job_per_key_and_absolute_rule_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = local_prometheus_config(
        {"dnc-worker": ["127.0.0.1:9310"], "dnc-sync": ["127.0.0.1:9311", "127.0.0.1:9312"]},
        [Path("alerts.yml")],
        scrape_interval="2s",
    )
    config = yaml.safe_load(text)
    assert config["global"] == {"scrape_interval": "2s", "evaluation_interval": "2s"}
    assert config["rule_files"] == [str((tmp_path / "alerts.yml").resolve())]
    assert config["scrape_configs"] == [
        {"job_name": "dnc-worker", "static_configs": [{"targets": ["127.0.0.1:9310"]}]},
        {
            "job_name": "dnc-sync",
            "static_configs": [{"targets": ["127.0.0.1:9311", "127.0.0.1:9312"]}],
        },
    ]


@pytest.mark.parametrize(
    ("targets", "interval"),
    [
        ({"dnc-worker": ["http://127.0.0.1:9310"]}, "5s"),
        ({"dnc-worker": []}, "5s"),
        ({"dnc worker": ["127.0.0.1:9310"]}, "5s"),
        ({"dnc-worker": ["127.0.0.1:9310"]}, "5 seconds"),
    ],
)
def test_prometheus_config_rejects_malformed_input(
    targets: dict[str, list[str]], interval: str
) -> None:
    with pytest.raises(ValueError):
        local_prometheus_config(targets, [], scrape_interval=interval)


def test_run_rules_record_when_the_run_started_in_a_file_promtool_accepts(tmp_path: Path) -> None:
    path = run_rules(tmp_path / "run" / "run.rules.yml", 1_796_518_471.1774)
    (group,) = yaml.safe_load(path.read_text())["groups"]
    assert group["rules"] == [{"record": RUN_STARTED, "expr": "vector(1796518471.177)"}]
    checked = subprocess.run([promtool_path(), "check", "rules", str(path)],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for wrong in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="Unix time"):
            run_rules(tmp_path / "wrong.yml", wrong)


def test_prometheus_refuses_a_malformed_lookback_before_starting(tmp_path: Path) -> None:
    config = local_prometheus_config({"self": ["127.0.0.1:9"]})
    with pytest.raises(ValueError, match="lookback_delta '15 seconds'"):
        start_prometheus(tmp_path / "prometheus", config, lookback_delta="15 seconds")
    assert not (tmp_path / "prometheus" / "prometheus.log").exists()


def _query(address: str, promql: str) -> list[dict[str, Any]]:
    url = f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.prometheus
def test_prometheus_scrapes_itself_and_evaluates_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "test", "rules": [{"record": "job:up:sum", "expr": "sum(up)"}]}]}
        ),
        encoding="utf-8",
    )
    port = free_port()
    config = local_prometheus_config({"self": [f"127.0.0.1:{port}"]}, [rules], "1s")
    prometheus = start_prometheus(tmp_path / "prometheus", config, port=port)
    try:
        deadline = time.monotonic() + 20
        up: list[dict[str, Any]] = []
        recorded: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not (up and recorded):
            up = _query(prometheus.address, 'up{job="self"}')
            recorded = _query(prometheus.address, "job:up:sum")
            time.sleep(0.5)
        assert up, "Prometheus did not scrape itself within 20 s"
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        assert up[0]["value"][1] == "1"
        assert recorded, "the recording rule was not evaluated within 20 s"
    finally:
        prometheus.stop()
    assert not prometheus.running


@pytest.mark.prometheus
def test_prometheus_refuses_a_broken_rule_file_with_promtool_output(tmp_path: Path) -> None:
    rules = tmp_path / "broken.yml"
    rules.write_text("groups:\n  - name: x\n    rules:\n      - record: a\n        expr: sum(\n")
    config = local_prometheus_config({"self": ["127.0.0.1:9"]}, [rules])
    with pytest.raises(ServiceError, match="promtool") as excinfo:
        start_prometheus(tmp_path / "prometheus", config)
    assert "broken.yml" in str(excinfo.value)
