"""Campaign dial policies in the tenants file: defaults, inheritance, and refused values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import ConfigError, UnknownTenant
from schemas.policy import (
    BANNED_SECTORS,
    DEFAULT_POLICY,
    CalendarPeriod,
    CallingHours,
    CampaignPolicy,
    LegalBasis,
)
from schemas.tenants import TenantDirectory
from tests.harness import TENANTS_TOML

SHIPPED = Path(__file__).resolve().parent.parent / "infra/tenants.toml"

OPTIN = """
[tenants.acme]
default_region = "FR"
calling_hours = "FR"
max_attempts = 4

[tenants.acme.campaigns.optin-2027]
legal_basis = "consent"
consent_validity = "P6M"
sector = "energy_renovation"

[tenants.acme.campaigns."q3.2027"]
legal_basis = "contract"
max_attempts = 2
attempt_period = "P2W"
sector = "Energy-Renovation"

[tenants.globex]
default_region = "GB"
"""


def directory(tmp_path: Path, text: str) -> TenantDirectory:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return TenantDirectory.load(path)


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        directory(tmp_path, text)
    return str(refused.value)


def test_a_tenant_that_sets_no_policy_key_keeps_todays_behaviour(tmp_path: Path) -> None:
    for tenants in (directory(tmp_path, TENANTS_TOML), TenantDirectory.load(SHIPPED)):
        for name in tenants.names:
            policy = tenants.policy(name, "any-campaign")
            assert policy == DEFAULT_POLICY == tenants.policy(name, None)
            assert policy.legal_basis is LegalBasis.LEGITIMATE_INTEREST
            assert policy.calling_hours is CallingHours.NONE
            assert policy.max_attempts is None and policy.sector is None
            assert not policy.sector_banned
            assert policy.attempt_period == timedelta(days=30)
            assert policy.consent_validity == CalendarPeriod(years=1)


def test_tenant_keys_are_the_defaults_and_a_campaign_overrides_what_it_sets(
    tmp_path: Path,
) -> None:
    tenants = directory(tmp_path, OPTIN)
    tenant_wide = tenants.policy("acme", None)
    assert tenant_wide == CampaignPolicy(calling_hours=CallingHours.FR, max_attempts=4)
    assert tenants.policy("acme", "not-listed") is tenant_wide
    optin = tenants.policy("acme", "optin-2027")
    assert optin.legal_basis is LegalBasis.CONSENT
    assert optin.calling_hours is CallingHours.FR and optin.max_attempts == 4  # inherited
    assert optin.consent_validity == CalendarPeriod(months=6)
    assert optin.sector == "energy_renovation" and optin.sector_banned
    dotted = tenants.policy("acme", "q3.2027")
    assert dotted.legal_basis is LegalBasis.CONTRACT
    assert (dotted.max_attempts, dotted.attempt_period) == (2, timedelta(weeks=2))
    assert dotted.sector == "energy_renovation" and dotted.sector_banned  # normalised
    assert tenants.policy("globex", "optin-2027") == DEFAULT_POLICY  # acme's campaign only
    with pytest.raises(UnknownTenant):
        tenants.policy("initech", None)


@pytest.mark.parametrize(
    ("key", "value", "period"),
    [
        ("attempt_period", '"P30D"', timedelta(days=30)),
        ("attempt_period", '"P4W"', timedelta(weeks=4)),
        ("attempt_period", '"p1w2d"', timedelta(days=9)),
        ("consent_validity", '"P1Y"', CalendarPeriod(years=1)),
        ("consent_validity", '"P18M"', CalendarPeriod(years=1, months=6)),
        ("consent_validity", '"P365D"', CalendarPeriod(days=365)),
        ("consent_validity", '"P1Y2W"', CalendarPeriod(years=1, days=14)),
    ],
)
def test_iso_8601_durations_are_accepted(
    tmp_path: Path, key: str, value: str, period: object
) -> None:
    tenants = directory(tmp_path, f"[tenants.acme]\n{key} = {value}\n")
    assert getattr(tenants.policy("acme", None), key) == period


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("legal_basis", '"consentt"', "'consent', 'legitimate_interest' or 'contract'"),
        ("legal_basis", "1", "'consent', 'legitimate_interest' or 'contract'"),
        ("calling_hours", '"fr"', "'FR' or 'none'"),
        ("calling_hours", '"24/7"', "'FR' or 'none'"),
        ("max_attempts", "0", "a whole number of calls, at least 1"),
        ("max_attempts", "-4", "a whole number of calls, at least 1"),
        ("max_attempts", "true", "a whole number of calls, at least 1"),
        ("max_attempts", '"4"', "a whole number of calls, at least 1"),
        ("max_attempts", "4.5", "a whole number of calls, at least 1"),
        ("attempt_period", '"P1M"', 'in weeks or days such as "P30D"'),
        ("attempt_period", '"P1Y"', 'in weeks or days such as "P30D"'),
        ("attempt_period", '"PT12H"', 'in weeks or days such as "P30D"'),
        ("attempt_period", "30", 'in weeks or days such as "P30D"'),
        ("attempt_period", '"P0D"', 'at least one day ("P1D")'),
        ("consent_validity", '"PT1H"', 'in years, months, weeks or days such as "P1Y"'),
        ("consent_validity", "365", 'in years, months, weeks or days such as "P1Y"'),
        ("consent_validity", '"one year"', 'in years, months, weeks or days such as "P1Y"'),
        ("consent_validity", '"P0Y"', "longer than nothing"),
        ("sector", '"!!"', "energy_renovation, home_adaptation, renewable_energy"),
        ("sector", '""', "energy_renovation, home_adaptation, renewable_energy"),
        ("sector", "7", "valid string"),
        ("max_attempt", "4", "not a known key (known keys: attempt_period, calling_hours"),
    ],
)
@pytest.mark.parametrize("where", ["tenant", "campaign"])
def test_a_bad_value_is_refused_naming_its_key_and_the_allowed_values(
    tmp_path: Path, key: str, value: str, says: str, where: str
) -> None:
    if where == "tenant":
        text, path = f"[tenants.acme]\n{key} = {value}\n", f"tenants.acme.{key}"
    else:
        text = f"[tenants.acme]\n[tenants.acme.campaigns.optin-2027]\n{key} = {value}\n"
        path = f"tenants.acme.campaigns.optin-2027.{key}"
    message = refusal(tmp_path, text)
    assert message.startswith(f"tenants file {tmp_path / 'tenants.toml'}: tenant 'acme': ")
    assert f"{path}: " in message and says in message


def test_every_bad_key_is_named_at_once_and_a_campaign_id_must_be_safe(
    tmp_path: Path,
) -> None:
    message = refusal(
        tmp_path,
        '[tenants.acme]\nlegal_basis = "maybe"\n'
        '[tenants.acme.campaigns."spring sale"]\nsector = "solar"\n'
        '[tenants.acme.campaigns.ok]\ncalling_hours = "always"\n',
    )
    assert "tenants.acme.legal_basis: Input should be 'consent'" in message
    assert "tenants.acme.campaigns.spring sale: a campaign id must match" in message
    assert "tenants.acme.campaigns.ok.calling_hours: Input should be 'FR' or 'none'" in message
    assert "(got 'always')" in message


def test_other_sectors_are_accepted_and_carry_no_ban(tmp_path: Path) -> None:
    tenants = directory(tmp_path, '[tenants.acme]\nsector = "Home insurance"\n')
    assert tenants.policy("acme", None).sector == "home_insurance"
    assert not tenants.policy("acme", None).sector_banned
    assert {"energy_renovation", "renewable_energy", "home_adaptation"} == BANNED_SECTORS
    for sector in BANNED_SECTORS:
        assert CampaignPolicy(sector=sector).sector_banned


@pytest.mark.parametrize(
    ("captured", "validity", "ends"),
    [
        (datetime(2027, 3, 1, 9, 30, tzinfo=UTC), "P1Y", datetime(2028, 3, 1, 9, 30, tzinfo=UTC)),
        # a leap day: the year ends on 28 February, never on 1 March (never longer)
        (datetime(2028, 2, 29, 18, tzinfo=UTC), "P1Y", datetime(2029, 2, 28, 18, tzinfo=UTC)),
        # a calendar year across a leap day is 366 days, not 365
        (datetime(2027, 6, 1, tzinfo=UTC), "P1Y", datetime(2028, 6, 1, tzinfo=UTC)),
        (datetime(2027, 1, 31, tzinfo=UTC), "P1M", datetime(2027, 2, 28, tzinfo=UTC)),
        (datetime(2027, 11, 30, tzinfo=UTC), "P3M", datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2027, 1, 1, tzinfo=UTC), "P1Y2W", datetime(2028, 1, 15, tzinfo=UTC)),
        (datetime(2027, 1, 1, tzinfo=UTC), "P365D", datetime(2028, 1, 1, tzinfo=UTC)),
    ],
)
def test_a_consent_lasts_its_validity_on_the_calendar(
    captured: datetime, validity: str, ends: datetime
) -> None:
    policy = CampaignPolicy(consent_validity=CalendarPeriod.parse(validity))
    assert policy.consent_expires_at(captured) == ends
    assert str(CalendarPeriod.parse(validity)) in {validity, "P1Y14D"}


def test_a_consent_ends_at_its_own_expiry_when_sooner_never_later() -> None:
    captured = datetime(2027, 3, 1, tzinfo=UTC)
    sooner, later = captured + timedelta(days=90), captured + timedelta(days=800)
    assert DEFAULT_POLICY.consent_expires_at(captured, sooner) == sooner
    assert DEFAULT_POLICY.consent_expires_at(captured, later) == datetime(2028, 3, 1, tzinfo=UTC)


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
    ),
    st.integers(0, 5),
    st.integers(0, 30),
    st.integers(0, 400),
)
def test_a_calendar_period_never_lasts_longer_than_its_longest_reading(
    captured: datetime, years: int, months: int, days: int
) -> None:
    period = CalendarPeriod.parse(f"P{years}Y{months}M{days}D")
    ends = period.after(captured)
    total_months = years * 12 + months
    assert ends.time() == captured.time()
    assert ends - captured <= timedelta(days=31 * total_months + days)
    assert ends - captured >= timedelta(days=28 * total_months + days)
    assert ends >= period.after(captured - timedelta(days=1))  # later capture, later end
