"""The opposition event: what an agent desktop publishes when a person says "do not call"."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.errors import InvalidEventError
from schemas.phone import E164_PATTERN, MAX_PHONE_INPUT, normalise
from schemas.policy import CAMPAIGN_PATTERN as CAMPAIGN_PATTERN  # re-exported for its readers
from schemas.tenants import TENANT_PATTERN, TenantDirectory
from schemas.text import single_line
from schemas.vocabulary import GLOBAL_TARGET as GLOBAL_TARGET
from schemas.vocabulary import SUPPRESSING_KINDS as SUPPRESSING_KINDS
from schemas.vocabulary import ConsentSource as ConsentSource
from schemas.vocabulary import Kind as Kind
from schemas.vocabulary import Scope as Scope
from schemas.vocabulary import Source as Source
from schemas.vocabulary import scope_target as scope_target

SCHEMA_VERSION = 1


class OppositionEvent(BaseModel):
    """One opposition (or lift) as published to ``dnc.oppositions.v1`` (JSON, UTF-8)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={"title": "OppositionEvent", "$id": "urn:dnc:opposition-event:v1"},
    )

    schema_version: Literal[1] = Field(1, description="contract version; must be 1")
    event_id: uuid.UUID = Field(description="unique id chosen by the producer; replays are no-ops")
    tenant: str = Field(pattern=TENANT_PATTERN, description="client the call was made for")
    phone: str = Field(
        min_length=1, max_length=MAX_PHONE_INPUT, description="number as given by the agent"
    )
    phone_e164: str | None = Field(
        None,
        pattern=E164_PATTERN,
        description="E.164 form; filled by the pipeline from phone and the tenant's region",
    )
    kind: Kind
    scope: Scope = Scope.TENANT
    campaign_id: str | None = Field(None, pattern=CAMPAIGN_PATTERN)
    agent_id: str | None = Field(None, max_length=128)
    source: Source = Source.AGENT_DESKTOP
    reason_code: str | None = Field(None, max_length=64)
    justification: str | None = Field(
        None, max_length=1000, description="mandatory for a lift: why the suppression ends"
    )
    occurred_at: AwareDatetime = Field(description="when the person said it (with time zone)")
    expires_at: AwareDatetime | None = Field(
        None,
        description="optional end of the suppression (refusals default to the cooldown); for a "
        "consent, its end (default and longest: occurred_at + the campaign's consent_validity)",
    )
    # Consents only (kind "consent"; occurred_at is when it was captured).
    consent_source: ConsentSource | None = Field(None, description="consents: how it was captured")
    proof_ref: str | None = Field(
        None,
        max_length=256,
        description="consents: where the proof is archived (form version and submission id, "
        "call recording id, scan reference...)",
    )
    wording_version: str | None = Field(
        None, max_length=64, description="consents: the version of the wording the person saw"
    )
    recorded_by: str | None = Field(
        None, max_length=128, description="consents: who recorded it (a person or a system)"
    )

    @field_validator(
        "phone", "agent_id", "reason_code", "justification", "proof_ref", "wording_version",
        "recorded_by",
    )  # fmt: skip
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        # Free text reaches PostgreSQL (which refuses a NUL), logs and terminals: one line.
        return None if value is None else single_line(value)

    @model_validator(mode="after")
    def _consistent(self) -> OppositionEvent:
        if self.scope is Scope.CAMPAIGN and not self.campaign_id:
            raise ValueError("scope 'campaign' needs a campaign_id")
        if self.scope is not Scope.CAMPAIGN and self.campaign_id is not None:
            raise ValueError("campaign_id is only allowed with scope 'campaign'")
        if self.kind is Kind.LIFT:
            if self.source is not Source.ADMIN:
                raise ValueError("a lift must come from an admin source")
            if not (self.justification and self.justification.strip()):
                raise ValueError("a lift needs a justification")
        if self.expires_at is not None and self.expires_at <= self.occurred_at:
            raise ValueError("expires_at must be after occurred_at")
        consent_fields = (self.consent_source, self.proof_ref, self.wording_version,
                          self.recorded_by)  # fmt: skip
        if self.kind is Kind.CONSENT:
            if self.scope is Scope.GLOBAL:
                raise ValueError("a consent is given to a tenant (scope tenant or campaign)")
            if self.consent_source is None or not (self.proof_ref and self.proof_ref.strip()):
                raise ValueError("a consent needs its consent_source and its proof_ref")
        elif any(f is not None for f in consent_fields):
            raise ValueError(
                "consent_source, proof_ref, wording_version and recorded_by are for consents"
            )
        if self.kind is Kind.ATTEMPT and self.scope is not Scope.CAMPAIGN:
            raise ValueError("an attempt is reserved for a campaign (scope campaign)")
        return self

    @property
    def target(self) -> str:
        """The list this event writes to (attempts count per tenant, whatever the campaign)."""
        if self.kind is Kind.ATTEMPT:
            return self.tenant
        return scope_target(self.scope, self.tenant, self.campaign_id)

    @property
    def suppresses(self) -> bool:
        """True for the kinds that suppress the number (not lifts, consents, attempts)."""
        return self.kind.value in SUPPRESSING_KINDS

    @property
    def kafka_key(self) -> bytes:
        """Partition key: ``tenant:E164`` (``_global:E164`` for global scope).

        Every event about one number of one tenant lands on one partition, so every
        table key it touches is always written from the same partition.
        """
        owner = GLOBAL_TARGET if self.scope is Scope.GLOBAL else self.tenant
        return f"{owner}:{self.phone_e164 or self.phone}".encode()

    @property
    def stamp(self) -> tuple[datetime, str]:
        """Last-writer order: (occurred_at, event_id)."""
        return (self.occurred_at, str(self.event_id))

    @classmethod
    def record(cls, **fields: Any) -> OppositionEvent:
        """A new event with a fresh id and ``occurred_at`` = now unless given."""
        fields.setdefault("event_id", uuid.uuid4())
        fields.setdefault("occurred_at", datetime.now(UTC))
        return cls.model_validate(fields)

    def normalised(self, tenants: TenantDirectory) -> OppositionEvent:
        """This event with ``phone_e164`` set from the tenant's region.

        Raises :class:`InvalidEventError` (unknown tenant, invalid number, or an
        ``phone_e164`` that disagrees with ``phone``).
        """
        region = tenants.get(self.tenant).default_region
        e164 = normalise(self.phone, region)
        if self.phone_e164 is not None and self.phone_e164 != e164:
            raise InvalidEventError(
                "phone_mismatch",
                f"phone_e164 {self.phone_e164} does not match phone {self.phone!r} ({e164})",
            )
        return self.model_copy(update={"phone_e164": e164})


def event_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the event, for producers that are not written in Python."""
    schema = OppositionEvent.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _reason_for(exc: ValidationError) -> str:
    errors = exc.errors()
    for error in errors:
        if error["type"] == "json_invalid":
            return "malformed_json"
    for error in errors:
        if error["loc"][:1] == ("schema_version",):
            return "unsupported_schema_version"
    for error in errors:
        if error["type"] == "missing":
            return "missing_field"
    for error in errors:
        if error["loc"][:1] == ("kind",):
            return "unknown_kind"
    return "schema_violation"


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, ``field: message``, for people and dead-letter headers."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


MAX_FUTURE_SKEW = timedelta(minutes=5)


def check_clock(event: OppositionEvent, now: datetime | None = None) -> None:
    """Refuse an ``occurred_at`` in the future beyond clock skew.

    Last writer wins: an event stamped far ahead would outrank every later lift and make
    its suppression impossible to end.
    """
    limit = (now or datetime.now(UTC)) + MAX_FUTURE_SKEW
    if event.occurred_at > limit:
        raise InvalidEventError(
            "future_timestamp",
            f"occurred_at {event.occurred_at.isoformat()} is more than "
            f"{int(MAX_FUTURE_SKEW.total_seconds() // 60)} minutes in the future: check the "
            "producer's clock",
        )


def decode_event(raw: bytes, tenants: TenantDirectory, max_bytes: int) -> OppositionEvent:
    """Parse, validate and normalise raw bytes from Kafka.

    Raises :class:`InvalidEventError` whose ``reason`` is one of: oversized,
    malformed_json, unsupported_schema_version, missing_field, unknown_kind,
    schema_violation, unknown_tenant, invalid_phone, phone_mismatch, future_timestamp.
    """
    if len(raw) > max_bytes:
        raise InvalidEventError(
            "oversized", f"event is {len(raw)} bytes, the limit is {max_bytes} bytes"
        )
    try:
        # Strict JSON first: the model's own JSON parser would accept e.g. NaN.
        json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidEventError("malformed_json", f"not valid UTF-8 JSON: {exc}") from exc
    try:
        event = OppositionEvent.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidEventError(_reason_for(exc), describe_validation_error(exc)) from exc
    check_clock(event)
    return event.normalised(tenants)
