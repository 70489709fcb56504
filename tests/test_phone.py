"""Normalisation to E.164 (unit + property-based)."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import InvalidPhoneNumber
from schemas.phone import is_e164, normalise


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("+33 6 12 34 56 78", "GB", "+33612345678"),
        ("0033612345678", "FR", "+33612345678"),
        ("07400 123456", "GB", "+447400123456"),
        ("(201) 555-0123", "US", "+12015550123"),
    ],
)
def test_national_and_international_forms(raw: str, region: str, expected: str) -> None:
    assert normalise(raw, region) == expected


@pytest.mark.parametrize(
    "raw", ["", "   ", "hello", "12", "+33 6", "06 12 34 56 78 90 12 34", "x" * 80]
)
def test_invalid_numbers_are_refused_with_a_reason(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as info:
        normalise(raw, "FR")
    assert info.value.reason == "invalid_phone"
    assert info.value.message


@given(st.text(max_size=40))
def test_any_text_either_normalises_to_e164_or_is_refused(raw: str) -> None:
    try:
        e164 = normalise(raw, "FR")
    except InvalidPhoneNumber:
        return
    assert is_e164(e164)
    assert phonenumbers.is_valid_number(phonenumbers.parse(e164))


@given(st.sampled_from(["FR", "GB", "DE", "US", "ES"]), st.data())
def test_normalisation_is_idempotent_and_region_independent_for_e164(
    region: str, data: st.DataObject
) -> None:
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
    e164 = normalise(national, region)
    other = data.draw(st.sampled_from(["FR", "GB", "DE", "US", "ES"]))
    assert normalise(e164, other) == e164
