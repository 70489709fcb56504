"""Kafka principals and ACLs: who may write what (`dnc acl apply`).

One SCRAM principal per role, each allowed only what its job needs, under the KRaft
StandardAuthorizer (everything else is denied):

* ``dnc-desktop``: write the oppositions topic (and nothing else: not the admin topic);
* ``dnc-admin``: write the admin topic (lifts, `dnc lift`);
* ``dnc-consent``: write the consents topic (consent grants, `dnc consent grant`): the
  only principal (with the gateway, for its consent tokens) that can make a number callable
  under a consent campaign;
* ``dnc-gateway``: write oppositions, admin actions (its admin tokens lift) and the audit
  trail; read the oppositions log (subject access) and the sync groups' offsets;
* ``dnc-worker``: read the oppositions and admin topics; write the oppositions topic (the
  forwarded, signed events), the suppression changes and the dead letters; its consumer
  group, the Faust internal topics and its fence topic (prefixed with the group name), and
  its partitions' transactional ids (same prefix);
* ``dnc-sync``: read the suppression changes, write the reference-list dead letters, its
  lanes' groups.

It runs as the cluster's superuser (DNC_KAFKA_SASL_* settings), creates the topics, the
principals' SCRAM credentials and the ACLs, and is idempotent.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from infra.topics import ensure_pipeline_topics
from schemas.errors import ConfigError
from schemas.settings import KAFKA_CREDENTIALS_FILE, Settings

ROLES = ("desktop", "admin", "consent", "gateway", "worker", "sync")
PRINCIPAL_PREFIX = "dnc-"


@dataclass(frozen=True)
class Grant:
    """One ACL: ``role`` may do ``operation`` on a topic or group (a name or a prefix)."""

    role: str
    resource: ResourceType
    name: str
    operation: AclOperation
    prefixed: bool = False


def principal(role: str) -> str:
    """The SCRAM user name of ``role``."""
    return f"{PRINCIPAL_PREFIX}{role}"


def grants(settings: Settings) -> list[Grant]:
    """Every ACL of the pipeline, derived from the configured topic and group names."""
    t, g = ResourceType.TOPIC, ResourceType.GROUP
    read, write, describe = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
    s = settings
    out: list[Grant] = []

    def allow(role: str, resource: ResourceType, name: str, *ops: AclOperation,
              prefixed: bool = False) -> None:  # fmt: skip
        out.extend(Grant(role, resource, name, op, prefixed) for op in ops)

    allow("desktop", t, s.oppositions_topic, write, describe)
    allow("admin", t, s.admin_topic, write, describe)
    allow("consent", t, s.consents_topic, write, describe)
    allow("gateway", t, s.oppositions_topic, write, read, describe)
    allow("gateway", t, s.admin_topic, write, describe)
    allow("gateway", t, s.consents_topic, write, read, describe)  # grants; subject access
    allow("gateway", t, s.audit_topic, write, describe)
    allow("gateway", t, s.suppressions_topic, read, describe)
    allow("gateway", g, "dnc-", read, describe, prefixed=True)  # scans, sync lanes' offsets
    allow("worker", t, s.oppositions_topic, read, write, describe)
    allow("worker", t, s.admin_topic, read, describe)
    allow("worker", t, s.consents_topic, read, describe)
    allow("worker", t, s.suppressions_topic, write, describe)
    allow("worker", t, s.dead_letter_topic, write, describe)
    allow("worker", t, s.worker_group, AclOperation.ALL, prefixed=True)  # Faust's own topics
    allow("worker", g, s.worker_group, AclOperation.ALL, prefixed=True)
    # Its partitions' transactional producers (streams/ownership.py: ``<group>-p<P>``).
    allow("worker", ResourceType.TRANSACTIONAL_ID, s.worker_group, write, describe, prefixed=True)
    allow("sync", t, s.suppressions_topic, read, describe)
    allow("sync", t, s.reference_dead_letter_topic, write, describe)
    allow("sync", g, s.sync_group_prefix, read, describe, prefixed=True)
    return out


def load_or_create_credentials(path: Path) -> dict[str, str]:
    """Passwords per role: DNC_KAFKA_PASSWORD_<ROLE> if set (compose), else from ``path``
    (JSON), created with random ones (mode 600) if missing."""
    from_env = {r: os.environ.get(f"DNC_KAFKA_PASSWORD_{r.upper()}") for r in ROLES}
    if all(from_env.values()):
        return {r: str(from_env[r]) for r in ROLES}
    if path.is_file():
        found = json.loads(path.read_text())
        missing = [r for r in ROLES if r not in found]
        if not missing:
            return {r: str(found[r]) for r in ROLES}
        found |= {r: secrets.token_urlsafe(24) for r in missing}
    else:
        found = {r: secrets.token_urlsafe(24) for r in ROLES}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(found, f, indent=2)
    return {r: str(found[r]) for r in ROLES}


def apply_acls(settings: Settings, passwords: dict[str, str], timeout: float = 30.0) -> int:
    """Create the topics, the principals and their ACLs; returns how many ACLs were applied."""
    if not settings.kafka_security_protocol.startswith("SASL_"):
        raise ConfigError(
            "`dnc acl apply` connects as the cluster's superuser: set "
            "DNC_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT (or SASL_SSL), "
            "DNC_KAFKA_SASL_MECHANISM, DNC_KAFKA_SASL_USERNAME and DNC_KAFKA_SASL_PASSWORD"
        )
    ensure_pipeline_topics(settings)
    admin = AdminClient(
        {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_client_config()}
    )
    mechanism = (
        ScramMechanism.SCRAM_SHA_256
        if settings.kafka_sasl_mechanism == "SCRAM-SHA-256"
        else ScramMechanism.SCRAM_SHA_512
    )
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            principal(role), ScramCredentialInfo(mechanism, 8192), passwords[role].encode()
        )
        for role in ROLES
    ]
    try:
        for future in admin.alter_user_scram_credentials(upserts).values():
            future.result(timeout=timeout)
        bindings = [
            AclBinding(
                g.resource,
                g.name,
                ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
                f"User:{principal(g.role)}",
                "*",
                g.operation,
                AclPermissionType.ALLOW,
            )
            for g in grants(settings)
        ]
        for future in admin.create_acls(bindings).values():
            future.result(timeout=timeout)
    except KafkaException as exc:
        raise ConfigError(f"cannot apply the principals and ACLs: {exc}") from exc
    return len(bindings)


def client_env(settings: Settings, role: str, passwords: dict[str, str]) -> dict[str, str]:
    """The DNC_KAFKA_* variables a process of ``role`` connects with."""
    return {
        "DNC_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
        "DNC_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism or "SCRAM-SHA-512",
        "DNC_KAFKA_SASL_USERNAME": principal(role),
        "DNC_KAFKA_SASL_PASSWORD": passwords[role],
    }


SUPERUSER = "dnc-superuser"
STACK_CREDENTIALS_FILE = KAFKA_CREDENTIALS_FILE


def stack_credentials(data_dir: Path, bootstrap: str) -> tuple[str, dict[str, str]]:
    """`dnc up`'s Kafka passwords: the superuser's and one per role, generated once (mode 600).

    The file also records the bootstrap address, so that other commands on this machine
    use these credentials for this stack only (see ``Settings``).
    """
    path = data_dir / STACK_CREDENTIALS_FILE
    passwords = load_or_create_credentials(path)
    found = json.loads(path.read_text())
    if not found.get("superuser") or found.get("bootstrap") != bootstrap:
        found["superuser"] = found.get("superuser") or secrets.token_urlsafe(24)
        found["bootstrap"] = bootstrap
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(found, f, indent=2)
    return str(found["superuser"]), passwords
