"""Where a tenant's reference list (the client's CRM) lives: its sink, declared per tenant.

In the tenants file::

    [tenants.acme.reference_list]
    sink = "postgres"                      # the reference-list table, see infra/postgres
    dsn_env = "ACME_REFERENCE_DSN"         # optional: variable with the DSN (else DNC_POSTGRES_DSN)

    [tenants.globex.reference_list]
    sink = "webhook"
    url = "https://crm.globex.example/dnc"  # https (plain http only to 127.0.0.1, ::1, localhost)
    secret_env = "GLOBEX_WEBHOOK_SECRET"   # variable holding the HMAC-SHA256 key

Secrets never sit in the file: it names the environment variable that holds them.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from schemas.errors import ConfigError

ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class PostgresSinkConfig(BaseModel):
    """The reference list is a PostgreSQL table the sync upserts (see the shipped migration)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sink: Literal["postgres"]
    dsn_env: str | None = Field(
        None, pattern=ENV_NAME, description="variable holding the DSN (default DNC_POSTGRES_DSN)"
    )

    def dsn(self, default: str) -> str:
        """The DSN to connect with; a named variable that is unset is an error."""
        if self.dsn_env is None:
            return default
        value = os.environ.get(self.dsn_env)
        if not value:
            raise ConfigError(f"the reference-list DSN variable {self.dsn_env} is not set")
        return value


class WebhookSinkConfig(BaseModel):
    """The reference list is behind an HTTP endpoint of the client's: a signed POST per change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sink: Literal["webhook"]
    url: AnyHttpUrl = Field(
        description="https://...; plain http:// only to this machine (127.0.0.0/8, ::1, localhost)"
    )
    secret_env: str = Field(pattern=ENV_NAME, description="variable holding the HMAC key")

    @field_validator("url")
    @classmethod
    def _https_unless_loopback(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        # Each change carries a phone number and what the person asked for: it never crosses
        # a network in clear. Plain http is only for a receiver on this machine.
        if url.scheme == "http" and not is_loopback_host(url.host or ""):
            raise ValueError(
                f"the webhook url to {url.host} is plain http: use https:// (plain http:// is "
                "allowed only for a receiver on this machine: 127.0.0.0/8, ::1 or localhost)"
            )
        return url

    def secret(self) -> bytes:
        """The HMAC-SHA256 key; unset or shorter than 16 bytes is an error."""
        value = os.environ.get(self.secret_env, "")
        if len(value) < 16:
            raise ConfigError(
                f"the webhook secret variable {self.secret_env} must hold at least 16 characters "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value.encode()


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


SinkConfig = Annotated[PostgresSinkConfig | WebhookSinkConfig, Field(discriminator="sink")]
