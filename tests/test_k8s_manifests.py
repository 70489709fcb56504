"""infra/k8s is valid for the Kubernetes, KEDA and Strimzi APIs (kubeconform against pinned
schemas, no cluster here) and stays true to the code: settings, topics, ACLs, commands, ports
and the shutdown timeout."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from dnc.cli import app as dnc_app
from infra.acls import ROLES, grants, principal
from infra.k8s_schemas import (
    KUBECONFORM_VERSION,
    KUBERNETES_KINDS,
    SETUP_HINT,
    STRIMZI_POM,
    STRIMZI_VERSION,
    is_current,
    kubeconform_path,
    schema_file_name,
    schema_location,
    schemas_dir,
)
from schemas.settings import Settings
from schemas.topics import pipeline_topics

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
MANIFESTS = [K8S / name for name in KUSTOMIZATION["resources"]]
DOCS: list[dict[str, Any]] = [
    doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc
]
WORKLOADS = {"Deployment", "StatefulSet"}
# Each process: its workload's name and the `dnc` subcommand it runs.
PROCESSES = {"dnc-worker": "worker", "dnc-sync": "sync", "dnc-gateway": "gateway"}
MIN_EXIT_SECONDS = 5  # what a pod's grace period keeps beyond its process's own bounded stop


def resources(kind: str) -> list[dict[str, Any]]:
    """Every document of ``kind`` in the kustomization's files."""
    return [d for d in DOCS if d["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    """The document of ``kind`` called ``name``."""
    found = [d for d in resources(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def workloads() -> Iterator[dict[str, Any]]:
    return (d for d in DOCS if d["kind"] in WORKLOADS)


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for workload in workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload["metadata"]["name"], container


CONFIG: dict[str, str] = one("ConfigMap", "dnc-config")["data"]


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a pod reads them: dnc-config's values as DNC_* environment variables."""
    for name in list(os.environ):
        if name.startswith("DNC_"):
            monkeypatch.delenv(name)
    for name, value in CONFIG.items():
        monkeypatch.setenv(name, value)
    # Secrets come from secretKeyRefs; SASL_SSL refuses to start without a user and password.
    monkeypatch.setenv("DNC_KAFKA_SASL_USERNAME", "dnc-worker")
    monkeypatch.setenv("DNC_KAFKA_SASL_PASSWORD", "from-the-secret")
    return Settings()


# --- kubeconform -----------------------------------------------------------------------------


def kubeconform(*paths: Path) -> subprocess.CompletedProcess[str]:
    """Run the pinned kubeconform, strict, against the generated schemas only (no download:
    a kind without a schema is an error, never skipped)."""
    binary = kubeconform_path()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"kubeconform {KUBECONFORM_VERSION} is not installed ({binary}): {SETUP_HINT}")
    if not is_current(schemas_dir()):
        pytest.fail(f"the Kubernetes schemas in {schemas_dir()} are missing or stale: {SETUP_HINT}")
    return subprocess.run(
        [str(binary), "-strict", "-summary", "-schema-location", schema_location(schemas_dir()),
         *map(str, paths)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_every_manifest_is_in_the_kustomization() -> None:
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(KUSTOMIZATION["resources"])
    assert KUSTOMIZATION["namespace"] == one("Namespace", "dnc")["metadata"]["name"]


def test_manifests_are_valid_for_the_pinned_apis() -> None:
    result = kubeconform(*MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every document was validated: none skipped, none without a schema.
    summary = f"{len(DOCS)} resources found in {len(MANIFESTS)} files - Valid: {len(DOCS)}, "
    assert summary + "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout


BROKEN = {
    # A number where the API wants one (a quoted "10" would be a string).
    "wrong type": ("worker.yaml", "minReadySeconds: 10", "minReadySeconds: ten", "got string"),
    # A misspelt field is refused, not ignored (strict schemas).
    "unknown field": ("worker.yaml", "serviceName:", "serviceNmae:", "serviceNmae"),
    # The same in a custom resource (Strimzi's CRD).
    "CRD field type": ("kafka-topics.yaml", "partitions: 12", "partitions: many", "partitions"),
    # A kind with no schema is an error (-ignore-missing-schemas is never passed).
    "no schema": ("config.yaml", "kind: ConfigMap", "kind: ConfigMapp", "could not find schema"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_kubeconform_refuses_a_broken_manifest(case: str, tmp_path: Path) -> None:
    name, good, bad, message = BROKEN[case]
    text = (K8S / name).read_text()
    assert good in text
    broken = tmp_path / name
    broken.write_text(text.replace(good, bad))
    result = kubeconform(broken)
    assert result.returncode == 1, result.stdout
    assert message in result.stdout
    assert "Invalid: 0, Errors: 0" not in result.stdout


def test_setup_installs_the_pinned_kubeconform() -> None:
    script = (ROOT / "infra" / "setup.sh").read_text()
    pinned = re.search(r'^KUBECONFORM_VERSION="([^"]+)"$', script, re.MULTILINE)
    assert pinned is not None, "infra/setup.sh no longer pins KUBECONFORM_VERSION"
    assert pinned.group(1) == KUBECONFORM_VERSION
    assert "github.com/yannh/kubeconform/cmd/kubeconform@v${KUBECONFORM_VERSION}" in script


def is_builtin(api_version: str) -> bool:
    """A Kubernetes API group (core, apps, policy, *.k8s.io), not a custom resource's."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def test_strimzi_pom_names_the_pinned_release() -> None:
    pom = STRIMZI_POM.read_text()
    assert f"<strimzi.version>{STRIMZI_VERSION}</strimzi.version>" in pom


def test_schemas_are_generated_for_exactly_the_kinds_used() -> None:
    used = {(d["apiVersion"], d["kind"]) for d in DOCS}
    builtin = {(v, k) for v, k in used if is_builtin(v)}
    assert builtin == set(KUBERNETES_KINDS)  # no pinned kind left unused, none missing
    missing = [schema_file_name(v, k) for v, k in sorted(used)]
    missing = [n for n in missing if not (schemas_dir() / n).is_file()]
    assert not missing, f"no schema for {missing}: {SETUP_HINT}"


# --- true to the code -----------------------------------------------------------------------


def test_every_dnc_variable_is_a_setting(configured: Settings) -> None:
    names = set(CONFIG)
    for _, container in containers():
        names |= {e["name"] for e in container.get("env", [])}
    dnc_names = {n for n in names if n.startswith("DNC_")}
    assert dnc_names == names, f"not DNC_ settings: {names - dnc_names}"
    unknown = {n for n in dnc_names if n.removeprefix("DNC_").lower() not in Settings.model_fields}
    assert not unknown, f"no such setting in schemas/settings.py: {sorted(unknown)}"
    assert configured.kafka_security_protocol == "SASL_SSL"  # and the values parse


def test_kafka_topics_match_the_pipeline_topics(configured: Settings) -> None:
    assert configured.replication_factor == 3
    expected = {
        t.name: (t.partitions, t.replication_factor, t.config) for t in pipeline_topics(configured)
    }
    found = {
        d["spec"]["topicName"]: (
            d["spec"]["partitions"],
            d["spec"]["replicas"],
            {k: str(v) for k, v in d["spec"]["config"].items()},
        )
        for d in resources("KafkaTopic")
    }
    assert found == expected
    for _partitions, replicas, config in found.values():
        assert replicas == 3
        assert config["min.insync.replicas"] == "2"
    for topic in resources("KafkaTopic"):
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "dnc-kafka"


def test_kafka_cluster_is_kraft_with_three_nodes_rf3_min_isr2(configured: Settings) -> None:
    kafka = one("Kafka", "dnc-kafka")
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    pools = resources("KafkaNodePool")
    assert sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"]) == 3
    assert sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"]) == 3
    # The clients' protocol is the listener's: TLS with SCRAM-SHA-512 on the bootstrap port.
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert configured.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert configured.kafka_bootstrap == f"dnc-kafka-kafka-bootstrap:{listener['port']}"


STRIMZI_RESOURCE = {"TRANSACTIONAL_ID": "transactionalId"}  # Strimzi's names of Kafka's types


def test_kafka_users_mirror_the_acls(configured: Settings) -> None:
    for role in ROLES:
        user = one("KafkaUser", principal(role))
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        found = {
            (acl["resource"]["type"], acl["resource"]["name"], acl["resource"]["patternType"], op)
            for acl in user["spec"]["authorization"]["acls"]
            for op in acl["operations"]
        }
        expected = {
            (STRIMZI_RESOURCE.get(g.resource.name, g.resource.name.lower()), g.name,
             "prefix" if g.prefixed else "literal", g.operation.name.capitalize())
            for g in grants(configured)
            if g.role == role
        }  # fmt: skip
        assert found == expected, role


def test_each_process_runs_its_dnc_subcommand() -> None:
    group = typer.main.get_command(dnc_app)
    commands = set(group.commands)  # type: ignore[attr-defined]
    assert {d["metadata"]["name"] for d in workloads()} == set(PROCESSES)
    for name, container in containers():
        assert container["args"] == [PROCESSES[name]], name
        assert container["args"][0] in commands
        assert "command" not in container  # the image's entrypoint is `dnc`
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container[probe].get("exec", {}).get("command")
            if command:
                assert command[0] == "dnc" and command[1] in commands, (name, probe)
                subcommand = group.commands[command[1]]  # type: ignore[attr-defined]
                options = {o for param in subcommand.params for o in param.opts}
                assert set(command[2:]) <= options, (name, probe)


def test_worker_static_membership_and_lag_scaling(configured: Settings) -> None:
    worker = one("StatefulSet", "dnc-worker")
    assert "replicas" not in worker["spec"]  # KEDA owns the count
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DNC_WORKER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    scaled = one("ScaledObject", "dnc-worker")["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "dnc-worker",
    }
    assert scaled["maxReplicaCount"] == configured.partitions  # more workers would idle
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == configured.worker_group
    assert meta["topic"] == configured.oppositions_topic
    # The pods' bootstrap Service, qualified with the namespace (KEDA runs in its own).
    host, port = configured.kafka_host_port
    assert meta["bootstrapServers"] == f"{host}.{KUSTOMIZATION['namespace']}.svc:{port}"
    assert int(meta["lagThreshold"]) > 0
    # KEDA's names for the clients' mechanism and protocol.
    keda_sasl = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256"}
    assert meta["sasl"] == keda_sasl[str(configured.kafka_sasl_mechanism)]
    assert meta["tls"] == (
        "enable" if configured.kafka_security_protocol == "SASL_SSL" else "disable"
    )
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    user_ref = auth["configMapTargetRef"][0]
    user = one("ConfigMap", user_ref["name"])["data"][user_ref["key"]]
    secrets = {r["parameter"]: r for r in auth["secretTargetRef"]}
    assert secrets["password"]["name"] == user  # Strimzi's Secret for that KafkaUser
    assert secrets["ca"]["name"] == "dnc-kafka-cluster-ca-cert"  # the CA the pods mount too
    acls = one("KafkaUser", user)["spec"]["authorization"]["acls"]
    assert {op for acl in acls for op in acl["operations"]} == {"Describe"}


def test_grace_periods_outlast_the_bounded_shutdown(configured: Settings) -> None:
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
        needed = configured.shutdown_timeout_seconds + pre_stop.get("seconds", 0)
        name = workload["metadata"]["name"]
        assert pod["terminationGracePeriodSeconds"] >= needed + MIN_EXIT_SECONDS, name


def test_ports_probes_and_scrape_annotations_match_the_settings(configured: Settings) -> None:
    port_of = {
        "dnc-worker": configured.worker_metrics_port,
        "dnc-sync": configured.sync_metrics_port,
        "dnc-gateway": configured.gateway_port,
    }
    assert configured.metrics_host == configured.gateway_host == "0.0.0.0"
    for workload in workloads():
        name = workload["metadata"]["name"]
        template = workload["spec"]["template"]
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert list(ports.values()) == [port_of[name]], name
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port_of[name])
        # The job label the alert rules use (dnc-worker, dnc-sync, dnc-gateway), by relabelling.
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == name
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http = container[probe].get("httpGet")
            if http:
                assert http["port"] in ports, (name, probe)
        service = one("Service", name)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
        assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        pdb = one("PodDisruptionBudget", name)
        assert pdb["spec"]["selector"] == workload["spec"]["selector"]
    gateway = one("Deployment", "dnc-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_pods_run_non_root_on_a_read_only_root_filesystem() -> None:
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert set(container["resources"]) == {"requests", "limits"}
            # The only writable paths are volumes: /tmp, and the data directory where the
            # worker's Faust keeps its files.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts
            if workload["metadata"]["name"] == "dnc-worker":
                assert CONFIG["DNC_DATA_DIR"] in mounts


def test_secrets_reach_the_processes_that_need_them() -> None:
    def secret_env(name: str) -> dict[str, tuple[str, str]]:
        (container,) = [c for n, c in containers() if n == name]
        return {
            e["name"]: (ref["name"], ref["key"])
            for e in container["env"]
            for ref in [e.get("valueFrom", {}).get("secretKeyRef")]
            if ref
        }

    worker, sync, gateway = (secret_env(n) for n in PROCESSES)
    assert {"DNC_VIEW_KEY", "DNC_AUTHORITY_KEY", "DNC_REDIS_URL"} <= set(worker)
    assert gateway["DNC_VIEW_KEY"] == worker["DNC_VIEW_KEY"]  # or checks read the wrong sets
    assert "DNC_AUTHORITY_KEY" not in gateway  # only the worker signs lifts
    assert worker["DNC_AUTHORITY_KEY"] != worker["DNC_VIEW_KEY"]  # a secret of its own
    (container,) = [c for n, c in containers() if n == "dnc-worker"]
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in container["env"]
              if e["name"] == "DNC_AUTHORITY_KEY"]  # fmt: skip
    assert not ref.get("optional", False)  # the pod does not start without it
    assert {"DNC_POSTGRES_DSN", "DNC_REDIS_URL"} <= set(sync)
    for name, container in containers():
        env = {e["name"]: e for e in container["env"]}
        user = env["DNC_KAFKA_SASL_USERNAME"]["value"]
        assert user == name  # its own principal, from infra/acls.py
        one("KafkaUser", user)
        assert secret_env(name)["DNC_KAFKA_SASL_PASSWORD"] == (user, "password")
