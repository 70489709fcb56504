"""Kafka SASL/TLS for the Faust worker, from the same settings the librdkafka clients use."""

from __future__ import annotations

import ssl

import faust
from faust.types.auth import CredentialsT

from schemas.settings import Settings


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust broker credentials for the configured protocol (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if protocol == "SSL":
        assert context is not None
        return faust.SSLCredentials(context)
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )
