"""`dnc verify`: reconcile the log of record with the Redis view and the reference lists.

The compacted ``dnc.suppressions.v1`` holds the latest state of every number in every
scope (what the worker's table holds). From it, verify derives what must be true now:

* the **view**: every state in force is a member of its set (a missing one would answer
  "callable": the dangerous difference), and no set holds a member no state explains;
* each tenant's **reference list** (PostgreSQL sinks): one ``reference_list_scope`` row per
  change the tenant's lane delivers, with the same version and suppression.

It reads the topic up to the end offsets it saw when it started; run it once the pipeline
has caught up (`dnc status`), e.g. after an incident. Differences are counted per tenant and
kind; any difference makes the command exit non-zero.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from consumers.checker import SuppressionChecker, checker_client
from consumers.reference_sync import concerns
from schemas.events import GLOBAL_TARGET
from schemas.reference import PostgresSinkConfig
from schemas.settings import Settings
from schemas.state import SuppressionChange
from schemas.tenants import TenantDirectory
from schemas.view import FAMILY_OF_KIND, KIND_OF_FAMILY, ViewLayout, suppression_keys, view_layout

SCAN_BATCH = 1000
STRAY_REREADS = 3  # reads of the log (1 s apart) before a view member counts as unexplained


class VerifyError(Exception):
    """Verification could not run (Kafka, Redis or a database unreachable)."""


@dataclass
class Tally:
    """Counts for one tenant and kind."""

    states: int = 0
    in_force: int = 0
    view_missing: int = 0  # in force, not in the view: a check would answer "callable"
    view_unexpected: int = 0  # in the view, not in force: a wrongful suppression
    reference_missing: int = 0  # no row, or an older one, in the tenant's reference list
    reference_differs: int = 0  # a row with the same version says something else

    @property
    def differences(self) -> int:
        """Everything that is not as the log says."""
        return (
            self.view_missing
            + self.view_unexpected
            + self.reference_missing
            + self.reference_differs
        )


@dataclass
class Reconciliation:
    """What `dnc verify` found."""

    tallies: dict[tuple[str, str], Tally] = field(default_factory=lambda: defaultdict(Tally))
    unexplained_members: dict[str, int] = field(default_factory=dict)  # per owner of the set
    reference_lists: dict[str, str] = field(default_factory=dict)  # tenant -> checked / why not
    view_readiness: str = ""
    changes_read: int = 0

    @property
    def differences(self) -> int:
        """All differences found (view and reference lists)."""
        return sum(t.differences for t in self.tallies.values()) + sum(
            self.unexplained_members.values()
        )

    def tally(self, tenant: str, kind: str) -> Tally:
        """The counters of ``tenant`` (the owner of the scope) and ``kind``."""
        return self.tallies[(tenant, kind)]


def owner_of(target: str) -> str:
    """The tenant a scope target belongs to (``_global`` for the platform-wide scope)."""
    return target.split("/", 1)[0]


def _kind(change: SuppressionChange, now: datetime) -> str:
    if _in_force(change, now):
        return str(change.kind.value if change.kind else "suppressed")
    return "lifted" if change.kind is not None else "expired or never suppressed"


def _in_force(change: SuppressionChange, now: datetime) -> bool:
    return change.suppressed and (change.expires_at is None or change.expires_at > now)


def read_latest_changes(settings: Settings, timeout: float = 30.0) -> dict[str, SuppressionChange]:
    """The latest change per ``target|E164`` in the compacted topic, up to its end now."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"dnc-verify-{uuid.uuid4().hex}",  # never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **settings.kafka_client_config(),
        }
    )
    try:
        topic = settings.suppressions_topic
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise VerifyError(f"topic {topic} does not exist (has the worker ever run?)")
        ends: dict[int, int] = {}
        for p in metadata.topics[topic].partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        remaining = {p for p, high in ends.items() if high > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
        latest: dict[str, SuppressionChange] = {}
        idle_polls = 0
        while remaining:
            message = consumer.poll(1.0)
            if message is None:
                idle_polls += 1
                if idle_polls > timeout:
                    raise VerifyError(f"{topic}: no data for {timeout:.0f}s before its end")
                continue
            idle_polls = 0
            partition, offset = message.partition(), message.offset()
            if message.error() is None and message.value() is not None:
                change = SuppressionChange.model_validate_json(message.value() or b"")
                latest[f"{change.target}|{change.phone_e164}"] = change
            if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                remaining.discard(partition)
        return latest
    except KafkaException as exc:
        raise VerifyError(f"Kafka unreachable: {exc}") from exc
    finally:
        consumer.close()


def _check_view(
    client: redis.Redis,
    layout: ViewLayout,
    changes: dict[str, SuppressionChange],
    now: datetime,
    reread: Callable[[], dict[str, SuppressionChange]],
) -> tuple[list[tuple[SuppressionChange, str]], dict[str, int]]:
    """Per-state view differences and unexplained members, confirmed against a second read.

    The log keeps moving while verify runs: a difference counts only if the number's state
    is still the same in a second read of the log taken after the view was read, and a
    member counts as unexplained only if neither read explains it.
    """
    known: dict[str, set[int]] = defaultdict(set)  # per bucket: every state's member
    asked: list[tuple[SuppressionChange, str, int]] = []
    for change in changes.values():
        slot = layout.slot(change.target, change.phone_e164)
        asked.append((change, slot.key, slot.member))
        known[slot.key].add(slot.member)
    pipe = client.pipeline(transaction=False)
    for _change, base, member in asked:
        for key in suppression_keys(base):  # suppressed: a member of one of them
            pipe.sismember(key, str(member))
    found = iter(pipe.execute())
    candidates: list[tuple[SuppressionChange, str]] = []
    for change, _base, _member in asked:
        present = any([next(found) for _ in FAMILY_OF_KIND])
        if _in_force(change, now) and not present:
            candidates.append((change, "view_missing"))
        elif not _in_force(change, now) and present:
            candidates.append((change, "view_unexpected"))
    # Members no state explains at all (left by a bug, another key, a stray writer).
    strays: list[tuple[str, str, int]] = []
    for raw_key in client.scan_iter(match=layout.pattern(), count=SCAN_BATCH):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        target = layout.target_of(key)
        if target is None or (target.startswith("_") and target != GLOBAL_TARGET):
            continue  # the metadata hash and other bookkeeping keys, not suppression sets
        if key[-1:] not in KIND_OF_FAMILY or not key[:-1].rsplit(":", 1)[-1].isdigit():
            continue  # consents hashes, attempts
        explained = known.get(key[:-1], set())
        strays.extend(
            (key, target, int(raw)) for raw in client.smembers(key) if int(raw) not in explained
        )
    later = changes
    # The worker writes the view before it emits the change record: a member may be in the
    # view a moment before its change is in the log. Read the log again, a few times.
    for attempt in range(STRAY_REREADS if candidates or strays else 0):
        if attempt:
            time.sleep(1.0)
        later = reread()
        for change in later.values():
            slot = layout.slot(change.target, change.phone_e164)
            known[slot.key].add(slot.member)
        strays = [(k, t, m) for k, t, m in strays if m not in known.get(k[:-1], set())]
        if not strays:
            break
    confirmed = [
        (change, what)
        for change, what in candidates
        if (again := later.get(_state_key(change))) is not None and again.version == change.version
    ]
    unexplained: dict[str, int] = defaultdict(int)
    for _key, target, _member in strays:
        unexplained[owner_of(target)] += 1
    return confirmed, dict(unexplained)


def _state_key(change: SuppressionChange) -> str:
    return f"{change.target}|{change.phone_e164}"


def _reference_rows(dsn: str, tenant: str) -> dict[tuple[str, str], tuple[bool, int]]:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT target, phone_e164, suppressed, version FROM reference_list_scope"
            " WHERE tenant = %s",
            (tenant,),
        ).fetchall()
    return {(target, phone): (suppressed, version) for target, phone, suppressed, version in rows}


def _reference_differences(
    delivered: list[SuppressionChange], have: dict[tuple[str, str], tuple[bool, int]]
) -> list[tuple[SuppressionChange, str]]:
    out = []
    for change in delivered:
        row = have.get((change.target, change.phone_e164))
        if row is None or row[1] < change.version:
            out.append((change, "reference_missing"))
        elif row[1] == change.version and row[0] != change.suppressed:
            out.append((change, "reference_differs"))
    return out


def _check_reference_list(
    tenant: str,
    dsn: str,
    changes: dict[str, SuppressionChange],
    found: Reconciliation,
    settle_seconds: float,
) -> list[tuple[SuppressionChange, str]]:
    """Changes the tenant's list lacks; a sync still delivering gets ``settle_seconds``."""
    delivered = [c for c in changes.values() if concerns(c, tenant)]  # what its lane delivers
    deadline = time.monotonic() + settle_seconds
    try:
        have = _reference_rows(dsn, tenant)
        differences = _reference_differences(delivered, have)
        while differences and time.monotonic() < deadline:
            time.sleep(1.0)
            have = _reference_rows(dsn, tenant)
            differences = _reference_differences([c for c, _w in differences], have)
    except psycopg.Error as exc:
        found.reference_lists[tenant] = f"not checked: {str(exc).strip()[:200]}"
        return []
    found.reference_lists[tenant] = f"checked ({len(delivered)} changes, {len(have)} rows)"
    return differences


def _wait_view_through(checker: SuppressionChecker, since_ms: int, settle_seconds: float) -> str:
    """Until every partition of the view is applied through ``since_ms`` (Redis's clock)."""
    deadline = time.monotonic() + settle_seconds
    while True:
        verdict = checker.readiness()
        if verdict.layout_mismatch:
            raise VerifyError(verdict.why or "view layout mismatch")
        behind = [
            p.partition
            for p in verdict.partitions
            if p.applied_ms is None or p.applied_ms < since_ms
        ]
        if verdict.partitions and not behind and verdict.ready:
            return verdict.why or "ready and current"
        if time.monotonic() >= deadline:
            why = verdict.why or f"partitions {behind} behind"
            raise VerifyError(
                f"the view has not applied the log up to when verify started ({why}): run it "
                "again once `dnc status` shows the worker caught up"
            )
        time.sleep(0.2)


def reconcile(
    settings: Settings, tenants: TenantDirectory, settle_seconds: float = 30.0
) -> Reconciliation:
    """Compare the log of record with the view and every PostgreSQL reference list.

    Safe to run while traffic flows: it reads the log, waits until the view has applied
    everything the log held when it started, and counts only differences a second read
    of the log confirms; reference lists get ``settle_seconds`` to deliver what is pending.
    """
    found = Reconciliation()
    client = checker_client(
        settings.redis_url.get_secret_value(), 10, cluster=settings.redis_cluster
    )
    try:
        checker = SuppressionChecker.from_settings(settings, tenants, client)
        seconds, micros = client.time()
        started_ms = int(seconds) * 1000 + int(micros) // 1000
        changes = read_latest_changes(settings)
        found.changes_read = len(changes)
        found.view_readiness = _wait_view_through(checker, started_ms, settle_seconds)
        now = datetime.now(UTC)
        differences, found.unexplained_members = _check_view(
            client, view_layout(settings, tenants), changes, now,
            lambda: read_latest_changes(settings),
        )  # fmt: skip
    except redis.RedisError as exc:
        raise VerifyError(f"Redis unreachable: {exc}") from exc
    finally:
        client.close()
    for name in tenants.names:
        config = tenants.get(name).reference_list
        if isinstance(config, PostgresSinkConfig):
            dsn = config.dsn(settings.postgres_dsn.get_secret_value())
            differences += _check_reference_list(name, dsn, changes, found, settle_seconds)
        elif config is not None:
            found.reference_lists[name] = f"not checked ({config.sink}: the client's system)"
    for change in changes.values():
        tally = found.tally(owner_of(change.target), _kind(change, now))
        tally.states += 1
        tally.in_force += 1 if _in_force(change, now) else 0
    for change, what in differences:
        tally = found.tally(owner_of(change.target), _kind(change, now))
        setattr(tally, what, getattr(tally, what) + 1)
    return found


def as_json(found: Reconciliation) -> dict[str, Any]:
    """The reconciliation as plain data (`dnc verify --json`)."""
    return {
        "changes_read": found.changes_read,
        "view": found.view_readiness,
        "differences": found.differences,
        "tallies": [
            {"tenant": tenant, "kind": kind, **vars(t), "differences": t.differences}
            for (tenant, kind), t in sorted(found.tallies.items())
        ],
        "unexplained_view_members": found.unexplained_members,
        "reference_lists": found.reference_lists,
        "global_target": GLOBAL_TARGET,
    }
