"""The tenants file: a refusal cooldown is an ISO 8601 duration of at least a day."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from schemas.policy import CallingHours, LegalBasis
from schemas.tenants import DEFAULT_REFUSAL_COOLDOWN, TenantDirectory
from tests.harness import TENANTS_TOML


def load(tmp_path: Path, cooldown: str) -> TenantDirectory:
    path = tmp_path / "tenants.toml"
    path.write_text(f'[tenants.acme]\ndefault_region = "FR"\nrefusal_cooldown = {cooldown}\n')
    return TenantDirectory.load(path)


@pytest.mark.parametrize(
    ("cooldown", "expected"),
    [
        ('"P60D"', timedelta(days=60)),
        ('"P8W"', timedelta(weeks=8)),
        ('"PT24H"', timedelta(days=1)),
        ('"P1DT12H"', timedelta(days=1, hours=12)),
    ],
)
def test_an_iso_8601_duration_of_a_day_or_more_is_accepted(
    tmp_path: Path, cooldown: str, expected: timedelta
) -> None:
    assert load(tmp_path, cooldown).get("acme").refusal_cooldown == expected


@pytest.mark.parametrize(
    ("cooldown", "says"),
    [
        ("60", "a bare number is not accepted"),  # was 60 seconds, read as days by people
        ('"60"', "a bare number is not accepted"),
        ("4.5", "a bare number is not accepted"),
        ('"P2M"', "years and months are not accepted"),
        ('"P1Y"', "years and months are not accepted"),
        ('"sixty days"', "not an ISO 8601 duration"),
        ('"-P1D"', "not an ISO 8601 duration"),
        ('"PT23H"', "at least one day"),
        ('"P0D"', "at least one day"),
    ],
)
def test_anything_else_is_refused_with_a_clear_message(
    tmp_path: Path, cooldown: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, cooldown)
    message = str(refused.value)
    assert "tenant 'acme'" in message and "refusal_cooldown" in message and says in message


def test_the_default_and_the_shipped_files_load(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants.acme]\ndefault_region = "FR"\n')
    assert TenantDirectory.load(path).get("acme").refusal_cooldown == DEFAULT_REFUSAL_COOLDOWN
    path.write_text(TENANTS_TOML)
    assert TenantDirectory.load(path).get("umbrella").refusal_cooldown == timedelta(days=30)
    shipped = TenantDirectory.load(Path(__file__).resolve().parent.parent / "infra/tenants.toml")
    assert shipped.get("demo").refusal_cooldown == timedelta(days=60)
    # The demo's consent campaign (`dnc up --demo`); its other campaigns keep the defaults.
    optin = shipped.policy("demo", "optin-2027")
    assert optin.legal_basis is LegalBasis.CONSENT and optin.calling_hours is CallingHours.FR
    assert optin.max_attempts == 4 and optin.attempt_period == timedelta(days=30)
    today = shipped.policy("demo")
    assert today.legal_basis is LegalBasis.LEGITIMATE_INTEREST and today.max_attempts is None
    assert shipped.policy("demo", "spring-offer") == today
