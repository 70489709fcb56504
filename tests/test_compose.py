"""docker-compose.yml describes the same stack `dnc up` runs (no Docker engine here: read it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from infra.services import KAFKA_DEFAULT_VERSION
from schemas.settings import Settings

COMPOSE = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text()
)


def test_same_services_versions_and_ports_as_dnc_up() -> None:
    services = COMPOSE["services"]
    assert {"kafka", "redis", "worker"} <= set(services)
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_DEFAULT_VERSION}"
    defaults = Settings()
    kafka_port = defaults.kafka_host_port[1]
    redis_port = defaults.redis_host_port[1]
    assert f"127.0.0.1:{kafka_port}:9092" in services["kafka"]["ports"]
    assert f"127.0.0.1:{redis_port}:6379" in services["redis"]["ports"]
    assert f"127.0.0.1:{defaults.worker_metrics_port}:9310" in services["worker"]["ports"]


def test_every_service_has_a_healthcheck_and_the_worker_waits_for_them() -> None:
    services = COMPOSE["services"]
    for name, service in services.items():
        assert "healthcheck" in service, name
    depends = services["worker"]["depends_on"]
    assert depends == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    env = services["worker"]["environment"]
    assert env["DNC_KAFKA_BOOTSTRAP"] == "kafka:19092"
    assert env["DNC_REDIS_URL"].startswith("redis://redis:6379")
