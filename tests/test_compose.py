"""docker-compose.yml describes the same stack `dnc up` runs (no Docker engine here: read it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        if service.get("restart") == "no":
            continue  # a one-shot job (acl-init): the others wait for its success
        assert "healthcheck" in service, name
    depends = services["worker"]["depends_on"]
    assert depends == {
        "acl-init": {"condition": "service_completed_successfully"},
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    env = services["worker"]["environment"]
    assert env["DNC_KAFKA_BOOTSTRAP"] == "kafka:19092"
    assert env["DNC_REDIS_URL"].startswith("redis://redis:6379")


ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
# What the README promises `docker compose up` (and `--profile demo`) runs.
PROMISED = {
    "kafka",
    "redis",
    "postgres",
    "worker",
    "sync",
    "gateway",
    "prometheus",
    "grafana",
    "demo",
    "acl-init",
}
# Scrape job -> (compose service, port the process listens on inside its container).
SCRAPE_JOBS = {
    "dnc-worker": ("worker", Settings().worker_metrics_port),
    "dnc-sync": ("sync", Settings().sync_metrics_port),
    "dnc-gateway": ("gateway", Settings().gateway_port),
    "dnc-demo": ("demo", Settings().demo_metrics_port),
}


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry of a service (short syntax)."""
    out = []
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out.append((source, target))
    return out


def test_every_promised_service_is_there_with_its_images() -> None:
    services = COMPOSE["services"]
    assert set(services) == PROMISED
    assert services["postgres"]["image"] == "postgres:15"
    # Debian 12's prometheus package (what `dnc up` and the tests run) is 2.42.
    assert services["prometheus"]["image"] == "prom/prometheus:v2.42.0"
    assert services["grafana"]["image"].startswith("grafana/grafana:10.4.")
    for name in ("worker", "sync", "gateway", "demo"):
        assert services[name]["build"] == ".", name  # one image, built from the Dockerfile
    assert services["sync"]["command"] == ["sync"]
    assert services["gateway"]["command"] == ["gateway"]
    assert services["demo"]["command"] == ["demo-traffic"]
    # The demo only runs when asked for (docker compose --profile demo up).
    assert services["demo"]["profiles"] == ["demo"]
    assert all("profiles" not in s for n, s in services.items() if n != "demo")


def test_ports_are_loopback_and_match_the_settings_defaults() -> None:
    services = COMPOSE["services"]
    defaults = Settings()
    expected = {
        "postgres": 5432,
        "sync": defaults.sync_metrics_port,
        "gateway": defaults.gateway_port,
        "prometheus": defaults.prometheus_port,
        "grafana": 3000,
        "demo": defaults.demo_metrics_port,
    }
    for name, port in expected.items():
        assert any(str(p).endswith(f":{port}") for p in services[name]["ports"]), name
    assert f"127.0.0.1:{defaults.prometheus_port}:9090" in services["prometheus"]["ports"]
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), (
                f"{name} publishes {mapping} beyond loopback"
            )
    # The DSN `dnc` uses by default reaches the published PostgreSQL.
    dsn = defaults.postgres_dsn.get_secret_value()
    assert dsn.startswith("postgresql://dnc@127.0.0.1:5432/dnc")


def test_python_services_reach_the_backing_services_by_name() -> None:
    services = COMPOSE["services"]
    healthy = {"condition": "service_healthy"}
    sync, gateway, demo = services["sync"], services["gateway"], services["demo"]
    done = {"condition": "service_completed_successfully"}
    assert sync["depends_on"] == {
        "acl-init": done,
        "kafka": healthy,
        "redis": healthy,
        "postgres": healthy,
    }
    assert gateway["depends_on"]["kafka"] == healthy
    assert gateway["depends_on"]["redis"] == healthy
    assert demo["depends_on"]["kafka"] == healthy
    assert services["grafana"]["depends_on"] == {"prometheus": healthy}
    for name in ("sync", "gateway", "demo"):
        env = services[name]["environment"]
        assert env["DNC_KAFKA_BOOTSTRAP"] == "kafka:19092", name
        assert env["DNC_REDIS_URL"].startswith("redis://redis:6379"), name
    assert sync["environment"]["DNC_POSTGRES_DSN"].startswith("postgresql://dnc:")
    assert "@postgres:5432/dnc" in sync["environment"]["DNC_POSTGRES_DSN"]
    # The processes that read the view hash with the worker's key (else: wrong sets).
    key = services["worker"]["environment"]["DNC_VIEW_KEY"]
    assert gateway["environment"]["DNC_VIEW_KEY"] == key
    assert demo["environment"]["DNC_VIEW_KEY"] == key
    # Their metrics and API listen beyond the container's loopback, on the default ports.
    assert sync["environment"]["DNC_METRICS_HOST"] == "0.0.0.0"
    assert demo["environment"]["DNC_METRICS_HOST"] == "0.0.0.0"
    assert gateway["environment"]["DNC_GATEWAY_HOST"] == "0.0.0.0"
    assert int(sync["environment"]["DNC_SYNC_METRICS_PORT"]) == Settings().sync_metrics_port
    assert int(demo["environment"]["DNC_DEMO_METRICS_PORT"]) == Settings().demo_metrics_port
    assert int(gateway["environment"]["DNC_GATEWAY_PORT"]) == Settings().gateway_port


def test_prometheus_scrapes_the_compose_services() -> None:
    services = COMPOSE["services"]
    assert PROMETHEUS["global"]["scrape_interval"] == "5s"
    assert PROMETHEUS["global"]["evaluation_interval"] == "5s"
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    assert set(jobs) == set(SCRAPE_JOBS)
    for job_name, (service, port) in SCRAPE_JOBS.items():
        job = jobs[job_name]
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        assert targets == [f"{service}:{port}"], job_name
        assert job.get("metrics_path", "/metrics") == "/metrics", job_name
        assert service in services, job_name
        published = [str(p) for p in services[service]["ports"]]
        assert any(p.endswith(f":{port}") for p in published), (job_name, published)
    # The rule file resolves next to the config, wherever both are mounted.
    mounts = {t: s for s, t in _mounts(services["prometheus"])}
    config_dir = Path("/etc/prometheus")
    assert mounts[str(config_dir / "prometheus.yml")] == "./infra/prometheus/prometheus.yml"
    for rule_file in PROMETHEUS["rule_files"]:
        in_container = config_dir / rule_file
        assert str(in_container) in mounts, f"{rule_file} is not mounted in the container"
        assert (ROOT / mounts[str(in_container)]).is_file()


def test_grafana_is_provisioned_from_the_repository() -> None:
    grafana = COMPOSE["services"]["grafana"]
    mounts = {t: s for s, t in _mounts(grafana)}
    assert mounts["/etc/grafana/provisioning"] == "./infra/grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./infra/grafana/dashboards"
    assert all(str(v).endswith(":ro") for v in grafana["volumes"])
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    dashboards = ROOT / "infra/grafana/dashboards"
    assert (dashboards / home.relative_to("/var/lib/grafana/dashboards")).is_file()
    provisioning = ROOT / "infra/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards/dnc.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]


def test_every_volume_is_declared_and_every_mounted_file_exists() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, service in COMPOSE["services"].items():
        for source, _target in _mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, missing in the repo"
            else:
                used.add(source)
                assert source in declared, f"{name} uses undeclared volume {source}"
    assert declared == used, f"declared but unused: {declared - used}"


def test_kafka_runs_with_sasl_scram_and_acls_and_every_process_has_its_principal() -> None:
    """The same authority model as `dnc up`: one principal per role, ACLs by acl-init."""
    services = COMPOSE["services"]
    script = (ROOT / "infra" / "kafka" / "compose-broker.sh").read_text()
    assert "StandardAuthorizer" in script and "--add-scram" in script
    assert "allow.everyone.if.no.acl.found=false" in script
    assert services["kafka"]["command"] == ["bash", "/opt/dnc/compose-broker.sh"]
    assert services["acl-init"]["command"][:2] == ["acl", "apply"]
    expected = {"worker": "dnc-worker", "sync": "dnc-sync", "gateway": "dnc-gateway",
                "demo": "dnc-gateway"}  # fmt: skip
    for name, user in expected.items():
        env = services[name]["environment"]
        assert env["DNC_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["DNC_KAFKA_SASL_USERNAME"] == user, name
        assert services[name]["depends_on"]["acl-init"] == {
            "condition": "service_completed_successfully"
        }
    env_script = (ROOT / "infra" / "compose-env.sh").read_text()
    for role in ("DESKTOP", "ADMIN", "GATEWAY", "WORKER", "SYNC"):
        assert f"DNC_KAFKA_PASSWORD_{role}" in str(services["acl-init"]["environment"])
    assert "DNC_KAFKA_PASSWORD_" in env_script and "DNC_VIEW_KEY" in env_script
