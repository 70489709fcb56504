"""The Rust port (``rphonenumbers``, the fast path) against ``phonenumbers`` (the reference).

A view member is a hash of the E.164 form: if the worker and a dialer's check ever got
two different E.164 forms for one number, a suppressed number would answer "callable".
So whenever both libraries accept an input they must give the same E.164 form, and
``normalise`` must give the reference's form whenever the reference accepts the input.
"""

from __future__ import annotations

import random

import phonenumbers
import pytest
import rphonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import InvalidPhoneNumber
from schemas.phone import fast_e164, known_region, normalise, reference_e164

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)


def reference(text: str, region: str) -> str | None:
    try:
        return reference_e164(text, region)
    except InvalidPhoneNumber:
        return None


def variants(rng: random.Random, region: str) -> list[str]:
    """Valid numbers of ``region`` in many written forms, and damaged ones."""
    example = phonenumbers.example_number_for_type(region, rng.choice(TYPES))
    if example is None:
        return []
    cc, nsn = example.country_code, phonenumbers.national_significant_number(example)
    digits = list(nsn)
    for _ in range(rng.randint(0, 2)):
        digits[rng.randrange(len(digits))] = str(rng.randint(0, 9))
    if rng.random() < 0.15:
        digits = digits[: rng.randint(1, len(digits))]
    if rng.random() < 0.15:
        digits += [str(rng.randint(0, 9))] * rng.randint(1, 3)
    n = "".join(digits)
    national = phonenumbers.format_number(
        phonenumbers.PhoneNumber(country_code=cc, national_number=int(n)),
        phonenumbers.PhoneNumberFormat.NATIONAL,
    )
    return [f"+{cc}{n}", f"+{cc} {n[:3]} {n[3:]}", national, f"00{cc}{n}", f"+{cc}0{n}",
            f"({n[:3]}) {n[3:6]}-{n[6:]}", f"tel:+{cc}{n};ext=12", f"{n}"]  # fmt: skip


def test_a_tenant_region_is_known_exactly_when_the_reference_knows_it() -> None:
    """Tenants' regions are checked on the Rust port's list first (no import of the
    reference): it must hold no region the reference does not know."""
    assert set(rphonenumbers.SUPPORTED_REGIONS) <= set(phonenumbers.SUPPORTED_REGIONS)
    assert all(known_region(r) for r in phonenumbers.SUPPORTED_REGIONS)
    assert not known_region("ZZ") and not known_region("fr")


def test_both_libraries_give_the_same_e164_for_every_region_and_written_form() -> None:
    rng, compared, accepted = random.Random(20261202), 0, 0
    for _ in range(3):
        for region in REGIONS:
            for text in variants(rng, region):
                default = rng.choice([region, "FR", "US"])
                fast, ref = fast_e164(text, default), reference(text, default)
                compared += 1
                if fast is not None and ref is not None:
                    accepted += 1
                    assert fast == ref, (text, default)
                if ref is not None:
                    assert normalise(text, default) == ref, (text, default)
    assert compared > 5000 and accepted > compared // 4  # the corpus exercises both paths


@settings(max_examples=3000, deadline=None)
@given(
    text=st.text(alphabet="0123456789+-() .xX#*;:=tel/ext", max_size=30),
    region=st.sampled_from(REGIONS),
)
def test_malformed_inputs_never_give_two_different_e164_forms(text: str, region: str) -> None:
    fast, ref = fast_e164(text.strip(), region), reference(text.strip(), region)
    if fast is not None and ref is not None:
        assert fast == ref
    if ref is not None:
        assert normalise(text, region) == ref


@pytest.mark.parametrize("text", ["", "   ", "+", "abc", "+33 6", "0" * 80])
def test_what_the_reference_rejects_and_the_fast_path_too_is_rejected_with_a_reason(
    text: str,
) -> None:
    with pytest.raises(InvalidPhoneNumber):
        normalise(text, "FR")
