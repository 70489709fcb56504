"""The audit record: who did what, for which tenant, when, from where, and the outcome.

Written by the HTTP gateway to the audit topic (``dnc.audit.v1``, key = the caller's
tenant, JSON) for every write (record, consent grant, lift) and every subject access
request, whatever the outcome. Dialer checks and attempts are counted in metrics instead,
not recorded one by one (an attempt is itself an event in the log of record).

A record never holds a token (only its id) nor a phone number in clear: the subject is a
keyed hash of the E.164 number (:func:`subject_ref`), so an auditor who holds the key can
answer "who accessed this person's data?" and nobody else can read numbers off the trail.
"""

from __future__ import annotations

import hashlib
import uuid
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.tokens import Role

_SUBJECT_PERSON = b"dnc-audit-subj"  # BLAKE2b personalisation: not the view's hash


class AuditAction(StrEnum):
    """What the caller asked to do."""

    RECORD_OPPOSITION = "record_opposition"  # POST /v1/oppositions
    RECORD_CONSENT = "record_consent"  # POST /v1/consents
    LIFT = "lift"  # DELETE /v1/suppressions/{phone}
    SUBJECT_ACCESS = "subject_access"  # GET /v1/subjects/{phone}


class AuditRecord(BaseModel):
    """One audited request, as written to the audit topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    audit_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    at: AwareDatetime = Field(description="when the gateway answered")
    tenant: str = Field(description="tenant of the caller's token")
    token_id: str = Field(description="who: the token's id (never the token)")
    role: Role
    action: AuditAction
    method: str
    route: str = Field(description="route template, e.g. /v1/subjects/{phone}")
    target_tenant: str | None = Field(None, description="tenant the request addressed")
    subject: str | None = Field(
        None, description="keyed hash of the E.164 number concerned (subject_ref), never clear"
    )
    event_id: uuid.UUID | None = Field(None, description="event recorded by a write")
    source_address: str | None = Field(None, description="client address as seen by the gateway")
    user_agent: str | None = Field(None, max_length=256)
    status: int = Field(description="HTTP status answered: the outcome")
    outcome: Literal["succeeded", "refused", "failed"]
    reason: str | None = Field(None, description="short error code when not succeeded")

    @staticmethod
    def outcome_of(status: int) -> Literal["succeeded", "refused", "failed"]:
        """succeeded (2xx), refused (4xx: invalid, forbidden, limited) or failed (5xx)."""
        if status < 400:
            return "succeeded"
        return "refused" if status < 500 else "failed"

    @property
    def kafka_key(self) -> bytes:
        """Key on the audit topic: the caller's tenant."""
        return self.tenant.encode()


def subject_ref(key: bytes, phone_e164: str) -> str:
    """Keyed BLAKE2b of an E.164 number (32 hex chars): names a data subject in the audit."""
    if not key:
        raise ValueError("the subject key must not be empty")
    secret = key if len(key) <= 64 else hashlib.blake2b(key).digest()
    return hashlib.blake2b(
        phone_e164.encode(), key=secret, digest_size=16, person=_SUBJECT_PERSON
    ).hexdigest()
