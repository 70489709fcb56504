"""The webhook sink against a real HTTP server on loopback, through the real sync process."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.sinks.base import Delivery, Verdict
from consumers.sinks.webhook import WebhookSink, classify, sign, verify
from infra.launch.stack import LocalStack
from schemas.errors import ConfigError
from schemas.events import Kind, OppositionEvent
from schemas.tenants import TenantDirectory
from tests.harness import TENANTS_TOML, Pipeline, wait_for
from tests.sync_harness import Receiver, SyncProcess, WebhookServer, delivery

SECRET = "test-webhook-secret-0123456789"


def test_signature_verifies_and_refuses_tampering_and_replays() -> None:
    body = b'{"phone_e164": "+33612345678"}'
    now = int(time.time())
    header = sign(SECRET.encode(), body, now)
    assert verify(SECRET.encode(), body, header, now)
    assert not verify(SECRET.encode(), body + b" ", header, now)  # tampered body
    assert not verify(b"another-secret-of-the-same-len", body, header, now)  # wrong key
    assert not verify(SECRET.encode(), body, header, now + 3600)  # replayed an hour later
    assert not verify(SECRET.encode(), body, "garbage", now)


@pytest.mark.parametrize(
    ("status", "verdict", "kind"),
    [
        (200, Verdict.DELIVERED, None),
        (204, Verdict.DELIVERED, None),
        (400, Verdict.REJECTED, "rejected"),
        (404, Verdict.REJECTED, "rejected"),
        (422, Verdict.REJECTED, "rejected"),
        (429, Verdict.RETRY, "throttled"),
        (500, Verdict.RETRY, "server_error"),
        (503, Verdict.RETRY, "server_error"),
        (301, Verdict.RETRY, "sink_error"),
    ],
)
def test_http_answers_are_classified(status: int, verdict: Verdict, kind: str | None) -> None:
    result = classify(status, "body")
    assert (result.verdict, result.kind) == (verdict, kind)


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def test_a_retried_answer_keeps_its_status_only_and_a_refusal_is_cut_to_256_bytes() -> None:
    body = b'{"error": "no such contact", "trace": "' + b"\x00\x1b[2J\n\xc3\xa9" * 500 + b'"}'
    for status in (500, 503, 429, 301):
        assert classify(status, body).detail == f"HTTP {status}"  # logged: no body
    refused = classify(422, body).detail
    assert refused is not None and refused.startswith('HTTP 422: {"error": "no such contact"')
    assert len(refused.encode()) <= 256
    assert not CONTROL.search(refused)
    refused.encode().decode("utf-8")  # cut on a character boundary


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://crm.globex.example/dnc", True),
        ("http://127.0.0.1:8080/dnc", True),
        ("http://127.20.0.5/dnc", True),
        ("http://[::1]:8080/dnc", True),
        ("http://localhost/dnc", True),
        ("http://crm.globex.example/dnc", False),
        ("http://10.0.0.7/dnc", False),
        ("http://localhost.globex.example/dnc", False),
    ],
)
def test_plain_http_is_refused_except_to_this_machine(
    tmp_path: Path, url: str, accepted: bool
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(WEBHOOK_TENANTS.format(url=url))
    if accepted:
        TenantDirectory.load(path)
        return
    with pytest.raises(ConfigError) as refused:
        TenantDirectory.load(path)
    assert "tenant 'globex'" in str(refused.value)
    assert "is plain http: use https://" in str(refused.value)


def _delivery(phone: str, version: int) -> Delivery:
    return delivery(phone, version, tenant="globex")


def test_one_numbers_changes_stay_in_order_and_a_failure_holds_the_rest() -> None:
    receiver = Receiver(SECRET.encode())
    server = WebhookServer(receiver)
    sink = WebhookSink(server.url, SECRET.encode(), timeout=5, max_in_flight=4)
    try:
        batch = [_delivery("+447400900001", v) for v in (1, 2, 3)]
        batch += [_delivery("+447400900002", 1)]
        receiver.fail_next = 1  # the first request (whichever number) gets a 503
        results = sink.deliver(batch)
        retried = [i for i, r in enumerate(results) if r.verdict is Verdict.RETRY]
        assert len(retried) in (1, 3)  # the other number, or the first number's whole chain
        if len(retried) == 3:
            assert retried == [0, 1, 2]
        # Retrying the same changes sends the same idempotency keys; duplicates apply once.
        again = sink.deliver(batch)
        assert all(r.verdict is Verdict.DELIVERED for r in again)
        assert len(receiver.applied) == 4
        first_keys = [c.key for c in receiver.calls if c.body["phone_e164"] == "+447400900001"]
        applied_versions = [
            c.body["version"]
            for c in receiver.calls
            if c.status == 200 and c.body["phone_e164"] == "+447400900001"
        ]
        assert applied_versions[:3] == [1, 2, 3]  # in order, whatever the concurrency
        assert set(first_keys) == {d.idempotency_key for d in batch[:3]}
    finally:
        sink.close()
        server.close()


WEBHOOK_TENANTS = (
    TENANTS_TOML
    + """
[tenants.globex.reference_list]
sink = "webhook"
url = "{url}"
secret_env = "GLOBEX_WEBHOOK_SECRET"
"""
)


@pytest.fixture
def webhook_pipeline(local_stack: LocalStack, tmp_path: Path) -> Iterator[tuple[Any, ...]]:
    receiver = Receiver(SECRET.encode())
    server = WebhookServer(receiver)
    pipeline = Pipeline(
        local_stack,
        tmp_path,
        prefix=f"w{uuid.uuid4().hex[:10]}",
        tenants_toml=WEBHOOK_TENANTS.format(url=server.url),
        extra_env={"GLOBEX_WEBHOOK_SECRET": SECRET},
    )
    sync = SyncProcess(pipeline)
    try:
        pipeline.start_worker()
        sync.start()
        yield pipeline, sync, receiver
    finally:
        try:
            assert sync.stop() == 0, sync.log()
        finally:
            pipeline.close()
            server.close()


def _globex(phone: str, kind: Kind = Kind.OPPOSITION) -> OppositionEvent:
    return OppositionEvent(
        event_id=uuid.uuid4(),
        tenant="globex",
        phone=phone,
        kind=kind,
        occurred_at=datetime.now(UTC),
    )


@pytest.mark.pipeline
def test_webhook_signed_retried_on_5xx_idempotent_and_4xx_dead_lettered(
    webhook_pipeline: tuple[Any, ...],
) -> None:
    pipeline, sync, receiver = webhook_pipeline
    receiver.fail_next = 4  # the CRM answers 503 four times, then recovers
    receiver.reject = lambda body: body["phone_e164"] == "+447400900999"
    # What the CRM answers is not ours to log: it may echo the contact, or hold anything.
    receiver.response_body = lambda status: (
        b'{"error": "scripted", "status": %d, "echo": "upstream-said-%d' % (status, status)
        + b"\x00\x1b[31m\r\n" * 200
        + b'"}'
    )
    good = [_globex(f"07400 900{n:03d}") for n in range(1, 6)]
    bad = _globex("07400 900999")
    pipeline.publisher.publish_many([*good, bad])

    wait_for(lambda: len(receiver.applied) == 5, timeout=60, what="5 changes applied")
    assert all(call.signature_ok for call in receiver.calls)
    statuses = [call.status for call in receiver.calls]
    assert statuses.count(503) == 4
    # Every 503 was retried with the same idempotency key until a 2xx.
    for call in receiver.calls:
        if call.status == 503:
            assert call.key in receiver.applied or call.body["phone_e164"] == "+447400900999"
    applied_phones = sorted(str(c["phone_e164"]) for c in receiver.applied.values())
    assert applied_phones == [f"+447400900{n:03d}" for n in range(1, 6)]

    # The 4xx went to the dead letters with the response, and was not retried.
    letters = pipeline.consume(pipeline.settings.reference_dead_letter_topic, 1, timeout=30)
    assert len(letters) == 1
    headers = {k: v.decode() for k, v in letters[0].headers() or []}
    assert headers["dnc.dlq.reason"] == "reference_list_rejected"
    detail = headers["dnc.dlq.detail"]
    assert detail.startswith('HTTP 422: {"error": "scripted"')  # the start of the body
    assert len(detail.encode()) <= 256 and not CONTROL.search(detail)
    assert headers["dnc.dlq.tenant"] == "globex"
    assert json.loads(letters[0].value())["phone_e164"] == "+447400900999"
    bad_statuses = [c.status for c in receiver.calls if c.body["phone_e164"] == "+447400900999"]
    assert bad_statuses[-1] == 422 and bad_statuses.count(422) == 1, bad_statuses
    wait_for(
        lambda: sync.sample("dnc_reference_list_pending", tenant="globex") == 0,
        what="nothing pending",
    )
    assert (
        sync.sample(
            "dnc_reference_list_errors_total", tenant="globex", sink="webhook", kind="server_error"
        )
        == 4
    )
    assert sync.sample("dnc_dead_letters_total", reason="reference_list_rejected") == 1
    logged = sync.log_path.read_text(errors="replace")
    assert "HTTP 503" in logged  # the status of a retried answer is logged ...
    assert "upstream-said" not in logged and "\x1b[31m" not in logged  # ... never its body

    # Redelivery (a restarted sync reading from the start) is acknowledged, not applied twice.
    sync.stop()
    replay = SyncProcess(pipeline, env={"DNC_SYNC_GROUP_PREFIX": f"{pipeline.prefix}-replay"})
    calls_before = len(receiver.calls)
    replay.start()
    try:
        wait_for(lambda: len(receiver.calls) >= calls_before + 6, what="the replay")
        assert len(receiver.applied) == 5
    finally:
        assert replay.stop() == 0, replay.log()
