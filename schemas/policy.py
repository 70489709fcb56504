"""A campaign's dial policy: legal basis, calling hours, attempt cap, consent validity, sector.

Declared in the tenants file: a tenant's keys are the defaults of its campaigns, and a
campaign listed under ``[tenants.NAME.campaigns.ID]`` overrides the keys it sets. A tenant
that sets none of them keeps today's behaviour: legitimate interest, no hours rule, no cap.

A consent's validity (``consent_validity``) is counted on the calendar: ``P1Y`` ends on
the same date and wall-clock time a year after the capture, and a capture on 29 February
ends on 28 February (a month-end that does not exist is clamped to the month's last day,
so a consent never lasts longer than its validity says). ``attempt_period`` is a fixed
span of weeks and days (the decree's 30 days), counted in exact 24-hour days.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

CAMPAIGN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SECTOR_PATTERN = r"^[a-z0-9][a-z0-9_]{0,63}$"
# Law 2025-594 (L223-1): no phone prospecting for these, whatever the consent.
BANNED_SECTORS = frozenset({"energy_renovation", "renewable_energy", "home_adaptation"})
DEFAULT_ATTEMPT_PERIOD = timedelta(days=30)  # decree 2022-1313 (D223-9): 4 calls in 30 days
_CALENDAR_DURATION = re.compile(r"^P(?=\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")
_DAYS_DURATION = re.compile(r"^P(?=\d)(?:(\d+)W)?(?:(\d+)D)?$")


class LegalBasis(StrEnum):
    """Why the campaign may call a consumer at all."""

    CONSENT = "consent"  # only with a valid recorded consent (L223-1 since 11 August 2026)
    LEGITIMATE_INTEREST = "legitimate_interest"  # no consent needed (today's behaviour)
    CONTRACT = "contract"  # calls under a current contract: no consent, no sector ban


class CallingHours(StrEnum):
    """Which calling-hours rule applies."""

    FR = "FR"  # D223-9: Mon-Fri 10-13 and 14-20 in the number's time zone, no public holiday
    NONE = "none"


@dataclass(frozen=True, slots=True)
class CalendarPeriod:
    """An ISO 8601 duration in years, months and days, added on the calendar."""

    years: int = 0
    months: int = 0
    days: int = 0

    @classmethod
    def parse(cls, text: str) -> CalendarPeriod:
        """``P1Y``, ``P18M``, ``P2W``, ``P1Y6M``...; :class:`ValueError` for anything else."""
        found = _CALENDAR_DURATION.match(text.strip().upper())
        if not found:
            raise ValueError(f"{text!r} is not an ISO 8601 duration in years, months or days")
        years, months, weeks, days = (int(part or 0) for part in found.groups())
        return cls(years=years + months // 12, months=months % 12, days=weeks * 7 + days)

    def after(self, start: datetime) -> datetime:
        """``start`` plus this period: same wall-clock time, month-ends clamped, then days."""
        month_index = start.month - 1 + self.months
        year = start.year + self.years + month_index // 12
        month = month_index % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        return start.replace(year=year, month=month, day=day) + timedelta(days=self.days)

    def __str__(self) -> str:
        parts = ((self.years, "Y"), (self.months, "M"), (self.days, "D"))
        return "P" + ("".join(f"{n}{unit}" for n, unit in parts if n) or "0D")


DEFAULT_CONSENT_VALIDITY = CalendarPeriod(years=1)


def _parse_consent_validity(value: object) -> object:
    if isinstance(value, CalendarPeriod):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        period = CalendarPeriod.parse(value)
    except ValueError:
        raise ValueError(
            'must be an ISO 8601 duration in years, months, weeks or days such as "P1Y" or '
            '"P6M" (hours are not accepted)'
        ) from None
    if period == CalendarPeriod():
        raise ValueError("must be longer than nothing")
    return period


def _parse_attempt_period(value: object) -> object:
    if isinstance(value, timedelta):
        return value
    found = _DAYS_DURATION.match(value.strip().upper()) if isinstance(value, str) else None
    if not found:
        raise ValueError(
            'must be an ISO 8601 duration in weeks or days such as "P30D" or "P4W" '
            "(years, months and hours are not accepted)"
        )
    weeks, days = (int(part or 0) for part in found.groups())
    if weeks * 7 + days < 1:
        raise ValueError('must be at least one day ("P1D")')
    return timedelta(weeks=weeks, days=days)


def _check_max_attempts(value: object) -> object:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError("must be a whole number of calls, at least 1 (for no cap, leave it out)")


def _normalise_sector(value: object) -> object:
    # Compared with the banned list: "Energy-Renovation" must not slip past the ban.
    if not isinstance(value, str):
        return value
    sector = re.sub(r"[\s-]+", "_", value.strip().lower())
    if not re.match(SECTOR_PATTERN, sector):
        raise ValueError(
            f"must be a sector name matching {SECTOR_PATTERN} (banned from phone prospecting: "
            f"{', '.join(sorted(BANNED_SECTORS))})"
        )
    return sector


# How each key that is not a plain enum is read from the file.
_READERS: dict[str, Callable[[object], object]] = {
    "max_attempts": _check_max_attempts,
    "attempt_period": _parse_attempt_period,
    "consent_validity": _parse_consent_validity,
    "sector": _normalise_sector,
}


class PolicyKeys(BaseModel):
    """The dial-policy keys a tenant or one of its campaigns may set; None: not set here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    legal_basis: LegalBasis | None = Field(
        None, description="consent | legitimate_interest | contract (default legitimate_interest)"
    )
    calling_hours: CallingHours | None = Field(
        None, description='"FR" (D223-9 in the number\'s time zone) or "none" (default)'
    )
    max_attempts: int | None = Field(
        None, description="calls or attempts per number over attempt_period (default: no cap)"
    )
    attempt_period: timedelta | None = Field(
        None, description='rolling window of max_attempts, in weeks or days (default "P30D")'
    )
    consent_validity: CalendarPeriod | None = Field(
        None, description='longest a consent lasts, on the calendar (default "P1Y")'
    )
    sector: str | None = Field(None, description="the campaign's sector (some are banned)")

    @field_validator(*_READERS, mode="before")
    @classmethod
    def _read(cls, value: object, info: ValidationInfo) -> object:
        return _READERS[info.field_name or ""](value)

    def overrides(self) -> dict[str, object]:
        """The keys set here, to lay over the inherited policy."""
        return {k: v for k in PolicyKeys.model_fields if (v := getattr(self, k)) is not None}


class CampaignKeys(PolicyKeys):
    """``[tenants.NAME.campaigns.ID]``: the keys this campaign overrides."""


class CampaignPolicy(BaseModel):
    """The dial policy in force for one campaign (or a tenant's calls outside any campaign)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    legal_basis: LegalBasis = LegalBasis.LEGITIMATE_INTEREST
    calling_hours: CallingHours = CallingHours.NONE
    max_attempts: int | None = Field(None, ge=1)
    attempt_period: timedelta = DEFAULT_ATTEMPT_PERIOD
    consent_validity: CalendarPeriod = DEFAULT_CONSENT_VALIDITY
    sector: str | None = None

    @property
    def sector_banned(self) -> bool:
        """True when the sector is banned from phone prospecting (the legal basis aside)."""
        return self.sector in BANNED_SECTORS

    def overlaid(self, keys: PolicyKeys) -> CampaignPolicy:
        """This policy with the keys set in ``keys`` replacing its own."""
        overrides = keys.overrides()
        return self.model_copy(update=overrides) if overrides else self

    def consent_expires_at(self, captured_at: datetime, asked: datetime | None = None) -> datetime:
        """When a consent captured at ``captured_at`` ends: the earlier of ``asked`` (the
        expiry the record carries, if any) and the capture plus ``consent_validity``."""
        longest = self.consent_validity.after(captured_at)
        return longest if asked is None or asked > longest else asked


DEFAULT_POLICY = CampaignPolicy()
