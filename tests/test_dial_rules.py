"""The dial decision's rules: oppositions, consent, sector, calling hours and attempts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.dial_calendar import METROPOLITAN, _shared, number_calendar
from consumers.dial_rules import (
    TIME_BASED,
    ConsentFact,
    Reason,
    ReasonCode,
    ViewFacts,
    decide,
    hours_reason,
    hours_verdict,
    next_allowed_at,
    only_oppositions,
)
from schemas.events import Kind, Scope
from schemas.policy import CallingHours, CampaignPolicy, LegalBasis

PARIS = ZoneInfo("Europe/Paris")
REUNION_TZ = ZoneInfo("Indian/Reunion")
MOBILE = "+33612345678"
STRASBOURG = "+33388123456"
REUNION = "+262262161234"
REUNION_MOBILE = "+262692123456"  # libphonenumber: Réunion's or Mayotte's zone
MAYOTTE = "+262269601234"
GUADELOUPE = "+590590201234"
ANTILLES_MOBILE = "+590690001234"  # Guadeloupe, Saint-Barthélemy or Saint-Martin
MARTINIQUE = "+596596301234"
GUYANE = "+594594101234"
NOUMEA = "+687201234"
TAHITI = "+68940412345"
WASHINGTON = "+12025550123"
NUMBERS = [MOBILE, STRASBOURG, REUNION, REUNION_MOBILE, MAYOTTE, GUADELOUPE, ANTILLES_MOBILE]
NUMBERS += [MARTINIQUE, GUYANE, NOUMEA, TAHITI, WASHINGTON]

HOURS = CampaignPolicy(calling_hours=CallingHours.FR)
CONSENT = CampaignPolicy(legal_basis=LegalBasis.CONSENT)
NONE = ViewFacts()


def paris(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=PARIS)  # type: ignore[misc]


def codes(reasons: list[Reason]) -> list[ReasonCode]:
    return [reason.code for reason in reasons]


def hours(e164: str, at: datetime) -> list[Reason]:
    return decide(HOURS, e164, NONE, at)


# --- oppositions and the absence of rules ------------------------------------------------


def test_with_no_rule_configured_only_oppositions_forbid() -> None:
    opposed = [(Scope.GLOBAL, Kind.OPPOSITION), (Scope.CAMPAIGN, Kind.REFUSAL)]
    facts = ViewFacts(opposed=opposed, attempts=[paris(2026, 12, 25, 3)] * 10)
    reasons = decide(CampaignPolicy(), MOBILE, facts, paris(2026, 12, 25, 3))  # night, Xmas
    assert reasons == [
        Reason(ReasonCode.OPPOSED, Scope.GLOBAL, Kind.OPPOSITION),
        Reason(ReasonCode.OPPOSED, Scope.CAMPAIGN, Kind.REFUSAL),
    ]
    assert decide(CampaignPolicy(), MOBILE, NONE, paris(2026, 12, 25, 3)) == []


def test_every_forbidding_rule_is_named_not_only_the_first() -> None:
    policy = CampaignPolicy(
        legal_basis=LegalBasis.CONSENT,
        calling_hours=CallingHours.FR,
        max_attempts=1,
        sector="renewable_energy",
    )
    at = paris(2026, 3, 8, 12)  # a Sunday
    facts = ViewFacts(opposed=[(Scope.TENANT, Kind.ERASURE)], attempts=[at - timedelta(hours=1)])
    assert codes(decide(policy, MOBILE, facts, at)) == [
        ReasonCode.OPPOSED,
        ReasonCode.SECTOR_BANNED,
        ReasonCode.NO_CONSENT,
        ReasonCode.OUTSIDE_CALLING_HOURS,
        ReasonCode.ATTEMPT_CAP,
    ]
    assert next_allowed_at(policy, MOBILE, facts, at) is None  # no time ends an erasure


def test_a_reason_as_json_keeps_every_key() -> None:
    opposed = Reason(ReasonCode.OPPOSED, Scope.TENANT, Kind.CONSENT_WITHDRAWN)
    assert opposed.as_json() == {
        "code": "opposed",
        "scope": "tenant",
        "kind": "consent_withdrawn",
        "next_allowed_at": None,
        "detail": None,
    }
    (closed,) = hours(MOBILE, paris(2026, 3, 3, 13, 30))
    assert closed.as_json() == {
        "code": "outside_calling_hours",
        "scope": None,
        "kind": None,
        "next_allowed_at": "2026-03-03T13:00:00+00:00",
        "detail": "Tue 13:30 in Europe/Paris",
    }


def test_an_instant_without_a_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(HOURS, MOBILE, NONE, datetime(2026, 3, 3, 11))


# --- sector -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("basis", "sector", "banned"),
    [
        (LegalBasis.CONSENT, "energy_renovation", True),
        (LegalBasis.LEGITIMATE_INTEREST, "home_adaptation", True),
        (LegalBasis.CONTRACT, "energy_renovation", False),
        (LegalBasis.CONTRACT, "renewable_energy", False),
        (LegalBasis.LEGITIMATE_INTEREST, "insurance", False),
        (LegalBasis.LEGITIMATE_INTEREST, None, False),
    ],
)
def test_a_banned_sector_forbids_every_call_except_under_a_contract(
    basis: LegalBasis, sector: str | None, banned: bool
) -> None:
    policy = CampaignPolicy(legal_basis=basis, sector=sector)
    valid = ViewFacts(consents=[consent(Scope.TENANT, 10, paris(2030, 1, 1))])
    reasons = decide(policy, MOBILE, valid, paris(2026, 3, 3, 11))
    assert reasons == ([Reason(ReasonCode.SECTOR_BANNED, detail=sector)] if banned else [])


# --- consent ------------------------------------------------------------------------------

AT = paris(2027, 3, 3, 11)


def consent(scope: Scope, granted_ms: int, expires_at: datetime) -> ConsentFact:
    return ConsentFact(scope, granted_ms, expires_at, f"ev-{granted_ms}", f"proof-{granted_ms}")


def consent_codes(facts: ViewFacts, policy: CampaignPolicy = CONSENT) -> list[ReasonCode]:
    return codes(decide(policy, MOBILE, facts, AT))


def test_a_consent_basis_needs_a_recorded_consent() -> None:
    assert consent_codes(NONE) == [ReasonCode.NO_CONSENT]
    for scope in (Scope.TENANT, Scope.CAMPAIGN):
        assert consent_codes(ViewFacts(consents=[consent(scope, 5, AT + timedelta(1))])) == []
    for basis in (LegalBasis.LEGITIMATE_INTEREST, LegalBasis.CONTRACT):
        assert consent_codes(NONE, CampaignPolicy(legal_basis=basis)) == []


def test_a_consent_expires_at_its_instant() -> None:
    def at_expiry(expires_at: datetime) -> list[ReasonCode]:
        return consent_codes(ViewFacts(consents=[consent(Scope.TENANT, 5, expires_at)]))

    assert at_expiry(AT + timedelta(microseconds=1)) == []
    assert at_expiry(AT) == [ReasonCode.CONSENT_EXPIRED]
    (expired,) = decide(CONSENT, MOBILE, ViewFacts(consents=[consent(Scope.CAMPAIGN, 5, AT)]), AT)
    assert (expired.scope, expired.next_allowed_at) == (Scope.CAMPAIGN, None)
    assert expired.detail == "consent ev-5 expired at 2027-03-03T11:00:00+01:00"
    # one valid consent among expired ones is enough
    facts = ViewFacts(
        consents=[consent(Scope.TENANT, 5, AT), consent(Scope.CAMPAIGN, 6, AT - timedelta(days=1))]
    )
    assert consent_codes(facts) == [ReasonCode.CONSENT_EXPIRED]
    later = consent(Scope.CAMPAIGN, 7, AT + timedelta(days=1))
    assert consent_codes(ViewFacts(consents=[*facts.consents, later])) == []


@pytest.mark.parametrize(
    ("granted", "withdrawn", "callable_"),
    [
        ({Scope.TENANT: 100}, {Scope.TENANT: 200}, False),  # grant, then withdrawal
        ({Scope.TENANT: 300}, {Scope.TENANT: 200}, True),  # withdrawal, then a new grant
        ({Scope.TENANT: 200}, {Scope.TENANT: 200}, False),  # same millisecond: withdrawal
        ({Scope.TENANT: 100}, {Scope.CAMPAIGN: 200}, False),  # ends it for this campaign
        ({Scope.CAMPAIGN: 100}, {Scope.TENANT: 200}, False),
        ({Scope.CAMPAIGN: 100}, {Scope.GLOBAL: 200}, False),
        ({Scope.TENANT: 100}, {Scope.GLOBAL: 200}, False),
        ({Scope.CAMPAIGN: 300}, {Scope.GLOBAL: 200, Scope.TENANT: 250}, True),
        ({Scope.CAMPAIGN: 300}, {Scope.GLOBAL: 200, Scope.CAMPAIGN: 301}, False),
        ({Scope.TENANT: 100, Scope.CAMPAIGN: 300}, {Scope.TENANT: 200}, True),
    ],
)
def test_the_log_orders_grants_and_withdrawals(
    granted: dict[Scope, int], withdrawn: dict[Scope, int], callable_: bool
) -> None:
    consents = [consent(scope, ms, AT + timedelta(days=30)) for scope, ms in granted.items()]
    facts = ViewFacts(consents=consents, withdrawn_ms=withdrawn)
    assert consent_codes(facts) == ([] if callable_ else [ReasonCode.CONSENT_WITHDRAWN])


def test_a_withdrawal_is_named_before_an_expiry_and_a_grant_never_ends_an_opposition() -> None:
    facts = ViewFacts(
        consents=[consent(Scope.TENANT, 100, AT + timedelta(1)), consent(Scope.TENANT, 300, AT)],
        withdrawn_ms={Scope.GLOBAL: 150, Scope.TENANT: 200},
    )
    (withdrawn,) = decide(CONSENT, MOBILE, facts, AT)
    assert (withdrawn.code, withdrawn.scope) == (ReasonCode.CONSENT_WITHDRAWN, Scope.TENANT)
    granted_after = ViewFacts(
        opposed=[(Scope.TENANT, Kind.CONSENT_WITHDRAWN)],
        consents=[consent(Scope.TENANT, 900, AT + timedelta(1))],
        withdrawn_ms={Scope.TENANT: 200},
    )
    assert consent_codes(granted_after) == [ReasonCode.OPPOSED]


# --- calling hours ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "allowed"),
    [
        (paris(2026, 3, 3, 9, 59, 59), False),
        (paris(2026, 3, 3, 10, 0), True),
        (paris(2026, 3, 3, 12, 59, 59), True),
        (paris(2026, 3, 3, 13, 0), False),
        (paris(2026, 3, 3, 13, 30), False),
        (paris(2026, 3, 3, 13, 59, 59), False),
        (paris(2026, 3, 3, 14, 0), True),
        (paris(2026, 3, 3, 19, 59, 59), True),
        (paris(2026, 3, 3, 20, 0), False),
        (paris(2026, 3, 7, 11, 0), False),  # a Saturday
        (paris(2026, 3, 8, 11, 0), False),  # a Sunday
    ],
)
def test_the_calling_hours_edges(at: datetime, allowed: bool) -> None:
    assert codes(hours(MOBILE, at)) == ([] if allowed else [ReasonCode.OUTSIDE_CALLING_HOURS])
    assert hours(MOBILE, at.astimezone(UTC)) == hours(MOBILE, at)  # the same instant


@pytest.mark.parametrize(
    ("at", "opens"),
    [
        (paris(2026, 3, 3, 13, 30), paris(2026, 3, 3, 14)),
        (paris(2026, 3, 3, 13, 0), paris(2026, 3, 3, 14)),
        (paris(2026, 3, 3, 7, 15), paris(2026, 3, 3, 10)),
        (paris(2026, 3, 3, 20, 0), paris(2026, 3, 4, 10)),
        (paris(2026, 3, 6, 20, 0), paris(2026, 3, 9, 10)),  # Friday evening: Monday
        (paris(2026, 3, 8, 11, 0), paris(2026, 3, 9, 10)),  # Sunday
    ],
)
def test_outside_the_hours_says_when_they_open(at: datetime, opens: datetime) -> None:
    (closed,) = hours(MOBILE, at)
    assert closed.next_allowed_at == opens and closed.next_allowed_at.tzinfo is UTC


def test_25_december_is_a_public_holiday_even_at_a_calling_hour() -> None:
    (holiday,) = hours(MOBILE, paris(2026, 12, 25, 11))
    assert holiday.code is ReasonCode.PUBLIC_HOLIDAY
    assert holiday.detail == "Christmas Day, 2026-12-25 in Europe/Paris"
    # 26 December is a holiday in Alsace-Moselle, and no +33 number says it is not there
    assert holiday.next_allowed_at == paris(2026, 12, 28, 10)
    # a holiday on a Saturday is named as the holiday
    assert codes(hours(MOBILE, paris(2027, 12, 25, 11))) == [ReasonCode.PUBLIC_HOLIDAY]


@pytest.mark.parametrize(
    ("day", "holiday_for", "working_for"),
    [
        # Alsace-Moselle: Good Friday and 26 December, for every metropolitan number
        ((2026, 4, 3), [MOBILE, STRASBOURG], [REUNION, MARTINIQUE, GUYANE, MAYOTTE]),
        ((2025, 12, 26), [MOBILE, STRASBOURG, WASHINGTON], [REUNION, GUYANE]),
        # the overseas departments' abolition days, only where the number is
        ((2026, 4, 27), [MAYOTTE, REUNION_MOBILE], [REUNION, MOBILE, GUADELOUPE]),
        ((2026, 5, 22), [MARTINIQUE], [GUADELOUPE, MOBILE, REUNION, GUYANE]),
        ((2026, 5, 27), [GUADELOUPE, ANTILLES_MOBILE], [MARTINIQUE, MOBILE, GUYANE]),
        ((2026, 6, 10), [GUYANE], [GUADELOUPE, MARTINIQUE, MOBILE, REUNION]),
        ((2027, 12, 20), [REUNION, REUNION_MOBILE], [MAYOTTE, MOBILE, GUADELOUPE]),
        # national holidays everywhere
        ((2026, 7, 14), NUMBERS, []),
        ((2026, 5, 14), NUMBERS, []),  # Ascension
    ],
)
def test_regional_holidays_follow_the_numbers_region(
    day: tuple[int, int, int], holiday_for: list[str], working_for: list[str]
) -> None:
    for e164 in holiday_for + working_for:
        zone = number_calendar(e164).zones[0]
        noon = datetime(*day, 11, 0, tzinfo=zone)  # a calling hour in the number's zone
        expected = [ReasonCode.PUBLIC_HOLIDAY] if e164 in holiday_for else []
        assert codes(hours(e164, noon)) == expected, e164


def test_a_reunion_number_at_1030_in_paris_depends_on_the_season() -> None:
    # Réunion keeps UTC+4: 10:30 in Paris is 13:30 there in winter (the lunch break) ...
    (winter,) = hours(REUNION, paris(2026, 3, 3, 10, 30))
    assert winter.code is ReasonCode.OUTSIDE_CALLING_HOURS
    assert winter.detail == "Tue 13:30 in Indian/Reunion"
    assert winter.next_allowed_at == paris(2026, 3, 3, 11)  # 14:00 in Réunion
    # ... and 12:30 there in summer, inside the morning window.
    assert hours(REUNION, paris(2026, 7, 7, 10, 30)) == []
    assert hours(MOBILE, paris(2026, 3, 3, 10, 30)) == []


def test_a_number_in_several_zones_is_called_only_when_all_are_open() -> None:
    # +262 692: Mayotte (UTC+3) or Réunion (UTC+4). 10:30 Paris in winter is 12:30 in
    # Mayotte (open) and 13:30 in Réunion (closed); 11:00 Paris is 13:00 in Mayotte.
    assert [z.key for z in number_calendar(REUNION_MOBILE).zones] == [
        "Indian/Mayotte",
        "Indian/Reunion",
    ]
    (closed,) = hours(REUNION_MOBILE, paris(2026, 3, 3, 10, 30))
    assert closed.next_allowed_at == paris(2026, 3, 3, 12)  # 14:00 Mayotte, 15:00 Réunion
    assert hours(REUNION_MOBILE, paris(2026, 3, 3, 12)) == []
    # Paris and Nouméa are ten hours apart in winter, nine in summer: their windows meet
    # only once Paris has changed to summer time (10:00 Paris, 19:00 Nouméa)
    far = _shared(("Europe/Paris", "Pacific/Noumea"), METROPOLITAN)
    meet = hours_reason(far, paris(2026, 3, 3, 11))
    assert meet is not None and meet.next_allowed_at == paris(2026, 3, 30, 10)
    # windows that never meet (Paris and Honolulu): no time helps
    apart = _shared(("Europe/Paris", "Pacific/Honolulu"), METROPOLITAN)
    never = hours_reason(apart, paris(2026, 3, 3, 11))
    assert never is not None and never.next_allowed_at is None


def test_a_number_of_no_known_zone_is_refused_and_no_time_helps() -> None:
    for unknown in ("+999123456789", "not a number"):
        assert not number_calendar(unknown).zones
        (closed,) = hours(unknown, paris(2026, 3, 3, 11))
        assert closed.code is ReasonCode.OUTSIDE_CALLING_HOURS
        assert (closed.next_allowed_at, closed.detail) == (
            None,
            "no known time zone for this number",
        )
        assert next_allowed_at(HOURS, unknown, NONE, paris(2026, 3, 3, 11)) is None
    assert not _shared(("Europe/Paris", "Mars/Olympus_Mons"), METROPOLITAN).zones


# --- daylight saving time -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("utc", "allowed"),
    [
        # Monday after the spring change (Paris UTC+2 since Sunday 29 March 2026)
        (datetime(2026, 3, 30, 7, 59, tzinfo=UTC), False),  # 09:59 Paris
        (datetime(2026, 3, 30, 8, 0, tzinfo=UTC), True),  # 10:00 Paris
        (datetime(2026, 3, 30, 17, 59, tzinfo=UTC), True),  # 19:59 Paris
        (datetime(2026, 3, 30, 18, 0, tzinfo=UTC), False),  # 20:00 Paris
        # Friday before it, UTC+1
        (datetime(2026, 3, 27, 8, 59, tzinfo=UTC), False),  # 09:59 Paris
        (datetime(2026, 3, 27, 18, 59, tzinfo=UTC), True),  # 19:59 Paris
        # Monday after the autumn change (UTC+1 since Sunday 25 October 2026)
        (datetime(2026, 10, 26, 8, 59, tzinfo=UTC), False),
        (datetime(2026, 10, 26, 9, 0, tzinfo=UTC), True),
        (datetime(2026, 10, 26, 12, 0, tzinfo=UTC), False),  # 13:00 Paris
        (datetime(2026, 10, 26, 18, 59, tzinfo=UTC), True),
        (datetime(2026, 10, 26, 19, 0, tzinfo=UTC), False),
        # the change instants themselves fall on Sundays
        (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), False),
        (datetime(2026, 10, 25, 1, 0, tzinfo=UTC), False),
    ],
)
def test_the_hours_follow_the_clock_across_a_daylight_saving_change(
    utc: datetime, allowed: bool
) -> None:
    assert (hours(MOBILE, utc) == []) is allowed


@pytest.mark.parametrize(
    ("at", "opens_utc"),
    [
        # Friday evening before the spring change: Monday 10:00 Paris is 08:00 UTC
        (paris(2026, 3, 27, 20, 0), datetime(2026, 3, 30, 8, 0, tzinfo=UTC)),
        # Saturday night during the change: the same
        (datetime(2026, 3, 29, 0, 30, tzinfo=UTC), datetime(2026, 3, 30, 8, 0, tzinfo=UTC)),
        # Friday evening before the autumn change: Monday 10:00 Paris is 09:00 UTC
        (paris(2026, 10, 23, 20, 0), datetime(2026, 10, 26, 9, 0, tzinfo=UTC)),
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 9, 0, tzinfo=UTC)),
    ],
)
def test_an_opening_computed_across_a_daylight_saving_change_is_right(
    at: datetime, opens_utc: datetime
) -> None:
    (closed,) = hours(MOBILE, at)
    assert closed.next_allowed_at == opens_utc
    assert closed.next_allowed_at.astimezone(PARIS).hour == 10


def test_reunion_without_daylight_saving_against_paris_with_it() -> None:
    # Monday 30 March 2026, 08:30 UTC: 10:30 Paris (summer) is 12:30 in Réunion, open;
    # the Friday before, 09:30 UTC is 10:30 Paris (winter) and 13:30 in Réunion, closed.
    assert hours(REUNION, datetime(2026, 3, 30, 8, 30, tzinfo=UTC)) == []
    (closed,) = hours(REUNION, datetime(2026, 3, 27, 9, 30, tzinfo=UTC))
    assert closed.next_allowed_at == datetime(2026, 3, 27, 10, 0, tzinfo=UTC)


def test_the_attempt_window_is_exact_days_across_a_daylight_saving_change() -> None:
    # 30 days of 24 hours: an attempt at 09:00 Paris on 1 October (UTC+2) leaves the
    # window at 08:00 Paris on 31 October (UTC+1), not at 09:00.
    one = CampaignPolicy(max_attempts=1, attempt_period=timedelta(days=30))
    (cap,) = decide(one, MOBILE, ViewFacts(attempts=[paris(2026, 10, 1, 9)]), paris(2026, 10, 30))
    assert cap.next_allowed_at == datetime(2026, 10, 31, 7, tzinfo=UTC)
    assert cap.next_allowed_at.astimezone(PARIS).hour == 8
    # 02:30 Paris happens twice on 25 October 2026: the cap lifts at the second one
    attempts = [datetime(2026, 9, 25, 0, 30, tzinfo=UTC), datetime(2026, 9, 25, 1, 30, tzinfo=UTC)]
    at = paris(2026, 10, 24, 12)
    (cap,) = decide(one, MOBILE, ViewFacts(attempts=attempts), at)
    assert cap.next_allowed_at == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert next_allowed_at(one, MOBILE, ViewFacts(attempts=attempts), at) == cap.next_allowed_at


# --- attempts -----------------------------------------------------------------------------

CAP = CampaignPolicy(max_attempts=4, attempt_period=timedelta(days=30))


def capped(attempts: list[datetime], at: datetime) -> list[Reason]:
    return decide(CAP, MOBILE, ViewFacts(attempts=attempts), at)


def test_the_attempt_window_is_open_at_its_start_and_closed_at_its_end() -> None:
    at = paris(2026, 3, 3, 11)
    three = [at - timedelta(days=d) for d in (1, 2, 3)]
    assert capped(three, at) == []
    assert codes(capped([*three, at], at)) == [ReasonCode.ATTEMPT_CAP]  # at itself counts
    edge = at - timedelta(days=30)
    assert capped([*three, edge], at) == []  # exactly one period ago: out
    inside = edge + timedelta(microseconds=1)
    (cap,) = capped([*three, inside], at)
    assert cap.next_allowed_at == inside + timedelta(days=30)
    assert cap.detail == "4 attempts in the last 30 days (at most 4)"
    assert capped([*three, at + timedelta(seconds=1)], at) == []  # not yet made


def test_the_cap_lifts_when_enough_attempts_leave_the_window() -> None:
    at = paris(2026, 3, 3, 11)
    days = (29, 28, 20, 10, 1)  # five attempts, the cap is four: two must leave
    (cap,) = capped([at - timedelta(days=d) for d in days], at)
    assert cap.next_allowed_at == at - timedelta(days=28) + timedelta(days=30)
    # an attempt reserved after the instant asked keeps the count up once it is reached
    four = [at - timedelta(days=d) for d in (29, 28, 20, 10)]
    (cap,) = capped(four, at)
    assert cap.next_allowed_at == at + timedelta(days=1)  # 29 days ago leaves
    (cap,) = capped([*four, at + timedelta(hours=12)], at)
    assert cap.next_allowed_at == at + timedelta(days=2)  # then still four: 28 must leave
    assert capped([*four, at + timedelta(hours=12)], at + timedelta(days=2)) == []


# --- next_allowed_at ----------------------------------------------------------------------

FULL = CampaignPolicy(calling_hours=CallingHours.FR, max_attempts=4)


def test_friday_1959_with_the_cap_reached_waits_for_monday() -> None:
    at = paris(2026, 3, 6, 19, 59)  # a Friday, inside the hours
    lifts = paris(2026, 3, 6, 20, 30)  # the oldest attempt leaves the window then
    attempts = [lifts - timedelta(days=30)] + [at - timedelta(days=d) for d in (1, 2, 3)]
    facts = ViewFacts(attempts=attempts)
    (cap,) = decide(FULL, MOBILE, facts, at)
    assert (cap.code, cap.next_allowed_at) == (ReasonCode.ATTEMPT_CAP, lifts)
    assert codes(decide(FULL, MOBILE, facts, lifts)) == [ReasonCode.OUTSIDE_CALLING_HOURS]
    assert next_allowed_at(FULL, MOBILE, facts, at) == paris(2026, 3, 9, 10)


def test_christmas_week_waits_past_every_holiday_of_the_number() -> None:
    at = paris(2025, 12, 24, 19, 59)  # Wednesday; Thursday 25 and Friday 26 December
    attempts = [paris(2025, 11, 24, 20, 30)] + [at - timedelta(days=d) for d in (1, 2, 3)]
    facts = ViewFacts(attempts=attempts)
    assert next_allowed_at(FULL, STRASBOURG, facts, at) == paris(2025, 12, 29, 10)
    assert next_allowed_at(FULL, REUNION, facts, at) == datetime(
        2025, 12, 26, 10, tzinfo=REUNION_TZ
    )


def test_next_allowed_at_is_now_when_callable_and_none_when_time_cannot_help() -> None:
    at = paris(2026, 3, 3, 11)
    assert next_allowed_at(FULL, MOBILE, NONE, at) == at
    assert (
        next_allowed_at(FULL, MOBILE, ViewFacts(opposed=[(Scope.GLOBAL, Kind.REFUSAL)]), at) is None
    )
    # the hours open Monday but the consent ends on Saturday: waiting does not help
    policy = CampaignPolicy(legal_basis=LegalBasis.CONSENT, calling_hours=CallingHours.FR)
    friday = paris(2026, 3, 6, 20, 30)
    facts = ViewFacts(consents=[consent(Scope.TENANT, 5, paris(2026, 3, 7, 12))])
    assert codes(decide(policy, MOBILE, facts, friday)) == [ReasonCode.OUTSIDE_CALLING_HOURS]
    assert next_allowed_at(policy, MOBILE, facts, friday) is None


# --- properties ---------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2031, 12, 31), timezones=st.just(UTC)
)
scopes = st.sampled_from(list(Scope))
kinds = st.sampled_from([k for k in Kind if k is not Kind.LIFT])


@st.composite
def view_facts(draw: st.DrawFn, at: datetime) -> ViewFacts:
    consents = draw(
        st.lists(
            st.builds(
                consent,
                st.sampled_from([Scope.TENANT, Scope.CAMPAIGN]),
                st.integers(0, 1000),
                st.builds(lambda d: at + timedelta(days=d), st.integers(-400, 400)),
            ),
            max_size=3,
        )
    )
    offsets = st.integers(-40 * 24, 5 * 24).map(lambda h: at + timedelta(hours=h))
    return ViewFacts(
        opposed=draw(st.lists(st.tuples(scopes, kinds), max_size=3)),
        consents=consents,
        withdrawn_ms=draw(st.dictionaries(scopes, st.integers(0, 1000), max_size=3)),
        attempts=draw(st.lists(offsets, max_size=8)),
    )


@given(
    instants.flatmap(lambda at: st.tuples(st.just(at), view_facts(at))), st.sampled_from(NUMBERS)
)
def test_with_no_rule_configured_decide_returns_exactly_the_oppositions(
    case: tuple[datetime, ViewFacts], e164: str
) -> None:
    at, facts = case
    reasons = decide(CampaignPolicy(), e164, facts, at)
    assert reasons == [Reason(ReasonCode.OPPOSED, s, k) for s, k in facts.opposed]


@given(
    instants.flatmap(lambda at: st.tuples(st.just(at), view_facts(at))),
    st.sampled_from(NUMBERS),
    st.integers(1, 5),
    st.sampled_from([timedelta(days=1), timedelta(days=7), timedelta(days=30)]),
    st.sampled_from(list(LegalBasis)),
)
def test_next_allowed_at_is_an_instant_at_which_no_time_based_reason_remains(
    case: tuple[datetime, ViewFacts], e164: str, cap: int, period: timedelta, basis: LegalBasis
) -> None:
    at, facts = case
    facts = replace(facts, opposed=())  # no time ends an opposition: see the property above
    policy = CampaignPolicy(
        legal_basis=basis,
        calling_hours=CallingHours.FR,
        max_attempts=cap,
        attempt_period=period,
    )
    reasons = decide(policy, e164, facts, at)
    found = next_allowed_at(policy, e164, facts, at, reasons)
    for reason in reasons:
        if reason.code not in TIME_BASED:
            assert reason.next_allowed_at is None
        elif reason.next_allowed_at is not None:
            assert reason.next_allowed_at >= at and reason.next_allowed_at.tzinfo is UTC
    if found is None:
        return
    assert found.tzinfo is UTC
    assert all(r.next_allowed_at is not None and r.next_allowed_at <= found for r in reasons)
    assert decide(policy, e164, facts, found) == []  # so no time-based reason remains


@given(instants, st.sampled_from(NUMBERS), st.floats(0, 1))
def test_the_calling_hours_open_no_sooner_than_said(at: datetime, e164: str, share: float) -> None:
    reasons = hours(e164, at)
    opening = next_allowed_at(HOURS, e164, NONE, at, reasons)
    if not reasons:
        assert opening == at
        return
    if opening is None:  # zones whose windows never meet
        assert len(number_calendar(e164).zones) > 1 or not number_calendar(e164).zones
        return
    assert hours(e164, opening) == []
    before = at + (opening - at) * share
    if before < opening:
        assert hours(e164, before) != []  # nothing sooner is open
    local = [opening.astimezone(zone) for zone in number_calendar(e164).zones]
    assert all(t.weekday() < 5 and (10 <= t.hour < 13 or 14 <= t.hour < 20) for t in local)


@given(instants, st.lists(st.integers(-60 * 24, 24), max_size=10), st.integers(1, 5))
def test_the_cap_lifts_no_sooner_and_no_later_than_said(
    at: datetime, hours_ago: list[int], cap: int
) -> None:
    policy = CampaignPolicy(max_attempts=cap, attempt_period=timedelta(days=30))
    facts = ViewFacts(attempts=[at + timedelta(hours=h) for h in hours_ago])
    reasons = decide(policy, MOBILE, facts, at)
    if not reasons:
        assert sum(1 for h in hours_ago if -30 * 24 < h <= 0) < cap
        return
    (reason,) = reasons
    lifts = reason.next_allowed_at
    assert lifts is not None and lifts > at
    assert decide(policy, MOBILE, facts, lifts) == [] or any(h > 0 for h in hours_ago)
    assert decide(policy, MOBILE, facts, lifts - timedelta(microseconds=1)) != []


POLICIES = st.builds(
    CampaignPolicy,
    legal_basis=st.sampled_from(list(LegalBasis)),
    calling_hours=st.sampled_from(list(CallingHours)),
    max_attempts=st.sampled_from([None, 1, 4]),
    sector=st.sampled_from([None, "telecom", "energy_renovation"]),
)
OPPOSED = st.lists(st.tuples(st.sampled_from(list(Scope)), st.sampled_from(list(Kind))), max_size=4)


@given(
    policy=POLICIES,
    opposed=OPPOSED,
    phone=st.sampled_from([MOBILE, REUNION, REUNION_MOBILE]),  # 25 December: a holiday there
    hour=st.integers(0, 23),
)
def test_a_policy_of_oppositions_alone_decides_by_the_oppositions_alone(
    policy: CampaignPolicy, opposed: list[tuple[Scope, Kind]], phone: str, hour: int
) -> None:
    """What lets a bulk check decide once for every number opposed alike: under such a policy
    the verdict does not depend on the number, the instant or anything but its oppositions."""
    at = paris(2026, 12, 25, hour)  # a holiday: the hours rule would speak if it applied
    facts = ViewFacts(opposed, attempts=[at] * 5)  # a cap would be reached
    reasons = decide(policy, phone, facts, at)
    alone = [Reason(ReasonCode.OPPOSED, scope, kind) for scope, kind in opposed]
    if only_oppositions(policy):
        assert reasons == alone
        assert next_allowed_at(policy, phone, facts, at, reasons) == (None if alone else at)
    else:
        assert reasons != alone


@given(second=st.integers(1_767_225_600, 1_830_297_600), micros=st.integers(0, 999_999))
def test_the_hours_verdict_is_that_of_its_whole_second(second: int, micros: int) -> None:
    """hours_reason is cached per whole second: any instant of the second gets the verdict
    computed afresh for that instant."""
    at = datetime.fromtimestamp(second, UTC) + timedelta(microseconds=micros)
    for phone in (MOBILE, REUNION_MOBILE, ANTILLES_MOBILE, WASHINGTON):
        calendar = number_calendar(phone)
        assert hours_reason(calendar, at) == hours_verdict(calendar, at)
