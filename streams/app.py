"""Composition of the Faust worker: topics, table, agent, timers; built on demand, not on import."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, cast

import faust
from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient
from faust.types import TP
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from infra.topics import ensure_topics
from schemas.metrics import CONSUMER_LAG, DELIVERY_HOLES
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from schemas.topics import TopicSpec
from schemas.view import view_layout
from streams.audit import ViewAudit
from streams.batch_transport import SCHEME, BatchTopic
from streams.commits import AppliedCommits
from streams.credentials import faust_credentials
from streams.delivery import DeliveryHoles
from streams.expiry import ExpirySchedule
from streams.faust_bridge import FaustStateTable, apply_in_batches, table_manager
from streams.fencing import OwnershipLost, Revocations, give_up
from streams.freshness import AppliedFrontier
from streams.kafka_sink import KafkaChangeSink
from streams.log_end import LogEndReader
from streams.maintenance import ViewMaintenance
from streams.ownership import PartitionProducers, fence_topic
from streams.processor import OppositionProcessor, StateStoreBroken
from streams.progress import ProgressWatch
from streams.server_clock import ServerClock
from streams.table_store import STORE_SCHEME, DurableRocksDBStore, abandon
from streams.view_writer import SuppressionViewWriter, writer_client

log = logging.getLogger("dnc.streams")

TABLE_NAME = "suppression-state"
STALL_CHECK_INTERVAL = 5.0  # seconds between end-offset reads (one ListOffsets request)
REFETCH_AFTER_SECONDS = 2.0  # a gap below applied offsets this old is fetched again
# A partition whose next offset Faust has not even read, while its log holds more and other
# partitions are being delivered, is fetched again only after this long: under a burst
# Faust's fetcher serves partitions unevenly and one can wait several seconds for its turn,
# and a seek while aiokafka holds the partition's records can crash its fetcher. A skipped
# offset (later ones applied, or Faust's read offset past it), or a stream delivering
# nothing at all, is fetched again after REFETCH_AFTER_SECONDS.
BEHIND_REFETCH_AFTER_SECONDS = 15.0
# What waits for the agent: at most FETCHES_BUFFERED lists (a partition's records of one
# fetch each, 250 at most), about as many events as Faust's default buffer holds; when
# they are there, the consumer waits before it fetches more.
FETCHES_BUFFERED = 16
# After a rebalance, how often and how long the worker looks for its recovery's end (then
# the maintenance timer's next turn does what is left).
RECOVERY_POLL_SECONDS, RECOVERY_POLLS = 0.05, 100
# A vouch longer than this says where its time went (the view ages while it runs).
SLOW_VOUCH_SECONDS = 0.5
# How often "refreshing the consumer's metadata" is logged while the changelog is unseen.
METADATA_REFRESH_SECONDS = 10.0


class _RateLimitedWarning:
    """A warning logged at most once per ``every_seconds`` (a timer may fail 4 times a second)."""

    def __init__(self, logger: logging.Logger, every_seconds: float) -> None:
        self._log = logger
        self._every = every_seconds
        self._last = float("-inf")

    def warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._log.warning(message, *args)


class _StepTimes:
    """How long each step of a timer's run took, for a log line."""

    def __init__(self) -> None:
        self._start = self._last = time.monotonic()
        self._steps: list[tuple[str, float]] = []

    def done(self, step: str) -> None:
        now = time.monotonic()
        self._steps.append((step, now - self._last))
        self._last = now

    def total(self) -> float:
        return self._last - self._start

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds:.2f}s" for step, seconds in self._steps)


@dataclass
class WorkerApp:
    """The assembled worker: the Faust app and the pieces tests and the CLI look at."""

    app: faust.App
    processor: OppositionProcessor
    maintenance: ViewMaintenance
    redis: Redis | RedisCluster


def _declare_worker_topics(
    settings: Settings, changelog: str, timeout: float = 30.0
) -> tuple[str, str]:
    """Create the table's changelog topic and the group's fence topic before Faust starts,
    wait until they are visible; returns the fence topic's id (the era of the claims it
    orders, see streams/ownership.py) and the changelog's (streams/table_store.py).

    Faust creates it itself at start-up, right before joining the group; on a 3-broker
    cluster the group leader's metadata may not list it yet, and Faust's assignor then
    assigns no changelog partition at all ("Ignoring missing topic"): nothing is recovered,
    and static membership keeps that assignment across restarts. Seen with `dnc up
    --brokers 3 --workers 2`: after a restart the table was empty and the view rebuilt
    without numbers Kafka had acknowledged.
    """
    names = [changelog, fence_topic(settings)]
    specs = [
        TopicSpec(
            name, settings.partitions, settings.replication_factor, {"cleanup.policy": "compact"}
        )
        for name in names
    ]
    client_config = settings.kafka_client_config()
    ensure_topics(settings.kafka_bootstrap, specs, timeout, client_config)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **client_config})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        found = [topics.get(name) for name in names]
        if all(t is not None and t.error is None and t.partitions for t in found):
            break
        time.sleep(0.2)
    else:
        log.warning("topics %s are still not in Kafka's metadata after %.0fs", names, timeout)
    wanted = TopicCollection([fence_topic(settings), changelog])
    while True:  # a broker of a cluster may not know the new topic yet (UNKNOWN_TOPIC_OR_PART)
        described = admin.describe_topics(wanted, request_timeout=timeout)
        try:
            fence_id, changelog_id = (
                str(described[name].result(timeout=timeout).topic_id)
                for name in (fence_topic(settings), changelog)
            )
            return fence_id, changelog_id
        except KafkaException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def build_worker(settings: Settings, tenants: TenantDirectory, worker_id: str) -> WorkerApp:
    """Create the Faust app with its agent and timers (nothing runs until the worker starts)."""
    # Faust's aiokafka transport, handing the agent a partition's fetch at a time
    # (streams/batch_transport.py, registered as a faust.transports entry point).
    brokers = [f"{SCHEME}://{b.strip()}" for b in settings.kafka_bootstrap.split(",") if b.strip()]
    datadir = settings.data_dir / "faust" / settings.worker_group
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.worker_group,
        broker=brokers,
        # RocksDB, on disk: a restart replays only the changelog's tail (streams/table_store.py).
        store=f"{STORE_SCHEME}://",
        tabledir=str(settings.worker_table_dir(worker_id)),
        table_standby_replicas=settings.table_standby_replicas,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_seconds,
        # Faust's 60 s default would leave a crashed worker's partitions unprocessed (and
        # dialers answered "unavailable") for a minute before another member takes them.
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.session_timeout_seconds / 5,
        stream_wait_empty=True,
        producer_acks=-1,
        broker_credentials=faust_credentials(settings),  # Kafka SASL/TLS (None: PLAINTEXT)
        consumer_group_instance_id=settings.worker_instance_id,
        # Faust's own files go with the other state, not into the working directory.
        datadir=str(datadir),
        # Recovery that ends at the changelog's last data record, not at a transaction
        # marker it would wait for ever (streams/faust_bridge.py).
        TableManager=table_manager(
            {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_client_config()}
        ),
    )
    # The oppositions log, the admin topic (lifts) and the consents topic (grants): lifts and
    # grants are forwarded, signed, to the log partition of their number (streams/processor.py).
    source = BatchTopic(
        app,
        topics=[settings.oppositions_topic, settings.admin_topic, settings.consents_topic],
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        # Faust never commits these: the worker commits what it applied (streams/commits.py).
        acks=False,
        maxsize=FETCHES_BUFFERED,
    )
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=settings.partitions,
        # Keys as JSON, so keys read back from the changelog are the same strings; values
        # are the states' JSON bytes, kept as they are (see streams/processor.StateTable):
        # ``value_type=bytes`` is what makes the changelog topic (recovery) read them raw.
        value_type=bytes,
        schema=faust.Schema(key_serializer="json", value_serializer="raw"),
    )
    changelog = table.changelog_topic.get_topic_name()
    era, changelog_id = _declare_worker_topics(settings, changelog)
    cast(DurableRocksDBStore, table.data).changelog_id = changelog_id  # (see its docstring)

    redis = writer_client(settings)
    view = SuppressionViewWriter(redis, view_layout(settings, tenants), worker_id)
    ownership = PartitionProducers(
        settings,
        worker_id,
        era=era,
        owned=lambda: owned_partitions(),
        confirm=lambda partition: confirm_membership(partition),
    )
    sink = KafkaChangeSink(settings, changelog, client_id=f"{worker_id}-out", partitions=ownership)
    clock = ServerClock()
    expiry = ExpirySchedule()
    lock = asyncio.Lock()
    revocations = Revocations()
    progress = ProgressWatch(settings.stall_after_seconds)
    holes = DeliveryHoles()
    source_topics = (settings.oppositions_topic, settings.admin_topic, settings.consents_topic)
    frontiers = {topic: AppliedFrontier() for topic in source_topics}
    frontier = frontiers[settings.oppositions_topic]  # the one vouched for
    commits = AppliedCommits(app.consumer, frontiers)
    log_end = LogEndReader(settings)
    states = FaustStateTable(table)
    processor = OppositionProcessor(
        table=states,
        view=view,
        sink=sink,
        tenants=tenants,
        settings=settings,
        expiry=expiry,
        view_lock=lock,
        clock=clock.now,
        revocations=revocations,
    )
    maintenance = ViewMaintenance(
        table=states,
        view=view,
        sink=sink,
        ownership=ownership,
        expiry=expiry,
        view_lock=lock,
        total_partitions=settings.partitions,
        retry_backoff_max=settings.retry_backoff_max_seconds,
        audit=ViewAudit(states, redis, view.layout),
        audit_budget=int(settings.audit_states_per_second * settings.heartbeat_interval_seconds),
        clock=clock.now,
    )

    @app.agent(source, name="apply-oppositions", concurrency=1)
    async def apply_oppositions(stream: Any) -> None:
        try:
            await apply_in_batches(
                stream.noack(),
                processor,
                settings.batch_max_events,
                progress,
                holes,
                frontiers,
                app,
                settings.oppositions_topic,
                maintenance.decided,
            )
        except OwnershipLost as exc:
            give_up(exc)
        except StateStoreBroken as exc:
            abandon(exc)

    async def confirm_membership(partition: int) -> bool:
        """True if the group coordinator still counts this worker as a member of its current
        generation: an offset commit of ``partition`` at its applied frontier (or where
        delivery starts), which the coordinator refuses from an older generation."""
        consumer: Any = app.consumer
        tp = TP(settings.oppositions_topic, partition)
        if tp not in {TP(t.topic, t.partition) for t in consumer.assignment()}:
            return False
        offset = frontier.next_offset(partition) or consumer._committed_offset.get(tp)
        if offset is None:
            starts = await log_end.start_offsets([tp], wait=settings.max_staleness_seconds)
            offset = starts.get(tp)
        return offset is not None and bool(await consumer._commit({tp: offset}))

    unrecovered = _RateLimitedWarning(log, every_seconds=10)

    def owned_sources() -> set[TP] | None:
        """Owned partitions of both source topics, or None while rebalancing or recovering,
        or while one of them came without its changelog partition (its state was never
        recovered: rebuilding or vouching for it would answer acknowledged numbers callable)."""
        tables: Any = app.tables
        if app.rebalancing or app.in_recovery or not tables.recovery.completed.is_set():
            return None
        actives = app.assignor.assigned_actives()
        owned = {TP(tp.topic, tp.partition) for tp in actives if tp.topic in source_topics}
        restored = {tp.partition for tp in actives if tp.topic == changelog}
        missing = sorted({tp.partition for tp in owned} - restored)
        if missing:
            unrecovered.warn("partitions %s were assigned without their changelog partitions "
                             "(the group leader did not see %s): their state is not recovered, "
                             "so the view is not rebuilt nor vouched for (checks fail closed); "
                             "asking Kafka for the topics again (the group rebalances once it "
                             "sees it; if this goes on, restart the workers of the group)",
                             missing, changelog)  # fmt: skip
            unseen_changelog.set()
            return None
        unseen_changelog.clear()
        return owned

    unseen_changelog = asyncio.Event()  # assigned sources without their changelog partitions
    metadata_asked = _RateLimitedWarning(log, every_seconds=METADATA_REFRESH_SECONDS)

    async def see_changelog() -> None:
        """Refresh the metadata of Faust's consumer: its group leader assigned no changelog
        partition because its metadata did not list the changelog yet (on a cluster, a broker
        may learn of a new topic after another one answered). aiokafka reads metadata again
        only every few minutes by itself; once it lists the topic, its group coordinator sees
        the topic's partitions appear and rejoins, and the group is assigned them."""
        thread: Any = cast(Any, app.consumer)._thread

        async def refresh() -> None:
            await thread._ensure_consumer()._client.force_metadata_update()

        metadata_asked.warn("refreshing the consumer's metadata to see %s", changelog)
        await thread.call_thread(refresh)

    def owned_partitions() -> set[int] | None:
        """Owned partitions of the oppositions log (those the view vouches for)."""
        owned = owned_sources()
        if owned is None:
            return None
        return {tp.partition for tp in owned if tp.topic == settings.oppositions_topic}

    ticking = asyncio.Lock()  # one maintenance tick at a time (the timer's or a recovery's)

    async def maintain() -> None:
        owned = owned_partitions()
        if owned is None or ticking.locked():
            return
        async with ticking:
            try:
                await maintenance.tick(owned, busy=progress.busy())
            except OwnershipLost as exc:
                give_up(exc)
            except Exception as exc:  # Redis down: checks fail closed by themselves; retry
                log.warning("view maintenance failed (%s); retrying next tick", exc)

    @app.timer(settings.heartbeat_interval_seconds, name="view-maintenance")
    async def keep_view() -> None:
        await maintain()
        if unseen_changelog.is_set() and not app.rebalancing:
            try:
                await see_changelog()
            except Exception as exc:  # (tried again on the next tick)
                log.warning("cannot refresh the consumer's metadata: %r", exc)

    rebalanced = asyncio.Event()  # Faust is resuming the streams after a rebalance

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def on_rebalance_complete(app: Any, **kwargs: Any) -> None:
        rebalanced.set()

    @app.task
    async def tick_once_recovered() -> None:
        """A tick as soon as the worker is ready after a rebalance, not at the timer's next
        turn: a restarted worker or a failover's survivor rebuilds the view up to a second
        sooner."""
        while not app.should_stop:
            await rebalanced.wait()
            rebalanced.clear()
            for _ in range(RECOVERY_POLLS):  # (Faust seeks and resumes the flow first)
                if owned_partitions() is not None:
                    await maintain()
                    break
                await asyncio.sleep(RECOVERY_POLL_SECONDS)

    cut_off = _RateLimitedWarning(log, every_seconds=10)
    behind = _RateLimitedWarning(log, every_seconds=10)
    slow = _RateLimitedWarning(log, every_seconds=10)

    @app.timer(settings.freshness_interval_seconds, name="vouch-for-view")
    async def vouch() -> None:
        """Read Redis's clock, then the log's end; vouch for what is applied up to it."""
        owned = owned_partitions()
        sources = owned_sources()
        if owned is None or sources is None or maintenance.materialised != owned:
            return  # rebuilding or rebalancing: nothing is vouched for
        nonlocal log_end
        reading_log_end = False
        steps = _StepTimes()
        try:
            await seed_frontiers(sources)
            steps.done("committed offsets")
            now_ms = await view.server_time_ms()  # first: the claim is about the log at now_ms
            clock.observe(now_ms, time.time())
            steps.done("Redis's clock")
            reading_log_end = True
            ends = await log_end.end_offsets(sources, wait=settings.max_staleness_seconds)
            steps.done("the log's end")
            unknown = sorted(tp for tp in sources if ends.get(tp, -1) < 0)
            if unknown:
                raise LookupError(f"no end offset for {unknown} (a partition leader moved?)")
        except Exception as exc:  # cut from Redis or Kafka: the view ages, checks fail closed
            cut_off.warn("cannot read Redis's clock or the log's end offsets (%r): the view "
                         "is not vouched for; checks fail closed past the bound", exc)  # fmt: skip
            # After a broker of a cluster dies, confluent-kafka's admin client keeps asking
            # the dead leader: its ListOffsets time out, or answer -1 as if it were an end
            # offset, for minutes (seen with 3 brokers, one SIGKILLed; a worker that took -1
            # for the end would vouch for events it has not applied). A new client
            # bootstraps afresh and asks the new leaders (not when Redis failed: a new
            # client every tick of a Redis outage would only churn connections).
            if reading_log_end:
                log_end = LogEndReader(settings)
            return
        for topic, topic_frontier in frontiers.items():
            topic_frontier.observe(
                now_ms, {tp.partition: end for tp, end in ends.items() if tp.topic == topic}
            )
        await refetch_skipped(sources)
        try:
            await release_forwards(owned)
        except Exception as exc:  # Redis unreachable: the forwards stay held, nothing vouched
            cut_off.warn("cannot read the frontiers of the partitions events were forwarded "
                         "to: %s", exc)  # fmt: skip
        steps.done("forwards")
        vouched = frontier.vouchable()
        for topic in source_topics[1:]:  # (their claims are only for refetching)
            frontiers[topic].vouchable()
        for partition, (applied_to, awaited) in frontier.waiting().items():
            since = last_vouched.get(partition, started_ms.setdefault(partition, now_ms))
            if now_ms - since > 10_000:
                behind.warn("partition %d not vouched for %.0fs: applied up to offset %s, "
                            "waiting for %d", partition, (now_ms - since) / 1000, applied_to,
                            awaited)  # fmt: skip
        try:
            await maintenance.vouch(
                {p: (ms, frontier.next_offset(p) or 0) for p, ms in vouched.items()}
            )
        except OwnershipLost as exc:
            give_up(exc)
        except Exception as exc:
            cut_off.warn("cannot record the applied-through times in Redis: %s", exc)
            return
        steps.done("the vouch")
        first = sorted(p for p in vouched if p not in last_vouched)
        if first:  # (since this worker started, or since the last rebalance)
            log.info("vouched for partitions %s: checks of their numbers are answered", first)
        last_vouched.update(vouched)
        maintenance.report_staleness(
            now_ms, {p: last_vouched[p] for p in owned if p in last_vouched}
        )
        if steps.total() > SLOW_VOUCH_SECONDS:
            slow.warn("a vouch took %.2fs (%s): the view ages meanwhile", steps.total(), steps)

    last_vouched: dict[int, int] = {}
    started_ms: dict[int, int] = {}  # first vouch attempt per partition, for the warning

    async def release_forwards(owned: set[int]) -> None:
        """Count forwarded events as applied once their copy is: on a partition of this
        worker, applied and durable; on another worker's, below the frontier its owner last
        vouched with (``next:P``)."""
        held = frontier.held()
        if not held:
            return
        canonicals = {c for offsets in held.values() for c, _landed in offsets.values()}
        theirs = await view.frontiers(canonicals - owned)
        for partition, offsets in held.items():
            passed = [
                offset
                for offset, (canonical, landed) in offsets.items()
                if (
                    frontier.is_applied(canonical, landed)
                    if canonical in owned
                    else theirs.get(canonical, -1) > landed
                )
            ]
            frontier.release(partition, passed)

    gaps_seen: dict[TP, tuple[int, float]] = {}  # frontier offset, since when

    async def refetch_skipped(tps: set[TP]) -> None:
        """Seek back to offsets the stream skipped while the log holds more.

        The delivery-hole repair sees gaps between delivered offsets; this also catches
        offsets dropped before the first delivery after an assignment (the frontier starts
        at the committed offset: later offsets get applied, or nothing is ever delivered),
        which would otherwise keep the partition from ever being vouched for, or committed
        past. Re-delivered events are applied idempotently. A partition that is only
        behind is sought much later: a seek while the fetcher holds records of the
        partition can crash aiokafka's fetcher (seen under a burst of 100,000 events).
        """
        now = time.monotonic()
        for tp in tps:
            topic_frontier = frontiers[tp.topic]
            nxt, awaited = topic_frontier.waiting().get(tp.partition, (None, None))
            if nxt is None or awaited is None or awaited <= nxt:
                gaps_seen.pop(tp, None)  # nothing awaited: not stuck
                continue
            if topic_frontier.is_held(tp.partition, nxt):
                gaps_seen.pop(tp, None)  # forwarded, waiting for its canonical partition
                continue
            seen = gaps_seen.get(tp)
            if seen is None or seen[0] != nxt:
                gaps_seen[tp] = (nxt, now)  # the frontier moved: watch it again
                continue
            gap = topic_frontier.gap(tp.partition)
            # Faust's read offset: the last offset its fetch loop handed on (or abandoned).
            read = cast(Any, app.consumer)._read_offset.get(tp)
            passed = read is not None and read >= nxt  # Faust went past it: it was dropped
            # Skipped, or behind while the stream delivers nothing at all (its fetch of the
            # partition is stuck): fetched again soon. Behind while other partitions are
            # being delivered (a burst): much later.
            skipped = gap is not None or passed
            stuck = progress.idle_for() >= REFETCH_AFTER_SECONDS
            wait = REFETCH_AFTER_SECONDS if skipped or stuck else BEHIND_REFETCH_AFTER_SECONDS
            if now - seen[1] < wait or progress.in_flight():
                continue  # (a batch still being applied: Redis or Kafka is slow, not a hole)
            log.error("%s[%d]: offset %d not applied for %.0fs while the log holds %d%s: "
                      "fetching from it again", tp.topic, tp.partition, nxt, now - seen[1],
                      awaited, f" (applied from {gap[1]} on)" if gap else "")  # fmt: skip
            DELIVERY_HOLES.labels(outcome="detected").inc()
            gaps_seen[tp] = (nxt, now)
            await cast(Any, app.consumer).seek(tp, nxt)

    async def seed_frontiers(tps: set[TP]) -> None:
        """Start each new partition's frontier where delivery starts: the committed offset.

        Faust records the committed offsets when it seeks after an assignment, and never
        changes them afterwards for these topics (it does not commit them; the worker does,
        from its frontiers, so the committed offset never passes an unapplied message).
        It holds None for "never committed" and for 0: delivery then starts at the log start.
        """
        consumer: Any = app.consumer
        unseeded = [tp for tp in tps if frontiers[tp.topic].next_offset(tp.partition) is None]
        if not unseeded:
            return
        committed = {tp: consumer._committed_offset.get(tp) for tp in unseeded}
        missing = [tp for tp in unseeded if not committed[tp]]
        starts = await log_end.start_offsets(missing, wait=settings.max_staleness_seconds)
        for tp in unseeded:
            frontiers[tp.topic].seed(tp.partition, committed[tp] or starts.get(tp))

    @app.timer(settings.commit_interval_seconds, name="commit-applied")
    async def commit_applied() -> None:
        """Commit each owned partition at its applied frontier (see streams/commits.py)."""
        sources = owned_sources()
        if sources is not None:
            await commits.commit(sources)

    @app.timer(STALL_CHECK_INTERVAL, name="stall-watch")
    async def watch_progress() -> None:
        """Find owned partitions with input waiting and no progress (they lose their heartbeat)."""
        stuck = progress.in_flight_for()
        if app.rebalancing and stuck > settings.rebalance_give_up_seconds:
            # Faust waits for the batch in flight before it lets the partitions go, for ever
            # if Redis or Kafka stays unreachable; finishing that batch later, after another
            # member took the partitions, is a zombie's write. Restart instead.
            give_up(f"a rebalance has been waiting {stuck:.0f}s for a batch this worker "
                    "cannot finish (Redis or Kafka unreachable)")  # fmt: skip
        owned = owned_partitions()
        if owned is None:
            return
        tps = {p: TP(settings.oppositions_topic, p) for p in owned}
        for tp, offset in holes.overdue().items():
            try:
                await cast(Any, app.consumer).seek(tp, offset)
            except Exception as exc:  # the next round tries again
                log.warning("cannot seek %s back to %d: %s", tp, offset, exc)
        try:
            highwaters = await app.consumer.highwaters(*tps.values())
            committed = {p: frontier.next_offset(p) for p in tps}  # (what gets committed)
        except Exception as exc:  # Kafka unreachable: the next round judges again
            log.warning("cannot read end offsets to watch progress: %s", exc)
            return
        for partition, tp in tps.items():
            high, done = highwaters.get(tp), committed.get(partition)
            if high is not None and done is not None:
                CONSUMER_LAG.labels(settings.worker_group, tp.topic, str(partition)).set(
                    max(0, high - done)
                )
        found = progress.stalled_for({p: highwaters.get(tp) for p, tp in tps.items()}, committed)
        for partition, idle in found.items():
            log.error(
                "partition %d has events waiting but made no progress for %.0fs: it is not "
                "vouched for, so dialers get 'unavailable'",
                partition,
                idle,
            )
            limit = settings.stall_exit_after_seconds
            if limit and idle > limit:
                log.critical("stalled for over %.0fs: exiting so a supervisor restarts me", limit)
                os._exit(70)  # nothing past the applied events is committed: they replay

    @app.timer(settings.expiry_interval_seconds, name="cooldown-expiry")
    async def expire() -> None:
        if owned_partitions() is None:
            return
        try:
            await maintenance.expire_due()
        except OwnershipLost as exc:
            give_up(exc)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        # First, before any wait: a batch still in flight for these partitions (a worker
        # paused past the session timeout) must write nothing, even if they come back.
        revocations.revoked(tp.partition for tp in revoked if tp.topic in source_topics)
        dropped = states.unstage_partitions(
            tp.partition for tp in revoked if tp.topic in source_topics
        )
        if dropped:
            log.info("dropped %d staged states of revoked partitions", dropped)
        # Faust waited for the batch in flight: commit what is applied before letting go.
        await commits.commit(TP(tp.topic, tp.partition) for tp in revoked
                             if tp.topic in source_topics)  # fmt: skip
        commits.forget()
        gone = [tp.partition for tp in revoked if tp.topic == settings.oppositions_topic]
        view.release(gone)
        await ownership.release(gone)
        # Their states stay on disk: the store holds only states Kafka acknowledged, with
        # the changelog offset they reflect (streams/table_store.py), so a partition
        # assigned again is brought up to date by replaying its changelog after that offset.
        maintenance.forget()
        progress.forget()
        holes.forget()
        for topic_frontier in frontiers.values():
            topic_frontier.forget()
        last_vouched.clear()
        started_ms.clear()
        gaps_seen.clear()

    return WorkerApp(app=app, processor=processor, maintenance=maintenance, redis=redis)
