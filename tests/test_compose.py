"""docker-compose.yml describes the same stacks `dnc up` runs: read as written, and as the real
Docker Compose resolves it (`docker-compose config`, built by `make setup`; no Docker engine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from infra.acls import ROLES
from infra.cache import cache_root
from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION
from infra.launch.process import free_port
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


# The default stack (and its demo profile), as written; the cluster profile is tested below on
# what the real compose makes of the file.
DEFAULT_SERVICES = {
    name: service
    for name, service in COMPOSE["services"].items()
    if "cluster" not in service.get("profiles", [])
}


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry of a service (short syntax)."""
    out = []
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out.append((source, target))
    return out


def test_every_promised_service_is_there_with_its_images() -> None:
    services = DEFAULT_SERVICES
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
    # Only the workers sign lifts: the authority key is theirs alone.
    signing = {n for n, s in services.items() if "DNC_AUTHORITY_KEY" in s.get("environment", {})}
    assert signing == {"worker", "worker-1", "worker-2"}
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
    assert 'echo "DNC_AUTHORITY_KEY=$(secret)"' in env_script


# --------------------------------------------------------------------------- the real compose
# `docker-compose config` (Docker Compose, built by `make setup`: infra/setup.sh) parses, merges
# and interpolates the file and checks it against the compose specification, without a Docker
# engine. What it prints is the model `docker compose up` would run.

COMPOSE_VERSION = "5.0.2"
"""The Docker Compose release infra/setup.sh builds (its ``COMPOSE_VERSION`` is the same)."""

CLUSTER_SERVICES = {
    "kafka-1",
    "kafka-2",
    "kafka-3",
    "acl-init-cluster",
    *(f"redis-{n}" for n in range(1, 7)),
    "redis-cluster-init",
    "worker-1",
    "worker-2",
    "postgres-cluster",
    "sync-cluster",
    "gateway-cluster",
    "prometheus-cluster",
    "grafana-cluster",
}
# Variables an app container may set that are not Settings fields: the passwords acl-init gives
# each principal (infra/acls.py reads them).
ACL_INIT_PASSWORDS = {f"DNC_KAFKA_PASSWORD_{role.upper()}" for role in ROLES}
SETTINGS_VARIABLES = {f"DNC_{name.upper()}" for name in Settings.model_fields}


def compose_binary() -> Path:
    """The pinned docker-compose binary; fails (never skips) when it is not installed."""
    path = cache_root() / "compose" / COMPOSE_VERSION / "docker-compose"
    if not os.access(path, os.X_OK):
        pytest.fail(f"Docker Compose {COMPOSE_VERSION} is not installed ({path}): run make setup")
    return path


@pytest.fixture(scope="module")
def compose_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secrets file a user makes (infra/compose-env.sh), in a scratch directory."""
    home = tmp_path_factory.mktemp("compose")
    env_file = home / "compose.env"
    secrets = subprocess.run(
        ["bash", str(ROOT / "infra" / "compose-env.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    )
    env_file.write_text(secrets.stdout)
    return env_file


def run_compose(
    env_file: Path, *args: str, compose_file: Path = ROOT / "docker-compose.yml"
) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f FILE --env-file ENV ARGS`` from the repository, without the caller's
    environment (no DNC_*, COMPOSE_* or DOCKER_* leaking in) and without a Docker engine."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    command = [str(compose_binary()), "-f", str(compose_file), "--project-directory", str(ROOT)]
    return subprocess.run(
        [*command, "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )


def compose_config(env_file: Path, *profiles: str) -> dict[str, Any]:
    """The model compose resolves for ``profiles`` (none: the default stack)."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    done = run_compose(env_file, *flags, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


@pytest.fixture(scope="module")
def default_config(compose_env: Path) -> dict[str, Any]:
    return compose_config(compose_env)


@pytest.fixture(scope="module")
def cluster_config(compose_env: Path) -> dict[str, Any]:
    return compose_config(compose_env, "cluster")


@pytest.fixture(scope="module")
def every_profile(compose_env: Path) -> dict[str, Any]:
    return compose_config(compose_env, "cluster", "demo")


def _unescaped(value: str) -> str:
    """A string as the container gets it (`config` prints a literal $ as $$)."""
    return value.replace("$$", "$")


def _app_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile (the dnc processes)."""
    return {
        name: service
        for name, service in config["services"].items()
        if Path(service.get("build", {}).get("context", "/nonexistent")) == ROOT
    }


def test_setup_script_builds_the_compose_release_the_tests_run() -> None:
    script = (ROOT / "infra" / "setup.sh").read_text()
    pinned = re.search(r'^COMPOSE_VERSION="([^"]+)"$', script, re.MULTILINE)
    assert pinned is not None, "infra/setup.sh no longer pins COMPOSE_VERSION"
    assert pinned.group(1) == COMPOSE_VERSION
    done = subprocess.run(
        [str(compose_binary()), "version", "--short"], capture_output=True, text=True, timeout=10
    )
    assert done.stdout.strip() == COMPOSE_VERSION


def test_default_profile_is_the_single_node_stack(
    default_config: dict[str, Any], compose_env: Path
) -> None:
    assert set(default_config["services"]) == PROMISED - {"demo"}
    assert set(default_config["networks"]) == {"default"}
    assert set(default_config["volumes"]) == {
        "kafka-data",
        "postgres-data",
        "prometheus-data",
        "worker-data",
    }  # (the worker's table: RocksDB on its own volume)
    demo = compose_config(compose_env, "demo")
    assert set(demo["services"]) == PROMISED
    for name, service in default_config["services"].items():
        assert "profiles" not in service, name


def test_cluster_profile_adds_its_own_services_beside_the_default_ones(
    cluster_config: dict[str, Any], default_config: dict[str, Any]
) -> None:
    services = cluster_config["services"]
    assert set(services) == set(default_config["services"]) | CLUSTER_SERVICES
    for name in CLUSTER_SERVICES:
        assert services[name]["profiles"] == ["cluster"], name
    # The default stack is the same with the profile on: nothing of it points at the cluster.
    for name, service in default_config["services"].items():
        assert services[name] == service, name


def test_naming_the_cluster_services_runs_the_cluster_stack_alone(compose_env: Path) -> None:
    """What the README and the file's header say: `docker compose up worker-1 ...`."""
    named = ["worker-1", "worker-2", "sync-cluster", "gateway-cluster", "grafana-cluster"]
    done = run_compose(compose_env, "config", "--format", "json", *named)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["services"]) == CLUSTER_SERVICES


def test_cluster_runs_three_kraft_nodes_with_replication_factor_three(
    cluster_config: dict[str, Any],
) -> None:
    services = cluster_config["services"]
    nodes = {n: s for n, s in services.items() if n.startswith("kafka-")}
    assert len(nodes) == 3
    voters = {s["environment"]["BROKER_QUORUM_VOTERS"] for s in nodes.values()}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert {s["environment"]["BROKER_NODE_ID"] for s in nodes.values()} == {"1", "2", "3"}
    script = (ROOT / "infra" / "kafka" / "compose-broker.sh").read_text()
    for name, node in nodes.items():
        env = node["environment"]
        # Built and started like the default broker: the same image, script and secrets.
        assert node["image"] == services["kafka"]["image"], name
        assert node["command"] == services["kafka"]["command"], name
        assert f"{env['BROKER_NODE_ID']}@{name}:9093" in env["BROKER_QUORUM_VOTERS"]
        assert env["BROKER_HOST"] == node["hostname"] == name
        assert env["BROKER_REPLICATION"] == "3"
        assert "DNC_KAFKA_SUPERUSER_PASSWORD" in env
        (published,) = node["ports"]
        assert str(published["target"]) == published["published"] == env["BROKER_EXTERNAL_PORT"]
        assert "BROKER_HOST" in _unescaped(node["healthcheck"]["test"][1])
        mounts = {v["target"]: v["source"] for v in node["volumes"]}
        assert Path(mounts["/opt/dnc/compose-broker.sh"]) == ROOT / "infra/kafka/compose-broker.sh"
        assert mounts["/var/lib/kafka/data"] == f"{name}-data"
    # The script turns BROKER_REPLICATION into the topic defaults and min.insync.replicas RF-1.
    for setting in (
        "offsets.topic.replication.factor=${RF}",
        "default.replication.factor=${RF}",
        "min.insync.replicas=${MIN_ISR}",
        "MIN_ISR=$((RF > 1 ? RF - 1 : 1))",
    ):
        assert setting in script, setting


def test_cluster_runs_a_redis_cluster_of_three_masters_with_a_replica_each(
    cluster_config: dict[str, Any],
) -> None:
    services = cluster_config["services"]
    nodes = {n: s for n, s in services.items() if re.fullmatch(r"redis-\d+", n)}
    assert len(nodes) == 6
    for name, node in nodes.items():
        command = _unescaped(" ".join(node["command"]))
        assert "redis-server --cluster-enabled yes" in command, name
        assert "--maxmemory-policy noeviction" in command, name
        assert '--cluster-announce-hostname "$HOSTNAME"' in command, name
        assert node["hostname"] == name
        assert "ports" not in node, f"{name}: a Redis Cluster node is reached by its compose name"
    init = services["redis-cluster-init"]
    assert init["restart"] == "no"
    assert init["environment"]["REDIS_CLUSTER_NODES"].split() == [
        f"{n}:6379" for n in sorted(nodes)
    ]
    assert set(init["depends_on"]) == set(nodes)
    script = (ROOT / "infra/redis/compose-cluster-init.sh").read_text()
    assert "--cluster create $REDIS_CLUSTER_NODES --cluster-replicas 1 --cluster-yes" in script
    mounts = {v["target"]: v["source"] for v in init["volumes"]}
    assert Path(mounts[init["command"][-1]]) == ROOT / "infra/redis/compose-cluster-init.sh"


def test_cluster_app_services_use_the_cluster_and_two_workers_share_one_group(
    cluster_config: dict[str, Any],
) -> None:
    services = cluster_config["services"]
    brokers = ",".join(f"kafka-{n}:19092" for n in (1, 2, 3))
    cluster_apps = {n: s for n, s in _app_services(cluster_config).items() if n in CLUSTER_SERVICES}
    assert set(cluster_apps) == {
        "acl-init-cluster", "worker-1", "worker-2", "sync-cluster", "gateway-cluster"
    }  # fmt: skip
    for name, service in cluster_apps.items():
        env = service["environment"]
        assert env["DNC_KAFKA_BOOTSTRAP"] == brokers, name
        assert env["DNC_REPLICATION_FACTOR"] == "3", name
        if name == "acl-init-cluster":
            continue  # Kafka only
        assert env["DNC_REDIS_CLUSTER"] == "true", name
        host = env["DNC_REDIS_URL"].removeprefix("redis://").split(":")[0]
        assert host in services and host.startswith("redis-"), name
        assert service["depends_on"]["redis-cluster-init"]["condition"] == (
            "service_completed_successfully"
        )
        assert service["depends_on"]["acl-init-cluster"]["condition"] == (
            "service_completed_successfully"
        )
        for broker in ("kafka-1", "kafka-2", "kafka-3"):
            assert service["depends_on"][broker]["condition"] == "service_healthy", name
    workers = {n: s for n, s in cluster_apps.items() if s["command"] == ["worker"]}
    assert set(workers) == {"worker-1", "worker-2"}
    ids = {s["environment"]["DNC_WORKER_INSTANCE_ID"] for s in workers.values()}
    assert len(ids) == 2
    default_group = Settings().worker_group
    groups = {s["environment"].get("DNC_WORKER_GROUP", default_group) for s in workers.values()}
    assert len(groups) == 1
    # Every reader of the view hashes with the workers' key.
    keys = {cluster_apps[n]["environment"]["DNC_VIEW_KEY"] for n in (*workers, "gateway-cluster")}
    assert len(keys) == 1
    # The workers sign with a secret of their own, which no view reader holds.
    signing = {s["environment"]["DNC_AUTHORITY_KEY"] for s in workers.values()}
    assert len(signing) == 1 and signing.isdisjoint(keys)
    assert "DNC_AUTHORITY_KEY" not in cluster_apps["gateway-cluster"]["environment"]
    assert services["sync-cluster"]["environment"]["DNC_POSTGRES_DSN"].endswith(
        "@postgres-cluster:5432/dnc"
    )


def test_app_services_set_only_real_settings_with_values_they_accept(
    every_profile: dict[str, Any], tmp_path: Path
) -> None:
    apps = _app_services(every_profile)
    assert len(apps) == 10
    for name, service in apps.items():
        env = service["environment"]
        unknown = set(env) - SETTINGS_VARIABLES - ACL_INIT_PASSWORDS
        assert not unknown, f"{name} sets {unknown}, which no Settings field reads"
        fields = {
            k.removeprefix("DNC_").lower(): v for k, v in env.items() if k in SETTINGS_VARIABLES
        }
        settings = Settings(data_dir=tmp_path, **fields)  # raises if a value does not validate
        assert settings.kafka_security_protocol == "SASL_PLAINTEXT", name


def test_every_dependency_exists_and_the_start_order_has_no_cycle(
    every_profile: dict[str, Any],
) -> None:
    services = every_profile["services"]
    for name, service in services.items():
        for target, dependency in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on {target}, which does not exist"
            condition = dependency["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not a one-shot"
            else:
                assert condition == "service_started", (name, target, condition)
    # A topological order exists (compose would refuse a cycle; say which one it is).
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in services[name].get("depends_on", {}):
                visit(target, (*path, name))
            done.add(name)

    for name in services:
        visit(name, ())
    for name, service in services.items():
        if service.get("restart") != "no":
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_published_ports_are_loopback_and_never_collide(every_profile: dict[str, Any]) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for name, service in every_profile["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes beyond loopback"
            key = (port["host_ip"], port["published"], port["protocol"])
            assert key not in seen, f"{name} and {seen[key]} both publish {key}"
            seen[key] = name


def test_cluster_prometheus_scrapes_both_workers_and_feeds_its_grafana(
    cluster_config: dict[str, Any],
) -> None:
    services = cluster_config["services"]
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus-cluster.yml").read_text())
    assert config["global"] == PROMETHEUS["global"]
    assert config["rule_files"] == PROMETHEUS["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(SCRAPE_JOBS) - {"dnc-demo"}  # the names the alert rules use
    targets = {
        job: sorted(t for sc in spec["static_configs"] for t in sc["targets"])
        for job, spec in jobs.items()
    }
    workers = [n for n in sorted(services) if n.startswith("worker-")]
    port = Settings().worker_metrics_port
    assert targets["dnc-worker"] == [f"{w}:{port}" for w in workers] and len(workers) == 2
    assert targets["dnc-sync"] == [f"sync-cluster:{Settings().sync_metrics_port}"]
    assert targets["dnc-gateway"] == [f"gateway-cluster:{Settings().gateway_port}"]
    for job_targets in targets.values():
        for target in job_targets:
            host, _, container_port = target.partition(":")
            env = services[host]["environment"]
            assert container_port in env.values(), f"{host} does not listen on {container_port}"
    prometheus = services["prometheus-cluster"]
    mounts = {v["target"]: v["source"] for v in prometheus["volumes"]}
    assert (
        Path(mounts["/etc/prometheus/prometheus.yml"])
        == ROOT / "infra/prometheus/prometheus-cluster.yml"
    )
    assert Path(mounts["/etc/prometheus/alerts.yml"]) == ROOT / "infra/prometheus/alerts.yml"
    # Grafana's provisioned datasource says http://prometheus:9090: on grafana-cluster's only
    # network, that name is prometheus-cluster's alias.
    grafana = services["grafana-cluster"]
    assert set(grafana["networks"]) == {"cluster-ops"}
    assert prometheus["networks"]["cluster-ops"]["aliases"] == ["prometheus"]
    on_ops = {n for n, s in services.items() if "cluster-ops" in s.get("networks", {})}
    assert on_ops == {"grafana-cluster", "prometheus-cluster"}


# (what is broken, text of docker-compose.yml, replaced by, what compose's error names)
BREAKAGES = [
    (
        "a dependency on a service that does not exist",
        "    depends_on: *cluster-depends\n    environment:\n"
        "      <<: [*kafka-sasl, *cluster-kafka, *cluster-redis, *gateway-env]",
        "    depends_on:\n      kafka-4:\n        condition: service_healthy\n    environment:\n"
        "      <<: [*kafka-sasl, *cluster-kafka, *cluster-redis, *gateway-env]",
        "kafka-4",
    ),
    (
        "a misspelt key",
        "  redis-cluster-init:\n    profiles:",
        "  redis-cluster-init:\n    profile:",
        "profile",
    ),
    (
        "an unknown depends_on condition",
        "condition: service_completed_successfully\n  kafka-1:",
        "condition: service_finished\n  kafka-1:",
        "condition value must be one of",
    ),
    (
        "an alias to no anchor",
        "<<: *redis-node\n    hostname: redis-3",
        "<<: *redis-nod\n    hostname: redis-3",
        "redis-nod",
    ),
]


@pytest.mark.parametrize(
    ("breakage", "replace", "by", "message"), BREAKAGES, ids=[case[0] for case in BREAKAGES]
)
def test_compose_rejects_a_broken_copy_of_the_file(
    compose_env: Path, tmp_path: Path, breakage: str, replace: str, by: str, message: str
) -> None:
    original = (ROOT / "docker-compose.yml").read_text()
    assert original.count(replace) == 1, f"the file changed: update the {breakage} case"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(original.replace(replace, by))
    done = run_compose(compose_env, "--profile", "cluster", "config", "-q", compose_file=broken)
    assert done.returncode != 0, f"compose accepted {breakage}"
    assert message in done.stderr, done.stderr
    # ... and the untouched file passes the same command.
    assert run_compose(compose_env, "--profile", "cluster", "config", "-q").returncode == 0


def test_compose_refuses_to_run_without_the_secrets(compose_env: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = run_compose(empty, "config", "-q")
    assert done.returncode != 0
    # The first unset secret compose meets (in no fixed order) names itself and what to do.
    assert "required variable" in done.stderr, done.stderr
    assert (
        "run bash infra/compose-env.sh > .env first" in done.stderr
        or "set DNC_VIEW_KEY to a secret" in done.stderr
    ), done.stderr


def test_compose_refuses_to_run_the_workers_without_their_authority_key(
    compose_env: Path, tmp_path: Path
) -> None:
    lines = compose_env.read_text().splitlines()
    without = tmp_path / "without-authority-key.env"
    without.write_text("\n".join(x for x in lines if not x.startswith("DNC_AUTHORITY_KEY=")))
    done = run_compose(without, "config", "-q")
    assert done.returncode != 0
    assert "DNC_AUTHORITY_KEY" in done.stderr and "required variable" in done.stderr, done.stderr


@pytest.mark.redis
def test_redis_cluster_init_creates_three_masters_with_a_replica_each_once(tmp_path: Path) -> None:
    """The one-shot's script, run twice against six real redis-server nodes (Debian's, as
    `dnc up` runs them) started the way the compose nodes are."""
    nodes: list[tuple[int, subprocess.Popen[bytes]]] = []
    try:
        for n in range(6):
            port, bus_port = free_port(), free_port()
            directory = tmp_path / f"node-{n}"
            directory.mkdir()
            command = [
                "redis-server", "--bind", "127.0.0.1", "--port", str(port),
                "--cluster-port", str(bus_port), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                "--cluster-announce-hostname", "localhost",
                "--cluster-preferred-endpoint-type", "hostname",
                "--maxmemory-policy", "noeviction", "--save", "", "--appendonly", "no",
            ]  # fmt: skip
            with (directory / "redis.log").open("wb") as log:
                server = subprocess.Popen(command, cwd=directory, stdout=log, stderr=log)
            nodes.append((port, server))
        for port, _ in nodes:
            with redis.Redis(port=port, socket_timeout=1) as client:
                deadline = time.monotonic() + 10
                while not _answers(client):
                    assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                    time.sleep(0.05)
        env = {**os.environ, "REDIS_CLUSTER_NODES": " ".join(f"127.0.0.1:{p}" for p, _ in nodes)}
        script = ["sh", str(ROOT / "infra/redis/compose-cluster-init.sh")]
        first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=90)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Redis Cluster ok: 3 masters, 3 replicas" in first.stdout
        again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=90)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Redis Cluster already created (16384 slots assigned" in again.stdout
        with redis.Redis(port=nodes[0][0], decode_responses=True) as client:
            shards = client.execute_command("CLUSTER", "SHARDS")
        assert (
            sorted(sorted(node["role"] for node in shard["nodes"]) for shard in shards)
            == [["master", "replica"]] * 3
        ), shards
    finally:
        for _, process in nodes:
            process.terminate()
        for _, process in nodes:
            process.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
