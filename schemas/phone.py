"""Phone number normalisation to E.164 with the ``phonenumbers`` library."""

from __future__ import annotations

import re

import phonenumbers

from schemas.errors import InvalidPhoneNumber

MAX_PHONE_INPUT = 64
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
_E164 = re.compile(E164_PATTERN)
_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not digits",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


def normalise(raw: str, default_region: str) -> str:
    """Return ``raw`` as an E.164 string, reading national formats in ``default_region``.

    Raises :class:`InvalidPhoneNumber` with the reason when the number is not a valid,
    diallable number (too short, unknown prefix, letters...).
    """
    text = raw.strip()
    if not text:
        raise InvalidPhoneNumber("empty phone number")
    if len(text) > MAX_PHONE_INPUT:
        raise InvalidPhoneNumber(f"phone number longer than {MAX_PHONE_INPUT} characters")
    try:
        parsed = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(
            f"{text!r} is not a phone number ({_PARSE_ERRORS.get(exc.error_type, 'unreadable')}): "
            "give it in international form (+33612345678) or in the tenant's national form"
        ) from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber(
            f"{text!r} is not a valid number for region {default_region.upper()} "
            "(give it in international form, e.g. +33612345678)"
        )
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not _E164.match(e164):  # pragma: no cover - phonenumbers guarantees this shape
        raise InvalidPhoneNumber(f"{text!r} does not format as E.164")
    return e164


def is_e164(value: str) -> bool:
    """True when ``value`` has the E.164 shape (``+`` then 7 to 15 digits)."""
    return bool(_E164.match(value))
