"""Authority proven on a broker with SASL/SCRAM and the KRaft StandardAuthorizer on.

A desktop's principal may write oppositions but not the admin topic; a lift it forges on
the oppositions topic lifts nothing; the admin's lift, through the admin topic, does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from pydantic import SecretStr

from infra.acls import apply_acls, client_env, load_or_create_credentials, principal
from infra.launch.kafka_config import KafkaSecurity
from infra.launch.stack import LocalStack
from producers.publisher import OppositionPublisher
from schemas.authority import APPENDED_AT_HEADER, AUTHORITY_HEADER
from schemas.events import ConsentSource, Kind, OppositionEvent, Scope, Source
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from tests.harness import REPO, TENANTS_TOML, Pipeline, pipeline_env, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

SUPERUSER = "dnc-superuser"


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[LocalStack, KafkaSecurity]]:
    base = Path(tempfile.mkdtemp(prefix="dnc-test-acl-"))
    security = KafkaSecurity(SUPERUSER, secrets.token_urlsafe(16))
    stack = LocalStack(base, partitions=3, kafka_security=security)
    stack.start()
    try:
        yield stack, security
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def as_role(settings: Settings, env: dict[str, str]) -> Settings:
    return settings.model_copy(
        update={
            "kafka_security_protocol": env["DNC_KAFKA_SECURITY_PROTOCOL"],
            "kafka_sasl_mechanism": env["DNC_KAFKA_SASL_MECHANISM"],
            "kafka_sasl_username": env["DNC_KAFKA_SASL_USERNAME"],
            "kafka_sasl_password": SecretStr(env["DNC_KAFKA_SASL_PASSWORD"]),
        }
    )


@dataclass
class SecuredPipeline:
    """A pipeline whose worker runs as ``dnc-worker`` on the broker with ACLs on."""

    pipeline: Pipeline
    superuser: Settings
    passwords: dict[str, str]
    tenants: TenantDirectory

    def publisher(self, role: str) -> OppositionPublisher:
        """A publisher with ``role``'s principal."""
        settings = as_role(self.superuser, client_env(self.superuser, role, self.passwords))
        return OppositionPublisher.from_settings(settings, self.tenants)

    def raw_producer(self, role: str) -> Producer:
        """A plain producer with ``role``'s principal (any bytes, any headers)."""
        creds = client_env(self.superuser, role, self.passwords)
        return Producer({"bootstrap.servers": self.superuser.kafka_bootstrap, "acks": "all",
                         "security.protocol": "sasl_plaintext", "sasl.mechanism": "SCRAM-SHA-512",
                         "sasl.username": creds["DNC_KAFKA_SASL_USERNAME"],
                         "sasl.password": creds["DNC_KAFKA_SASL_PASSWORD"]})  # fmt: skip


def secured_pipeline(
    secured: tuple[LocalStack, KafkaSecurity], tmp_path: Path, prefix: str
) -> SecuredPipeline:
    """ACLs applied for a pipeline of its own (``prefix``); its worker not started yet."""
    stack, security = secured
    tenants_file = tmp_path / "tenants.toml"
    tenants_file.write_text(TENANTS_TOML)
    names = pipeline_env(stack, tenants_file, prefix)
    superuser = Settings.model_validate(
        {k[4:].lower(): v for k, v in names.items()}
        | {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512",
           "kafka_sasl_username": SUPERUSER, "kafka_sasl_password": security.password}
    )  # fmt: skip
    passwords = load_or_create_credentials(tmp_path / "credentials.json")
    assert apply_acls(superuser, passwords) > 10
    worker_env = client_env(superuser, "worker", passwords)
    pipeline = Pipeline(stack, tmp_path, prefix, extra_env=worker_env)
    return SecuredPipeline(pipeline, superuser, passwords, TenantDirectory.load(tenants_file))


def test_only_the_admin_principal_lifts(
    secured: tuple[LocalStack, KafkaSecurity], tmp_path: Path
) -> None:
    stack, security = secured
    prefix = f"a{uuid.uuid4().hex[:10]}"
    setup = secured_pipeline(secured, tmp_path, prefix)
    superuser, pipeline, tenants = setup.superuser, setup.pipeline, setup.tenants
    # Idempotent, and what an operator runs: `dnc acl apply` as the superuser.
    env = {**os.environ, **pipeline_env(stack, tmp_path / "tenants.toml", prefix),
           "DNC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "DNC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "DNC_KAFKA_SASL_USERNAME": SUPERUSER,
           "DNC_KAFKA_SASL_PASSWORD": security.password}  # fmt: skip
    again = subprocess.run(
        [sys.executable, "-m", "dnc", "acl", "apply", "--credentials",
         str(tmp_path / "credentials.json")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and "applied" in again.stdout, again.stdout + again.stderr

    try:
        pipeline.start_worker()
        desktop = setup.publisher("desktop")
        phone = "+33614000001"
        desktop.publish(OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.ERASURE))
        pipeline.wait_answer(phone, "acme", "suppressed")

        # The desktop's principal may not write the admin topic: the broker refuses.
        lift = OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.LIFT,
                                      source=Source.ADMIN, justification="forged")  # fmt: skip
        refused = desktop.publish_many([lift])[0]
        assert isinstance(refused, Exception) and "authoriz" in str(refused).lower(), refused

        # A lift it writes to the oppositions topic instead is dead-lettered.
        raw = setup.raw_producer("desktop")
        errors: list[KafkaError] = []
        raw.produce(superuser.oppositions_topic, value=lift.normalised(tenants)
                    .model_dump_json().encode(), key=f"acme:{phone}".encode(),
                    on_delivery=lambda err, _m: errors.append(err) if err else None)  # fmt: skip
        assert raw.flush(15) == 0 and not errors, errors
        wait_for(lambda: "lift_not_authorised" in dead_letter_reasons(superuser, security),
                 timeout=30, what="the forged lift dead-lettered")  # fmt: skip
        assert pipeline.check(phone, "acme").answer.value == "suppressed"

        # The admin's lift goes through the admin topic and is applied.
        setup.publisher("admin").publish(
            OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.LIFT,
                                   source=Source.ADMIN, justification="ticket 7")
        )  # fmt: skip
        pipeline.wait_answer(phone, "acme", "callable")
        assert principal("desktop") == "dnc-desktop"
    finally:
        pipeline.close()


@pytest.mark.timeout(240)
def test_a_signed_lift_copied_back_to_the_oppositions_topic_changes_nothing(
    secured: tuple[LocalStack, KafkaSecurity], tmp_path: Path
) -> None:
    """Whoever reads the oppositions topic (the gateway does, for subject access) holds the
    worker's signed lifts. Re-produced there with the desktop's principal, with their cutoff
    stripped or exactly as they were, they must not end a later opposition."""
    _stack, security = secured
    setup = secured_pipeline(secured, tmp_path, f"a{uuid.uuid4().hex[:10]}")
    pipeline, superuser = setup.pipeline, setup.superuser
    try:
        pipeline.start_worker()
        desktop, admin = setup.publisher("desktop"), setup.publisher("admin")
        phone = "+33614000002"
        lifts = []
        for step in ("o1", "l1", "o2", "l2", "o3"):
            if step.startswith("o"):
                desktop.publish(OppositionEvent.record(tenant="acme", phone=phone,
                                                       kind=Kind.OPPOSITION))  # fmt: skip
                pipeline.wait_answer(phone, "acme", "suppressed")
            else:
                lifts.append(
                    OppositionEvent.record(
                        tenant="acme",
                        phone=phone,
                        kind=Kind.LIFT,
                        source=Source.ADMIN,
                        justification=step,
                    )
                )
                admin.publish(lifts[-1])
                pipeline.wait_answer(phone, "acme", "callable")
        first_lift = str(lifts[0].event_id).encode()
        (forwarded,) = [
            m for m in read_topic(superuser, security, superuser.oppositions_topic)
            if first_lift in (m.value() or b"") and dict(m.headers() or []).get(AUTHORITY_HEADER)
        ]  # fmt: skip
        copy = forwarded.headers() or []
        stripped = [(k, v) for k, v in copy if k != APPENDED_AT_HEADER]
        assert len(stripped) < len(copy)
        raw = setup.raw_producer("desktop")
        for n, headers in enumerate((stripped, copy), start=1):
            done = pipeline.messages_done()
            raw.produce(superuser.oppositions_topic, value=forwarded.value(),
                        key=forwarded.key(), partition=forwarded.partition(),
                        headers=headers)  # fmt: skip
            assert raw.flush(15) == 0
            wait_for(lambda d=done: pipeline.messages_done() >= d + 1, timeout=30,
                     what=f"copy {n} of the first lift to be processed")  # fmt: skip
            answer = pipeline.check(phone, "acme").answer.value
            assert answer == "suppressed", f"copy {n} of the first lift ended the third opposition"
        assert "lift_not_authorised" in dead_letter_reasons(superuser, security)
        assert 'dnc_events_total{kind="lift",outcome="duplicate"} 1.0' in pipeline.metrics()
    finally:
        pipeline.close()


@pytest.mark.timeout(240)
def test_only_the_consent_principal_grants(
    secured: tuple[LocalStack, KafkaSecurity], tmp_path: Path
) -> None:
    """A grant makes a number callable under a consent campaign: the desktop's and the
    admin's principals cannot write the consents topic, a grant forged on the oppositions
    topic is dead-lettered, the consent recorder's grant is applied (issue #19)."""
    _stack, security = secured
    setup = secured_pipeline(secured, tmp_path, f"a{uuid.uuid4().hex[:10]}")
    pipeline, superuser, tenants = setup.pipeline, setup.superuser, setup.tenants
    try:
        pipeline.start_worker()
        phone = "+33614000003"

        def grant(proof: str) -> OppositionEvent:
            return OppositionEvent.record(
                tenant="acme", phone=phone, kind=Kind.CONSENT, scope=Scope.CAMPAIGN,
                campaign_id="optin", consent_source=ConsentSource.WEB_FORM, proof_ref=proof,
            )  # fmt: skip

        def codes() -> set[str]:
            return {r.code.value for r in pipeline.check(phone, "acme", "optin").reasons}

        wait_for(lambda: codes() == {"no_consent"}, timeout=30, what="the view answering")
        for role in ("desktop", "admin"):
            refused = setup.publisher(role).publish_many([grant(f"by-{role}")])[0]
            assert isinstance(refused, Exception) and "authoriz" in str(refused).lower(), role
        raw = setup.raw_producer("desktop")
        forged = grant("forged").normalised(tenants)
        raw.produce(superuser.oppositions_topic, value=forged.model_dump_json().encode(),
                    key=forged.kafka_key)  # fmt: skip
        assert raw.flush(15) == 0
        wait_for(lambda: "consent_not_authorised" in dead_letter_reasons(superuser, security),
                 timeout=30, what="the forged grant dead-lettered")  # fmt: skip
        assert codes() == {"no_consent"}
        setup.publisher("consent").publish(grant("webform-v3#1"))
        wait_for(lambda: codes() == set(), timeout=30, what="the consent recorder's grant")
    finally:
        pipeline.close()


def read_topic(settings: Settings, security: KafkaSecurity, topic: str) -> list[Message]:
    """Every message of ``topic``, read as the superuser."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "reader",
                         "enable.auto.commit": False, **security.client_config()})  # fmt: skip
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
        found: list[Message] = []
        while batch := consumer.consume(500, timeout=3):
            found += [m for m in batch if m.error() is None]
        return found
    finally:
        consumer.close()


def dead_letter_reasons(settings: Settings, security: KafkaSecurity) -> list[str]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "dlq-reader",
                         "enable.auto.commit": False, **security.client_config()})  # fmt: skip
    try:
        consumer.assign([TopicPartition(settings.dead_letter_topic, 0, 0)])
        reasons = []
        for message in consumer.consume(100, timeout=3):
            if message.error() is None:
                reasons.append(dict(message.headers() or [])["dnc.dlq.reason"].decode())
        return reasons
    finally:
        consumer.close()
