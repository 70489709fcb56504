"""`dnc status`: is the pipeline up, is the view ready, how far behind is the worker?"""

from __future__ import annotations

import json
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.console import Console
from rich.table import Table

from consumers.reference_sync import lane_group, status_key
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.view import META_KEY, META_PARTITIONS, VIEW_PREFIX, heartbeat_key, ready_field


def view_readiness(settings: Settings) -> tuple[bool, str]:
    """(ready, why) as a dialer's check would judge it."""
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=2, socket_connect_timeout=2
    )
    try:
        meta = client.hgetall(META_KEY)
        total = int(meta.get(META_PARTITIONS.encode(), 0))
        if not total:
            return False, "view not ready (empty or being rebuilt)"
        missing = [p for p in range(total) if ready_field(p).encode() not in meta]
        beats = client.mget([heartbeat_key(p) for p in range(total)])
        stale = [p for p, hb in enumerate(beats) if hb is None]
        if missing:
            return False, f"partitions {missing} not materialised"
        if stale:
            return False, f"no worker heartbeat for partitions {stale}"
        return True, f"ready, {total} partitions"
    except redis.RedisError as exc:
        return False, f"redis unreachable: {exc}"
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


def suppressed_counts(settings: Settings, tenants: list[str]) -> dict[str, int | None]:
    """Numbers in each tenant's view (tenant-wide and its campaigns); None if Redis is down."""
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=2, socket_connect_timeout=2
    )
    counts: dict[str, int | None] = {}
    try:
        for tenant in tenants:
            keys = [
                *client.scan_iter(match=f"{VIEW_PREFIX}:{tenant}:*", count=1000),
                *client.scan_iter(match=f"{VIEW_PREFIX}:{tenant}/*", count=1000),
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
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=2, socket_connect_timeout=2
    )
    try:
        raw = client.mget([status_key(t) for t in tenants])
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


def pipeline_status(settings: Settings, tenants: TenantDirectory | None = None) -> dict[str, Any]:
    """Everything `dnc status` shows, as a dict (also the --json output)."""
    ready, why = view_readiness(settings)
    report: dict[str, Any] = {"view_ready": ready, "view": why, "kafka": settings.kafka_bootstrap}
    try:
        lag = consumer_lag(settings, settings.worker_group, settings.oppositions_topic)
        report["kafka_reachable"] = True
        report["worker_lag"] = lag
        report["worker_lag_total"] = sum(p["lag"] for p in lag.values())
    except KafkaException as exc:
        report["kafka_reachable"] = False
        report["kafka_error"] = str(exc)
    if tenants is not None:
        report["tenants"] = tenant_status(settings, tenants, ready, report["kafka_reachable"])
    report["healthy"] = bool(ready and report["kafka_reachable"])
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
    if report.get("worker_lag") is not None:
        table = Table("partition", "end offset", "committed", "lag", title="worker lag")
        for p, row in sorted(report["worker_lag"].items()):
            table.add_row(str(p), str(row["end"]), str(row["committed"]), str(row["lag"]))
        console.print(table)
        console.print(f"behind by {report['worker_lag_total']} events")
    if report.get("tenants"):
        console.print(_tenant_table(report["tenants"]))
    console.print(
        "healthy" if report["healthy"] else "[bold red]NOT healthy: dialers get 'unavailable'[/]"
    )


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
