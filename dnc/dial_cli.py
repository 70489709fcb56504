"""`dnc check`, `dnc attempt`, `dnc scrub` and `dnc consent`: "may I call this number now?".

Exit codes, the same for every command that answers: 0 callable (go), 1 do not call (the
reasons say why), 2 unavailable (do NOT call: the answer is not known), 3 bad input.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from dnc.check_answers import (
    BadInstant,
    check_numbers,
    describe,
    exit_code,
    parse_instant,
    write_answers,
)
from dnc.exits import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE
from schemas.events import ConsentSource, Kind, Scope, Source
from schemas.settings import Settings
from schemas.tenants import TenantDirectory

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
EXIT_CALLABLE = EXIT_OK
SCRUB_CHUNK = 10_000  # numbers per bulk check of a scrub

TenantOpt = Annotated[
    str, typer.Option("--tenant", "-t", help="tenant (client) as in the tenants file")
]
CampaignOpt = Annotated[
    str | None,
    typer.Option("--campaign", "-c", help="campaign id: its rules (tenants file) apply"),
]
AtOpt = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="judge hours, holidays, expiries and the attempts window at this instant "
        "(ISO 8601 with a time zone, e.g. 2027-03-15T10:30:00+01:00) against the view as it "
        "is now: campaign planning",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object per number")]


def _settings() -> tuple[Settings, TenantDirectory]:
    settings = Settings()
    return settings, TenantDirectory.load(settings.tenants_file)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(EXIT_ERROR)


def _instant(at: str | None) -> datetime | None:
    try:
        return parse_instant(at)
    except BadInstant as exc:
        raise _fail(str(exc)) from None


def check(
    phones: Annotated[list[str], typer.Argument(help="one or more numbers")],
    tenant: TenantOpt,
    campaign: CampaignOpt = None,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """May I call now? Every rule of the campaign (oppositions, consent, hours, holidays,
    attempts, sector): exits 0 callable, 1 do not call (with every reason), 2 unavailable
    (do NOT call), 3 bad input. With several numbers the exit code is the worst answer."""
    try:
        results = check_numbers(phones, tenant, campaign, at)
    except BadInstant as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(write_answers(phones, results, as_json))


def attempt(
    phone: Annotated[str, typer.Argument(help="the number the dialer is about to call")],
    tenant: TenantOpt,
    campaign: Annotated[str, typer.Option("--campaign", "-c", help="campaign id")],
    as_json: JsonOpt = False,
) -> None:
    """May I call now, and if so reserve one attempt: "go" (exit 0) only once the attempt
    is recorded in the log (Kafka acknowledged it); 1 do not call, with the reasons (the
    campaign's cap reached among them); 2 unavailable; 3 bad input."""
    from consumers.attempts import AttemptDesk
    from consumers.checker import SuppressionChecker
    from producers.publisher import OppositionPublisher

    settings, tenants = _settings()
    publisher = OppositionPublisher.from_settings(settings, tenants)
    try:
        desk = AttemptDesk(SuppressionChecker.from_settings(settings, tenants), publisher)
        outcome = desk.attempt(phone, tenant, campaign)
    finally:
        publisher.close()
    result = outcome.result
    if as_json:
        sys.stdout.write(json.dumps({"phone": phone, "go": outcome.go,
                                     "attempt_id": outcome.attempt_id,
                                     **result.as_json()}) + "\n")  # fmt: skip
    elif outcome.go:
        sys.stdout.write(f"go: attempt {outcome.attempt_id} recorded\n")
    else:
        sys.stdout.write(describe(result) + "\n")
    raise typer.Exit(EXIT_CALLABLE if outcome.go else exit_code([result]) or EXIT_UNAVAILABLE)


def scrub(
    file: Annotated[Path, typer.Argument(help="CSV: one number per line, or a 'phone' header")],
    tenant: TenantOpt,
    campaign: Annotated[str, typer.Option("--campaign", "-c", help="campaign id")],
    output: Annotated[Path, typer.Option("--out", "-o", help="the CSV to write")],
    at: AtOpt = None,
) -> None:
    """Check a whole list before loading it in a dialer: every row with its answer, reasons
    and next allowed time, a progress bar and a summary by reason. Exits 0 when every number
    got an answer (callable or not), 2 if some are unavailable (do not call them), 3 bad
    input."""
    from consumers.checker import SuppressionChecker
    from producers.importer import ImportFileError, count_rows, read_rows

    if not file.is_file():
        raise _fail(f"cannot scrub {file}: the file does not exist (or is not a file)")
    settings, tenants = _settings()
    tenants.get(tenant)
    instant = _instant(at)
    checker = SuppressionChecker.from_settings(settings, tenants)
    answers: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    try:
        total = count_rows(file)
        with output.open("w", newline="") as handle, Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=err,
        ) as progress:  # fmt: skip
            writer = csv.writer(handle)
            writer.writerow(["line", "phone", "phone_e164", "answer", "reasons",
                             "next_allowed_at", "why"])  # fmt: skip
            task = progress.add_task(f"scrubbing {file.name}", total=total)
            rows = list(read_rows(file))
            for start in range(0, len(rows), SCRUB_CHUNK):
                chunk = rows[start : start + SCRUB_CHUNK]
                phones = [r.fields.get("phone", "") for r in chunk]
                results = checker.check_many(phones, tenant, campaign, instant)
                for row, result in zip(chunk, results, strict=True):
                    answers[result.answer.value] += 1
                    reasons.update(r.code.value for r in result.reasons)
                    why = row.problem or result.why
                    writer.writerow([
                        row.line, row.fields.get("phone", ""), result.phone_e164 or "",
                        result.answer.value, ";".join(r.code.value for r in result.reasons),
                        result.next_allowed_at.isoformat() if result.next_allowed_at else "",
                        why or "",
                    ])  # fmt: skip
                progress.advance(task, len(chunk))
    except ImportFileError as exc:
        raise _fail(str(exc)) from None
    summary = Table("answer or reason", "numbers", title=f"{file.name} -> {output}")
    for answer in ("callable", "suppressed", "unavailable"):
        summary.add_row(answer if answer != "suppressed" else "do not call", f"{answers[answer]:,}")
    for code, count in reasons.most_common():
        summary.add_row(f"  {code}", f"{count:,}")
    out.print(summary)
    raise typer.Exit(EXIT_UNAVAILABLE if answers["unavailable"] else EXIT_CALLABLE)


consent_app = typer.Typer(
    help="Consents to prospecting calls (a consent recorder's): grant, withdraw, show, import.",
    no_args_is_help=True,
)


@consent_app.command("grant")
def consent_grant(
    phone: Annotated[str, typer.Argument(help="the number the consent is about")],
    tenant: TenantOpt,
    source: Annotated[ConsentSource, typer.Option("--source", help="how it was captured")],
    proof_ref: Annotated[
        str,
        typer.Option(
            "--proof-ref",
            help="where its proof is archived (form and submission id, call recording id...)",
        ),
    ],
    campaign: CampaignOpt = None,
    captured_at: Annotated[
        str | None, typer.Option("--captured-at", help="ISO 8601 (default: now)")
    ] = None,
    expires_at: Annotated[
        str | None,
        typer.Option(
            "--expires-at",
            help="ISO 8601 (default and longest: captured + the campaign's consent_validity)",
        ),
    ] = None,
    wording_version: Annotated[str | None, typer.Option("--wording-version")] = None,
    recorded_by: Annotated[
        str | None, typer.Option("--recorded-by", help="who records it (default: cli)")
    ] = None,
) -> None:
    """Record a consent (tenant-wide, or one campaign's) on the consents topic; prints the
    event id once Kafka acknowledged it. It never lifts an opposition."""
    from dnc.cli import _publish

    settings, tenants = _settings()
    _publish(settings, tenants, tenant=tenant, phone=phone, kind=Kind.CONSENT,
             scope=Scope.CAMPAIGN if campaign else Scope.TENANT, campaign_id=campaign,
             consent_source=source, proof_ref=proof_ref, occurred_at=_instant(captured_at),
             expires_at=_instant(expires_at), wording_version=wording_version,
             recorded_by=recorded_by or "cli", source=Source.CLI)  # fmt: skip


@consent_app.command("withdraw")
def consent_withdraw(
    phone: Annotated[str, typer.Argument(help="the number whose consent ends")],
    tenant: TenantOpt,
    campaign: CampaignOpt = None,
) -> None:
    """Record a consent withdrawal (an opposition of kind consent_withdrawn): it ends every
    consent of its scope and suppresses the number until an admin lifts it."""
    from dnc.cli import _publish

    settings, tenants = _settings()
    _publish(settings, tenants, tenant=tenant, phone=phone, kind=Kind.CONSENT_WITHDRAWN,
             scope=Scope.CAMPAIGN if campaign else Scope.TENANT, campaign_id=campaign,
             source=Source.CLI)  # fmt: skip


@consent_app.command("show")
def consent_show(
    phone: Annotated[str, typer.Argument(help="the number")],
    tenant: TenantOpt,
    as_json: Annotated[bool, typer.Option("--json", help="the records as JSON")] = False,
) -> None:
    """Every consent recorded for the number (the log of record), with its proof reference,
    source, dates, and what ended it."""
    from consumers.subjects import SubjectLog
    from schemas.phone import normalise

    settings, tenants = _settings()
    e164 = normalise(phone, tenants.get(tenant).default_region)
    entries = SubjectLog(settings, tenants).report(tenant, e164).consents
    if as_json:
        sys.stdout.write(json.dumps([e.model_dump(mode="json") for e in entries], indent=2) + "\n")
        return
    if not entries:
        out.print(f"no consent recorded for {e164} ({tenant})")
        return
    table = Table("captured", "scope", "source", "proof", "expires", "ended", "valid",
                  title=f"consents of {e164} ({tenant})")  # fmt: skip
    for e in entries:
        scope = e.campaign_id or "tenant"
        ended = "" if e.ended_at is None else f"withdrawn {e.ended_at:%Y-%m-%d %H:%M}"
        table.add_row(f"{e.captured_at:%Y-%m-%d %H:%M}", escape(scope), e.source.value,
                      escape(e.proof_ref), f"{e.expires_at:%Y-%m-%d}", ended,
                      "yes" if e.valid else "no")  # fmt: skip
    out.print(table)


@consent_app.command("import")
def consent_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV with a header: phone, proof_ref (required); source, "
            "captured_at, expires_at, campaign_id, wording_version, recorded_by"
        ),
    ],
    tenant: TenantOpt,
    campaign: CampaignOpt = None,
    source: Annotated[
        ConsentSource | None, typer.Option("--source", help="for rows without a source")
    ] = ConsentSource.IMPORT,
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="write rejected rows to this CSV")
    ] = None,
) -> None:
    """Record the consents of a consent platform's or a CRM's export, with a progress bar and
    a report of rejected rows (exit 1 if any, 2 if Kafka did not acknowledge some)."""
    from dnc.cli import run_import
    from producers.importer import consent_event

    run_import(file, tenant, rejects,
               build=lambda row: consent_event(row, tenant, campaign,
                                               source.value if source else None))  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add these commands to the `dnc` command."""
    app.command()(check)
    app.command()(attempt)
    app.command()(scrub)
    app.add_typer(consent_app, name="consent")
