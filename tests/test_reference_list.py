"""The reference-list sync on real Kafka, Redis, PostgreSQL and a real `dnc sync` process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.sinks.base import Delivery, Verdict
from consumers.sinks.postgres import PostgresSink
from infra.launch.stack import LocalStack
from infra.migrations import apply_migrations
from infra.postgres_service import restart_postgres
from schemas.events import Kind, OppositionEvent, Scope, Source
from tests.harness import TENANTS_TOML, Pipeline, wait_for
from tests.sync_harness import SyncProcess, delivery

PG_TENANTS = (
    TENANTS_TOML
    + """
[tenants.acme.reference_list]
sink = "postgres"
"""
)


def event(phone: str, kind: Kind = Kind.OPPOSITION, **fields: Any) -> OppositionEvent:
    """An agent-desktop event for acme, stamped now (or as given)."""
    base: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "tenant": "acme",
        "phone": phone,
        "kind": kind,
        "occurred_at": datetime.now(UTC),
        "agent_id": "agent-1",
    }
    if kind is Kind.LIFT:
        base |= {"source": Source.ADMIN, "justification": "customer asked to be called back"}
    return OppositionEvent(**(base | fields))


def row(dsn: str, phone: str, tenant: str = "acme") -> dict[str, Any] | None:
    """The reference_list row of ``phone`` (None before the sync created the table)."""
    with psycopg.connect(dsn) as conn:
        try:
            cur = conn.execute(
                "SELECT * FROM reference_list WHERE tenant = %s AND phone_e164 = %s",
                (tenant, phone),
            )
        except psycopg.errors.UndefinedTable:
            return None
        found = cur.fetchone()
        if found is None:
            return None
        names = [c.name for c in cur.description or ()]
        return dict(zip(names, found, strict=True))


class RefStack:
    """A worker and a sync delivering acme's changes to a fresh PostgreSQL database."""

    def __init__(
        self, stack: LocalStack, tmp: Path, dsn: str, tenants_toml: str = PG_TENANTS
    ) -> None:
        self.dsn = dsn
        self.pipeline = Pipeline(
            stack,
            tmp,
            prefix=f"r{uuid.uuid4().hex[:10]}",
            tenants_toml=tenants_toml,
            extra_env={"DNC_POSTGRES_DSN": dsn},
        )
        self.sync = SyncProcess(self.pipeline)

    def row(self, phone: str, tenant: str = "acme") -> dict[str, Any] | None:
        return row(self.dsn, phone, tenant)

    def wait_row(
        self, phone: str, timeout: float = 60, tenant: str = "acme", **expected: Any
    ) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            found = self.row(phone, tenant)
            if found and all(found[k] == v for k, v in expected.items()):
                return found
            return None

        try:
            return wait_for(matches, timeout=timeout, what=f"row {phone} {expected}")
        except AssertionError:
            print(self.sync.log())
            raise


@pytest.fixture
def ref(local_stack: LocalStack, tmp_path: Path, reference_db: str) -> Iterator[RefStack]:
    stack = RefStack(local_stack, tmp_path, reference_db)
    stack.pipeline.start_worker()
    stack.sync.start()
    try:
        yield stack
    finally:
        try:
            assert stack.sync.stop() == 0, stack.sync.log()
        finally:
            stack.pipeline.close()


@pytest.mark.pipeline
@pytest.mark.postgres
def test_opposition_reaches_the_postgres_reference_list_and_is_measured(ref: RefStack) -> None:
    before = ref.sync.sample("dnc_propagation_seconds_count", stage="reference_list")
    sent = event("06 12 00 00 01", reason_code="said_stop")
    ref.pipeline.publisher.publish(sent)

    found = ref.wait_row("+33612000001", do_not_call=True)
    assert found["kind"] == "opposition"
    assert found["scope"] == "tenant"
    assert found["reason_code"] == "said_stop"
    assert found["source_event_id"] == sent.event_id
    assert found["occurred_at"] == sent.occurred_at
    wait_for(
        lambda: (
            ref.sync.sample("dnc_propagation_seconds_count", stage="reference_list") >= before + 1
        ),
        what="the reference_list histogram to count the change",
    )
    assert ref.sync.sample("dnc_reference_list_delivered_total", tenant="acme", sink="postgres")
    assert ref.sync.sample("dnc_reference_list_pending", tenant="acme") == 0

    # A lift reaches it too: the row says callable again, from the lift.
    lift = event("+33612000001", Kind.LIFT)
    ref.pipeline.publisher.publish(lift)
    lifted = ref.wait_row("+33612000001", do_not_call=False)
    assert lifted["kind"] == "lift"
    assert lifted["source_event_id"] == lift.event_id


@pytest.mark.pipeline
@pytest.mark.postgres
def test_erasure_keeps_do_not_call_and_clears_personal_fields(ref: RefStack) -> None:
    apply_migrations(ref.dsn)  # the client's CRM already holds the contact
    with psycopg.connect(ref.dsn) as conn:
        conn.execute(
            "INSERT INTO reference_list (tenant, phone_e164, full_name, email, postal_address)"
            " VALUES ('acme', '+33612000002', 'Jeanne Martin', 'jeanne@example.org',"
            " '1 rue de la Paix, Paris')"
        )
        conn.execute(
            "INSERT INTO reference_list (tenant, phone_e164, full_name, email)"
            " VALUES ('acme', '+33612000003', 'Paul Durand', 'paul@example.org')"
        )
    erasure = event("06 12 00 00 02", Kind.ERASURE)
    ref.pipeline.publisher.publish(erasure)
    ref.pipeline.publisher.publish(event("06 12 00 00 03", Kind.REFUSAL))

    erased = ref.wait_row("+33612000002", do_not_call=True)
    assert erased["kind"] == "erasure"
    assert erased["source_event_id"] == erasure.event_id
    assert erased["erased_at"] is not None
    assert (erased["full_name"], erased["email"], erased["postal_address"]) == (None, None, None)
    # A refusal is not an erasure: that contact keeps its data.
    refused = ref.wait_row("+33612000003", do_not_call=True)
    assert (refused["full_name"], refused["email"]) == ("Paul Durand", "paul@example.org")
    assert refused["erased_at"] is None


@pytest.mark.postgres
def test_a_replayed_older_change_never_moves_a_row_backwards(reference_db: str) -> None:
    apply_migrations(reference_db)
    sink = PostgresSink("acme", reference_db)
    now = datetime.now(UTC)

    def change(version: int, suppressed: bool, at: datetime) -> Delivery:
        kind = Kind.OPPOSITION if suppressed else Kind.LIFT
        return delivery("+33612000009", version, kind=kind, at=at)

    newer = change(2, suppressed=True, at=now)
    older = change(1, suppressed=False, at=now - timedelta(minutes=5))
    try:
        assert [r.verdict for r in sink.deliver([newer])] == [Verdict.DELIVERED]
        assert [r.verdict for r in sink.deliver([older, newer])] == [Verdict.DELIVERED] * 2
        found = row(reference_db, "+33612000009")
        assert found is not None
        assert found["do_not_call"] is True
        assert found["source_event_id"] == newer.change.source_event_id
    finally:
        sink.close()


def scope_row(dsn: str, phone: str) -> tuple[Any, ...] | None:
    """(version, suppressed, kind, changed_at) of ``phone``'s tenant-wide scope row."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT version, suppressed, kind, changed_at FROM reference_list_scope"
            " WHERE tenant = 'acme' AND phone_e164 = %s AND target = 'acme'",
            (phone,),
        ).fetchone()


@pytest.mark.postgres
def test_a_newer_version_replaces_an_older_one_whatever_the_workers_clocks(
    reference_db: str,
) -> None:
    """Version 2 was applied by a worker whose clock is 5 minutes slow: it still wins."""
    apply_migrations(reference_db)
    sink = PostgresSink("acme", reference_db)
    phone, now = "+33612000008", datetime.now(UTC)
    first = delivery(phone, 1, kind=Kind.OPPOSITION, at=now)
    lifted = delivery(phone, 2, kind=Kind.LIFT, at=now - timedelta(minutes=5))
    expired = delivery(phone, 2, kind=None, cause="expiry", at=now - timedelta(minutes=4))
    try:
        assert [r.verdict for r in sink.deliver([first])] == [Verdict.DELIVERED]
        assert [r.verdict for r in sink.deliver([lifted])] == [Verdict.DELIVERED]
        found = row(reference_db, phone)
        assert found is not None
        assert (found["do_not_call"], found["kind"]) == (False, "lift")
        assert found["source_event_id"] == lifted.change.source_event_id
        assert scope_row(reference_db, phone) == (2, False, "lift", lifted.change.changed_at)
        # Same version, later changed_at (an expiry, a re-emission): replaces it too.
        sink.deliver([expired])
        assert scope_row(reference_db, phone) == (2, False, None, expired.change.changed_at)
        # Version 1 again (a replay), with the latest clock of all: changes nothing.
        sink.deliver([first])
        assert scope_row(reference_db, phone) == (2, False, None, expired.change.changed_at)
    finally:
        sink.close()


@pytest.mark.postgres
def test_a_nul_already_in_a_numbers_state_does_not_block_its_reference_list(
    reference_db: str,
) -> None:
    """Recorded before the edges refused control characters, a reason with a NUL rides on
    every later change of the number: PostgreSQL cannot store it, so it is dropped."""
    apply_migrations(reference_db)
    sink = PostgresSink("acme", reference_db)
    phone = "+33612000007"
    poisoned = delivery(phone, 1)
    change = poisoned.change.model_copy(update={"reason_code": "said\x00stop"})
    poisoned = Delivery(change, change.model_dump_json().encode(), None, 0, 1)
    try:
        assert [r.verdict for r in sink.deliver([poisoned])] == [Verdict.DELIVERED]
        found = row(reference_db, phone)
        assert found is not None and found["reason_code"] == "saidstop"
    finally:
        sink.close()


@pytest.mark.pipeline
@pytest.mark.postgres
def test_postgres_down_holds_the_backlog_then_delivers_everything_in_order(
    ref: RefStack, postgres_server: Any
) -> None:
    apply_migrations(ref.dsn)
    with psycopg.connect(ref.dsn) as conn:  # the order each change was applied in
        conn.execute(
            """
            CREATE TABLE applied (id bigserial PRIMARY KEY, phone text, version bigint);
            CREATE FUNCTION log_applied() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO applied (phone, version) VALUES (NEW.phone_e164, NEW.version);
            RETURN NEW; END $$;
            CREATE TRIGGER log_applied AFTER INSERT OR UPDATE ON reference_list_scope
            FOR EACH ROW EXECUTE FUNCTION log_applied();
            """
        )
    phones = [f"+3361200{n:04d}" for n in range(10, 30)]
    server = postgres_server
    server.stop()
    try:
        # Each number flips opposition -> lift -> opposition -> lift -> refusal: 5 changes.
        t0 = datetime.now(UTC) - timedelta(seconds=30)
        kinds = [Kind.OPPOSITION, Kind.LIFT, Kind.OPPOSITION, Kind.LIFT, Kind.REFUSAL]
        for step, kind in enumerate(kinds):  # one round at a time: 5 changes per number
            ref.pipeline.publisher.publish_many(
                [event(p, kind, occurred_at=t0 + timedelta(seconds=step)) for p in phones]
            )
            expected = (step + 1) * len(phones)
            wait_for(
                lambda expected=expected: (
                    ref.sync.sample(  # type: ignore[misc]
                        "dnc_reference_list_pending", tenant="acme"
                    )
                    >= expected
                ),
                what=f"{expected} changes pending while PostgreSQL is down",
            )
        first_age = ref.sync.sample("dnc_reference_list_oldest_pending_seconds", tenant="acme")
        wait_for(
            lambda: (
                ref.sync.sample("dnc_reference_list_oldest_pending_seconds", tenant="acme")
                > first_age + 1
            ),
            what="the oldest pending change to age",
        )
        assert ref.sync.sample(
            "dnc_reference_list_errors_total", tenant="acme", sink="postgres", kind="unavailable"
        )
        assert ref.sync.process is not None and ref.sync.process.poll() is None
    finally:
        restarted = restart_postgres(server)
        assert restarted.port == server.port

    for phone in phones:
        ref.wait_row(phone, do_not_call=True, kind="refusal", timeout=90)
    wait_for(
        lambda: ref.sync.sample("dnc_reference_list_pending", tenant="acme") == 0,
        what="nothing pending after the restart",
    )
    assert ref.sync.sample("dnc_reference_list_oldest_pending_seconds", tenant="acme") == 0
    with psycopg.connect(ref.dsn) as conn:
        history = conn.execute("SELECT phone, version FROM applied ORDER BY id").fetchall()
    for phone in phones:
        versions = [v for p, v in history if p == phone]
        assert versions == [1, 2, 3, 4, 5], (phone, versions)


@pytest.mark.pipeline
@pytest.mark.postgres
def test_sync_started_while_postgres_is_down_waits_then_migrates_and_delivers(
    local_stack: LocalStack, tmp_path: Path, reference_db: str, postgres_server: Any
) -> None:
    stack = RefStack(local_stack, tmp_path, reference_db)
    stack.pipeline.start_worker()
    postgres_server.stop()
    try:
        stack.sync.start()  # a database down at start is a backlog, not a crash
        stack.pipeline.publisher.publish(event("06 12 00 00 99"))
        wait_for(
            lambda: stack.sync.sample("dnc_reference_list_pending", tenant="acme") >= 1,
            what="the change pending while PostgreSQL is down",
        )
        assert stack.sync.process is not None and stack.sync.process.poll() is None
        restart_postgres(postgres_server)
        found = stack.wait_row("+33612000099", do_not_call=True)  # the schema was created
        assert found["kind"] == "opposition"
    finally:
        if not postgres_server.running:
            restart_postgres(postgres_server)
        try:
            assert stack.sync.stop() == 0, stack.sync.log()
        finally:
            stack.pipeline.close()


@pytest.mark.pipeline
@pytest.mark.postgres
def test_a_global_change_reaches_every_tenants_reference_list(
    local_stack: LocalStack, tmp_path: Path, reference_db: str
) -> None:
    """A platform-wide erasure recorded by acme is delivered to globex's list too."""
    tenants = PG_TENANTS + '\n[tenants.globex.reference_list]\nsink = "postgres"\n'
    stack = RefStack(local_stack, tmp_path, reference_db, tenants)
    stack.pipeline.start_worker()
    stack.sync.start()
    try:
        stack.pipeline.publisher.publish(event("+33612000077", Kind.ERASURE, scope=Scope.GLOBAL))
        for tenant in ("acme", "globex"):
            found = stack.wait_row("+33612000077", tenant=tenant, do_not_call=True)
            assert (found["kind"], found["scope"]) == ("erasure", "global"), (tenant, found)
        assert stack.pipeline.cli("verify").returncode == 0
    finally:
        try:
            assert stack.sync.stop() == 0, stack.sync.log()
        finally:
            stack.pipeline.close()
