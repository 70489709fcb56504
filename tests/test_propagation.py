"""End to end on real Kafka, a real `dnc worker` process and real Redis: oppose -> check."""

from __future__ import annotations

import csv
import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from schemas.events import Kind, OppositionEvent, Scope
from tests.harness import Pipeline, raw_event, wait_for

pytestmark = pytest.mark.pipeline


def cli_check(
    p: Pipeline, phone: str, tenant: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return p.cli("check", phone, "--tenant", tenant, *extra)


def test_cli_oppose_then_check_suppressed_unrelated_stays_callable(
    running_pipeline: Pipeline,
) -> None:
    p = running_pipeline
    before = cli_check(p, "06 11 22 33 44", "acme")
    assert (before.returncode, before.stdout.strip()) == (0, "callable")

    recorded = p.cli("oppose", "06 11 22 33 44", "--tenant", "acme", "--agent", "agent-7")
    assert recorded.returncode == 0, recorded.stderr
    uuid.UUID(recorded.stdout.strip())  # prints the event id once Kafka acknowledged

    p.wait_answer("+33611223344", "acme", "suppressed")
    after = cli_check(p, "+33 6 11 22 33 44", "acme")
    assert after.returncode == 1
    assert after.stdout.strip() == "suppressed: opposed (tenant, opposition)"
    unrelated = cli_check(p, "06 11 22 33 45", "acme")
    assert (unrelated.returncode, unrelated.stdout.strip()) == (0, "callable")


def test_raw_json_from_a_plain_kafka_producer(running_pipeline: Pipeline) -> None:
    p = running_pipeline
    producer = Producer(
        {
            "bootstrap.servers": p.stack.bootstrap_servers,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    payload = raw_event(
        schema_version=1,
        event_id=str(uuid.uuid4()),
        tenant="acme",
        phone="+33622334455",
        kind="consent_withdrawn",
        scope="tenant",
        source="agent_desktop",
        occurred_at=datetime.now(UTC).isoformat(),
    )
    producer.produce(p.settings.oppositions_topic, key=b"acme:+33622334455", value=payload)
    assert producer.flush(10) == 0
    p.wait_answer("06 22 33 44 55", "acme", "suppressed")


def test_lift_by_admin_makes_it_callable_again(running_pipeline: Pipeline) -> None:
    p = running_pipeline
    assert p.cli("oppose", "0633445566", "--tenant", "acme").returncode == 0
    p.wait_answer("0633445566", "acme", "suppressed")
    lifted = p.cli(
        "lift", "0633445566", "--tenant", "acme", "--justification", "recorded by mistake"
    )
    assert lifted.returncode == 0, lifted.stderr
    p.wait_answer("0633445566", "acme", "callable")
    refused = p.cli("oppose", "0633445566", "--tenant", "acme", "--kind", "lift")
    assert refused.returncode == 3 and "dnc lift" in refused.stderr


def test_a_refusal_expires_on_time(running_pipeline: Pipeline) -> None:
    p = running_pipeline  # cooldowns are days long: the event says when it ends instead
    now = datetime.now(UTC)
    p.publisher.publish(
        OppositionEvent.record(
            tenant="umbrella",
            phone="0644556677",
            kind=Kind.REFUSAL,
            occurred_at=now,
            expires_at=now + timedelta(seconds=6),
        )
    )
    p.wait_answer("0644556677", "umbrella", "suppressed")
    p.wait_answer("0644556677", "umbrella", "callable", timeout=30)
    # the expiry was propagated as a change on the compacted topic too
    changes = [
        json.loads(m.value()) for m in p.consume(p.settings.suppressions_topic, 200, timeout=5)
    ]
    mine = [c for c in changes if c["phone_e164"] == "+33644556677"]
    assert [c["cause"] for c in mine][-1] == "expiry" and mine[-1]["suppressed"] is False


def test_scopes(running_pipeline: Pipeline) -> None:
    p = running_pipeline
    publish = p.publisher.publish
    publish(
        OppositionEvent.record(
            tenant="acme",
            phone="0655667788",
            kind=Kind.OPPOSITION,
            scope=Scope.CAMPAIGN,
            campaign_id="spring",
        )
    )
    publish(
        OppositionEvent.record(
            tenant="acme", phone="0666778899", kind=Kind.ERASURE, scope=Scope.GLOBAL
        )
    )
    publish(OppositionEvent.record(tenant="globex", phone="+33677889900", kind=Kind.OPPOSITION))

    p.wait_answer("0655667788", "acme", "suppressed", campaign="spring")
    assert p.check("0655667788", "acme", "autumn").answer.value == "callable"
    assert p.check("0655667788", "acme").answer.value == "callable"

    hit = p.wait_answer("0666778899", "acme", "suppressed")
    assert hit.scope is Scope.GLOBAL
    assert p.check("+33666778899", "globex").answer.value == "suppressed"
    assert p.check("+33666778899", "umbrella", "any").answer.value == "suppressed"

    p.wait_answer("+33677889900", "globex", "suppressed")
    assert p.check("+33677889900", "acme").answer.value == "callable"

    bulk = p.checker.check_many(
        ["0655667788", "0666778899", "0600000001", "nonsense"], "acme", "spring"
    )
    assert [r.answer.value for r in bulk] == ["suppressed", "suppressed", "callable", "unavailable"]
    assert bulk[3].why and "not a" in bulk[3].why


def test_bad_input_is_dead_lettered_with_reason_and_the_worker_keeps_going(
    running_pipeline: Pipeline,
) -> None:
    p = running_pipeline
    now = datetime.now(UTC).isoformat()

    def ev(**over: object) -> dict[str, object]:
        base: dict[str, object] = {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "tenant": "acme",
            "phone": "0611111111",
            "kind": "opposition",
            "occurred_at": now,
        }
        base.update(over)
        return base

    bad = {
        "malformed_json": b'{"schema_version": 1, "tenant": ',
        "invalid_phone": json.dumps(ev(phone="+33 1")).encode(),
        "unknown_kind": json.dumps(ev(kind="please-call-more")).encode(),
        "missing_field": json.dumps({k: v for k, v in ev().items() if k != "occurred_at"}).encode(),
        "unsupported_schema_version": json.dumps(ev(schema_version=7)).encode(),
        "oversized": json.dumps(ev(reason_code="z" * 40_000)).encode(),
    }
    producer = Producer({"bootstrap.servers": p.stack.bootstrap_servers})
    for i, payload in enumerate(bad.values()):
        producer.produce(p.settings.oppositions_topic, key=f"bad-{i}".encode(), value=payload)
    producer.produce(
        p.settings.oppositions_topic,
        key=b"acme:+33612121212",
        value=json.dumps(ev(phone="0612121212")).encode(),
    )
    assert producer.flush(10) == 0

    letters = p.consume(p.settings.dead_letter_topic, len(bad), timeout=30)
    by_reason = {dict(m.headers())["dnc.dlq.reason"].decode(): m for m in letters}
    assert set(by_reason) == set(bad)
    for reason, message in by_reason.items():
        headers = dict(message.headers())
        assert message.value() == bad[reason]  # the original bytes, untouched
        assert headers["dnc.dlq.topic"].decode() == p.settings.oppositions_topic
        assert int(headers["dnc.dlq.offset"]) >= 0 and headers["dnc.dlq.detail"]
    p.wait_answer("0612121212", "acme", "suppressed")
    assert p.worker is not None and p.worker.poll() is None
    metrics = p.metrics()
    assert 'dnc_dead_letters_total{reason="oversized"} 1.0' in metrics
    assert 'dnc_events_total{kind="unknown",outcome="rejected"}' in metrics


def test_redis_holds_no_phone_number_in_clear(running_pipeline: Pipeline) -> None:
    p = running_pipeline
    p.publisher.publish(
        OppositionEvent.record(tenant="acme", phone="0699887766", kind=Kind.OPPOSITION)
    )
    p.wait_answer("0699887766", "acme", "suppressed")
    scan = subprocess.run(
        ["redis-cli", "-p", str(p.stack.redis.port), "--scan"],
        capture_output=True,
        text=True,
        check=True,
    )  # type: ignore[union-attr]
    keys = scan.stdout.split()
    assert keys, "the view should not be empty"
    dump = list(keys)
    for key in keys:
        if p.redis.type(key) == b"set":
            dump += [m.decode() for m in p.redis.smembers(key)]
            assert p.redis.object("encoding", key) == b"intset"
        else:
            dump.append(
                str(p.redis.get(key) if p.redis.type(key) == b"string" else p.redis.hgetall(key))
            )
    text = "\n".join(dump)
    for fragment in ("699887766", "611223344", "622334455", "+33"):
        assert fragment not in text


def test_metrics_expose_the_catalogue(running_pipeline: Pipeline) -> None:
    text = running_pipeline.metrics()
    for name in (
        "dnc_events_total",
        "dnc_propagation_seconds_bucket",
        "dnc_view_ready 1.0",
        'stage="suppression_view"',
        "dnc_suppressed_numbers",
    ):
        assert name in text


def test_raw_producer_payload_follows_the_published_json_schema(running_pipeline: Pipeline) -> None:
    import jsonschema

    schema = json.loads(running_pipeline.cli("schema").stdout)
    payload = json.loads(
        raw_event(
            schema_version=1,
            event_id=str(uuid.uuid4()),
            tenant="acme",
            phone="0611223344",
            kind="refusal",
            occurred_at=datetime.now(UTC).isoformat(),
        )
    )
    jsonschema.validate(payload, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**payload, "kind": "maybe"}, schema)


def test_bulk_import_reports_rejected_rows_and_publishes_the_rest(
    running_pipeline: Pipeline, tmp_path: Path
) -> None:
    p = running_pipeline
    csv_file = tmp_path / "numbers.csv"
    csv_file.write_text(
        "phone,campaign_id,reason_code\n"
        "0670000001,,do-not-call\n"
        "not a number,,\n"
        "+33670000002,,\n"
        "0670000003,bad campaign id!,\n"
    )
    rejects = tmp_path / "rejects.csv"
    result = p.cli("import", str(csv_file), "--tenant", "acme", "--rejects", str(rejects))
    assert result.returncode == 1, result.stderr
    assert "published 2 of 4 rows; rejected 2" in result.stdout
    rows = rejects.read_text().splitlines()
    assert rows[0] == "line,phone,reason"
    assert rows[1].startswith("3,not a number,") and rows[2].startswith("5,0670000003,")
    p.wait_answer("0670000001", "acme", "suppressed")
    p.wait_answer("0670000002", "acme", "suppressed")
    missing = p.cli("import", str(tmp_path / "nope.csv"), "--tenant", "acme")
    assert missing.returncode == 3 and "the file does not exist" in missing.stderr


def test_status_reports_ready_and_caught_up(running_pipeline: Pipeline) -> None:
    p = running_pipeline

    def caught_up() -> dict[str, object] | None:
        result = p.cli("status", "--json")
        report = json.loads(result.stdout)
        return report if result.returncode == 0 and report["worker_lag_total"] == 0 else None

    report = wait_for(caught_up, timeout=30, interval=1, what="status healthy with no lag")
    assert report["view_ready"] is True and report["kafka_reachable"] is True


def test_a_change_says_which_event_caused_it(running_pipeline: Pipeline) -> None:
    """A refusal under a standing objection changes nothing visible, yet its change record
    says when it was said: that is where reference-list latency is measured from."""
    p = running_pipeline
    objection_at = datetime.now(UTC) - timedelta(minutes=10)
    refusal_at = datetime.now(UTC)
    for kind, at in ((Kind.OPPOSITION, objection_at), (Kind.REFUSAL, refusal_at)):
        p.publisher.publish(
            OppositionEvent(
                event_id=uuid.uuid4(), tenant="acme", phone="0677889900", kind=kind, occurred_at=at
            )
        )

    def of_acme(messages: list[Any]) -> list[dict[str, Any]]:
        # (another test suppressed the same number for globex: its changes are not these)
        found = [json.loads(m.value()) for m in messages if b"+33677889900" in m.value()]
        return [c for c in found if c["target"] == "acme"]

    def refusal_recorded(messages: list[Any]) -> bool:
        return any(
            c["event_occurred_at"] and datetime.fromisoformat(c["event_occurred_at"]) == refusal_at
            for c in of_acme(messages)
        )

    consumed = p.consume(p.settings.suppressions_topic, 10_000, timeout=30, until=refusal_recorded)
    changes = of_acme(consumed)
    assert changes, consumed
    last = changes[-1]
    assert last["kind"] == "opposition"  # the objection still governs
    assert datetime.fromisoformat(last["occurred_at"]) == objection_at
    assert datetime.fromisoformat(last["event_occurred_at"]) == refusal_at


def test_bulk_import_rejects_rows_it_cannot_read_as_one_number_and_imports_the_rest(
    running_pipeline: Pipeline, tmp_path: Path
) -> None:
    p = running_pipeline
    one_column = tmp_path / "one-column.csv"
    one_column.write_text(
        "0671000011\n"
        "0671000012;0671000013\n"  # read as one number, the first, before
        "0671000014,0671000015\n"
        "0671000016\n"
    )
    with_header = tmp_path / "with-header.csv"
    with_header.write_text(
        "phone,reason_code\n"
        "0671000021,said_stop\n"
        "0671000022,too,many\n"  # more cells than the header: a traceback before
        "0671000023," + "x" * 140_000 + "\n"  # over csv's 128 KiB field limit: a traceback
        '0671000024,"said\x1bstop"\n'  # a control character in free text
        "0671000025,\n"
    )
    results = {}
    for name, path in (("one", one_column), ("header", with_header)):
        rejects = tmp_path / f"rejects-{name}.csv"
        run = p.cli("import", str(path), "--tenant", "acme", "--rejects", str(rejects))
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
        with rejects.open(newline="") as handle:
            results[name] = (run.stdout, [tuple(r) for r in csv.reader(handle)][1:])
    stdout, rows = results["one"]
    assert "published 2 of 4 rows; rejected 2" in stdout
    assert [r[:2] for r in rows] == [("2", "0671000012;0671000013"), ("3", "0671000014")]
    assert rows[0][2].startswith("several values in the phone cell (separated by ';')")
    assert rows[1][2].startswith("2 values on one line")
    stdout, rows = results["header"]
    assert "published 2 of 5 rows; rejected 3" in stdout
    assert [r[:2] for r in rows] == [("3", "0671000022"), ("4", ""), ("5", "0671000024")]
    assert rows[0][2].startswith("3 cells where the header has 2")
    assert rows[1][2].startswith("unreadable CSV row: field larger than field limit")
    assert rows[2][2].startswith("reason_code: ") and "single line" in rows[2][2]
    for good in ("0671000011", "0671000016", "0671000021", "0671000025"):
        p.wait_answer(good, "acme", "suppressed")
    for never in ("0671000012", "0671000013", "0671000014", "0671000022", "0671000024"):
        assert p.check(never, "acme").answer.value == "callable", never


def test_a_control_character_in_free_text_is_dead_lettered_naming_the_field(
    running_pipeline: Pipeline,
) -> None:
    """A NUL would be refused by PostgreSQL downstream and block the number's reference list:
    the worker refuses it at once, and the next, clean event for the number applies."""
    p = running_pipeline
    producer = Producer({"bootstrap.servers": p.stack.bootstrap_servers, "acks": "all"})
    fields = {
        "schema_version": 1,
        "tenant": "acme",
        "phone": "0612131415",
        "kind": "opposition",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    bad = json.dumps({**fields, "event_id": str(uuid.uuid4()), "reason_code": "said\x00stop"})
    good = json.dumps({**fields, "event_id": str(uuid.uuid4()), "reason_code": "said_stop"})
    for payload in (bad, good):
        producer.produce(p.settings.oppositions_topic, key=b"acme:+33612131415", value=payload)
    assert producer.flush(10) == 0

    def ours(messages: list[Any]) -> bool:
        return any(m.value() == bad.encode() for m in messages)

    letters = p.consume(p.settings.dead_letter_topic, 10_000, timeout=30, until=ours)
    letter = next(m for m in letters if m.value() == bad.encode())
    headers = {k: v.decode() for k, v in letter.headers() or []}
    assert headers["dnc.dlq.reason"] == "schema_violation"
    detail = headers["dnc.dlq.detail"]
    assert detail.startswith("reason_code: ")
    assert "single line of text without control characters (found U+0000" in detail
    p.wait_answer("0612131415", "acme", "suppressed")
