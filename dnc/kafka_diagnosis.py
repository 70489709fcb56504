"""What is wrong with Kafka, in one sentence: what, where, and what to do.

librdkafka retries a broker it cannot reach or that refuses its credentials, and only says
why in its log lines (hidden unless --verbose) and its error callback. When a command fails
on Kafka, :func:`diagnose_kafka` asks once more with an admin client whose error callback
keeps the causes, and names the one a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from dnc.exits import EXIT_REFUSED, EXIT_UNAVAILABLE
from schemas.settings import KAFKA_CREDENTIALS_FILE, Settings

# Error codes that mean the broker refused who we are, not that it is away.
_REFUSED = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
# ... and that it refused what that principal asked for (Kafka ACLs).
DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}


class KafkaTrouble(StrEnum):
    """What kind of problem: it decides the exit code."""

    UNREACHABLE = "unreachable"
    REFUSED = "refused"


@dataclass(frozen=True)
class KafkaProblem:
    """One problem with Kafka, said as one sentence, with the exit code that says it."""

    trouble: KafkaTrouble
    sentence: str

    @property
    def exit_code(self) -> int:
        """2 unavailable (retry once it is back), 4 refused (retrying will not help)."""
        return EXIT_REFUSED if self.trouble is KafkaTrouble.REFUSED else EXIT_UNAVAILABLE


def diagnose_kafka(settings: Settings, timeout: float = 3.0) -> KafkaProblem | None:
    """None if Kafka answers with these settings' credentials; else what is wrong."""
    seen: list[KafkaError] = []
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "error_cb": seen.append,
    }
    admin = AdminClient(config | settings.kafka_client_config())
    try:
        admin.list_topics(timeout=timeout)
        return None
    except KafkaException as exc:
        seen.append(exc.args[0])
    admin.poll(0)  # serve the error callbacks queued meanwhile
    return problem_from_errors(settings, seen)


def problem_from_errors(settings: Settings, errors: list[KafkaError]) -> KafkaProblem:
    """The sentence for what librdkafka reported (authentication first: it is the cause
    of the transport failures that follow it)."""
    where = settings.kafka_bootstrap
    codes = {e.code() for e in errors}
    if codes & _REFUSED:
        return KafkaProblem(KafkaTrouble.REFUSED, refused_sentence(settings))
    if KafkaError._RESOLVE in codes:
        return KafkaProblem(
            KafkaTrouble.UNREACHABLE,
            f"Kafka's address {where} does not resolve: fix DNC_KAFKA_BOOTSTRAP.",
        )
    return KafkaProblem(
        KafkaTrouble.UNREACHABLE,
        f"Kafka is unreachable at {where}: start it (`dnc up` runs one locally) or point "
        "DNC_KAFKA_BOOTSTRAP at running brokers (and DNC_KAFKA_SECURITY_PROTOCOL at what "
        "they expect).",
    )


def refused_sentence(settings: Settings) -> str:
    """Kafka refused the credentials: whose, and where they come from."""
    user = settings.kafka_sasl_username or "(no user)"
    mechanism = settings.kafka_sasl_mechanism or "no SASL"
    return (
        f"Kafka at {settings.kafka_bootstrap} refused the credentials of {user} ({mechanism}): "
        "check DNC_KAFKA_SASL_USERNAME and DNC_KAFKA_SASL_PASSWORD (for the stack `dnc up` "
        f"runs, unset them: its superuser's are read from {KAFKA_CREDENTIALS_FILE} in "
        "DNC_DATA_DIR)."
    )


def denied_sentence(settings: Settings, what: str) -> str:
    """Kafka's ACLs refused what the principal asked for."""
    user = settings.kafka_sasl_username or "this client"
    return (
        f"Kafka at {settings.kafka_bootstrap} does not allow {user} to {what}: use the "
        "principal of the role that may (see `dnc acl apply --help`), or grant it with "
        "`dnc acl apply`."
    )
