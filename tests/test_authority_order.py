"""Authority and order on the real pipeline: only admins lift, the log orders a number's
history (not the desktops' clocks), and every event is applied on its canonical partition."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer

from consumers.subjects import SubjectLog
from schemas.authority import FORWARDED_FROM_HEADER
from schemas.events import Kind, OppositionEvent, Source
from schemas.partitioning import key_partition
from tests.harness import Pipeline, wait_for

pytestmark = pytest.mark.pipeline


def raw_event(kind: str, phone: str, **fields: object) -> bytes:
    """The wire format an agent desktop (or anything holding its credentials) can produce."""
    body: dict[str, object] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "tenant": "acme",
        "phone": phone,
        "kind": kind,
        "occurred_at": datetime.now(UTC).isoformat(),
        **fields,
    }
    return json.dumps(body).encode()


def produce(p: Pipeline, topic: str, value: bytes, key: bytes | None, **extra: object) -> None:
    producer = Producer({"bootstrap.servers": p.stack.bootstrap_servers, "acks": "all",
                         **extra})  # fmt: skip
    producer.produce(topic, value=value, key=key)
    assert producer.flush(15) == 0


def lift(phone: str, **fields: object) -> OppositionEvent:
    return OppositionEvent.record(
        tenant="acme", phone=phone, kind=Kind.LIFT, source=Source.ADMIN,
        justification="ticket 1234", **fields,
    )  # fmt: skip


def dead_letter_reasons(p: Pipeline) -> list[str]:
    letters = p.consume(p.settings.dead_letter_topic, 100, timeout=20, idle=3)
    return [dict(m.headers() or [])["dnc.dlq.reason"].decode() for m in letters]


def test_a_lift_forged_on_the_oppositions_topic_lifts_nothing(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    phone = "+33613000001"
    pipeline.publisher.publish(OppositionEvent.record(tenant="acme", phone=phone,
                                                      kind=Kind.ERASURE))  # fmt: skip
    pipeline.wait_answer(phone, "acme", "suppressed")
    forged = raw_event("lift", phone, phone_e164=phone, source="admin", justification="trust me")
    produce(pipeline, pipeline.settings.oppositions_topic, forged, f"acme:{phone}".encode())
    wait_for(lambda: "lift_not_authorised" in dead_letter_reasons(pipeline), timeout=30,
             what="the forged lift dead-lettered")  # fmt: skip
    assert pipeline.check(phone, "acme").answer.value == "suppressed"
    # The real admin path: the admin topic (`dnc lift`), forwarded and signed by the worker.
    pipeline.publisher.publish(lift(phone))
    pipeline.wait_answer(phone, "acme", "callable")
    # Subject access tells them apart with the workers' key; without it, it cannot.
    effects = [e.effect for e in SubjectLog(pipeline.settings, pipeline.tenants)
               .report("acme", phone).events]  # fmt: skip
    assert effects == ["applied", "lift_not_authorised", "applied"]
    keyless = pipeline.settings.model_copy(update={"authority_key": None})
    report = SubjectLog(keyless, pipeline.tenants).report("acme", phone)
    assert [e.effect for e in report.events] == ["applied", "unverified", "unverified"]
    assert report.current_state[0].suppressed  # left out: the state it derives is the safe one


def test_an_opposition_appended_after_a_lift_counts_whatever_its_clock(
    pipeline: Pipeline,
) -> None:
    pipeline.start_worker()
    phone, ahead = "+33613000002", "+33613000003"
    now = datetime.now(UTC)
    publish = pipeline.publisher.publish
    publish(OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.OPPOSITION))
    pipeline.wait_answer(phone, "acme", "suppressed")
    publish(lift(phone))
    pipeline.wait_answer(phone, "acme", "callable")
    # A desktop that was offline for an hour records what the person said back then.
    publish(OppositionEvent.record(tenant="acme", phone=phone, kind=Kind.REFUSAL,
                                   occurred_at=now - timedelta(hours=1)))  # fmt: skip
    pipeline.wait_answer(phone, "acme", "suppressed")
    # A lift stamped 4 minutes ahead (allowed skew) voids nothing recorded after it.
    publish(lift(ahead, occurred_at=now + timedelta(minutes=4)))
    publish(OppositionEvent.record(tenant="acme", phone=ahead, kind=Kind.OPPOSITION))
    pipeline.wait_answer(ahead, "acme", "suppressed")


def test_one_numbers_events_under_any_key_and_partitioner_share_one_history(
    pipeline: Pipeline,
) -> None:
    """National-format keys, no key, a random partition, worker restarts in between."""
    pipeline.start_worker()
    phone, topic = "+33613000004", pipeline.settings.oppositions_topic
    canonical = key_partition(f"acme:{phone}".encode(), pipeline.settings.partitions)
    elsewhere = (canonical + 1) % pipeline.settings.partitions
    produce(pipeline, topic, raw_event("opposition", "06 13 00 00 04"), b"acme:0613000004",
            partitioner="consistent_random")  # fmt: skip
    pipeline.wait_answer(phone, "acme", "suppressed")
    pipeline.kill_worker()
    pipeline.start_worker()
    pipeline.publisher.publish(lift(phone))
    pipeline.wait_answer(phone, "acme", "callable")
    pipeline.stop_worker()
    pipeline.start_worker()
    # No key at all, on a partition that is not the number's: still after the lift.
    producer = Producer({"bootstrap.servers": pipeline.stack.bootstrap_servers, "acks": "all"})
    producer.produce(topic, value=raw_event("refusal", "0613000004"), partition=elsewhere)
    assert producer.flush(15) == 0
    pipeline.wait_answer(phone, "acme", "suppressed")
    pipeline.kill_worker()
    pipeline.start_worker()
    assert pipeline.check(phone, "acme").answer.value == "suppressed"
    assert pipeline.cli("verify").returncode == 0
    # Every event of the number was applied from its canonical partition: the mis-keyed
    # ones were forwarded there, in the order they were read.
    copies = [
        m for m in pipeline.consume(topic, 50, timeout=20, idle=3)
        if m.partition() == canonical and dict(m.headers() or []).get(FORWARDED_FROM_HEADER)
    ]  # fmt: skip
    assert len(copies) >= 2, copies  # the national-format key and the keyless refusal
