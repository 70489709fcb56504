"""What `dnc check` does and prints, without the CLI framework: both of its entry points
(the lean one of :mod:`dnc.entry` and the Typer command of :mod:`dnc.dial_cli`) call these,
so they give the same answers, lines and exit codes.

Nothing here imports Typer or rich: a `dnc check` from a shell pays for the answer alone. One
number on one plain Redis server is asked without redis-py (:mod:`consumers.one_shot`);
several, or any other view, or any trouble on the way, through the library's checker.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime

from consumers.one_shot import OneShotCheck
from consumers.verdicts import Answer, CheckResult
from dnc.exits import EXIT_NOT_CALLABLE, EXIT_OK, EXIT_UNAVAILABLE
from schemas.settings import Settings
from schemas.tenants import TenantDirectory


class BadInstant(ValueError):
    """An ``--at`` that is not an instant: its message says what to type instead."""


def parse_instant(at: str | None) -> datetime | None:
    """``at`` as an aware datetime (None for None); raises :class:`BadInstant`."""
    if at is None:
        return None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise BadInstant(f"--at {at!r} is not an ISO 8601 date and time") from None
    if moment.tzinfo is None:
        raise BadInstant(f"--at {at!r} has no time zone: add one (e.g. +01:00 or Z)")
    return moment


def check_numbers(
    phones: Sequence[str], tenant: str, campaign: str | None, at: str | None
) -> list[CheckResult]:
    """The answers for ``phones`` under ``tenant``'s ``campaign``, with the settings of the
    environment: invalid configuration, an unknown tenant, a bad instant or (for a single
    number) an invalid number raise; an unreachable or untrusted view answers unavailable."""
    settings = Settings()
    tenants = TenantDirectory.load(settings.tenants_file)
    instant = parse_instant(at)
    if len(phones) == 1:
        quick = OneShotCheck.from_settings(settings, tenants)
        answer = None if quick is None else quick.check(phones[0], tenant, campaign, instant)
        if answer is not None:
            return [answer]
    from consumers.checker import SuppressionChecker  # (redis-py: only when needed)

    checker = SuppressionChecker.from_settings(settings, tenants)
    if len(phones) == 1:
        return [checker.check(phones[0], tenant, campaign, instant)]
    return checker.check_many(phones, tenant, campaign, instant)


def write_answers(phones: Sequence[str], results: Sequence[CheckResult], as_json: bool) -> int:
    """Print one line per number (JSON with ``as_json``); return the exit code: the worst
    answer's."""
    for given, result in zip(phones, results, strict=True):
        if as_json:
            sys.stdout.write(json.dumps({"phone": given, **result.as_json()}) + "\n")
        else:
            prefix = f"{given}\t" if len(phones) > 1 else ""
            sys.stdout.write(prefix + describe(result) + "\n")
    return exit_code(results)


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 callable, 1 do not call, 2 unavailable: the worst of ``results``."""
    answers = {r.answer for r in results}
    if Answer.UNAVAILABLE in answers:
        return EXIT_UNAVAILABLE
    if Answer.SUPPRESSED in answers:
        return EXIT_NOT_CALLABLE
    return EXIT_OK


def describe(result: CheckResult) -> str:
    """One line a person reads: the answer, then every reason, and when it may change."""
    if result.answer is Answer.UNAVAILABLE:
        return f"unavailable: {result.why} (do NOT call)"
    if result.answer is Answer.CALLABLE:
        consent = result.consent
        return "callable" + (f" (consent {consent.proof_ref})" if consent else "")
    parts = []
    for reason in result.reasons:
        text = reason.code.value
        details = [x for x in (reason.scope and reason.scope.value,
                               reason.kind and reason.kind.value) if x]  # fmt: skip
        if details:
            text += f" ({', '.join(details)})"
        parts.append(text)
    line = "suppressed: " + "; ".join(parts)  # (the answer first: exit 1, do not call)
    if result.next_allowed_at is not None:
        line += f"; next allowed at {result.next_allowed_at.isoformat()}"
    return line
