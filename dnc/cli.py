"""The `dnc` command: run the local stack and the worker, record oppositions, check numbers."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Any, cast

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from dnc.dial_cli import register as register_dial_commands
from dnc.exits import (
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_NOT_CALLABLE,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
)
from schemas.errors import DncError, InvalidEventError, PublishError
from schemas.events import Kind, OppositionEvent, Scope, Source, event_json_schema
from schemas.settings import KAFKA_LOGGER, Settings
from schemas.tenants import TenantDirectory
from schemas.tokens import Role

app = typer.Typer(
    help="Do-not-call opposition propagation: agent desktop -> Kafka -> Faust -> Redis -> "
    f"dialers.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
)
# soft_wrap: our messages are never cut into lines by the terminal's width, so scripts and
# tests can match them whatever COLUMNS is.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# The Kafka clients' own loggers: librdkafka's (see Settings.kafka_client_config), Faust's
# aiokafka's. Their lines are for --verbose; a problem they report is said in one sentence.
CLIENT_LOGGERS = (KAFKA_LOGGER, "aiokafka", "kafka")

TenantOpt = Annotated[
    str, typer.Option("--tenant", "-t", help="tenant (client) as in the tenants file")
]
CampaignOpt = Annotated[str | None, typer.Option("--campaign", "-c", help="campaign id")]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise
    show_client_logs(False)


def show_client_logs(verbose: bool) -> None:
    """The Kafka clients' own log lines: shown with --verbose, hidden otherwise."""
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.CRITICAL + 1)


@app.callback()
def _global_options(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            envvar="DNC_VERBOSE",
            help="also show the Kafka clients' own log lines (librdkafka, aiokafka)",
        ),
    ] = False,
) -> None:
    show_client_logs(verbose)


def _settings() -> tuple[Settings, TenantDirectory]:
    settings = Settings()
    return settings, TenantDirectory.load(settings.tenants_file)


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.command()
def schema() -> None:
    """Print the JSON Schema of an opposition event (for producers not written in Python)."""
    sys.stdout.write(json.dumps(event_json_schema(), indent=2) + "\n")


@app.command()
def oppose(
    phone: Annotated[
        str, typer.Argument(help="number as given, e.g. '06 12 34 56 78' or +33612345678")
    ],
    tenant: TenantOpt,
    campaign: CampaignOpt = None,
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="agent id")] = None,
    kind: Annotated[
        Kind, typer.Option("--kind", "-k", help="what the person asked for")
    ] = Kind.OPPOSITION,
    scope: Annotated[
        Scope | None,
        typer.Option("--scope", "-s", help="default: campaign if --campaign, else tenant"),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="reason code")] = None,
) -> None:
    """Record an opposition; prints the event id once Kafka acknowledged it."""
    if kind is Kind.LIFT:
        raise _fail("a lift is an admin action with a justification: use `dnc lift`")
    settings, tenants = _settings()
    chosen_scope = scope or (Scope.CAMPAIGN if campaign else Scope.TENANT)
    _publish(
        settings,
        tenants,
        tenant=tenant,
        phone=phone,
        kind=kind,
        scope=chosen_scope,
        campaign_id=campaign,
        agent_id=agent,
        reason_code=reason,
        source=Source.CLI,
    )


@app.command()
def lift(
    phone: Annotated[str, typer.Argument(help="number to make callable again")],
    tenant: TenantOpt,
    justification: Annotated[
        str, typer.Option("--justification", "-j", help="why (mandatory, audited)")
    ],
    campaign: CampaignOpt = None,
    scope: Annotated[Scope | None, typer.Option("--scope", "-s")] = None,
    admin: Annotated[str | None, typer.Option("--admin", help="admin's id")] = None,
) -> None:
    """Admin: end a suppression of one scope, with a justification."""
    settings, tenants = _settings()
    chosen_scope = scope or (Scope.CAMPAIGN if campaign else Scope.TENANT)
    _publish(
        settings,
        tenants,
        tenant=tenant,
        phone=phone,
        kind=Kind.LIFT,
        scope=chosen_scope,
        campaign_id=campaign,
        agent_id=admin,
        justification=justification,
        source=Source.ADMIN,
    )


def _publish(settings: Settings, tenants: TenantDirectory, **fields: object) -> None:
    from pydantic import ValidationError

    from schemas.events import describe_validation_error

    try:
        event = OppositionEvent.record(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise _fail(describe_validation_error(exc)) from None
    from producers.publisher import OppositionPublisher

    publisher = OppositionPublisher.from_settings(settings, tenants)
    try:
        receipt = publisher.publish(event)
    finally:
        publisher.close()
    sys.stdout.write(f"{receipt.event_id}\n")
    err.print(f"recorded: partition {receipt.partition}, offset {receipt.offset}")


@app.command(name="import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            help=(
                "CSV: one number per line, or a header with 'phone' (optional: campaign_id, "
                "kind, scope, reason_code, agent_id, occurred_at)"
            ),
        ),
    ],
    tenant: TenantOpt,
    kind: Annotated[Kind, typer.Option("--kind", "-k")] = Kind.OPPOSITION,
    scope: Annotated[Scope | None, typer.Option("--scope", "-s")] = None,
    campaign: CampaignOpt = None,
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="write rejected rows to this CSV")
    ] = None,
) -> None:
    """Publish a CSV of numbers, with a progress bar and a report of rejected rows."""
    if kind is Kind.CONSENT:
        raise _fail("consents are imported with their proofs: use `dnc consent import`")
    run_import(file, tenant, rejects, kind=kind,
               scope=scope or (Scope.CAMPAIGN if campaign else Scope.TENANT),
               campaign=campaign)  # fmt: skip


def run_import(file: Path, tenant: str, rejects: Path | None, **how: Any) -> None:
    """`dnc import` and `dnc consent import`: publish a CSV's rows (``how``: the importer's
    options), with a progress bar; report and exit as they document."""
    import csv

    from producers.importer import count_rows, import_file
    from producers.publisher import OppositionPublisher

    if not file.is_file():
        raise _fail(f"cannot import {file}: the file does not exist (or is not a file)")
    settings, tenants = _settings()
    tenants.get(tenant)
    total = count_rows(file)
    publisher = OppositionPublisher.from_settings(settings, tenants)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as progress:
        task = progress.add_task(f"importing {file.name}", total=total)
        report = import_file(
            file, publisher, tenant=tenant, on_progress=lambda n: progress.advance(task, n), **how
        )
    publisher.close()
    out.print(
        f"published {report.published} of {total} rows; rejected {len(report.rejected)}; "
        f"not acknowledged {len(report.failed)}"
    )
    problems = report.rejected + report.failed
    if problems:
        table = Table("line", "phone", "reason", title="rows not recorded")
        for row in problems[:50]:  # the file's text is never read as Rich markup
            table.add_row(str(row.line), escape(row.phone), escape(row.reason))
        err.print(table)
        if len(problems) > 50:
            err.print(
                f"... and {len(problems) - 50} more" + ("" if rejects else " (use --rejects FILE)")
            )
        if rejects:
            with rejects.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["line", "phone", "reason"])
                writer.writerows((r.line, r.phone, r.reason) for r in problems)
            err.print(f"rejected rows written to {rejects}")
    if report.failed:  # not acknowledged: say why once, rather than once per row
        raise typer.Exit(say_kafka_failure(settings))
    raise typer.Exit(0 if report.ok else EXIT_NOT_CALLABLE)


@app.command()
def worker(
    worker_id: Annotated[
        str | None, typer.Option("--id", help="worker id (default host-pid)")
    ] = None,
) -> None:
    """Run the stream worker (Faust) in the foreground; Ctrl-C stops it gracefully."""
    from streams.worker import run_worker

    settings = Settings()
    run_worker(settings, worker_id)


@app.command()
def sync(
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", "-t", help="only this tenant's lane (repeatable; default all)"),
    ] = None,
) -> None:
    """Deliver every suppression change to each tenant's reference list (PostgreSQL or webhook).

    One lane per tenant declaring [tenants.NAME.reference_list]; offsets are committed only
    after the sink acknowledged. Ctrl-C stops gracefully.
    """
    from consumers.sync_service import run_sync

    raise typer.Exit(run_sync(Settings(), tenant or None))


@app.command()
def migrate(
    dsn: Annotated[
        str | None, typer.Option("--dsn", help="PostgreSQL DSN (default DNC_POSTGRES_DSN)")
    ] = None,
) -> None:
    """Create or update the reference-list tables (`dnc sync` does it on first contact too)."""
    import psycopg

    from infra.migrations import apply_migrations, migration_files

    settings = Settings()
    try:
        applied = apply_migrations(dsn or settings.postgres_dsn.get_secret_value())
    except psycopg.Error as exc:
        raise _fail(f"cannot migrate the reference list: {exc}".strip()) from None
    known = len(migration_files())
    out.print(f"applied {len(applied)} of {known} migrations: {', '.join(applied) or 'up to date'}")


@app.command()
def up(
    kafka_version: Annotated[
        str | None, typer.Option("--kafka-version", help="Kafka release to run")
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="also run simulated agent desktops and dialers, with a live summary",
        ),
    ] = False,
    brokers: Annotated[
        int,
        typer.Option(
            "--brokers",
            min=1,
            max=9,
            help="Kafka brokers: 1 (default) is a single KRaft node; 3 is a KRaft cluster "
            "(combined broker+controller nodes, the first on DNC_KAFKA_BOOTSTRAP's port) "
            "whose topics get replication factor 3 and min.insync.replicas 2, so losing "
            "one broker loses no acknowledged event",
        ),
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=16,
            help="Faust workers in one consumer group, sharing the partitions (each with its "
            "own id, log worker-N.log and /metrics port: 9310, then 9320, 9321, ...); at most "
            "DNC_PARTITIONS of them get work",
        ),
    ] = 1,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            help="run the Redis view on a Redis Cluster (3 masters with a replica each, on "
            "DNC_REDIS_URL's port and the 5 after it) instead of one Redis; every process "
            "gets DNC_REDIS_CLUSTER=true",
        ),
    ] = False,
) -> None:
    """Run the whole pipeline on loopback in the foreground; Ctrl-C stops it all.

    Kafka, Redis, PostgreSQL (the reference list), Prometheus (graphs, alert rules), the
    worker, the reference-list sync and the HTTP gateway. Data and logs go to DNC_DATA_DIR.
    --brokers, --workers and --redis-cluster scale each part on its own.

    Every port it will bind is checked first: two settings naming one port, or a port
    another process holds, is said (naming the settings) before anything starts.
    Exit 0 once stopped on request (Ctrl-C, SIGTERM); 1 another `dnc up` runs on this data
    directory; 2 it gave up (a service could not start, or a process kept exiting); 3 two
    ports clash or one is in use.
    """
    from dnc.local import run_local_stack
    from dnc.resilient_output import ResilientOutput

    if brokers == 2:
        raise _fail("--brokers 2 could not lose a broker (min.insync.replicas 2): use 1 or 3")
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # `dnc up | tee`, then Ctrl-C, or a closed terminal: output that nobody reads any more
    # goes to DATA_DIR/up.log, and stopping everything carries on.
    fallback = settings.data_dir / "up.log"
    console = Console(file=cast(IO[str], ResilientOutput(sys.stdout, fallback)), soft_wrap=True)
    err.file = cast(IO[str], ResilientOutput(sys.stderr, fallback))
    code = run_local_stack(
        settings,
        kafka_version or settings.kafka_version,
        console,
        demo=demo,
        brokers=brokers,
        workers=workers,
        redis_cluster=redis_cluster,
    )
    raise typer.Exit(code)


@app.command()
def down() -> None:
    """Stop what `dnc up` runs on this data directory (DNC_DATA_DIR), or what a killed one left.

    Asks a running `dnc up` to stop (as Ctrl-C would) and waits for it; then stops any
    process its pid files still name (Kafka, Redis, PostgreSQL, Prometheus, the worker,
    the sync, the gateway, the demo), gracefully first, then with SIGKILL.
    """
    from dnc.local import stop_recorded

    settings = Settings()
    stopped = stop_recorded(settings, err)
    out.print(f"stopped {stopped} process(es)" if stopped else "nothing was running")


@app.command(name="demo-traffic")
def demo_traffic(
    events_per_second: Annotated[
        float, typer.Option("--events-per-second", min=0.1, help="what the agents record")
    ] = 20.0,
    checks_per_second: Annotated[
        float, typer.Option("--checks-per-second", min=0.1, help="what the dialers check")
    ] = 50.0,
    agents: Annotated[int, typer.Option("--agents", min=1, help="simulated agents")] = 40,
    consents_per_second: Annotated[
        float,
        typer.Option("--consents-per-second", min=0.1, help="what the consent web form records"),
    ] = 2.0,
    attempts_per_second: Annotated[
        float,
        typer.Option(
            "--attempts-per-second", min=0.1, help="what the consent campaigns' dialers attempt"
        ),
    ] = 5.0,
) -> None:
    """Simulated agent desktops and dialers against the running pipeline (Ctrl-C stops).

    A realistic mix of refusals, objections, consent withdrawals, erasures and admin lifts
    (some campaign-scoped, a few mistyped numbers that end in the dead letters); dialers
    check before each call. For the tenants file's consent campaigns: a web form records
    consents and their dialers ask for an attempt (checked, reserved under the cap and
    recorded) before each call. Counted on /metrics (DNC_DEMO_METRICS_PORT).
    """
    import signal
    import threading

    from dnc.demo import DemoRates, run_demo_traffic

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rates = DemoRates(
        events_per_second, checks_per_second, agents, consents_per_second, attempts_per_second
    )
    run_demo_traffic(Settings(), rates, stop)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="only what decides the exit status (the view ready and current, Kafka "
            "reachable), without the per-tenant figures that scan Redis nor the dead letters: "
            "for a readiness probe",
        ),
    ] = False,
) -> None:
    """Is it safe to dial (and why not)? How stale is each partition? What is pending where?
    How many dead letters, since when?

    Per partition: staleness against the bound, the worker vouching, its lag. Per tenant: safe
    to dial, suppressed numbers, consents valid now and those ending within 30 days, changes
    pending for the reference list and the age of the oldest, the sync's lag. Per dead-letter
    topic: letters held, oldest and newest failure, the newest's reason. Exit 0 healthy, 2 not,
    4 Kafka refused the credentials.
    """
    from dnc.health import pipeline_status, render_status

    settings, tenants = _settings()
    report = pipeline_status(settings, tenants, per_tenant=not probe)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        render_status(report, out)
    if report.get("kafka_problem") == "refused":
        raise typer.Exit(EXIT_REFUSED)
    raise typer.Exit(0 if report["healthy"] else EXIT_UNAVAILABLE)


@app.command()
def verify(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Reconcile the log of record with the Redis view and every reference list.

    Reads the compacted suppressions topic (the latest state of every number) and checks
    that the view holds exactly the suppressions in force and that each PostgreSQL
    reference list has every change its lane delivers. Run it once the pipeline has caught
    up (`dnc status`), e.g. after an incident. Exit 0 clean, 1 differences found, 2 it could
    not verify (Kafka, Redis or the view unavailable).
    """
    from consumers.verify import VerifyError, reconcile
    from consumers.verify import as_json as report_json

    settings, tenants = _settings()
    try:
        found = reconcile(settings, tenants)
    except VerifyError as exc:
        raise _fail(f"cannot verify: {exc}", EXIT_UNAVAILABLE) from None
    if as_json:
        sys.stdout.write(json.dumps(report_json(found), indent=2) + "\n")
    else:
        table = Table(
            "tenant", "kind", "states", "in force", "missing from view (DANGER)",
            "unexpected in view", "reference list missing", "reference list differs",
            title=f"dnc verify: {found.changes_read} states; view {found.view_readiness}",
        )  # fmt: skip
        for (tenant, kind), t in sorted(found.tallies.items()):
            table.add_row(tenant, kind, str(t.states), str(t.in_force), str(t.view_missing),
                          str(t.view_unexpected), str(t.reference_missing),
                          str(t.reference_differs))  # fmt: skip
        out.print(table)
        for owner, count in sorted(found.unexplained_members.items()):
            out.print(f"[red]{count} members in {owner}'s view sets match no state in the log[/]")
        for tenant, what in sorted(found.reference_lists.items()):
            out.print(f"reference list of {tenant}: {what}")
        out.print(
            "clean: the view and the reference lists match the log"
            if not found.differences
            else f"[bold red]{found.differences} differences[/]"
        )
    raise typer.Exit(0 if not found.differences else 1)


# --- dead letters: `dnc dead-letters summary | show | replay` -------------------------------

dead_letters_app = typer.Typer(
    help="What the worker could not apply (dnc.dead-letter.v1): look, then replay once fixed.",
    no_args_is_help=True,
)
app.add_typer(dead_letters_app, name="dead-letters")


@dead_letters_app.command("summary")
def dead_letters_summary(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Dead letters by reason, with the oldest and newest failure of each."""
    from consumers.dead_letters import DeadLetterError, read_all, summarise

    settings = Settings()
    try:
        letters, truncated = read_all(settings)
    except DeadLetterError as exc:
        raise _fail(f"cannot read the dead letters: {exc}", EXIT_UNAVAILABLE) from None
    found = summarise(settings.dead_letter_topic, letters, truncated)
    if as_json:
        body = {
            "topic": found.topic,
            "total": found.total,
            "truncated": found.truncated,
            "reasons": [
                {
                    "reason": r.reason,
                    "count": r.count,
                    "oldest": r.oldest.isoformat() if r.oldest else None,
                    "newest": r.newest.isoformat() if r.newest else None,
                }
                for r in found.reasons
            ],
        }
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
        return
    out.print(f"{found.total} dead letters in {found.topic}", markup=False)
    if found.reasons:
        table = Table("reason", "letters", "oldest failure", "newest failure")
        for r in found.reasons:
            table.add_row(escape(r.reason), str(r.count), _when(r.oldest), _when(r.newest))
        out.print(table)
    if found.truncated:
        out.print("(the read stopped at its time or size bound: counts are partial)")


def _when(at: datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at else "-"


@dead_letters_app.command("show")
def dead_letters_show(
    offset: Annotated[int, typer.Argument(min=0, help="the letter's offset (see summary)")],
    partition: Annotated[int, typer.Option("--partition", "-p", min=0)] = 0,
    reveal: Annotated[
        bool,
        typer.Option(
            "--reveal",
            help="administrators only: show phone numbers in clear (masked by default)",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """One letter: reason, detail, where it came from, when, and the event (number masked)."""
    from consumers.dead_letters import DeadLetterError, describe, read_one

    settings = Settings()
    try:
        letter = read_one(settings, partition, offset)
    except DeadLetterError as exc:
        raise _fail(str(exc)) from None
    shown = describe(letter, reveal=reveal)
    if as_json:
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    source = shown["source"]
    lines = [
        f"dead letter {settings.dead_letter_topic}[{partition}]@{offset}",
        f"reason:    {shown['reason']}",
        f"detail:    {shown['detail']}",
        f"source:    {source['topic']}[{source['partition']}]@{source['offset']}",
        f"failed at: {shown['failed_at']}",
        f"key:       {shown['key']}",
    ]
    if "event" in shown:
        lines.append("event:")
        lines += [f"  {name}: {value}" for name, value in shown["event"].items()]
    else:
        lines.append(f"value ({shown['value_bytes']} bytes, not a JSON object): {shown['value']}")
    if not reveal:
        lines.append("(phone numbers masked: --reveal shows them, for administrators)")
    sys.stdout.write("\n".join(lines) + "\n")


@dead_letters_app.command("replay")
def dead_letters_replay(
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="every letter of this reason")
    ] = None,
    partition: Annotated[
        int, typer.Option("--partition", "-p", min=0, help="partition of the --offset letters")
    ] = 0,
    offset: Annotated[
        list[int] | None, typer.Option("--offset", "-o", min=0, help="this letter (repeatable)")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="every dead letter")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="say what would be replayed, send nothing")
    ] = False,
) -> None:
    """Re-publish letters' original bytes and key to the topic they came from, once fixed.

    Fix the cause first (e.g. declare the tenant and restart the worker). Idempotent: an
    event already applied is a duplicate for the worker, so replaying twice changes nothing.
    An admin action (a lift) goes to the admin topic with the signed cutoff its letter
    recorded: it ends only what the log held when the admin recorded it.
    Exit 0 when every selected letter was acknowledged by Kafka, 2 otherwise.
    """
    from consumers.dead_letters import DeadLetterError, read_all, replay, select

    if reason is None and not offset and not every:
        raise _fail("choose what to replay: --reason R, --offset O [--partition P], or --all")
    settings, tenants = _settings()
    try:
        letters, truncated = read_all(settings)
    except DeadLetterError as exc:
        raise _fail(f"cannot read the dead letters: {exc}", EXIT_UNAVAILABLE) from None
    positions = [(partition, o) for o in offset or []]
    chosen = select(letters, reason=reason, positions=positions)
    missing = sorted(set(positions) - {(x.partition, x.offset) for x in chosen})
    for p, o in missing:
        also = f" with reason {reason}" if reason else ""
        err.print(f"no dead letter at partition {p} offset {o}{also}", markup=False)
    if truncated:
        err.print("the read stopped at its time or size bound: some letters were not seen")
    report = replay(settings, tenants, chosen, dry_run=dry_run)
    for letter, why in report.skipped:
        err.print(f"skipped {letter.partition}@{letter.offset}: {why}", markup=False)
    for letter, why in report.still_invalid_here:
        err.print(
            f"warning: {letter.partition}@{letter.offset} ({letter.reason}) would still be "
            f"refused with this machine's tenants file ({why}): it may come back",
            markup=False,
        )
    for letter, why in report.not_acknowledged:
        err.print(f"not replayed {letter.partition}@{letter.offset}: {why}", markup=False)
    sendable = len(report.selected) - len(report.skipped)
    if dry_run:
        for letter in report.selected:
            what = f"{letter.partition}@{letter.offset} ({letter.reason})"
            err.print(f"would replay {what}", markup=False)
        topic = settings.oppositions_topic
        out.print(f"would replay {sendable} dead letters to {topic}", markup=False)
        return
    out.print(
        f"replayed {report.replayed} of {sendable} dead letters to {settings.oppositions_topic}",
        markup=False,
    )
    raise typer.Exit(EXIT_UNAVAILABLE if report.not_acknowledged else 0)


@app.command(name="bench-faults")
def bench_faults(
    fault: Annotated[
        list[str] | None,
        typer.Option("--fault", help="only this fault (repeatable); default: all of them"),
    ] = None,
    rate: Annotated[float, typer.Option(help="events/s the agents publish meanwhile")] = 100.0,
) -> None:
    """Inject real faults into a private stack and print what dialers were answered.

    Per fault (worker SIGKILL/SIGSTOP, Redis flush/restart/old snapshot, broker kill, worker
    cut from Kafka or Redis by Toxiproxy, Redis latency, PostgreSQL down, one of two workers
    frozen past the session timeout, Redis flushed, restarted or restored during a rebuild of
    200,000 states): answers, share unavailable, callable answers past the staleness bound
    (must be 0), the oldest acknowledgement answered callable, outage and recovery times,
    events lost, verify.
    """
    from dnc.fault_drill import FAULTS, run_drills

    unknown = [f for f in fault or [] if f not in FAULTS]
    if unknown:
        raise _fail(f"unknown fault {unknown[0]!r}: choose from {', '.join(FAULTS)}")
    results = run_drills(fault or None, rate, out)
    broken = sum(r.callable_past_bound + r.lost for r in results)
    raise typer.Exit(0 if not broken else 1)


@app.command()
def bench(
    numbers: Annotated[int, typer.Option(help="numbers for the memory measurement")] = 1_000_000,
    rate: Annotated[int, typer.Option(help="events/s for the propagation measurement")] = 500,
    seconds: Annotated[float, typer.Option(help="duration of the propagation measurement")] = 20.0,
    burst: Annotated[
        int, typer.Option(help="distinct events published at once for the throughput measurement")
    ] = 100_000,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="only this measurement (repeatable): single, bulk, cli, propagation, "
            "throughput, import, restart, memory, scale (needs --workers 2 or more), "
            "failover; default: all",
        ),
    ] = None,
    import_rows: Annotated[
        int, typer.Option(help="rows of the CSV for the `dnc import` measurement")
    ] = 1_000_000,
    logs: Annotated[
        Path | None,
        typer.Option(help="copy the workers' and the floors' logs to this directory at the end"),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=3,
            help="scale-out: also measure the burst with 1 up to this many workers in one "
            "group (the bench's topic has 3 partitions)",
        ),
    ] = 1,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            help="run the stack's view on a Redis Cluster (3 masters, a replica each): the "
            "checks then read the sharded view; no memory measurement",
        ),
    ] = False,
    failover_states: Annotated[
        int,
        typer.Option(
            min=1000,
            help="failover: oppositions applied before one of the two workers is killed "
            "(the states its partitions' new owner recovers)",
        ),
    ] = 100_000,
    session_timeout: Annotated[
        float,
        typer.Option(
            min=6.0,
            help="the workers' group session timeout in seconds (DNC_SESSION_TIMEOUT_SECONDS: "
            "most of a failover is waiting for it to expire); default the worker's own, 10",
        ),
    ] = 10.0,
    restart_states: Annotated[
        list[int] | None,
        typer.Option(
            "--restart-states",
            help="suppressed numbers the table is filled to before each restart measurement "
            "(repeatable); default 100,000 and 1,000,000",
        ),
    ] = None,
) -> None:
    """Benchmark on a private local stack: check latency, bulk throughput, propagation,
    worker throughput, a large import, a worker restart, memory, a failover; each next to
    its floor measured in the same run."""
    from dnc.bench import STAGES, run_bench

    unknown = [s for s in only or [] if s not in STAGES]
    if unknown:
        raise _fail(f"unknown measurement {unknown[0]!r}: choose from {', '.join(STAGES)}")
    run_bench(numbers=numbers, rate=rate, seconds=seconds, console=out, burst=burst,
              only=only or STAGES, import_rows=import_rows, logs=logs,
              workers=workers, redis_cluster=redis_cluster,
              failover_states=failover_states, session_timeout=session_timeout,
              restart_states=restart_states or (100_000, 1_000_000))  # fmt: skip


# --- HTTP gateway: `dnc gateway`, `dnc token create`, `dnc bench-gateway` ----------------------


@app.command()
def gateway(
    host: Annotated[str | None, typer.Option("--host", help="default DNC_GATEWAY_HOST")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="default DNC_GATEWAY_PORT; 0 picks a free port")
    ] = None,
) -> None:
    """Serve the HTTP API for agent desktops and dialers; Ctrl-C stops it gracefully."""
    from dnc.gateway import run_gateway

    settings = Settings()
    run_gateway(
        settings,
        host if host is not None else settings.gateway_host,
        port if port is not None else settings.gateway_port,
    )


acl_app = typer.Typer(help="Kafka principals and ACLs (who may write what).")
app.add_typer(acl_app, name="acl")


@acl_app.command("apply")
def acl_apply(
    credentials: Annotated[
        Path,
        typer.Option(
            "--credentials",
            help="JSON file with a password per role (desktop, admin, gateway, worker, sync); "
            "created with random passwords (mode 600) if missing",
        ),
    ],
) -> None:
    """Create the topics, one SCRAM principal per role and their ACLs (idempotent).

    Connects as the cluster's superuser (DNC_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or
    SASL_SSL, DNC_KAFKA_SASL_MECHANISM, DNC_KAFKA_SASL_USERNAME, DNC_KAFKA_SASL_PASSWORD).
    Then give each process its principal: dnc-desktop (agent desktops: oppositions only),
    dnc-admin (lifts), dnc-gateway, dnc-worker, dnc-sync.
    """
    from infra.acls import ROLES, apply_acls, load_or_create_credentials, principal

    settings = Settings()
    passwords = load_or_create_credentials(credentials)
    applied = apply_acls(settings, passwords)
    out.print(
        f"applied {applied} ACLs for {', '.join(principal(r) for r in ROLES)}; "
        f"passwords in {credentials}"
    )


token_app = typer.Typer(help="Gateway access tokens (stored hashed in the tenants file).")
ROLE_NAMES = ", ".join(role.value for role in Role)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    tenant: TenantOpt,
    role: Annotated[str, typer.Option("--role", "-r", help=f"one of: {ROLE_NAMES}")],
    token_id: Annotated[
        str | None, typer.Option("--id", help="name of the token in audit records")
    ] = None,
) -> None:
    """Create a token: prints it once, appends its SHA-256 to the tenants file. Roles: agent
    records oppositions; dialer checks numbers and reserves attempts; admin lifts, reads
    subject access and does what the others do, except granting consents; consent grants
    consents (a consent platform or CRM), and no other role may."""
    from schemas.tenants import issue_token

    try:
        chosen_role = Role(role)
    except ValueError:
        raise _fail(f"unknown role {role!r}: use one of {ROLE_NAMES}") from None
    settings = Settings()
    created_id, token = issue_token(settings.tenants_file, tenant, chosen_role, token_id)
    sys.stdout.write(token + "\n")
    err.print(
        f"token [bold]{created_id}[/] ({chosen_role.value}) of tenant {tenant}: its hash was "
        f"appended to {settings.tenants_file}. This is the only time the token is shown; "
        "restart the gateway to load it."
    )


@app.command(name="bench-sync")
def bench_sync(
    rate: Annotated[int, typer.Option("--rate", min=1, help="events per second")] = 500,
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="per sink")] = 20,
) -> None:
    """Measure propagation to the reference list (PostgreSQL and webhook) beside the view.

    Runs on a private stack it starts and removes (Kafka, Redis, PostgreSQL, a worker, a sync).
    """
    from dnc.bench_sync import run_bench_sync

    run_bench_sync(rate, seconds, out)


@app.command(name="bench-gateway")
def bench_gateway(
    checks: Annotated[int, typer.Option(help="single checks per side")] = 4000,
    bulk: Annotated[int, typer.Option(help="numbers per bulk request")] = 1000,
    events: Annotated[int, typer.Option(help="POST-to-suppressed measurements")] = 300,
) -> None:
    """Benchmark the gateway against the library on a private stack (checks, bulk, propagation)."""
    from dnc.bench_gateway import run_gateway_bench

    run_gateway_bench(checks=checks, bulk=bulk, events=events, console=out)


register_dial_commands(app)


def say_kafka_failure(settings: Settings, exc: PublishError | None = None) -> int:
    """Kafka did not acknowledge: say why in one sentence; return the exit code that says it
    (2 unreachable or not acknowledged, 4 credentials or permission refused)."""
    from dnc.kafka_diagnosis import DENIED, denied_sentence, diagnose_kafka

    if exc is not None and exc.kafka_code in DENIED:
        sentence = denied_sentence(settings, f"write {exc.topic or 'this topic'}")
        err.print(f"[bold red]not recorded:[/] {escape(sentence)}")
        return EXIT_REFUSED
    problem = diagnose_kafka(settings)
    if problem is not None:
        err.print(f"[bold red]not recorded:[/] {escape(problem.sentence)}")
        return problem.exit_code
    if exc is not None:
        err.print(f"[bold red]not recorded:[/] {escape(str(exc))}")
    return EXIT_UNAVAILABLE


def main() -> None:
    """Entry point: clear errors instead of tracebacks for what users can fix."""
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        err.print(f"[bold red]invalid configuration (DNC_* environment variables):[/]\n{exc}")
        sys.exit(EXIT_ERROR)
    _setup_logging(settings.log_level if "--help" not in sys.argv else "WARNING")
    try:
        app()
    except PublishError as exc:
        sys.exit(say_kafka_failure(settings, exc))
    except InvalidEventError as exc:
        err.print(f"[bold red]invalid:[/] {exc.message}")
        sys.exit(EXIT_ERROR)
    except DncError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(EXIT_ERROR)
