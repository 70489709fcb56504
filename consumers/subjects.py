"""A data subject's access request: everything held about one number for one tenant.

The oppositions topic is the log of record, so the history is read from it, not from a
copy: every event is keyed ``tenant:E164`` (``_global:E164`` for the global scope) and
murmur2-partitioned, so only the partitions of those two keys are read, from the start,
keeping the events with exactly those keys. The current state is the history applied with
the worker's own rules (:func:`streams.rules.apply_event`). Only this tenant's events are
shown: a global-scope event recorded by another tenant belongs to that tenant. A message
under those keys that the worker could not apply either (bad JSON, nested too deep, invalid)
is listed as unreadable; the rest of the answer stands. What the tenant's reference list was
given comes from :mod:`consumers.subject_reference`.

The scan is bounded in time and messages; the report says when it was truncated. Scans run
on a small pool of their own (:class:`SubjectScanPool`), never on the threads that serve
dialers' checks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, Field

from consumers.keyed_scan import Found, KeyedScanError, reader, scan_keys
from consumers.subject_reference import ReferenceListReader, ReferenceListReport
from schemas.authority import forwarded_cutoff, verifying_key
from schemas.errors import DncError, InvalidEventError
from schemas.events import (
    GLOBAL_TARGET,
    ConsentSource,
    Kind,
    OppositionEvent,
    Scope,
    Source,
    decode_event,
)
from schemas.metrics import GATEWAY_SUBJECT_SCANS
from schemas.settings import Settings
from schemas.state import SuppressionChange, SuppressionState
from schemas.tenants import TenantDirectory
from streams.rules import apply_event

log = logging.getLogger(__name__)
T = TypeVar("T")


class SubjectScanError(DncError):
    """The event log could not be read (Kafka unreachable, topic missing)."""


class SubjectScansBusy(DncError):
    """Every subject-access worker is busy and the queue is full: ask again shortly."""


class LoggedEvent(BaseModel):
    """One event about the subject, where it sits in the log, and what it did."""

    event_id: uuid.UUID
    kind: Kind
    scope: Scope
    campaign_id: str | None = None
    phone: str = Field(description="the number as it was given")
    source: Source
    agent_id: str | None = None
    reason_code: str | None = None
    justification: str | None = None
    occurred_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    partition: int
    offset: int
    logged_at: AwareDatetime | None = Field(None, description="Kafka timestamp of the message")
    effect: Literal["applied", "duplicate", "stale", "lift_not_authorised", "unverified"] = Field(
        description="what the event did under the apply rules (a lift not from an admin: "
        "nothing, the worker refused it; unverified: a lift this gateway cannot check without "
        "the workers' DNC_AUTHORITY_KEY, left out of current_state, see `view`)"
    )


class ConsentEntry(BaseModel):
    """A consent recorded for the subject, with its proof, and what ended it (if anything).

    Read from the consents topic, which only consent recorders write (Kafka ACLs); kept
    there for good (the proof duty outlives the consent by years)."""

    event_id: uuid.UUID
    scope: Scope
    campaign_id: str | None = None
    captured_at: AwareDatetime
    expires_at: AwareDatetime = Field(description="its end: asked, or captured_at + validity")
    source: ConsentSource
    proof_ref: str = Field(description="where the proof is archived")
    wording_version: str | None = None
    recorded_by: str | None = None
    recorded_at: AwareDatetime | None = Field(None, description="when the log recorded it")
    ended_by: uuid.UUID | None = Field(
        None, description="the consent withdrawal (appended after it) that ended it"
    )
    ended_at: AwareDatetime | None = None
    valid: bool = Field(description="in force now: not withdrawn, not expired")


class UnreadableMessage(BaseModel):
    """A message under the subject's key that the worker could not apply (dead-lettered)."""

    partition: int
    offset: int
    logged_at: AwareDatetime | None = None
    reason: str = Field(description="e.g. malformed_json, too_deeply_nested, invalid_phone")


class ScanInfo(BaseModel):
    """How the log was read."""

    topic: str
    partitions: list[int]
    messages_scanned: int
    events_found: int
    skipped_invalid: int = Field(description="messages with the key that the worker dead-letters")
    truncated: bool = Field(description="true when the time or size bound stopped the scan")
    seconds: float


class ViewAnswer(BaseModel):
    """What a dialer's check for this tenant answers right now (Redis view)."""

    answer: Literal["callable", "suppressed", "unavailable"]
    scope: Scope | None = None
    why: str | None = None


class SubjectReport(BaseModel):
    """Everything the platform holds about one number for one tenant."""

    tenant: str
    phone_e164: str
    generated_at: AwareDatetime
    current_state: list[SuppressionChange] = Field(
        description="per scope (tenant, campaigns, global), the state this tenant's events made"
    )
    view: ViewAnswer | None = None
    consents: list[ConsentEntry] = Field(
        default_factory=list, description="consents recorded for this tenant, with their proof"
    )
    events: list[LoggedEvent]
    unreadable: list[UnreadableMessage] = Field(
        default_factory=list, description="messages under the subject's key that were not events"
    )
    reference_list: ReferenceListReport = Field(
        description="what was delivered about the number to the tenant's reference list"
    )
    scan: ScanInfo


class SubjectLog:
    """Reads a subject's events from the oppositions topic (sync: run it in a thread)."""

    def __init__(self, settings: Settings, tenants: TenantDirectory) -> None:
        self._settings = settings
        self._tenants = tenants
        self._reference = ReferenceListReader(settings, tenants)
        self._authority = verifying_key(settings)  # None: lifts cannot be verified here

    def report(self, tenant: str, phone_e164: str) -> SubjectReport:
        """The history and current state of ``phone_e164`` for ``tenant``."""
        now = datetime.now(UTC)
        keys = {f"{tenant}:{phone_e164}".encode(), f"{GLOBAL_TARGET}:{phone_e164}".encode()}
        found, scan = self._scan(keys)
        cooldown = self._tenants.get(tenant).refusal_cooldown
        states: dict[str, SuppressionState] = {}
        events: list[LoggedEvent] = []
        unreadable: list[UnreadableMessage] = []
        # Consents (the consents topic) interleaved by when they were recorded, so that a
        # withdrawal recorded after one ends it by name (the worker's order, by cutoffs).
        grants = self._consents(tenant, phone_e164)
        for item in found:
            while grants and grants[0][0] <= (item.timestamp_ms or 0):
                self._apply_consent(states, *grants.pop(0), now)
            event = self._decode(item, unreadable)
            if event is None:
                continue
            if event.tenant != tenant or event.phone_e164 != phone_e164:
                continue
            if event.kind is Kind.CONSENT:
                continue  # a forwarded copy: the consents topic is read below, as recorded
            cutoff = None
            if event.kind is Kind.LIFT:
                cutoff = forwarded_cutoff(self._authority, item.value, item.headers)
                if cutoff is None:
                    # Refused by the worker (lift_not_authorised): it changed nothing. Or this
                    # process lacks DNC_AUTHORITY_KEY and cannot tell: left out of the state.
                    refused = "lift_not_authorised" if self._authority else "unverified"
                    events.append(_logged(event, item, refused))
                    continue
            applied = apply_event(  # the worker's rules, in the same log order
                states.get(event.target),
                event,
                now=now,
                refusal_cooldown=cooldown,
                partition=item.partition,
                offset=item.offset,
                appended_ms=item.timestamp_ms,
                lift_cutoff_ms=cutoff,
            )
            states[event.target] = applied.state
            events.append(_logged(event, item, applied.outcome.value))
        for grant in grants:
            self._apply_consent(states, *grant, now)
        scan.events_found = len(events)
        scan.skipped_invalid = len(unreadable)
        return SubjectReport(
            tenant=tenant,
            phone_e164=phone_e164,
            generated_at=now,
            current_state=[SuppressionChange.of(s, now, "event") for s in states.values()],
            consents=consent_entries(states, tenant, now),
            events=events,
            unreadable=unreadable,
            reference_list=self._reference.report(tenant, phone_e164, set(states)),
            scan=scan,
        )

    def _decode(self, item: Found, unreadable: list[UnreadableMessage]) -> OppositionEvent | None:
        """The event, or None with the message listed as unreadable (as the worker would)."""
        try:
            return decode_event(item.value, self._tenants, self._settings.max_event_bytes)
        except InvalidEventError as exc:
            reason = exc.reason
        except RecursionError:  # json.loads on arrays or objects nested thousands deep
            reason = "too_deeply_nested"
        except Exception as exc:  # the worker dead-letters these as processing_error
            log.warning(
                "subject access: message %d@%d unreadable: %s",
                item.partition,
                item.offset,
                type(exc).__name__,
            )
            reason = "processing_error"
        unreadable.append(
            UnreadableMessage(
                partition=item.partition,
                offset=item.offset,
                logged_at=_logged_at(item),
                reason=reason,
            )
        )
        return None

    def _consents(self, tenant: str, phone_e164: str) -> list[tuple[int, OppositionEvent, Found]]:
        """The consents recorded for the subject, (when recorded, event, message), in order:
        read from the consents topic, which its consent recorders alone write."""
        found, _info = self._scan(
            {f"{tenant}:{phone_e164}".encode()}, self._settings.consents_topic
        )
        grants = []
        for item in found:
            event = self._decode(item, [])
            if event is None or event.kind is not Kind.CONSENT or item.timestamp_ms is None:
                continue
            if event.tenant == tenant and event.phone_e164 == phone_e164:
                grants.append((item.timestamp_ms, event, item))
        return sorted(grants, key=lambda g: g[0])

    def _apply_consent(
        self,
        states: dict[str, SuppressionState],
        recorded_ms: int,
        event: OppositionEvent,
        item: Found,
        now: datetime,
    ) -> None:
        """A consent applied as the worker applies its forwarded copy: its place in log
        order is when the consents topic recorded it."""
        policy = self._tenants.policy(event.tenant, event.campaign_id)
        applied = apply_event(
            states.get(event.target), event, now=now,
            refusal_cooldown=self._tenants.get(event.tenant).refusal_cooldown,
            partition=item.partition, appended_ms=recorded_ms, lift_cutoff_ms=recorded_ms,
            consent_until=policy.consent_expires_at(event.occurred_at, event.expires_at),
        )  # fmt: skip
        states[event.target] = applied.state

    def _scan(self, keys: set[bytes], topic: str | None = None) -> tuple[list[Found], ScanInfo]:
        s = self._settings
        topic = topic or s.oppositions_topic
        started = time.monotonic()
        consumer = reader(s, "dnc-subject-access")
        try:
            scan = scan_keys(
                consumer,
                topic,
                keys,
                seconds=s.gateway_subject_scan_seconds,
                max_messages=s.gateway_subject_scan_max_messages,
            )
        except KeyedScanError as exc:
            raise SubjectScanError(str(exc)) from exc
        finally:
            consumer.close()
        info = ScanInfo(
            topic=topic,
            partitions=scan.partitions,
            messages_scanned=scan.scanned,
            events_found=0,
            skipped_invalid=0,
            truncated=scan.truncated,
            seconds=round(time.monotonic() - started, 3),
        )
        return scan.found, info


def consent_entries(
    states: dict[str, SuppressionState], tenant: str, now: datetime
) -> list[ConsentEntry]:
    """The consents of ``states`` (tenant-wide and per campaign), each with what ended it: a
    withdrawal of its scope, or of a wider one (the tenant's, or the platform's), appended
    after it (the rules of :mod:`consumers.dial_rules`)."""

    def marker(target: str) -> int:
        state = states.get(target)
        return state.withdrawn_ms if state is not None and state.withdrawn_ms is not None else -1

    wider = max(marker(GLOBAL_TARGET), marker(tenant))
    entries = []
    for target, state in states.items():
        if target != tenant and not target.startswith(f"{tenant}/"):
            continue
        for c in state.consents:
            ended_ms = c.ended_ms
            covering = max(wider, marker(target))
            if ended_ms is None and covering >= c.granted_ms:
                ended_ms = covering
            entries.append(ConsentEntry(
                event_id=c.event_id, scope=state.scope, campaign_id=state.campaign_id,
                captured_at=c.captured_at, expires_at=c.expires_at, source=c.source,
                proof_ref=c.proof_ref, wording_version=c.wording_version,
                recorded_by=c.recorded_by, recorded_at=_ms(c.granted_ms), ended_by=c.ended_by,
                ended_at=None if ended_ms is None else _ms(ended_ms),
                valid=ended_ms is None and c.expires_at > now,
            ))  # fmt: skip
    return sorted(entries, key=lambda e: e.captured_at)


def _ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class SubjectScanPool:
    """Runs subject-access scans on ``workers`` threads of their own, with at most ``queue``
    more waiting; beyond that :class:`SubjectScansBusy` (the gateway answers 503).

    A scan reads Kafka for up to seconds: on the threads that serve dialers' checks, a few
    administrators would starve the checks. A scan whose caller gave up still holds its
    place until it ends, so the bound is on the work, not on the requests.
    """

    def __init__(self, workers: int, queue: int) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="subject-scan")
        self._places = threading.BoundedSemaphore(workers + queue)
        self.capacity = workers + queue

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on the pool; :class:`SubjectScansBusy` when it is full."""
        if not self._places.acquire(blocking=False):
            raise SubjectScansBusy(
                f"{self.capacity} subject access requests are already running or waiting"
            )
        GATEWAY_SUBJECT_SCANS.inc()
        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _done: self._release())
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        GATEWAY_SUBJECT_SCANS.dec()
        self._places.release()

    def close(self) -> None:
        """Stop taking scans; scans that run finish on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _logged_at(item: Found) -> datetime | None:
    if item.timestamp_ms and item.timestamp_ms > 0:
        return datetime.fromtimestamp(item.timestamp_ms / 1000, UTC)
    return None


def _logged(event: OppositionEvent, item: Found, effect: str) -> LoggedEvent:
    return LoggedEvent.model_validate(
        {
            **event.model_dump(
                include={
                    "event_id",
                    "kind",
                    "scope",
                    "campaign_id",
                    "phone",
                    "source",
                    "agent_id",
                    "reason_code",
                    "justification",
                    "occurred_at",
                    "expires_at",
                }
            ),
            "partition": item.partition,
            "offset": item.offset,
            "logged_at": _logged_at(item),
            "effect": effect,
        }
    )
