"""`dnc status`: is the pipeline up, is the view ready, how far behind is the worker?"""

from __future__ import annotations

import json
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.console import Console
from rich.table import Table

from consumers.checker import SuppressionChecker, checker_client
from consumers.readiness import Readiness
from consumers.reference_sync import lane_group, status_key
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import target_pattern


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
            raise KafkaException(f"topic {topic} does not exist")
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
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_client_config()}
    )
    group = settings.worker_group
    found = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
    return {
        member.group_instance_id or member.member_id: sorted(
            tp.partition
            for tp in member.assignment.topic_partitions
            if tp.topic == settings.oppositions_topic
        )
        for member in found.members
    }


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


def tenant_status(
    settings: Settings, tenants: TenantDirectory, view_ready: bool, kafka_reachable: bool
) -> dict[str, dict[str, Any]]:
    """Per tenant: suppressed numbers, reference-list pending and age, sync lag, readiness."""
    names = tenants.names
    suppressed = suppressed_counts(settings, names)
    reports = sync_reports(settings, names)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        sink = tenants.get(name).reference_list
        row: dict[str, Any] = {
            "suppressed_numbers": suppressed[name],
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
    report: dict[str, Any] = {
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
    try:
        lag = consumer_lag(settings, settings.worker_group, settings.oppositions_topic)
        report["kafka_reachable"] = True
        report["worker_lag"] = lag
        report["worker_lag_total"] = sum(p["lag"] for p in lag.values())
        report["workers"] = worker_members(settings)
    except KafkaException as exc:
        report["kafka_reachable"] = False
        report["kafka_error"] = str(exc)
    report["tenants"] = (
        tenant_status(settings, tenants, verdict.ready, report["kafka_reachable"])
        if per_tenant
        else {}
    )
    report["healthy"] = bool(verdict.ready and report["kafka_reachable"])
    return report


def render_status(report: dict[str, Any], console: Console) -> None:
    """Human summary of :func:`pipeline_status`."""
    ok = "[green]yes[/]"
    no = "[red]no[/]"
    console.print(
        f"Kafka {report['kafka']}: {'reachable' if report['kafka_reachable'] else 'UNREACHABLE'}"
        + ("" if report["kafka_reachable"] else f" ({report.get('kafka_error')})")
    )
    console.print(f"view ready: {ok if report['view_ready'] else no} ({report['view']})")
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
        "suppressed",
        "reference list",
        "pending",
        "oldest pending",
        "sync lag",
        "ready",
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
            _cell(row["suppressed_numbers"]),
            where,
            _cell(row.get("pending")),
            _cell(row.get("oldest_pending_seconds"), " s"),
            _cell(row.get("sync_lag")),
            "[green]yes[/]" if row["ready"] else "[red]no[/]",
        )
    return table
