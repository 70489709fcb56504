"""The project's exception root and the errors a caller acts on differently."""

from __future__ import annotations


class DncError(Exception):
    """Root of every error this project raises on purpose; the message says what to do."""


class ConfigError(DncError):
    """The configuration (settings or tenants file) is invalid or incomplete."""


class InvalidEventError(DncError):
    """An opposition event (or a request to record one) cannot be applied.

    ``reason`` is a short, bounded label (used in metrics and dead-letter headers);
    the message is the human explanation.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidPhoneNumber(InvalidEventError):
    """The phone number cannot be normalised to a valid E.164 number."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_phone", message)


class UnknownTenant(InvalidEventError):
    """The tenant is not declared in the tenants file."""

    def __init__(self, tenant: str) -> None:
        super().__init__(
            "unknown_tenant",
            f"unknown tenant {tenant!r}: declare it in the tenants file (DNC_TENANTS_FILE)",
        )
        self.tenant = tenant


class PublishError(DncError):
    """Kafka did not acknowledge an event; it was NOT recorded and must be retried.

    ``kafka_code``: librdkafka's error code, when Kafka gave one (an ACL refusal is not
    worth retrying); ``topic``: where it was to go."""

    def __init__(
        self, message: str, kafka_code: int | None = None, topic: str | None = None
    ) -> None:
        super().__init__(message)
        self.kafka_code = kafka_code
        self.topic = topic


class AuditError(DncError):
    """An audit record was not acknowledged by Kafka: the access it records must not be served."""
