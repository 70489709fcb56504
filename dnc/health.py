"""`dnc status`: what ops ask first. Is it safe to dial (per tenant, and why not)? How stale
is each partition? What is pending where (the worker's lag, each reference list)? How many
dead letters, since when?"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from consumers.checker import SuppressionChecker, checker_client
from consumers.dead_letters import DeadLetterError, extent
from consumers.dial_rules import ViewFacts, valid_consent
from consumers.readiness import Readiness
from consumers.reference_sync import lane_group, status_key
from consumers.view_reads import consent_facts
from dnc.kafka_diagnosis import diagnose_kafka
from schemas.events import Scope
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import consents_pattern, target_pattern

# `dnc status` counts the consents that end within this (time to renew them).
CONSENTS_EXPIRING_WITHIN = timedelta(days=30)
# Consents hashes read per round trip (each holds one bucket's numbers).
_HASHES_PER_READ = 200


def view_readiness(settings: Settings, tenants: TenantDirectory) -> Readiness:
    """The view's readiness as a dialer's check judges it (the same code, one round trip)."""
    client = checker_client(
        settings.redis_url.get_secret_value(), 2, cluster=settings.redis_cluster
    )
    try:
        return SuppressionChecker.from_settings(settings, tenants, client).readiness()
    finally:
        client.close()


def consumer_lag(settings: Settings, group: str, topic: str) -> dict[int, dict[str, int]]:
    """Per partition: end offset, committed offset of ``group`` and lag."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            **settings.kafka_client_config(),  # Kafka SASL/TLS (empty for PLAINTEXT)
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=5)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise KafkaException(
                f"no topic {topic} yet: the worker creates it as it starts (`dnc up`, `dnc worker`)"
            )
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        committed = consumer.committed(partitions, timeout=5)
        out = {}
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(tp, timeout=5)
            done = tp.offset if tp.offset >= 0 else 0
            out[tp.partition] = {"end": high, "committed": done, "lag": max(0, high - done)}
        return out
    finally:
        consumer.close()


def worker_members(settings: Settings) -> dict[str, list[int]]:
    """The workers in the worker group now, each with the oppositions partitions it owns
    (by static membership id, else member id; every `dnc up --workers N` worker has one)."""
    return worker_group(settings)[1]


def worker_group(settings: Settings) -> tuple[ConsumerGroupState, dict[str, list[int]]]:
    """The worker group's state (stable, rebalancing, ...) and its members' oppositions
    partitions (see :func:`worker_members`)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_client_config()}
    )
    group = settings.worker_group
    found = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
    members = {
        member.group_instance_id or member.member_id: sorted(
            tp.partition
            for tp in member.assignment.topic_partitions
            if tp.topic == settings.oppositions_topic
        )
        for member in found.members
    }
    return found.state, members


def suppressed_counts(settings: Settings, tenants: list[str]) -> dict[str, int | None]:
    """Numbers in each tenant's view (tenant-wide and its campaigns); None if Redis is down."""
    client = checker_client(
        settings.redis_url.get_secret_value(), 2, cluster=settings.redis_cluster
    )
    counts: dict[str, int | None] = {}
    try:
        for tenant in tenants:
            sharded = settings.shards > 0
            keys = [
                *client.scan_iter(match=target_pattern(tenant, sharded), count=1000),
                *client.scan_iter(match=target_pattern(f"{tenant}/*", sharded), count=1000),
            ]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.scard(key)
            counts[tenant] = int(sum(pipe.execute())) if keys else 0
    except redis.RedisError:
        counts = dict.fromkeys(tenants)
    finally:
        client.close()
    return counts


def tally_consents(values: Iterable[str | bytes], now: datetime) -> tuple[int, int]:
    """Of the values of consents hashes: how many hold a consent valid at ``now`` (the
    dial decision's rule: granted after the scope's latest withdrawal, not expired), and how
    many of those end within :data:`CONSENTS_EXPIRING_WITHIN`.

    Each value is judged with its own list's withdrawals only: a campaign's consent that a
    tenant-wide or global withdrawal ended still counts here (their members differ, the view
    cannot match them without the number), while a dialer's check refuses it.
    """
    valid = expiring = 0
    soon = now + CONSENTS_EXPIRING_WITHIN
    for raw in values:
        withdrawn, consent = consent_facts(raw, Scope.TENANT)
        if consent is None:
            continue  # a withdrawal alone
        ended = {} if withdrawn is None else {Scope.TENANT: withdrawn}
        if valid_consent(ViewFacts(consents=(consent,), withdrawn_ms=ended), now) is None:
            continue
        valid += 1
        if consent.expires_at <= soon:
            expiring += 1
    return valid, expiring


def consent_counts(
    settings: Settings, tenants: list[str], now: datetime | None = None
) -> dict[str, tuple[int, int] | None]:
    """Per tenant, its consents (tenant-wide and its campaigns') in the view: valid now, and
    of those ending within 30 days (:func:`tally_consents`); None if Redis is down.

    ``now``: the local clock by default (a count, not a dial decision)."""
    at = now or datetime.now(UTC)
    client = checker_client(
        settings.redis_url.get_secret_value(), 2, cluster=settings.redis_cluster
    )
    counts: dict[str, tuple[int, int] | None] = {}
    try:
        sharded = settings.shards > 0
        for tenant in tenants:
            keys = [
                *client.scan_iter(match=consents_pattern(tenant, sharded), count=1000),
                *client.scan_iter(match=consents_pattern(f"{tenant}/*", sharded), count=1000),
            ]
            valid = expiring = 0
            for start in range(0, len(keys), _HASHES_PER_READ):
                pipe = client.pipeline(transaction=False)
                for key in keys[start : start + _HASHES_PER_READ]:
                    pipe.hvals(key)
                found = tally_consents((v for values in pipe.execute() for v in values), at)
                valid, expiring = valid + found[0], expiring + found[1]
            counts[tenant] = (valid, expiring)
    except redis.RedisError:
        counts = dict.fromkeys(tenants)
    finally:
        client.close()
    return counts


def sync_reports(settings: Settings, tenants: list[str]) -> dict[str, dict[str, Any] | None]:
    """What each tenant's sync lane last reported (None: no lane running for it)."""
    client = checker_client(
        settings.redis_url.get_secret_value(), 2, cluster=settings.redis_cluster
    )
    try:
        pipe = client.pipeline(transaction=False)  # (not MGET: keys in many cluster slots)
        for tenant in tenants:
            pipe.get(status_key(tenant))
        raw = pipe.execute()
    except redis.RedisError:
        return dict.fromkeys(tenants)
    finally:
        client.close()
    return {t: json.loads(r) if r else None for t, r in zip(tenants, raw, strict=True)}


def dialing_verdict(verdict: Readiness, bound: float) -> tuple[bool, str]:
    """Whether a dialer's check may answer "callable" now, and why (not): the view's verdict
    that every check applies, with the stalest partition against the staleness bound."""
    if not verdict.ready:
        return False, f"checks answer 'unavailable': {verdict.why}"
    worst = verdict.worst_staleness
    stalest = f"stalest partition {worst:.1f} s" if worst is not None else "every partition"
    return True, f"view ready, {stalest} within the {bound:g} s bound"


def tenant_status(
    settings: Settings, tenants: TenantDirectory, verdict: Readiness, kafka_reachable: bool
) -> dict[str, dict[str, Any]]:
    """Per tenant: safe to dial (and why), suppressed numbers, consents valid and ending
    within 30 days, reference-list pending and age, sync lag, readiness (safe to dial and
    the reference list kept up to date)."""
    view_ready = verdict.ready
    safe, why = dialing_verdict(verdict, settings.max_staleness_seconds)
    names = tenants.names
    suppressed = suppressed_counts(settings, names)
    consents = consent_counts(settings, names)
    reports = sync_reports(settings, names)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        sink = tenants.get(name).reference_list
        valid, expiring = consents[name] or (None, None)
        row: dict[str, Any] = {
            "safe_to_dial": safe,
            "why": why,
            "suppressed_numbers": suppressed[name],
            "consents_valid": valid,
            "consents_expiring_30d": expiring,
            "reference_list_sink": sink.sink if sink else None,
        }
        report = reports[name]
        if sink is not None:
            row["sync_running"] = bool(report and report.get("running"))
            row["pending"] = report.get("pending") if report else None
            row["oldest_pending_seconds"] = report.get("oldest_pending_seconds") if report else None
            row["sync_retrying"] = bool(report and report.get("retrying"))
            if kafka_reachable:
                try:
                    lag = consumer_lag(
                        settings, lane_group(settings, name), settings.suppressions_topic
                    )
                    row["sync_lag"] = sum(p["lag"] for p in lag.values())
                except KafkaException:
                    row["sync_lag"] = None
        row["ready"] = bool(
            view_ready and (sink is None or (row["sync_running"] and not row["sync_retrying"]))
        )
        out[name] = row
    return out


def pipeline_status(
    settings: Settings, tenants: TenantDirectory, per_tenant: bool = True
) -> dict[str, Any]:
    """Everything `dnc status` shows, as a dict (also the --json output).

    ``per_tenant=False`` leaves out the per-tenant figures (they scan the view's keys in
    Redis): what remains is what decides ``healthy``, cheap enough for a readiness probe.
    """
    verdict = view_readiness(settings, tenants)
    safe, why = dialing_verdict(verdict, settings.max_staleness_seconds)
    report: dict[str, Any] = {
        "safe_to_dial": safe,
        "safe_to_dial_why": why,
        "view_ready": verdict.ready,
        "view": verdict.why or "ready and current",
        "max_staleness_seconds": settings.max_staleness_seconds,
        "layout_mismatch": verdict.layout_mismatch,
        "partitions": {
            p.partition: {
                "ready": p.ready,
                "staleness_seconds": p.staleness_seconds,
                "vouched_by": p.owner,
            }
            for p in verdict.partitions
        },
        "kafka": settings.kafka_bootstrap,
    }
    # Asked first, in a few seconds: the lag's reads would each wait their own timeout.
    problem = diagnose_kafka(settings)
    try:
        if problem is not None:
            raise KafkaException(problem.sentence)
        lag = consumer_lag(settings, settings.worker_group, settings.oppositions_topic)
        report["kafka_reachable"] = True
        report["worker_lag"] = lag
        report["worker_lag_total"] = sum(p["lag"] for p in lag.values())
        report["workers"] = worker_members(settings)
    except KafkaException as exc:
        report["kafka_reachable"] = False
        # One sentence: what, where, what to do ("refused": credentials, exit 4).
        report["kafka_error"] = (
            problem.sentence if problem else f"Kafka at {settings.kafka_bootstrap}: {exc}"
        )
        report["kafka_problem"] = problem.trouble.value if problem else "unreachable"
    report["tenants"] = (
        tenant_status(settings, tenants, verdict, report["kafka_reachable"]) if per_tenant else {}
    )
    report["dead_letters"] = (
        dead_letter_status(settings) if per_tenant and report["kafka_reachable"] else {}
    )
    report["healthy"] = bool(verdict.ready and report["kafka_reachable"])
    return report


def dead_letter_status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per dead-letter topic (the worker's, the reference lists'): letters held, failure
    times of the oldest and the newest, the newest's reason; ``error`` if unreadable."""
    out: dict[str, dict[str, Any]] = {}
    for topic in (settings.dead_letter_topic, settings.reference_dead_letter_topic):
        try:
            found = extent(settings, topic)
        except DeadLetterError as exc:
            out[topic] = {"count": None, "error": str(exc)}
            continue
        out[topic] = {
            "count": found.count,
            "oldest": found.oldest.isoformat() if found.oldest else None,
            "newest": found.newest.isoformat() if found.newest else None,
            "newest_reason": found.newest_reason,
        }
    return out


def render_status(report: dict[str, Any], console: Console) -> None:
    """Human summary of :func:`pipeline_status`."""
    ok = "[green]yes[/]"
    no = "[red]no[/]"
    if report["kafka_reachable"]:
        console.print(f"Kafka {report['kafka']}: reachable", markup=False)
    else:
        console.print(f"[bold red]{escape(report['kafka_error'])}[/]")
    console.print(
        f"[bold]safe to dial: {ok if report['safe_to_dial'] else no}[/] "
        f"({report['safe_to_dial_why']})"
    )
    if report.get("worker_lag") is not None or report["partitions"]:
        console.print(_partition_table(report))
        if report.get("worker_lag") is not None:
            console.print(f"behind by {report['worker_lag_total']} events")
    if report.get("workers") is not None:
        members = report["workers"]
        console.print(
            f"workers in group: {len(members)}"
            + "".join(
                f"\n  {name}: partitions {', '.join(map(str, parts)) or 'none'}"
                for name, parts in sorted(members.items())
            )
        )
    if report.get("tenants"):
        console.print(_tenant_table(report["tenants"]))
    if report.get("dead_letters"):
        console.print(_dead_letter_table(report["dead_letters"]))
    console.print(
        "healthy" if report["healthy"] else "[bold red]NOT healthy: dialers get 'unavailable'[/]"
    )


def _partition_table(report: dict[str, Any]) -> Table:
    """Per partition: how current the view is (the staleness bound) and the worker's lag."""
    bound = report["max_staleness_seconds"]
    table = Table(
        "partition",
        "materialised",
        f"staleness (bound {bound:g}s)",
        "vouched by",
        "end offset",
        "committed",
        "lag",
        title="partitions",
    )
    lag = report.get("worker_lag") or {}
    partitions = report["partitions"]
    for p in sorted(set(partitions) | set(lag)):
        view = partitions.get(p, {})
        staleness = view.get("staleness_seconds")
        fresh = staleness is not None and staleness <= bound
        offsets = lag.get(p, {})
        table.add_row(
            str(p),
            "[green]yes[/]" if view.get("ready") else "[red]no[/]",
            ("[green]" if fresh else "[red]") + _cell(staleness, " s") + "[/]",
            _cell(view.get("vouched_by")),
            _cell(offsets.get("end")),
            _cell(offsets.get("committed")),
            _cell(offsets.get("lag")),
        )
    return table


def _cell(value: Any, suffix: str = "") -> str:
    return (
        "-"
        if value is None
        else f"{value:g}{suffix}"
        if isinstance(value, float)
        else f"{value}{suffix}"
    )


def _tenant_table(tenants: dict[str, dict[str, Any]]) -> Table:
    table = Table(
        "tenant",
        "safe to dial",
        "suppressed",
        "consents",
        "expiring within 30 d",
        "reference list",
        "pending",
        "oldest pending",
        "sync lag",
        title="per tenant",
    )
    for name, row in tenants.items():
        sink = row["reference_list_sink"]
        if sink is None:
            where = "[dim]none[/]"
        elif not row["sync_running"]:
            where = f"{sink} [red](sync not running)[/]"
        elif row["sync_retrying"]:
            where = f"{sink} [yellow](retrying)[/]"
        else:
            where = sink
        table.add_row(
            name,
            "[green]yes[/]" if row["safe_to_dial"] else "[red]no[/]",
            _cell(row["suppressed_numbers"]),
            _cell(row["consents_valid"]),
            _cell(row["consents_expiring_30d"]),
            where,
            _cell(row.get("pending")),
            _cell(row.get("oldest_pending_seconds"), " s"),
            _cell(row.get("sync_lag")),
        )
    return table


def _dead_letter_table(topics: dict[str, dict[str, Any]]) -> Table:
    """Per dead-letter topic: how many letters, since when, the latest and why."""
    table = Table(title="dead letters")
    table.add_column("topic", no_wrap=True)
    for column in ("letters", "oldest", "newest"):
        table.add_column(column)
    table.add_column("newest reason", no_wrap=True)
    now = datetime.now(UTC)
    for topic, row in topics.items():
        if row.get("error"):
            table.add_row(topic, "[red]?[/]", f"[red]{row['error']}[/]", "", "")
            continue
        count = row["count"]
        table.add_row(
            topic,
            ("[yellow]" if count else "[green]") + f"{count}[/]",
            _when(row.get("oldest"), now),
            _when(row.get("newest"), now),
            _cell(row.get("newest_reason")),
        )
    table.caption = "`dnc dead-letters summary`: by reason; `replay` once the cause is fixed"
    return table


def _when(iso: str | None, now: datetime) -> str:
    """A failure time with how long ago, e.g. '2026-12-02 17:40:01 UTC (3m 12s ago)'."""
    if iso is None:
        return "-"
    at = datetime.fromisoformat(iso)
    seconds = max(0, int((now - at).total_seconds()))
    ago = (
        f"{seconds // 86400}d {seconds % 86400 // 3600}h"
        if seconds >= 86400
        else f"{seconds // 3600}h {seconds % 3600 // 60}m"
        if seconds >= 3600
        else f"{seconds // 60}m {seconds % 60}s"
        if seconds >= 60
        else f"{seconds}s"
    )
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({ago} ago)"
