"""The worker's housekeeping: rebuild the view when it is lost or wrong, vouch for it, expire.

A rebuild happens when this worker's owned partitions change (start, rebalance), when
the view's metadata is gone or incomplete (Redis flushed or restarted empty), when Redis
restarted at all (it may have reloaded an old snapshot), when the view was written with
another layout (key or bucket counts: the old members are garbage, the view is wiped
first), when a key this worker filled has vanished (evicted or deleted), when a write or a
vouch found the partition's claim gone, and when the continuous reconciliation
(:mod:`streams.audit`) finds a member in force missing. The worker refuses to serve at all
on a Redis whose eviction policy may drop view keys.

A rebuild first claims its partitions (a fence record in Kafka, then the claim in the
view's metadata: :mod:`streams.ownership`), writes under that claim, and is marked ready
only if the claim and the Redis instance are unchanged at the end: a flush, an empty
restart, a restore or a failover during the rebuild makes it start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from schemas.metrics import (
    EXPIRED,
    SUPPRESSED_NUMBERS,
    VIEW_READY,
    VIEW_REBUILDS,
    VIEW_STALENESS,
    WORKER_HEARTBEAT,
)
from schemas.state import SuppressionChange, SuppressionState
from schemas.view import (
    FAMILY_OF_KIND,
    META_LAYOUT,
    META_PARTITIONS,
    covered_field,
    fence_field,
    instance_field,
    ready_field,
)
from streams.audit import ViewAudit, in_force_partition
from streams.expiry import ExpirySchedule
from streams.fencing import OwnershipLost
from streams.ownership import PartitionProducers
from streams.processor import ChangeSink, Outgoing, load_state
from streams.retry import until_done
from streams.view_writer import (
    EVICTING_POLICIES,
    WRITE_CHUNK,
    SuppressionViewWriter,
    ViewBatch,
    ViewLost,
    ViewMoved,
)

log = logging.getLogger("dnc.streams")

BUSY_AUDIT_SHARE = 10  # the audit's slice shrinks this much while a backlog is applied
LOSS_CHECK_EVERY = 2  # ticks between checks that every filled key still exists
# Triggers on which a view this worker left intact is adopted rather than rebuilt: a start,
# a rebalance. Every other one means the view may lack something.
ADOPTING_TRIGGERS = frozenset({"startup", "rebalance"})
# Longest wait of the agent for the first tick after a start or a rebalance (see decided()):
# past it, batches are applied whatever the view (Redis down: they go on to Kafka).
DECISION_WAIT_SECONDS = 5.0
# An adopted view's indexing (see ViewMaintenance._index) starts after the first vouch, or
# this long after the adoption if none comes (Redis or Kafka out of reach): it would only
# slow that vouch down (dialers get "unavailable" until it) on a busy core.
INDEX_AFTER_VOUCH_SECONDS = 10.0
INDEX_SLICE = 250  # states indexed between two returns to the event loop (a few ms)


class ViewMaintenance:
    """Keeps the Redis view complete and honest about its readiness and freshness.

    A rebuild holds the view lock so the agent's writes cannot interleave with it, and
    marks partitions ready only at the end; they are current again only once the worker
    vouches for them (:meth:`vouch`), i.e. once it has applied the log's backlog.
    """

    def __init__(
        self,
        *,
        table: Any,
        view: SuppressionViewWriter,
        sink: ChangeSink,
        ownership: PartitionProducers,
        expiry: ExpirySchedule,
        view_lock: asyncio.Lock,
        total_partitions: int,
        retry_backoff_max: float,
        audit: ViewAudit | None = None,
        audit_budget: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._table = table
        self._view = view
        self._sink = sink
        self._ownership = ownership
        self._expiry = expiry
        self._lock = view_lock
        self._total = total_partitions
        self._retry_cap = retry_backoff_max
        self._audit = audit
        self._audit_budget = audit_budget
        self._clock = clock
        self._materialised: frozenset[int] | None = None
        self._run_id: str | None = None
        self._ticks = 0
        self._refused: set[int] = set()  # partitions whose last vouch was refused
        self._unconfirmed: set[int] = set()  # partitions the audit found a member missing in
        self._indexing: asyncio.Future[None] | None = None  # (see _index)
        self._decided = asyncio.Event()  # (see decided(); the deadline runs from the start)
        self._vouched = asyncio.Event()  # a vouch since the start or the last rebalance
        self._decision_deadline = time.monotonic() + DECISION_WAIT_SECONDS

    @property
    def materialised(self) -> frozenset[int]:
        """Partitions currently rebuilt and marked ready by this worker."""
        return self._materialised or frozenset()

    def forget(self) -> None:
        """Called on rebalance: the next tick rebuilds what is then owned."""
        self._stop_indexing()
        self._decided.clear()
        self._vouched.clear()
        self._decision_deadline = time.monotonic() + DECISION_WAIT_SECONDS
        self._materialised = None
        VIEW_READY.set(0)

    async def decided(self) -> None:
        """Until the first tick since the start or the last rebalance is done (the view
        adopted or rebuilt, or the attempt failed), at most ``DECISION_WAIT_SECONDS`` after
        that rebalance: the agent waits for it before applying a batch. A batch applied
        first (events replayed past the last commit) stores states after the view's last
        vouch, and a view left intact could then not be adopted; applied after, they are
        written to the adopted view as any batch is."""
        if self._decided.is_set():
            return
        remaining = self._decision_deadline - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._decided.wait(), remaining)

    async def tick(self, owned: Iterable[int], busy: bool = False) -> None:
        """One round: refuse an evicting Redis, rebuild what needs it, audit a slice (a
        tenth of it while ``busy``: a backlog is being applied, the audit can wait)."""
        try:
            await self._tick(owned, busy)
        finally:
            self._decided.set()

    async def _tick(self, owned: Iterable[int], busy: bool) -> None:
        partitions = frozenset(owned)
        self._ticks += 1
        policy = await self._view.eviction_policy()
        if policy in EVICTING_POLICIES:
            await self._refuse(partitions, policy)
            return
        run_id = await self._view.server_run_id()
        meta = await self._view.meta()
        trigger, targets = None, partitions
        if self._materialised != partitions:
            trigger = "startup" if self._materialised is None else "rebalance"
        elif self._run_id is not None and run_id != self._run_id:
            trigger = "redis_restarted"
        elif META_PARTITIONS not in meta or any(ready_field(p) not in meta for p in partitions):
            trigger = "view_lost"
        elif meta.get(META_LAYOUT) != self._view.layout.fingerprint:
            trigger = "layout_changed"
        elif damaged := (self._view.lost | self._refused | self._unconfirmed) & partitions:
            trigger, targets = "view_replaced", frozenset(damaged)
        elif self._ticks % LOSS_CHECK_EVERY == 0 and await self._keys_lost(partitions):
            trigger = "keys_lost"
        elif self._audit is not None and self._audit_budget:
            budget = max(1, self._audit_budget // BUSY_AUDIT_SHARE) if busy else self._audit_budget
            found = await self._audit.step(partitions, self._clock(), budget)
            if found:
                log.error("the view lacks members in force of partitions %s (the continuous "
                          "reconciliation found them): rebuilding them", sorted(found))  # fmt: skip
                trigger, targets = "members_missing", frozenset(found)
        if trigger is not None:
            written_with = meta.get(META_LAYOUT)
            if written_with is not None and written_with != self._view.layout.fingerprint:
                log.error(
                    "the view was written with another layout (%s, mine %s: a different "
                    "DNC_VIEW_KEY or bucket count): wiping it before the rebuild",
                    written_with,
                    self._view.layout.fingerprint,
                )
                async with self._lock:
                    await self._view.wipe()
                targets = partitions
            if await self.rebuild(partitions, trigger, targets):
                self._run_id = run_id

    async def _refuse(self, partitions: frozenset[int], policy: str) -> None:
        """Withdraw readiness: an evicting Redis may silently drop refusals."""
        log.critical(
            "Redis's maxmemory-policy is %s: it may evict view keys and silently drop "
            "refusals. Not serving: set `maxmemory-policy noeviction` (or a volatile-* "
            "policy) on Redis; checks answer 'unavailable' until then",
            policy,
        )
        await self._view.withdraw(partitions)
        self._materialised = None
        VIEW_READY.set(0)

    async def _keys_lost(self, partitions: frozenset[int]) -> bool:
        """A filled key is gone and the table says it should hold a member: partial loss."""
        missing = await self._view.missing_keys()
        if not missing:
            return False
        now = self._clock()
        layout = self._view.layout
        needed: set[str] = set()
        bases = {key[:-1] for key in missing}  # (a suppression set: its bucket and a letter)
        for i, (table_key, raw) in enumerate(list(self._table.items())):
            if i % 10_000 == 9_999:
                await asyncio.sleep(0)  # a million entries take a while: let others run
            # The bucket from the table key (``target|E164``): only the states of a bucket
            # with a missing key are decoded.
            target, _, phone = table_key.rpartition("|")
            base = layout.locate(target, phone)[0]
            if base not in bases:
                continue
            state = load_state(raw)
            if state is None or state.partition not in partitions:
                continue
            effective = state.effective(now)
            key = None if effective is None else base + FAMILY_OF_KIND[effective.kind.value]
            if key is not None and key in missing:
                needed.add(key)
        self._view.filled_keys.difference_update(missing - needed)  # emptied by lifts/expiries
        if needed:
            log.error(
                "%d view keys vanished from Redis (evicted or deleted): rebuilding", len(needed)
            )
        return bool(needed)

    async def vouch(self, applied: dict[int, tuple[int, int]]) -> None:
        """Publish applied-through times (and frontiers) of the partitions this worker has
        materialised; a refused one is rebuilt at the next tick."""
        async with self._lock:  # never interleaved with a rebuild (it rotates the epochs)
            mine = {p: v for p, v in applied.items() if p in self.materialised}
            if not mine:
                return
            # (read under the lock: every state the table stored by now is in the view)
            covered = {p: self._table.changelog_offset(p) for p in mine}
            refused = await self._view.vouch(mine, covered)
        if refused:
            log.error(
                "the view of partitions %s is not the one this worker wrote (Redis flushed, "
                "restarted, restored or failed over, or another owner claimed them): "
                "rebuilding before vouching",
                sorted(refused),
            )
            self._refused |= refused
        for partition in set(mine) - refused:
            WORKER_HEARTBEAT.labels(partition=str(partition)).set_to_current_time()
        if set(mine) - refused:
            self._vouched.set()

    def report_staleness(self, now_ms: int, applied_through_ms: dict[int, int]) -> None:
        """Expose how far behind Redis's clock each owned partition is vouched for."""
        for partition, ms in applied_through_ms.items():
            VIEW_STALENESS.labels(partition=str(partition)).set(max(0.0, (now_ms - ms) / 1000))

    async def rebuild(
        self, owned: frozenset[int], trigger: str, targets: frozenset[int] | None = None
    ) -> bool:
        """Claim ``targets`` (default: every owned partition), re-materialise them from the
        table under that claim, then mark them ready; True once done.

        On start or after a rebalance, a partition whose view is exactly as this worker
        left it at its last vouch is *adopted* instead (:meth:`SuppressionViewWriter.adopt`:
        no other owner since, the same Redis instance, and the table holding no state past
        the changelog offset that vouch covered): claimed, marked ready, nothing rewritten.
        Its expiry schedule and loss bookkeeping are then read from the table in the
        background (until then a cooldown ends late: the number stays blocked longer).

        False when the claim or the Redis instance changed meanwhile (a flush, a restart,
        a failover): nothing is marked ready and the next tick rebuilds again. States are
        decoded one at a time and let go once their member is gathered: a million decoded
        states kept at once would hold gigabytes and make the garbage collector walk them
        over and over (4x slower).
        """
        chosen = owned if targets is None else targets & owned
        VIEW_READY.set(0)
        if chosen == owned:  # (a partial rebuild lets an adoption's indexing finish its work)
            self._stop_indexing()
        log.info("rebuilding the Redis view for partitions %s (%s)", sorted(chosen), trigger)
        started = asyncio.get_running_loop().time()
        counts: Tally[str] = Tally()
        adopted: set[int] = set()
        try:
            async with self._lock:
                order = sorted(chosen)  # claimed in parallel: each is a transaction
                tokens = await asyncio.gather(
                    *(self._ownership.claim(p) for p in order), return_exceptions=True
                )
                _raise_first(tokens)  # (a lost ownership first: it must not go unseen)
                claims = {p: str(t) for p, t in zip(order, tokens, strict=True)}
                if trigger in ADOPTING_TRIGGERS:
                    # (a batch in flight may have skipped the view: those are rebuilt)
                    staged = self._table.staged_partitions()
                    candidates = {p: t for p, t in claims.items() if p not in staged}
                    covered = {p: self._table.changelog_offset(p) for p in candidates}
                    adopted = await self._view.adopt(candidates, covered)
                    if chosen - adopted:
                        await self._why_not_adopted(set(chosen - adopted), staged, covered)
                written = chosen - adopted
                await self._view.claim({p: t for p, t in claims.items() if p in written})
                self._refused -= chosen
                self._unconfirmed -= chosen
                now = self._clock()
                if chosen == owned:
                    self._view.filled_keys.clear()
                    self._expiry.clear()
                batch = ViewBatch(self._view.layout, now)
                if written:
                    await self._materialise(frozenset(written), batch, counts)
                await self._view.mark_ready(chosen, self._total)
        except (ViewLost, ViewMoved) as exc:
            log.error("rebuild of partitions %s not marked ready: %s", sorted(chosen), exc)
            self._unconfirmed |= chosen
            return False
        self._materialised = owned
        VIEW_REBUILDS.labels(trigger=trigger).inc()
        VIEW_READY.set(1)
        took = asyncio.get_running_loop().time() - started
        log.info("view ready: %d states written in %.2fs for partitions %s%s", batch.written,
                 took, sorted(chosen), f" (adopted as left at the last vouch, nothing "
                 f"rewritten: {sorted(adopted)})" if adopted else "")  # fmt: skip
        if written == owned:  # (every state read: the counts are exact)
            SUPPRESSED_NUMBERS.clear()
            for tenant, count in counts.items():
                SUPPRESSED_NUMBERS.labels(tenant=tenant).set(count)
        elif self._indexing is None or self._indexing.done() or adopted:
            # The adopted partitions' expiries and filled keys, and every owned partition's
            # count, in the background: only the rebuilt partitions' states were read.
            # (A partial rebuild during an adoption's indexing lets it finish: it counts
            # every owned partition too.)
            self._stop_indexing()
            self._indexing = asyncio.ensure_future(self._index(owned, frozenset(adopted)))
        return True

    async def _why_not_adopted(
        self, partitions: set[int], staged: set[int], covered: dict[int, int | None]
    ) -> None:
        """Say why each of ``partitions`` is rebuilt rather than adopted (one line)."""
        meta = await self._view.meta()
        reasons = []
        for p in sorted(partitions):
            if p in staged:
                reasons.append(f"{p}: a batch in flight")
                continue
            reasons.append(
                f"{p}: claim {meta.get(fence_field(p))}, ready {ready_field(p) in meta}, "
                f"on instance {meta.get(instance_field(p))}, view covers changelog offset "
                f"{meta.get(covered_field(p))}, table holds {covered.get(p)}"
            )
        log.info("not adopted, rebuilt: %s", "; ".join(reasons))

    async def _materialise(
        self, written: frozenset[int], batch: ViewBatch, counts: Tally[str]
    ) -> None:
        """Write ``written``'s states from the table into the view (only their partitions'
        databases are read); schedule their expiries; count their suppressions."""
        now = batch.now
        for key, raw in list(self._table.items(written)):
            state = load_state(raw)
            if state is None or state.partition not in written:
                continue
            if not batch.put(state):
                continue
            counts[state.target.split("/", 1)[0]] += 1
            expiry = state.next_expiry(now)
            if expiry is not None:
                self._expiry.schedule(key, expiry)
            if batch.pending >= WRITE_CHUNK:
                await self._view.apply(batch)
        await self._view.apply(batch)

    def _index_one(
        self, key: str, state: SuppressionState, shadow: ViewBatch, counts: Tally[str]
    ) -> None:
        """An adopted state's bookkeeping: its expiry, the view keys it fills, its count."""
        if not shadow.put(state):
            return
        counts[state.target.split("/", 1)[0]] += 1
        expiry = state.next_expiry(shadow.now)
        if expiry is not None:
            self._expiry.schedule(key, expiry)
        for groups in shadow.ops.values():
            for ops in groups.values():
                self._view.filled_keys.update(k for k, op in ops if op == "+")
        shadow.clear()

    async def _index(self, owned: frozenset[int], adopted: frozenset[int]) -> None:
        """After an adoption or a partial rebuild: read the table for the adopted
        partitions' expiries and filled keys, and every owned suppression's count, a slice
        at a time between the agent's batches (it does not hold the view lock: the view is
        already served), once the view is vouched for: until then every slice of it would
        delay that vouch, and dialers get "unavailable" until it comes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._vouched.wait(), INDEX_AFTER_VOUCH_SECONDS)
        started = asyncio.get_running_loop().time()
        counts: Tally[str] = Tally()
        now = self._clock()
        shadow = ViewBatch(self._view.layout, now)
        # A page of a partition's database at a time, each read with an iterator of its own:
        # listing a million states first held the event loop for seconds (no vouch
        # meanwhile), and nothing is read past a wait from a database Faust dropped since (a
        # revocation, which also cancels this task, or the worker's stop: it reads as empty).
        for partition in sorted(owned):
            after: str | None = None
            while page := self._table.scan(partition, after, INDEX_SLICE):
                after = page[-1][0]
                for key, raw in page:
                    if partition not in adopted:  # only counted, without decoding the state
                        if in_force_partition(raw, now) is not None:
                            counts[key.split("|", 1)[0].split("/", 1)[0]] += 1
                        continue
                    state = load_state(raw)
                    if state is not None:
                        self._index_one(key, state, shadow, counts)
                await asyncio.sleep(0)
        if closed := sorted(owned - self._table.open_partitions()):
            log.info("view indexing interrupted: the databases of partitions %s were closed "
                     "(revoked, or the worker is stopping)", closed)  # fmt: skip
            return
        SUPPRESSED_NUMBERS.clear()
        for tenant, count in counts.items():
            SUPPRESSED_NUMBERS.labels(tenant=tenant).set(count)
        log.info("view indexed: %d suppressions counted, the expiries of adopted partitions "
                 "%s scheduled, in %.2fs", sum(counts.values()), sorted(adopted),
                 asyncio.get_running_loop().time() - started)  # fmt: skip

    def _stop_indexing(self) -> None:
        if self._indexing is not None:
            self._indexing.cancel()
            self._indexing = None

    async def expire_due(self) -> int:
        """Remove suppressions whose cooldown ended from the view; emit their change."""
        now = self._clock()
        due = self._expiry.due(now)
        if not due:
            return 0
        ended: dict[str, SuppressionState] = {}

        async def write() -> None:
            # Decide under the lock, from the table as it is now: the agent may have
            # applied a newer suppression to the same number since the schedule was made.
            async with self._lock:
                ended.clear()
                for when, key in due:
                    state = self._ended_at(key, when, now)
                    if state is not None:
                        ended[key] = state
                await self._view.write(ended.values(), now)

        await until_done(
            write, what="expiry view write", dependency="redis", max_backoff=self._retry_cap
        )
        if not ended:
            return 0
        changes = [
            (s.partition, SuppressionChange.of(s, now, cause="expiry")) for s in ended.values()
        ]

        async def emit() -> None:
            # Only partitions still owned: a revoked one's new owner expires its states.
            mine = [(p, c) for p, c in changes if p in self.materialised]
            if mine:
                await self._sink.publish(Outgoing(changes=mine))

        await until_done(emit, what="expiry emit", dependency="kafka", max_backoff=self._retry_cap)
        EXPIRED.inc(len(ended))
        for state in ended.values():
            SUPPRESSED_NUMBERS.labels(tenant=state.target.split("/", 1)[0]).dec()
        return len(ended)

    def _ended_at(self, key: str, when: datetime, now: datetime) -> SuppressionState | None:
        """The state of ``key`` if its suppression ended by itself at ``when``."""
        state = load_state(self._table.get(key))
        if state is None or state.partition not in self.materialised:
            return None
        current = state.effective(now)
        if current is not None:
            if current.expires_at is not None:
                self._expiry.schedule(key, current.expires_at)
            return None
        last_end = max((e.expires_at for e in state.active if e.expires_at), default=None)
        return state if last_end == when else None


def _raise_first(outcomes: Iterable[object]) -> None:
    """Raise an :class:`OwnershipLost` among ``outcomes`` if any, else their first error."""
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    for error in errors:
        if isinstance(error, OwnershipLost):
            raise error
    if errors:
        raise errors[0]
