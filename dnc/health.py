"""`dnc status`: is the pipeline up, is the view ready, how far behind is the worker?"""

from __future__ import annotations

from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.console import Console
from rich.table import Table

from schemas.settings import Settings
from schemas.view import META_KEY, META_PARTITIONS, heartbeat_key, ready_field


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


def pipeline_status(settings: Settings) -> dict[str, Any]:
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
    console.print(
        "healthy" if report["healthy"] else "[bold red]NOT healthy: dialers get 'unavailable'[/]"
    )
