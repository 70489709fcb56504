"""A check reads the view's metadata and the members it asks in one atomic unit.

A bulk check that read the metadata, then the members in later commands, could see a
ready view and then an empty one (a FLUSHALL, a restart, a wipe in between) and answer
"callable" for suppressed numbers. Here, on real Redis, a thread flushes the view
(FLUSHDB) and writes it back in a loop (members, then metadata, in one MULTI, so the view
is always either complete or absent) while checks run: any "callable" is that bug.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from consumers.checker import Answer, SuppressionChecker
from consumers.readiness import READ_VIEW
from schemas.events import GLOBAL_TARGET, Scope, scope_target
from schemas.settings import Settings
from schemas.view import (
    META_KEY,
    META_LAYOUT,
    applied_field,
    ready_field,
)
from tests.plain_view import PARTITIONS, TENANTS, PlainView, numbers


class FlushAndRewrite(threading.Thread):
    """FLUSHDB, then the same view again in one MULTI (members first, then the metadata
    with a fresh applied-through time), in a loop: the view is always complete or absent.

    The view is copied back from a copy kept in another database (``COPY ... DB``: fast,
    so it is absent only briefly), and it stays complete a while after each rewrite, about
    as long as a bulk check's reads: reads start on a complete view and a flush lands amid
    them.
    """

    HOLDS = (0.01, 0.02, 0.04)

    def __init__(self, url: str, backup_db: int = 1) -> None:
        super().__init__(daemon=True)
        self.view = redis.Redis.from_url(url, socket_timeout=30)
        assert url.endswith("/0"), url  # the view in database 0, its copy in another one
        self.backup = redis.Redis.from_url(f"{url[:-2]}/{backup_db}", socket_timeout=30)
        self.meta = self.view.hgetall(META_KEY)
        assert self.meta, "the view must be ready before it is flushed and rewritten"
        self.keys = [k for k in self.view.scan_iter(match="dnc:v1:*") if k != META_KEY.encode()]
        self.backup.flushdb()
        for key in self.keys:
            assert self.view.copy(key, key, destination_db=backup_db)
        self.stop = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                seconds, micros = self.view.time()
                now_ms = seconds * 1000 + micros // 1000
                fresh = {**self.meta, **{applied_field(p): now_ms for p in range(PARTITIONS)}}
                self.backup.hset(META_KEY, mapping=fresh)
                self.view.flushdb()
                pipe = self.backup.pipeline(transaction=True)
                for key in self.keys:
                    pipe.copy(key, key, destination_db=0)
                pipe.copy(META_KEY, META_KEY, destination_db=0)
                pipe.execute()
                self.rounds += 1
                self.stop.wait(self.HOLDS[self.rounds % len(self.HOLDS)])
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.view.close()
            self.backup.close()


@pytest.mark.redis
@pytest.mark.timeout(240)
def test_no_check_answers_callable_while_the_view_is_flushed_and_rewritten(
    view: PlainView,
) -> None:
    phones = numbers(50_000)
    view.suppress(phones)
    view.make_ready()
    assert {r.answer for r in view.checker.check_many(phones, "acme")} == {Answer.SUPPRESSED}

    churn = FlushAndRewrite(view.url)
    churn.start()
    totals: Counter[Answer] = Counter()
    rounds = mixed = 0
    deadline = time.monotonic() + 120
    try:
        while rounds < 20 and time.monotonic() < deadline and not totals[Answer.CALLABLE]:
            bulk = Counter(r.answer for r in view.checker.check_many(phones, "acme"))
            mixed += bulk[Answer.SUPPRESSED] > 0 and bulk[Answer.UNAVAILABLE] > 0
            totals += bulk
            totals += Counter(view.checker.check(p, "acme").answer for p in phones[::500])
            totals += Counter(view.check_async(p).answer for p in phones[250::500])
            rounds += 1
    finally:
        churn.stop.set()
        churn.join(timeout=30)
    assert churn.error is None, churn.error
    summary = (
        f"{dict(totals)} over {rounds} rounds of checks ({mixed} bulk checks saw the view "
        f"flushed amid their reads), {churn.rounds} flushes+rewrites"
    )
    # The bug: a read that saw a ready view's metadata, then (later) members of an empty one.
    assert totals[Answer.CALLABLE] == 0, summary
    # The flushes did land between the reads of one bulk check (it spans many scripts):
    # otherwise this test proved nothing.
    assert churn.rounds >= 3 and mixed >= 1, summary
    assert totals[Answer.SUPPRESSED] > 0, summary


@pytest.mark.redis
def test_single_asyncio_and_bulk_checks_answer_suppressed_callable_or_unavailable(
    view: PlainView,
) -> None:
    tenant, worldwide, in_campaign, free = numbers(4, first=900)
    view.suppress([tenant])
    view.suppress([worldwide], GLOBAL_TARGET)
    view.suppress([in_campaign], scope_target(Scope.CAMPAIGN, "acme", "spring"))
    phones = [tenant, worldwide, in_campaign, free]

    def verdicts(campaign: str | None = None) -> dict[str, list[tuple[Answer, Scope | None]]]:
        return {
            reader: [(r.answer, r.scope) for r in results]
            for reader, results in view.answers(phones, campaign).items()
        }

    def assert_unavailable(because: str) -> None:
        for reader, results in view.answers(phones).items():
            assert {r.answer for r in results} == {Answer.UNAVAILABLE}, (reader, results)
            assert all(because in (r.why or "") for r in results), (reader, results)
        assert not view.checker.readiness().ready

    assert_unavailable("view not ready")  # nothing vouched for yet
    view.make_ready()
    suppressed, callable_ = Answer.SUPPRESSED, (Answer.CALLABLE, None)
    expected = [(suppressed, Scope.TENANT), (suppressed, Scope.GLOBAL), callable_, callable_]
    assert verdicts() == dict.fromkeys(("check", "check_async", "check_many"), expected)
    expected[2] = (suppressed, Scope.CAMPAIGN)
    assert verdicts("spring") == dict.fromkeys(("check", "check_async", "check_many"), expected)
    assert view.checker.readiness().ready

    meta = view.client.hgetall(META_KEY)
    view.client.hdel(META_KEY, ready_field(1))  # a rebuild of partition 1 under way
    assert_unavailable("not ready for partitions [1]")
    view.client.hset(META_KEY, mapping=meta)
    seconds, _micros = view.client.time()
    view.client.hset(META_KEY, applied_field(2), (seconds - 60) * 1000)  # the worker stopped
    assert_unavailable("view not current")
    view.client.hset(META_KEY, mapping={**meta, META_LAYOUT: "another-layout"})
    assert_unavailable("view layout mismatch")
    view.client.delete(META_KEY)  # flushed, or restarted empty
    assert_unavailable("view not ready")


@pytest.mark.redis
def test_checks_still_answer_right_after_the_scripts_are_flushed(view: PlainView) -> None:
    """The read is one script (EVALSHA): after ``SCRIPT FLUSH`` or a Redis restart the
    server no longer knows it, and every reader loads it again instead of failing."""
    suppressed, free = numbers(2, first=700)
    view.suppress([suppressed])
    view.make_ready()
    expected = [Answer.SUPPRESSED, Answer.CALLABLE]
    for reader in ("check", "check_async", "check_many"):
        view.client.script_flush()
        results = view.answers([suppressed, free])[reader]
        assert [r.answer for r in results] == expected, (reader, results)
        # It was the script (loaded again), not a plain pipeline.
        assert view.client.script_exists(view.client.register_script(READ_VIEW).sha) == [True]
    view.client.script_flush()
    assert view.checker.readiness().ready


def test_a_redis_cluster_needs_a_sharded_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNC_REDIS_CLUSTER", "true")
    monkeypatch.setenv("DNC_VIEW_SHARDS", "0")
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert "DNC_REDIS_CLUSTER" in message and "DNC_VIEW_SHARDS" in message, message
    monkeypatch.delenv("DNC_VIEW_SHARDS")
    assert Settings().shards == 48  # unset: the cluster's default
    assert Settings(view_shards=16).shards == 16
    monkeypatch.setenv("DNC_REDIS_CLUSTER", "false")
    assert Settings(view_shards=0).shards == 0  # one Redis server: the plain layout


@pytest.mark.redis
def test_an_answer_that_took_longer_than_the_bound_allows_is_not_callable(
    view: PlainView, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process descheduled after Redis answered (an overloaded dialer host): the view was
    current when read, but by the time the answer is ready the bound has passed. The time a
    question took counts against the bound, so "callable" becomes "unavailable"."""
    bound = 1.0
    checker = SuppressionChecker(
        view.client, view.layout, TENANTS, max_staleness_seconds=bound,
        async_client=view.async_client,
    )  # fmt: skip
    view.checker = checker
    phones = numbers(20, first=900_000)
    view.make_ready()
    fresh = view.answers(phones)
    assert {r.answer for rs in fresh.values() for r in rs} == {Answer.CALLABLE}, fresh

    import consumers.checker as checker_module

    real_one, real_async = checker._read_one, checker._read_async
    real_read, real_bulk = checker._read, checker_module.read_view
    assert real_async is not None

    def slow_read(*a: Any) -> Any:
        reply = real_one(*a)
        time.sleep(bound + 0.2)  # Redis answered; this process was not scheduled meanwhile
        return reply

    async def slow_async(**kw: Any) -> Any:
        reply = await real_async(**kw)
        await asyncio.sleep(bound + 0.2)
        return reply

    def slow_bulk(client: Any, reads: Any, _script: Any = None) -> Any:
        replies = real_bulk(client, reads, real_read)  # (the script, not the slow single read)
        time.sleep(bound + 0.2)
        return replies

    monkeypatch.setattr(checker, "_read_one", slow_read)
    monkeypatch.setattr(checker, "_read_async", slow_async)
    monkeypatch.setattr(checker_module, "read_view", slow_bulk)
    readers = {
        "check": lambda: [checker.check(phones[0], "acme")],
        "check_async": lambda: [view.check_async(phones[0])],
        "check_many": lambda: checker.check_many(phones[:3], "acme"),
    }
    for reader, ask in readers.items():
        view.make_ready()  # vouched just now: current when the read runs
        results = ask()
        assert {r.answer for r in results} == {Answer.UNAVAILABLE}, (reader, results)
        assert all("to answer" in (r.why or "") for r in results), (reader, results)


@pytest.mark.redis
def test_a_check_answers_after_its_connection_was_killed(view: PlainView) -> None:
    """A single check keeps its thread's connection from one check to the next: a connection
    the server closed (a restart, a timeout, CLIENT KILL) is dropped and the check answers on
    a new one, never on a reply meant for another question."""
    phones = numbers(20)
    view.suppress(phones[::2])
    view.make_ready()
    expected = [Answer.SUPPRESSED if i % 2 == 0 else Answer.CALLABLE for i in range(20)]
    assert [view.checker.check(p, "acme").answer for p in phones] == expected
    for i, phone in enumerate(phones):
        if i % 3 == 0:  # the checker's connections, killed by the server between two checks
            killed = view.client.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1
        assert view.checker.check(phone, "acme").answer is expected[i], phone
