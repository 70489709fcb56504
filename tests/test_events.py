"""Decoding raw bytes: every kind of bad input gets a bounded reason, never another exception."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.errors import InvalidEventError
from schemas.events import (
    OppositionEvent,
    decode_event,
    describe_validation_error,
    event_json_schema,
)
from schemas.tenants import TenantDirectory

TENANTS = TenantDirectory.load(Path(__file__).resolve().parent.parent / "infra" / "tenants.toml")
REASONS = {
    "oversized",
    "malformed_json",
    "unsupported_schema_version",
    "missing_field",
    "unknown_kind",
    "schema_violation",
    "unknown_tenant",
    "invalid_phone",
    "phone_mismatch",
    "future_timestamp",
}


def good(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "tenant": "acme",
        "phone": "06 12 34 56 78",
        "kind": "opposition",
        "occurred_at": "2026-01-05T10:00:00+01:00",
    }
    base.update(over)
    return base


def reason(raw: bytes) -> str:
    with pytest.raises(InvalidEventError) as info:
        decode_event(raw, TENANTS, 4096)
    return info.value.reason


def test_valid_event_is_normalised() -> None:
    event = decode_event(json.dumps(good()).encode(), TENANTS, 4096)
    assert event.phone_e164 == "+33612345678"
    assert event.kafka_key == b"acme:+33612345678"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (json.dumps(good(phone="12")).encode(), "invalid_phone"),
        (json.dumps(good(kind="maybe")).encode(), "unknown_kind"),
        (json.dumps({k: v for k, v in good().items() if k != "tenant"}).encode(), "missing_field"),
        (json.dumps(good(schema_version=2)).encode(), "unsupported_schema_version"),
        (json.dumps(good(reason_code="x" * 5000)).encode(), "oversized"),
        (json.dumps(good(tenant="nobody")).encode(), "unknown_tenant"),
        (json.dumps(good(occurred_at="2026-01-05T10:00:00")).encode(), "schema_violation"),
        (json.dumps(good(kind="lift")).encode(), "schema_violation"),
        (json.dumps(good(phone_e164="+33699999999")).encode(), "phone_mismatch"),
        (json.dumps(good(occurred_at="2999-01-01T00:00:00+00:00")).encode(), "future_timestamp"),
        (json.dumps(good(scope="campaign")).encode(), "schema_violation"),
        (json.dumps(good(extra="field")).encode(), "schema_violation"),
    ],
)
def test_bad_input_reasons(raw: bytes, expected: str) -> None:
    assert reason(raw) == expected


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_another_exception(raw: bytes) -> None:
    try:
        decode_event(raw, TENANTS, 4096)
    except InvalidEventError as exc:
        assert exc.reason in REASONS


@given(
    st.dictionaries(
        st.sampled_from([*good(), "scope", "campaign_id", "expires_at"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.booleans()),
    )
)
def test_random_objects_never_escape_as_another_exception(obj: dict[str, object]) -> None:
    try:
        decode_event(json.dumps(obj).encode(), TENANTS, 4096)
    except InvalidEventError as exc:
        assert exc.reason in REASONS


def test_json_schema_describes_the_contract() -> None:
    schema = event_json_schema()
    assert set(schema["required"]) >= {"event_id", "tenant", "phone", "kind", "occurred_at"}
    assert schema["properties"]["schema_version"]["const"] == 1
    assert OppositionEvent.model_json_schema()["additionalProperties"] is False


FREE_TEXT = {
    "phone": "06 12 34 56 78",
    "agent_id": "agent-42",
    "reason_code": "said_stop",
    "justification": "recorded by mistake",
}


@pytest.mark.parametrize("field", sorted(FREE_TEXT))
@pytest.mark.parametrize("control", ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028"])
def test_control_characters_in_free_text_are_refused_naming_the_field(
    field: str, control: str
) -> None:
    value = FREE_TEXT[field][:4] + control + FREE_TEXT[field][4:]
    fields: dict[str, object] = {field: value}
    if field == "justification":
        fields |= {"kind": "lift", "source": "admin"}
    # The worker's decoder: dead-lettered as a schema violation, the detail names the field.
    with pytest.raises(InvalidEventError) as refused:
        decode_event(json.dumps(good(**fields)).encode(), TENANTS, 4096)
    assert refused.value.reason == "schema_violation"
    assert refused.value.message.startswith(f"{field}: ")
    assert "must be a single line of text without control characters" in refused.value.message
    assert f"U+{ord(control):04X} at character 5" in refused.value.message
    assert value not in refused.value.message  # the value (maybe a number) is not quoted
    # The SDK, the CLI and the importer build the same model.
    with pytest.raises(ValidationError) as invalid:
        OppositionEvent.model_validate(good(**fields))
    assert describe_validation_error(invalid.value).startswith(f"{field}: ")


def test_free_text_without_control_characters_is_accepted() -> None:
    event = decode_event(
        json.dumps(good(agent_id="agent 42 (Lyon)", reason_code="a dit « stop » ✓")).encode(),
        TENANTS,
        4096,
    )
    assert event.reason_code == "a dit « stop » ✓"
