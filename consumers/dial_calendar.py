"""Where a number's consumer lives, as far as the calling hours care: time zones and holidays.

Time zones come from libphonenumber's data (``phonenumbers.timezone``), read with
``zoneinfo``; public holidays from the maintained ``holidays`` package (France and its
subdivisions). Both are looked up once per number and once per calendar year, then cached,
so the dial decision stays a few microseconds.

The safe side, whenever the number does not say exactly where its consumer is:

* **Time zones.** Every zone libphonenumber gives the number must be inside the calling
  hours (a Réunion mobile, +262 692, is also listed in Mayotte's zone, one hour behind).
  A number libphonenumber places in no zone gets every zone of its country calling code;
  a number with no zone at all (not even its calling code's), or with a zone the time
  zone data lacks, gets none, and the hours rule then refuses it: no time can be shown
  to be inside the hours.
* **Holidays.** A day is a holiday when it is one in any region the number may belong
  to. A geographic number belongs to the regions libphonenumber finds it valid for
  (+262 262 Réunion, +262 269 Mayotte; +590 590 27 Saint-Barthélemy or Saint-Martin); a
  mobile or any other non-geographic number, to every region of its calling code
  (+590 690: Guadeloupe, Saint-Barthélemy and Saint-Martin). A metropolitan number
  (+33) may be in Alsace-Moselle, whose prefix does not single it out: Good Friday and
  26 December count for every +33 number. The overseas departments' abolition days
  (Mayotte 27 April, Martinique 22 May, Guadeloupe 27 May, Guyane 10 June, Réunion
  20 December) and the other overseas holidays the ``holidays`` package knows count
  only for the numbers of those regions. A number outside the French numbering plans
  is held to the metropolitan calendar (the decree's holidays are French ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    import phonenumbers

# phonenumbers' time zone data and the holidays package are imported when a calendar is
# first needed: a check under a campaign without calling hours (`dnc check` most often)
# never pays for them.

# Subdivisions of ``holidays.France`` (None: the national calendar). "57" is Moselle and
# "6AE" Alsace (Bas-Rhin and Haut-Rhin): Good Friday and 26 December.
METROPOLITAN = (None, "57", "6AE")
REGION_CALENDARS: dict[str, tuple[str | None, ...]] = {
    "FR": METROPOLITAN,
    "GP": ("971",),  # Guadeloupe
    "MQ": ("972",),  # Martinique
    "GF": ("973",),  # Guyane
    "RE": ("974",),  # La Réunion
    "YT": ("976",),  # Mayotte
    "BL": ("BL",),  # Saint-Barthélemy
    "MF": ("MF",),  # Saint-Martin
    "PM": ("PM",),  # Saint-Pierre-et-Miquelon
    "NC": ("NC",),  # Nouvelle-Calédonie
    "PF": ("PF",),  # Polynésie française
    "WF": ("WF",),  # Wallis-et-Futuna
}
_NUMBERS_CACHED = 1 << 16


@dataclass(frozen=True, slots=True)
class NumberCalendar:
    """The zones a number's consumer may be in and the holiday calendars that apply."""

    zones: tuple[ZoneInfo, ...]
    subdivisions: tuple[str | None, ...]

    def holiday(self, day: date) -> str | None:
        """The name of the holiday on ``day`` (a local date) in any calendar, or None."""
        return holidays_of(self.subdivisions, day.year).get(day.toordinal())


@lru_cache(maxsize=4096)
def holidays_of(subdivisions: tuple[str | None, ...], year: int) -> Mapping[int, str]:
    """Holidays of ``year`` in any of the French calendars named: date ordinal -> name."""
    from holidays import country_holidays

    found: dict[int, str] = {}
    for subdivision in subdivisions:
        for day, name in country_holidays("FR", subdiv=subdivision, years=year).items():
            found.setdefault(day.toordinal(), name)
    return found


@lru_cache(maxsize=_NUMBERS_CACHED)
def number_calendar(e164: str) -> NumberCalendar:
    """The calendar of an E.164 number (see the module's docstring for the safe sides)."""
    import phonenumbers

    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return _shared(zone_names=(), subdivisions=METROPOLITAN)
    return _shared(zone_names=_zone_names(number), subdivisions=_subdivisions(number))


def _zone_names(number: phonenumbers.PhoneNumber) -> tuple[str, ...]:
    from phonenumbers import timezone as phone_zones
    from phonenumbers.tzdata import TIMEZONE_DATA

    names = tuple(phone_zones.time_zones_for_number(number))
    if not names or phone_zones.UNKNOWN_TIMEZONE in names:
        names = TIMEZONE_DATA.get(str(number.country_code), ())  # the calling code's zones
    return tuple(name for name in names if name != phone_zones.UNKNOWN_TIMEZONE)


def _subdivisions(number: phonenumbers.PhoneNumber) -> tuple[str | None, ...]:
    import phonenumbers

    regions = phonenumbers.region_codes_for_country_code(number.country_code or 0)
    if phonenumbers.is_number_geographical(number):
        valid = [r for r in regions if phonenumbers.is_valid_number_for_region(number, r)]
        regions = tuple(valid) or regions
    calendars: set[str | None] = set()
    for region in regions:
        calendars.update(REGION_CALENDARS.get(region, METROPOLITAN))
    return tuple(sorted(calendars, key=lambda s: "" if s is None else s))


@lru_cache(maxsize=1024)
def _shared(zone_names: tuple[str, ...], subdivisions: tuple[str | None, ...]) -> NumberCalendar:
    # Numbers share a handful of calendars: one object each, whatever the count of numbers.
    try:
        zones = tuple(ZoneInfo(name) for name in zone_names)
    except (ZoneInfoNotFoundError, ValueError):
        zones = ()  # a zone the time zone data lacks cannot be checked: no zone is known
    return NumberCalendar(zones=zones, subdivisions=subdivisions)
