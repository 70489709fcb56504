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
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from pydantic import SecretStr

from infra.acls import apply_acls, client_env, load_or_create_credentials, principal
from infra.services import KafkaSecurity, LocalStack
from producers.publisher import OppositionPublisher
from schemas.events import Kind, OppositionEvent, Source
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


def test_only_the_admin_principal_lifts(
    secured: tuple[LocalStack, KafkaSecurity], tmp_path: Path
) -> None:
    stack, security = secured
    prefix = f"a{uuid.uuid4().hex[:10]}"
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
    # Idempotent, and what an operator runs: `dnc acl apply` as the superuser.
    env = {**os.environ, **names, "DNC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "DNC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "DNC_KAFKA_SASL_USERNAME": SUPERUSER,
           "DNC_KAFKA_SASL_PASSWORD": security.password}  # fmt: skip
    again = subprocess.run(
        [sys.executable, "-m", "dnc", "acl", "apply", "--credentials",
         str(tmp_path / "credentials.json")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and "applied" in again.stdout, again.stdout + again.stderr

    tenants = TenantDirectory.load(tenants_file)
    worker_env = client_env(superuser, "worker", passwords)
    pipeline = Pipeline(stack, tmp_path, prefix, extra_env=worker_env)
    try:
        pipeline.start_worker()
        desktop = OppositionPublisher.from_settings(
            as_role(superuser, client_env(superuser, "desktop", passwords)), tenants
        )
        phone = "+33614000001"
        desktop.publish(OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.ERASURE))
        pipeline.wait_answer(phone, "acme", "suppressed")

        # The desktop's principal may not write the admin topic: the broker refuses.
        lift = OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.LIFT,
                                      source=Source.ADMIN, justification="forged")  # fmt: skip
        refused = desktop.publish_many([lift])[0]
        assert isinstance(refused, Exception) and "authoriz" in str(refused).lower(), refused

        # A lift it writes to the oppositions topic instead is dead-lettered.
        creds = client_env(superuser, "desktop", passwords)
        raw = Producer({"bootstrap.servers": stack.bootstrap_servers, "acks": "all",
                        "security.protocol": "sasl_plaintext", "sasl.mechanism": "SCRAM-SHA-512",
                        "sasl.username": creds["DNC_KAFKA_SASL_USERNAME"],
                        "sasl.password": creds["DNC_KAFKA_SASL_PASSWORD"]})  # fmt: skip
        errors: list[KafkaError] = []
        raw.produce(superuser.oppositions_topic, value=lift.normalised(tenants)
                    .model_dump_json().encode(), key=f"acme:{phone}".encode(),
                    on_delivery=lambda err, _m: errors.append(err) if err else None)  # fmt: skip
        assert raw.flush(15) == 0 and not errors, errors
        wait_for(lambda: "lift_not_authorised" in dead_letter_reasons(superuser, security),
                 timeout=30, what="the forged lift dead-lettered")  # fmt: skip
        assert pipeline.check(phone, "acme").answer.value == "suppressed"

        # The admin's lift goes through the admin topic and is applied.
        admin = OppositionPublisher.from_settings(
            as_role(superuser, client_env(superuser, "admin", passwords)), tenants
        )
        admin.publish(
            OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.LIFT,
                                   source=Source.ADMIN, justification="ticket 7")
        )  # fmt: skip
        pipeline.wait_answer(phone, "acme", "callable")
        assert principal("desktop") == "dnc-desktop"
    finally:
        pipeline.close()


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
