"""Gateway access tokens: roles, what each role may do, and how tokens are stored (hashed).

A token is ``dnc_`` + 32 random bytes (URL-safe base64): 256 bits of entropy. Only its
SHA-256 is kept, in the tenants file, next to the token's id and role; the token itself
is printed once by ``dnc token create`` and never stored or logged. A plain (unsalted,
fast) hash is enough for a secret with that much entropy: there is nothing to guess.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

TOKEN_PREFIX = "dnc_"
TOKEN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_TOKEN_LENGTH = 256  # longer Authorization values are refused before hashing


class Role(StrEnum):
    """What a token is for; each token has exactly one role and one tenant."""

    AGENT = "agent"  # agent desktops: record oppositions
    DIALER = "dialer"  # dialers: check numbers, reserve attempts
    ADMIN = "admin"  # the client's administrators: lift, subject access, and the rest
    CONSENT = "consent"  # consent recorders (a consent platform, a CRM): grant consents


class Permission(StrEnum):
    """One thing the gateway lets a token do (always within the token's tenant)."""

    RECORD = "record"  # POST /v1/oppositions
    CHECK = "check"  # GET /v1/suppressions/{phone}, POST /v1/checks
    ATTEMPT = "attempt"  # POST /v1/attempts: check, and if callable reserve one attempt
    RECORD_CONSENTS = "record_consents"  # POST /v1/consents
    LIFT = "lift"  # DELETE /v1/suppressions/{phone}
    SUBJECT_ACCESS = "subject_access"  # GET /v1/subjects/{phone}
    READ_SCHEMA = "read_schema"  # GET /v1/schema/opposition


# A grant makes numbers callable: nobody but a consent recorder grants a consent, not even
# an administrator (as on Kafka, where only the consent principal writes the consents topic).
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.AGENT: frozenset({Permission.RECORD, Permission.READ_SCHEMA}),
    Role.DIALER: frozenset({Permission.CHECK, Permission.ATTEMPT, Permission.READ_SCHEMA}),
    Role.ADMIN: frozenset(Permission) - {Permission.RECORD_CONSENTS},
    Role.CONSENT: frozenset({Permission.RECORD_CONSENTS, Permission.READ_SCHEMA}),
}


class TokenRecord(BaseModel):
    """One token as declared under ``[[tenants.NAME.tokens]]``: id, role and SHA-256 only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=TOKEN_ID_PATTERN, description="names the token in audit records")
    role: Role
    sha256: str = Field(pattern=SHA256_PATTERN, description="hex SHA-256 of the token")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant and role of an authenticated token (never the token)."""

    tenant: str
    token_id: str
    role: Role

    def may(self, permission: Permission) -> bool:
        """True when the token's role grants ``permission``."""
        return permission in ROLE_PERMISSIONS[self.role]


def new_token() -> str:
    """A fresh, high-entropy token (shown once, then only its hash is kept)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Hex SHA-256 of a token, as stored in the tenants file."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_block(tenant: str, record: TokenRecord, comment: str) -> str:
    """The TOML block that declares ``record`` for ``tenant`` (appended to a tenants file)."""
    return (
        f"\n# {comment}\n"
        f"[[tenants.{tenant}.tokens]]\n"
        f'id = "{record.id}"\n'
        f'role = "{record.role.value}"\n'
        f'sha256 = "{record.sha256}"\n'
    )
