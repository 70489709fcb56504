"""One batch of opposition messages: decode -> validate -> route -> apply -> write view -> emit.

Routing (authority and order, see :mod:`schemas.authority`): an event is applied only on the
partition of its canonical key (``tenant:E164`` or ``_global:E164``); one read elsewhere, or
under another key, is forwarded there first, and so is every admin action read on the admin
topic (its cutoff signed with it); a lift on the oppositions topic without a valid signature
of the worker over it and its cutoff is dead-lettered. So one number's history has one log
order, and only admins end suppressions, only those appended before they acted. A dead letter
of an admin action records its cutoff, signed, for its replay.

Order of durability (the offsets move only after :meth:`process` returns):
1. the Redis view is written (dialers see the change) and, at the same time, the forwarded
   events, change records, dead letters and the table's changelog records are produced
   together and acknowledged by Kafka (one wait per batch),
2. the table's store persists the batch's states with their changelog offsets (on disk:
   never ahead of its changelog, :mod:`streams.table_store`),
then the events are acked and their offsets may be committed. A crash anywhere before
that replays the batch; every effect is idempotent, so a replay changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol, cast

from schemas.authority import FORWARDED_FROM_HEADER
from schemas.errors import InvalidEventError
from schemas.events import Kind, OppositionEvent, decode_event
from schemas.metrics import DEAD_LETTERS, EVENTS, SUPPRESSED_NUMBERS, observe_propagation
from schemas.partitioning import key_partition
from schemas.settings import Settings
from schemas.state import SuppressionChange, SuppressionState, state_key
from schemas.tenants import TenantDirectory
from streams.admin_actions import AUTHORISED_KINDS, AdminActions
from streams.expiry import ExpirySchedule
from streams.fencing import OwnershipLost, Revocations
from streams.ownership import PartitionRevoked
from streams.retry import until_done
from streams.rules import Outcome, apply_event
from streams.view_writer import SuppressionViewWriter

log = logging.getLogger("dnc.streams")


@dataclass(frozen=True)
class SourceMessage:
    """What the processor needs of one Kafka message."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes | None], ...] = ()
    appended_ms: int | None = None  # the broker's LogAppendTime, when the topic has it


@dataclass(frozen=True)
class DeadLetter:
    """A message that cannot be applied, with the reason (and, for an admin action, its
    signed cutoff: headers its replay carries)."""

    message: SourceMessage
    reason: str
    detail: str
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Forward:
    """An event to append to its canonical partition of the oppositions topic."""

    message: SourceMessage
    key: bytes
    partition: int
    headers: tuple[tuple[str, bytes], ...]


class StateStoreBroken(Exception):
    """A :class:`StateTable`'s storage failed a read or a write: its content cannot be
    trusted. Never taken for bad input: it ends the batch (see streams/table_store.py)."""

    def __init__(self, partition: int, path: str, cause: BaseException) -> None:
        super().__init__(f"the table's database of partition {partition} ({path}) failed: "
                         f"{cause!r}")  # fmt: skip
        self.partition = partition
        self.path = path


class StateTable(Protocol):
    """The slice of the Faust table the processor uses.

    Values are the states' JSON bytes, the very bytes of their changelog records: what Faust
    recovers from the changelog as is (no decoding per record) and the cyclic garbage
    collector never scans (a table of millions of models made every full collection walk
    all of them). A batch reads states by key and partition, and writes them with
    ``persist`` only once their changelog records (:attr:`Outgoing.states`) are
    acknowledged, with the offset of each partition's last record: the store never holds a
    state its changelog does not (:mod:`streams.table_store`).
    """

    def get(self, key: str, partition: int) -> bytes | None: ...

    def stage(self, states: Mapping[str, tuple[int, bytes]]) -> None:
        """``states`` (key -> (partition, value)) reach the view before Kafka acknowledges
        them: whoever reads the table for the view meanwhile (a rebuild) sees them."""
        ...

    def unstage(self, states: Mapping[str, tuple[int, bytes]]) -> None:
        """The batch that staged ``states`` persisted them, failed or was abandoned (its
        events replay); a key staged again since (by a later batch) stays."""
        ...

    def persist(self, states: Mapping[str, tuple[int, bytes]], offsets: Mapping[int, int]) -> None:
        """``states`` are durable in the changelog, each partition's last record at
        ``offsets``: the store may hold them."""
        ...


@dataclass
class Outgoing:
    """Everything one batch sends to Kafka; acknowledged as a whole before its offsets move."""

    forwards: list[Forward] = field(default_factory=list)
    changes: list[tuple[int, SuppressionChange]] = field(default_factory=list)  # (partition, ...)
    dead: list[DeadLetter] = field(default_factory=list)
    states: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # (partition, state JSON)
    # Filled by the sink once acknowledged: per partition, the offset of its last changelog
    # record (what the table's store records with the states, see StateTable).
    changelog_offsets: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.forwards or self.changes or self.dead or self.states)


class ChangeSink(Protocol):
    """Where forwarded events, change records, dead letters and changelog records go."""

    async def publish(self, out: Outgoing) -> list[int]:
        """Returns once all is acknowledged: the offsets the forwards landed at."""
        ...


@dataclass(frozen=True)
class ForwardedEvent:
    """An event of the log applied elsewhere: forwarded to its canonical partition."""

    partition: int  # where it was read
    offset: int
    canonical: int  # the partition it was forwarded to
    landed: int  # its offset there


@dataclass
class BatchResult:
    """What one batch did, for logs and tests."""

    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    rejected: int = 0
    forwarded: int = 0
    changed_keys: list[str] = field(default_factory=list)
    # Forwards of events read on the log topic: applied only once the canonical
    # partition's frontier passes them (the forwarding partition waits for that).
    forwards: list[ForwardedEvent] = field(default_factory=list)


def load_state(raw: Any) -> SuppressionState | None:
    """Table value to state: the state's JSON bytes (or that JSON decoded, as a dict)."""
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray):
        return SuppressionState.model_validate_json(raw)
    return SuppressionState.model_validate(raw)


def encode_state(state: SuppressionState) -> bytes:
    """The table value and changelog record of ``state``: its JSON (``model_dump(mode="json")``)."""
    return _STATE_JSON.to_json(state)


_STATE_JSON = SuppressionState.__pydantic_serializer__


@cache
def _events_counter(kind: str, outcome: str) -> Any:
    """The child of ``dnc_events_total`` (``labels()`` per event is a lock and a lookup)."""
    return EVENTS.labels(kind=kind, outcome=outcome)


def _kind_label(raw: bytes) -> str:
    """The event's kind for the metric label, bounded to known kinds."""
    try:
        kind = json.loads(raw).get("kind")
    except Exception:
        return "unknown"
    return kind if kind in Kind._value2member_map_ else "unknown"


class OppositionProcessor:
    """Applies batches of raw messages to the table and propagates the changes."""

    def __init__(
        self,
        *,
        table: StateTable,
        view: SuppressionViewWriter,
        sink: ChangeSink,
        tenants: TenantDirectory,
        settings: Settings,
        expiry: ExpirySchedule,
        view_lock: asyncio.Lock,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        revocations: Revocations | None = None,
    ) -> None:
        self._revocations = revocations or Revocations()
        self._table = table
        self._view = view
        self._sink = sink
        self._tenants = tenants
        self._settings = settings
        self._expiry = expiry
        self._view_lock = view_lock
        self._clock = clock
        self._admin = AdminActions(settings)
        self._partitions = settings.partitions

    async def process(self, batch: Sequence[SourceMessage]) -> BatchResult:
        """Apply a batch of messages; never raises on bad input."""
        now = self._clock()
        seen = self._revocations.snapshot()
        result = BatchResult()
        touched: dict[str, SuppressionState] = {}
        emitted: dict[str, SuppressionState] = {}
        applied_at: dict[str, list[datetime]] = {}  # state key -> occurred_at applied
        out = Outgoing()
        for message in batch:
            outcome = self._apply_one(message, now, touched, emitted, applied_at, out)
            if outcome is Outcome.APPLIED:
                result.applied += 1
            elif outcome is Outcome.DUPLICATE:
                result.duplicates += 1
            elif outcome is Outcome.STALE:
                result.stale += 1
            elif outcome is Outcome.FORWARDED:
                result.forwarded += 1
            else:
                result.rejected += 1
        self._table.stage(out.states)  # (before the view write: see StateTable.stage)
        try:
            landed = await self._propagate(touched, emitted, applied_at, out, now, seen)
            if out.states:  # durable in Kafka: the store may hold them now
                self._table.persist(out.states, out.changelog_offsets)
        finally:  # persisted, or never made durable (not acked: the events replay)
            self._table.unstage(out.states)
        result.changed_keys = list(emitted)
        result.forwards = [
            ForwardedEvent(f.message.partition, f.message.offset, f.partition, at)
            for f, at in zip(out.forwards, landed, strict=True)
            if f.message.topic == self._settings.oppositions_topic
        ]
        return result

    def _apply_one(
        self,
        message: SourceMessage,
        now: datetime,
        touched: dict[str, SuppressionState],
        emitted: dict[str, SuppressionState],
        applied_at: dict[str, list[datetime]],
        out: Outgoing,
    ) -> Outcome:
        dead, forwards = out.dead, out.forwards
        try:
            event = decode_event(message.value, self._tenants, self._settings.max_event_bytes)
        except InvalidEventError as exc:
            _events_counter(_kind_label(message.value), Outcome.REJECTED).inc()
            dead.append(self._dead(message, exc.reason, exc.message))
            return Outcome.REJECTED
        except Exception as exc:  # a bug must not stop the pipeline nor lose the message
            log.exception("unexpected error decoding offset %s", message.offset)
            _events_counter("unknown", Outcome.REJECTED).inc()
            dead.append(self._dead(message, "processing_error", repr(exc)[:500]))
            return Outcome.REJECTED
        try:
            route = self._route(event, message)
            if isinstance(route, DeadLetter):
                _events_counter(event.kind, Outcome.REJECTED).inc()
                dead.append(route)
                return Outcome.REJECTED
            if route is not None:
                _events_counter(event.kind, Outcome.FORWARDED).inc()
                forwards.append(route)
                return Outcome.FORWARDED
            return self._apply_valid(event, message, now, touched, emitted, applied_at, out)
        except StateStoreBroken:
            raise  # (the event is fine: the worker's storage is not)
        except Exception as exc:
            log.exception("unexpected error applying event %s", event.event_id)
            _events_counter(event.kind, Outcome.REJECTED).inc()
            dead.append(self._dead(message, "processing_error", repr(exc)[:500]))
            return Outcome.REJECTED

    def _route(self, event: OppositionEvent, message: SourceMessage) -> Forward | DeadLetter | None:
        """Where ``event`` belongs: applied here (None), forwarded, or refused."""
        authorised = self._admin.authorised_kind(message.topic)
        misplaced = self._admin.misplaced(message, event.kind)
        if misplaced is not None:
            return self._dead(message, *misplaced)
        cutoff = self._admin.cutoff(message)
        if event.kind in AUTHORISED_KINDS and cutoff is None:
            return self._dead(message, *self._admin.refusal(message, event.kind))
        key = event.kafka_key
        partition = key_partition(key, self._partitions)
        if authorised is None and message.key == key and message.partition == partition:
            return None
        origin = f"{message.topic}/{message.partition}/{message.offset}".encode()
        headers: list[tuple[str, bytes]] = [(FORWARDED_FROM_HEADER, origin)]
        if cutoff is not None:  # an admin action, or one forwarded already: signed again
            headers += self._admin.forward_headers(message, cutoff)
        return Forward(message, key, partition, tuple(headers))

    def _consent_until(self, event: OppositionEvent) -> datetime | None:
        """A consent's longest life: when it was captured plus its campaign's validity."""
        if event.kind is not Kind.CONSENT:
            return None
        policy = self._tenants.policy(event.tenant, event.campaign_id)
        return policy.consent_expires_at(event.occurred_at, event.expires_at)

    def _dead(self, message: SourceMessage, reason: str, detail: str) -> DeadLetter:
        """A dead letter; an admin action's records its cutoff, signed, for its replay."""
        return DeadLetter(message, reason, detail, tuple(self._admin.dead_letter_headers(message)))

    def _apply_valid(
        self,
        event: OppositionEvent,
        message: SourceMessage,
        now: datetime,
        touched: dict[str, SuppressionState],
        emitted: dict[str, SuppressionState],
        applied_at: dict[str, list[datetime]],
        out: Outgoing,
    ) -> Outcome:
        assert event.phone_e164 is not None
        key = state_key(event.target, event.phone_e164)
        before = touched.get(key) or load_state(self._table.get(key, message.partition))
        cooldown = self._tenants.get(event.tenant).refusal_cooldown
        application = apply_event(
            before,
            event,
            now=now,
            refusal_cooldown=cooldown,
            partition=message.partition,
            offset=message.offset,
            appended_ms=message.appended_ms,
            lift_cutoff_ms=self._admin.cutoff(message) if event.kind in AUTHORISED_KINDS else None,
            consent_until=self._consent_until(event),
        )
        _events_counter(event.kind, application.outcome).inc()
        state = application.state
        # Consents and attempts change no suppression: no change record for the reference
        # list (the view and the table record them).
        changes_suppression = event.kind not in (Kind.CONSENT, Kind.ATTEMPT)
        if application.outcome is Outcome.APPLIED or (
            application.outcome is Outcome.STALE and state is not before
        ):  # (a stale event is remembered as seen: stored, no change to emit)
            # Its changelog record; stored in the table once acknowledged (``touched``
            # holds it for the rest of the batch).
            out.states[key] = (message.partition, encode_state(state))
            if changes_suppression and application.outcome is Outcome.APPLIED:
                applied_at.setdefault(key, []).append(event.occurred_at)
                emitted[key] = state
            _count_suppressed(before, state, now)
            expiry = state.next_expiry(now)
            if expiry is not None:
                self._expiry.schedule(key, expiry)
        elif application.outcome is Outcome.DUPLICATE:
            # A replay may find the table ahead of the view, the change records or the
            # changelog (a batch applied in memory, never made durable): write them again
            # (idempotent) rather than trust they were done.
            out.states[key] = (message.partition, encode_state(state))
            if changes_suppression:
                emitted[key] = state
        touched[key] = state
        return application.outcome

    async def _propagate(
        self,
        touched: dict[str, SuppressionState],
        emitted: dict[str, SuppressionState],
        applied_at: dict[str, list[datetime]],
        out: Outgoing,
        now: datetime,
        seen: Mapping[int, int],
    ) -> list[int]:
        """Write the view and produce everything, at once; the offsets the forwards landed at.

        The two are independent: the batch's offsets are committed only once both are done,
        so a crash between them replays the batch (a duplicate writes both again), and a
        write refused for a newer owner is refused by both fences (its claim on the view
        came after its transactional producer fenced this worker's). Running them together
        hides the Redis round trip behind Kafka's.

        Nothing is written for a batch whose partitions were revoked since it started
        (``seen``: :meth:`streams.fencing.Revocations.snapshot` then): see Revocations.
        """
        retry_cap = self._settings.retry_backoff_max_seconds
        partitions = {s.partition for s in touched.values()}
        out.changes = [
            (
                s.partition,
                SuppressionChange.of(
                    s, now, cause="event", event_occurred_at=applied_at.get(key, [None])[-1]
                ),
            )
            for key, s in emitted.items()
        ]
        dead = out.dead

        async def write_view() -> None:
            async with self._view_lock:
                self._revocations.check(seen, partitions)
                await self._view.write(touched.values(), now)

        async def view_step() -> None:
            await until_done(
                write_view, what="view write", dependency="redis", max_backoff=retry_cap
            )
            visible_at = datetime.now(UTC)
            for stamps in applied_at.values():
                for occurred_at in stamps:
                    observe_propagation("suppression_view", occurred_at, visible_at)

        async def publish() -> list[int]:
            self._revocations.check(
                seen,
                partitions | {p for p, _c in out.changes} | {p for p, _v in out.states.values()},
            )
            try:
                return await self._sink.publish(out)
            except PartitionRevoked as exc:
                # Faust revoked the partition while this batch was applied in memory (a
                # worker paused past the session timeout): the batch can never be made
                # durable here, and the memory it changed is not the partition's any more.
                raise OwnershipLost(
                    f"{exc}, but this batch holds its events applied in memory and not yet "
                    "durable: its new owner replays them from the committed offsets"
                ) from exc

        async def publish_step() -> list[int]:
            if not out:
                return []
            return await until_done(
                publish, what="publish to Kafka", dependency="kafka", max_backoff=retry_cap
            )

        steps = [publish_step(), *([view_step()] if touched else [])]
        # Both run to their end (a step is never cancelled halfway: a transaction runs on a
        # thread that cancelling would not stop); a lost ownership is raised first.
        outcomes = await asyncio.gather(*steps, return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, OwnershipLost)), errors[0])
        landed = cast(list[int], outcomes[0])
        for letter in dead:
            DEAD_LETTERS.labels(reason=letter.reason).inc()
            # The detail may quote the number: it goes to the dead-letter headers and DEBUG only.
            log.warning(
                "dead-lettered %s[%d]@%d: %s",
                letter.message.topic,
                letter.message.partition,
                letter.message.offset,
                letter.reason,
            )
            log.debug("dead-letter detail for offset %d: %s", letter.message.offset, letter.detail)
        return landed


def _count_suppressed(
    before: SuppressionState | None, after: SuppressionState, now: datetime
) -> None:
    was = before is not None and before.effective(now) is not None
    now_suppressed = after.effective(now) is not None
    if was != now_suppressed:
        # Not a cached child: a rebuild clears this gauge's children and sets them anew.
        owner = after.target.split("/", 1)[0]
        SUPPRESSED_NUMBERS.labels(tenant=owner).inc(1 if now_suppressed else -1)
