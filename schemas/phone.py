"""Phone number normalisation to E.164 with the ``phonenumbers`` library."""

from __future__ import annotations

import re
from functools import lru_cache

import rphonenumbers

from schemas.errors import InvalidPhoneNumber

MAX_PHONE_INPUT = 64
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
_E164 = re.compile(E164_PATTERN)
# phonenumbers (the reference) is imported when first needed: most inputs never reach it.
_PARSE_ERRORS = {  # phonenumbers.NumberParseException's error types, by name
    "INVALID_COUNTRY_CODE": "unknown country code",
    "NOT_A_NUMBER": "not digits",
    "TOO_SHORT_AFTER_IDD": "too short after the prefix",
    "TOO_SHORT_NSN": "too short",
    "TOO_LONG": "too long",
}


def normalise(raw: str, default_region: str) -> str:
    """Return ``raw`` as an E.164 string, reading national formats in ``default_region``.

    Raises :class:`InvalidPhoneNumber` with the reason when the number is not a valid,
    diallable number (too short, unknown prefix, letters...).

    Two implementations of libphonenumber: ``rphonenumbers`` (Rust, about 4 µs a number)
    answers first; when it does not find a valid number, ``phonenumbers`` (the reference,
    about 30-190 µs) decides, with its reasons. A differential test over every region and
    malformed inputs (``tests/test_phone_differential.py``) holds them to the same E.164
    whenever both accept a number; the few numbers only the Rust port accepts (its metadata
    is newer or older than the reference's) are accepted, which can only suppress more.
    """
    text = raw.strip()
    if not text:
        raise InvalidPhoneNumber("empty phone number")
    if len(text) > MAX_PHONE_INPUT:
        raise InvalidPhoneNumber(f"phone number longer than {MAX_PHONE_INPUT} characters")
    fast = fast_e164(text, default_region)
    return fast if fast is not None else reference_e164(text, default_region)


def known_region(region: str) -> bool:
    """Does ``phonenumbers`` (the reference) know the region ``region`` (upper case)?

    The Rust port's regions are among the reference's (``tests/test_phone_differential.py``
    holds it): a region it knows is answered without importing the reference.
    """
    if region in rphonenumbers.SUPPORTED_REGIONS:
        return True
    import phonenumbers

    return region in phonenumbers.SUPPORTED_REGIONS


@lru_cache(maxsize=1 << 16)
def normalise_cached(raw: str, default_region: str) -> str:
    """:func:`normalise`, remembering the last 65,536 inputs it accepted: a dialer checks the
    same numbers of its lists again and again (an input refused is read again each time)."""
    return normalise(raw, default_region)


def fast_e164(text: str, default_region: str) -> str | None:
    """The E.164 form by ``rphonenumbers``, or None when it finds no valid number (or fails)."""
    try:
        parsed = rphonenumbers.parse(text, default_region.upper())
        if not rphonenumbers.is_valid_number(parsed):
            return None
        e164 = rphonenumbers.format_number(parsed, rphonenumbers.PhoneNumberFormat.E164)
    except Exception:  # its parse errors, or anything else: the reference decides
        return None
    except BaseException as exc:  # a Rust panic surfaces as a BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return None
    return e164 if _E164.match(e164) else None


def reference_e164(text: str, default_region: str) -> str:
    """The E.164 form by ``phonenumbers``; raises :class:`InvalidPhoneNumber` with why."""
    import phonenumbers

    try:
        parsed = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(
            f"{text!r} is not a phone number ({_parse_error(exc.error_type)}): "
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


def _parse_error(error_type: int) -> str:
    import phonenumbers

    for name, text in _PARSE_ERRORS.items():
        if getattr(phonenumbers.NumberParseException, name) == error_type:
            return text
    return "unreadable"


def is_e164(value: str) -> bool:
    """True when ``value`` has the E.164 shape (``+`` then 7 to 15 digits)."""
    return bool(_E164.match(value))
