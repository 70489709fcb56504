"""The catalogue of Prometheus metrics. Names are a contract with dashboards and alert rules.

Labels are bounded: never a phone number, agent or event id.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Propagation buckets from 1 ms to 1 h.
PROPAGATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
)  # fmt: skip
CHECK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

# Events seen by the worker, by kind and outcome (applied, duplicate, stale, rejected).
EVENTS = Counter("dnc_events_total", "Opposition events processed", ["kind", "outcome"])
# Messages sent to the dead-letter topic, by reason.
DEAD_LETTERS = Counter("dnc_dead_letters_total", "Messages dead-lettered", ["reason"])
# Time from occurred_at to the change being visible at a stage (suppression_view, ...).
PROPAGATION = Histogram(
    "dnc_propagation_seconds",
    "Propagation latency from occurred_at to the stage",
    ["stage"],
    buckets=PROPAGATION_BUCKETS,
)
# Events whose occurred_at lies in the future of the worker clock (skew; observed as 0).
CLOCK_SKEW = Counter("dnc_clock_skew_events_total", "Events stamped in the future", ["stage"])
# Dialer checks by answer: callable, suppressed, unavailable.
CHECKS = Counter("dnc_checks_total", "Suppression checks answered", ["outcome"])
# Time to answer one check (a bulk check counts once).
# Reasons checks answered "do not call" for (one per rule that forbade it: opposed,
# no_consent, consent_expired, consent_withdrawn, outside_calling_hours, public_holiday,
# attempt_cap, sector_banned).
CHECK_REASONS = Counter("dnc_check_reasons_total", "Reasons calls were not allowed", ["reason"])
CHECK_SECONDS = Histogram("dnc_check_seconds", "Check latency", buckets=CHECK_BUCKETS)
# 1 when every partition this worker owns is materialised in Redis.
VIEW_READY = Gauge("dnc_view_ready", "The Redis view is complete for the owned partitions")
# Numbers suppressed right now, per tenant (global scope counts as "_global").
SUPPRESSED_NUMBERS = Gauge("dnc_suppressed_numbers", "Suppressed numbers", ["tenant"])
# Consumer lag (messages) per group, topic and partition, as seen by the consumer.
CONSUMER_LAG = Gauge(
    "dnc_consumer_lag", "Consumer lag in messages", ["group", "topic", "partition"]
)
# View rebuilds, by trigger (startup, view_lost, redis_restarted).
VIEW_REBUILDS = Counter("dnc_view_rebuilds_total", "Redis view rebuilds", ["trigger"])
# Transient failures the worker retried (redis, kafka), before the batch went through.
RETRIES = Counter("dnc_worker_retries_total", "Retried side effects", ["dependency"])
# Offsets the worker's stream skipped (detected), fetched again (repaired) or gave up on.
DELIVERY_HOLES = Counter("dnc_delivery_holes_total", "Skipped offsets", ["outcome"])
# Batch sizes: small batches under load mean per-batch round trips bound the throughput.
BATCH_EVENTS = Histogram(
    "dnc_worker_batch_events",
    "Messages per batch the worker applied (a batch is what was fetched, up to the maximum)",
    buckets=(1, 5, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
# Members the view lacks although the worker's table says they are in force, found by the
# worker's continuous reconciliation in its current cycle (per tenant, "_global" for the
# platform scope); any is a lost suppression: the partition is rebuilt, checks fail closed.
VERIFY_MISSING = Gauge(
    "dnc_verify_missing",
    "View members missing although in force, found by the continuous reconciliation",
    ["tenant"],
)
# States the continuous reconciliation compared with the view (its progress).
VERIFY_AUDITED = Counter("dnc_verify_audited_total", "States compared with the view")
# Suppressions ended by their cooldown.
EXPIRED = Counter("dnc_expired_total", "Suppressions expired by their cooldown")
# Last time (unix seconds) the worker vouched for a partition in Redis (wrote its
# applied-through time); a stalled, dead or cut-off worker stops moving it.
WORKER_HEARTBEAT = Gauge(
    "dnc_worker_heartbeat_timestamp_seconds",
    "Last time the worker vouched for the view of a partition",
    ["partition"],
)
# Seconds between Redis's clock and the partition's applied-through time, as the worker last
# saw it; checks answer "unavailable" beyond DNC_MAX_STALENESS_SECONDS.
VIEW_STALENESS = Gauge(
    "dnc_view_staleness_seconds",
    "How far behind Redis's clock the view of a partition is vouched for",
    ["partition"],
)

# --- The reference-list sync (`dnc sync`): one lane per tenant with a sink. -----------------
# Changes read for the tenant and not yet acknowledged by its sink.
REFERENCE_PENDING = Gauge(
    "dnc_reference_list_pending", "Changes waiting for the reference-list sink", ["tenant"]
)
# Age of the oldest change waiting for the sink (0 when none waits).
REFERENCE_OLDEST_PENDING = Gauge(
    "dnc_reference_list_oldest_pending_seconds",
    "Age of the oldest change not yet acknowledged by the sink",
    ["tenant"],
)
# Changes acknowledged by the sink, by tenant and sink (postgres, webhook).
REFERENCE_DELIVERED = Counter(
    "dnc_reference_list_delivered_total", "Changes acknowledged by the sink", ["tenant", "sink"]
)
# Failed delivery attempts by kind: unavailable, timeout, server_error (retried), rejected
# (4xx: dead-lettered), invalid_change (undecodable record: dead-lettered).
REFERENCE_ERRORS = Counter(
    "dnc_reference_list_errors_total", "Reference-list delivery errors", ["tenant", "sink", "kind"]
)

# --- The HTTP gateway (`dnc gateway`). Routes are templates, never a raw path. -------------
GATEWAY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
)  # fmt: skip
# Gateway requests answered, by route template, method and status code.
GATEWAY_REQUESTS = Counter(
    "dnc_gateway_requests_total", "Gateway requests answered", ["route", "method", "status"]
)
# Time to answer a gateway request, by route template.
GATEWAY_REQUEST_SECONDS = Histogram(
    "dnc_gateway_request_seconds", "Gateway request latency", ["route"], buckets=GATEWAY_BUCKETS
)
# Numbers checked through the gateway, by tenant and answer (dialer reads are counted, not logged).
GATEWAY_CHECKS = Counter(
    "dnc_gateway_checks_total", "Numbers checked through the gateway", ["tenant", "outcome"]
)
# Attempts asked through the gateway (POST /v1/attempts), by tenant and outcome: go (one
# attempt reserved and recorded), not_callable (with reasons), unavailable.
GATEWAY_ATTEMPTS = Counter(
    "dnc_gateway_attempts_total", "Attempts asked through the gateway", ["tenant", "outcome"]
)
# Requests refused before reaching an endpoint: missing_token, unknown_token, forbidden_role,
# forbidden_tenant, rate_limited.
GATEWAY_DENIED = Counter("dnc_gateway_denied_total", "Gateway requests refused", ["reason"])
# Audit records by action and result: written (acknowledged), failed (not acknowledged).
AUDIT_RECORDS = Counter("dnc_audit_records_total", "Audit records", ["action", "result"])
# Subject access scans running or waiting on the gateway's own pool (beyond its size: 503).
GATEWAY_SUBJECT_SCANS = Gauge(
    "dnc_gateway_subject_scans_in_flight", "Subject access scans running or waiting"
)


def observe_propagation(stage: str, occurred_at: datetime, visible_at: datetime) -> None:
    """Record propagation to ``stage``; an event stamped in the future counts as skew, never < 0."""
    seconds = (visible_at - occurred_at).total_seconds()
    if seconds < 0:
        CLOCK_SKEW.labels(stage=stage).inc()
        seconds = 0.0
    _propagation(stage).observe(seconds)


@cache
def _propagation(stage: str) -> Any:
    """The stage's child of the histogram (``labels()`` per observation is a lock and a lookup)."""
    return PROPAGATION.labels(stage=stage)
