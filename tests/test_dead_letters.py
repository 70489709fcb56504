"""`dnc dead-letters` on real Kafka, Redis and a real worker: look, fix the cause, replay."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from confluent_kafka import Producer

from consumers.checker import SuppressionChecker
from consumers.dead_letters import mask_number
from schemas.tenants import TenantDirectory
from tests.harness import TENANTS_TOML, Pipeline, wait_for

pytestmark = pytest.mark.pipeline

PHONE, E164 = "0687654321", "+33687654321"


def test_mask_number_hides_the_last_four_digits() -> None:
    assert mask_number("+33612345678") == "+3361234****"
    assert mask_number("06 12 34 56 78") == "06 12 34 ** **"
    assert mask_number("12") == "**"


def _produce(
    p: Pipeline,
    key: bytes,
    value: bytes,
    topic: str | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = Producer(
        {
            "bootstrap.servers": p.stack.bootstrap_servers,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    producer.produce(topic or p.settings.oppositions_topic, key=key, value=value, headers=headers)
    assert producer.flush(10) == 0


def _json(run: Any) -> Any:
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def _reasons(p: Pipeline) -> list[str]:
    letters = p.consume(p.settings.dead_letter_topic, 100, timeout=10, idle=2)
    return [dict(m.headers() or [])["dnc.dlq.reason"].decode() for m in letters]


def _events(p: Pipeline, kind: str, outcome: str) -> float:
    prefix = f'dnc_events_total{{kind="{kind}",outcome="{outcome}"}} '
    lines = [line for line in p.metrics().splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def _declare_newco_and_restart(p: Pipeline) -> SuppressionChecker:
    """What the operator does: declare the tenant, restart the worker. A checker that knows it."""
    tenants_file = p.tmp / "tenants.toml"
    tenants_file.write_text(TENANTS_TOML + '\n[tenants.newco]\ndefault_region = "FR"\n')
    p.stop_worker()
    p.start_worker()
    return SuppressionChecker.from_settings(
        p.settings,
        TenantDirectory.load(tenants_file),
        redis.Redis.from_url(p.stack.redis_url, socket_timeout=2),
    )


def test_an_unknown_tenant_is_dead_lettered_then_replayed_once_declared(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    p.start_worker()
    event = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "tenant": "newco",  # a new client, not in the worker's tenants file yet
        "phone": PHONE,
        "kind": "opposition",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    _produce(p, f"newco:{E164}".encode(), json.dumps(event).encode())
    _produce(p, b"garbage", b'{"schema_version": 1, "tenant": ')
    letters = p.consume(p.settings.dead_letter_topic, 2, timeout=30)
    offsets = {dict(m.headers() or [])["dnc.dlq.reason"].decode(): m.offset() for m in letters}
    assert set(offsets) == {"unknown_tenant", "malformed_json"}

    # -- summary: counts by reason, oldest and newest failure
    summary = _json(p.cli("dead-letters", "summary", "--json"))
    assert summary["total"] == 2 and summary["truncated"] is False
    by_reason = {r["reason"]: r for r in summary["reasons"]}
    assert by_reason["unknown_tenant"]["count"] == by_reason["malformed_json"]["count"] == 1
    assert by_reason["unknown_tenant"]["oldest"] == by_reason["unknown_tenant"]["newest"]
    datetime.fromisoformat(by_reason["unknown_tenant"]["oldest"])
    assert p.cli("dead-letters", "summary").returncode == 0

    # -- show: one letter, the number masked unless --reveal
    shown_run = p.cli("dead-letters", "show", str(offsets["unknown_tenant"]), "--json")
    shown = _json(shown_run)
    assert shown["reason"] == "unknown_tenant" and "newco" in shown["detail"]
    assert shown["source"]["topic"] == p.settings.oppositions_topic
    assert shown["source"]["offset"] >= 0 and shown["failed_at"]
    assert shown["key"] == "newco:+3368765****" and shown["event"]["phone"] == "068765****"
    assert shown["event"]["event_id"] == event["event_id"] and shown["phone_masked"] is True
    for run in (shown_run, p.cli("dead-letters", "show", str(offsets["unknown_tenant"]))):
        assert "87654321" not in run.stdout, run.stdout
    revealed = _json(
        p.cli("dead-letters", "show", str(offsets["unknown_tenant"]), "--reveal", "--json")
    )
    assert revealed["key"] == f"newco:{E164}" and revealed["event"]["phone"] == PHONE
    garbage = _json(p.cli("dead-letters", "show", str(offsets["malformed_json"]), "--json"))
    assert garbage["reason"] == "malformed_json" and "event" not in garbage
    nowhere = p.cli("dead-letters", "show", "999")
    assert nowhere.returncode == 3 and "no dead letter at partition 0 offset 999" in nowhere.stderr

    # -- replay: a selection is required; a dry run warns the cause is not fixed here
    unselected = p.cli("dead-letters", "replay")
    assert unselected.returncode == 3 and "choose what to replay" in unselected.stderr
    dry = p.cli("dead-letters", "replay", "--reason", "unknown_tenant", "--dry-run")
    assert dry.returncode == 0 and "would replay 1 dead letters" in dry.stdout
    assert "would still be refused with this machine's tenants file" in dry.stderr

    # -- the operator declares the tenant and restarts the worker, then replays
    checker = _declare_newco_and_restart(p)
    assert checker.check(PHONE, "newco").answer.value == "callable"
    first = p.cli("dead-letters", "replay", "--reason", "unknown_tenant")
    assert first.returncode == 0, first.stderr
    assert f"replayed 1 of 1 dead letters to {p.settings.oppositions_topic}" in first.stdout
    assert "would still be refused" not in first.stderr
    wait_for(
        lambda: checker.check(PHONE, "newco").answer.value == "suppressed",
        timeout=30,
        what="the replayed opposition to be applied",
    )

    # -- a second replay changes nothing: the worker sees a duplicate
    duplicates = _events(p, "opposition", "duplicate")
    second = p.cli("dead-letters", "replay", "--offset", str(offsets["unknown_tenant"]))
    assert second.returncode == 0 and "replayed 1 of 1" in second.stdout, second.stderr
    wait_for(
        lambda: _events(p, "opposition", "duplicate") >= duplicates + 1,
        timeout=30,
        what="the worker to see the second replay as a duplicate",
    )
    assert _events(p, "opposition", "applied") == 1
    assert checker.check(PHONE, "newco").answer.value == "suppressed"
    changes = [
        json.loads(m.value() or b"{}")
        for m in p.consume(p.settings.suppressions_topic, 10, timeout=10, idle=3)
    ]
    assert {c["version"] for c in changes if c["phone_e164"] == E164} == {1}
    assert _json(p.cli("dead-letters", "summary", "--json"))["total"] == 2  # nothing new


def test_a_replayed_lift_keeps_the_cutoff_it_was_dead_lettered_with(pipeline: Pipeline) -> None:
    """The documented workflow: a lift dead-lettered for an unknown tenant, the tenants file
    fixed, the person opposes again, the operator replays. The lift ends only what was in
    the log when the admin recorded it, never the new opposition."""
    p = pipeline
    p.start_worker()
    phone, e164 = "0687650001", "+33687650001"
    lift = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "tenant": "newco",  # not in the worker's tenants file yet
        "phone": phone,
        "kind": "lift",
        "source": "admin",
        "justification": "ticket 4242",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    _produce(p, f"newco:{e164}".encode(), json.dumps(lift).encode(), topic=p.settings.admin_topic)
    (letter,) = p.consume(p.settings.dead_letter_topic, 1, timeout=30)
    headers = dict(letter.headers() or [])
    assert headers["dnc.dlq.reason"] == b"unknown_tenant"
    assert headers["dnc.dlq.topic"] == p.settings.admin_topic.encode()
    # Committed past it: the restarted worker must not read it again by itself.
    wait_for(lambda: not any(p.commit_lag(p.settings.admin_topic).values()), timeout=30,
             what="the worker to commit past the dead-lettered lift")  # fmt: skip

    checker = _declare_newco_and_restart(p)
    # The person opposes again, after the admin's lift.
    opposition = {key: lift[key] for key in ("schema_version", "tenant", "phone")}
    opposition |= {"event_id": str(uuid.uuid4()), "kind": "opposition",
                   "occurred_at": datetime.now(UTC).isoformat()}  # fmt: skip
    _produce(p, f"newco:{e164}".encode(), json.dumps(opposition).encode())
    wait_for(lambda: checker.check(phone, "newco").answer.value == "suppressed", timeout=30,
             what="the new opposition to be applied")  # fmt: skip

    for run in ("first", "second"):
        done = p.messages_done()
        replayed = p.cli("dead-letters", "replay", "--reason", "unknown_tenant")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        # Read on the admin topic, then where it was forwarded: both taken to the end.
        wait_for(lambda d=done: p.messages_done() >= d + 2, timeout=30,
                 what=f"the {run} replay of the lift to be processed")  # fmt: skip
        assert checker.check(phone, "newco").answer.value == "suppressed", (
            f"the {run} replay of the lift ended an opposition appended after the admin "
            "recorded the lift"
        )
    # Applied once; the second replay was a duplicate.
    assert _events(p, "lift", "duplicate") >= 1
    assert _events(p, "lift", "applied") == 1
    assert checker.check(phone, "newco").answer.value == "suppressed"

    # A replay that lost its cutoff (or carries a forged one) is refused, not given a later one.
    forged = [("dnc.replay.of", b"elsewhere/0/0"), ("dnc.cutoff", b"9" * 13),
              ("dnc.cutoff.authority", b"v2:" + b"0" * 64)]  # fmt: skip
    for headers in (forged[:1], forged):
        _produce(p, f"newco:{e164}".encode(), json.dumps(lift).encode(),
                 topic=p.settings.admin_topic, headers=headers)  # fmt: skip
    wait_for(lambda: _reasons(p).count("lift_without_cutoff") == 2, timeout=30,
             what="both replays without a valid cutoff dead-lettered")  # fmt: skip
    # ... and `replay` does not send such a letter again: the lift is to be issued anew.
    skipped = p.cli("dead-letters", "replay", "--reason", "lift_without_cutoff")
    assert "replayed 0 of 0" in skipped.stdout and "Issue the lift again" in skipped.stderr
