"""The gateway when things go wrong: Kafka or Redis down, the audit trail gone, a token too fast.

Never a silent loss, never "callable" on error, never a write or access without its audit.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from infra.launch.process import free_port
from tests.gateway_harness import Gateway, issue_tokens
from tests.harness import Pipeline, wait_for

pytestmark = pytest.mark.pipeline


def test_fail_closed_when_kafka_and_redis_are_unreachable(pipeline: Pipeline) -> None:
    tokens = issue_tokens(pipeline.tmp / "tenants.toml")
    gateway = Gateway(
        pipeline,
        "down",
        DNC_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",  # nothing listens there
        DNC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        DNC_PUBLISH_TIMEOUT_SECONDS="2",
        DNC_AUDIT_TIMEOUT_SECONDS="1",
        DNC_GATEWAY_SUBJECT_SCAN_SECONDS="2",
    )
    gateway.start(wait_ready=False)
    try:
        with gateway.client() as anonymous:
            assert anonymous.get("/healthz").status_code == 200
            ready = anonymous.get("/readyz")
            assert ready.status_code == 503 and ready.json()["ready"] is False
            assert "unreachable" in ready.json()["kafka"] and "redis" in ready.json()["view"]
        with gateway.client(tokens["acme/agent"]) as agent:
            started = time.monotonic()
            refused = agent.post("/v1/oppositions", json={"phone": "0611223344", "kind": "refusal"})
            assert refused.status_code == 503, refused.text
            body = refused.json()
            assert body["error"] == "kafka_unavailable" and "not recorded" in body["message"]
            assert body["event_id"] and refused.headers["retry-after"] == "1"
            assert time.monotonic() - started < 15
        with gateway.client(tokens["acme/dialer"]) as dialer:
            single = dialer.get("/v1/suppressions/0611223344")
            assert single.status_code == 503
            assert single.json()["answer"] == "unavailable" and single.json()["may_call"] is False
            assert "redis" in single.json()["why"]
            bulk = dialer.post("/v1/checks", json={"phones": ["0611223344", "0611223345"]})
            assert bulk.status_code == 503
            assert {r["answer"] for r in bulk.json()["results"]} == {"unavailable"}
            assert not any(r["may_call"] for r in bulk.json()["results"])
            attempt = dialer.post("/v1/attempts", json={"phone": "0611223344", "campaign_id": "c"})
            assert attempt.status_code == 503 and attempt.headers["retry-after"] == "1"
            assert (attempt.json()["go"], attempt.json()["answer"]) == (False, "unavailable")
            assert attempt.json()["attempt_id"] is None and "redis" in attempt.json()["why"]
        with gateway.client(tokens["acme/consent"]) as recorder:
            grant = {"phone": "0611223344", "source": "paper", "proof_ref": "scan-7"}
            refused = recorder.post("/v1/consents", json=grant)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "kafka_unavailable" and refused.json()["event_id"]
        with gateway.client(tokens["acme/admin"]) as admin:
            access = admin.get("/v1/subjects/0611223344")
            assert access.status_code == 503 and access.json()["error"] == "kafka_unavailable"
    finally:
        gateway.stop()


def test_no_go_for_an_attempt_kafka_did_not_acknowledge(pipeline: Pipeline) -> None:
    """The view answers (a worker keeps it current) but the log of record cannot be written:
    the attempt is reserved (the safe side: it counts against the cap) and never a go."""
    tokens = issue_tokens(pipeline.tmp / "tenants.toml")
    pipeline.start_worker()
    gateway = Gateway(
        pipeline,
        "no-kafka",
        DNC_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",  # the gateway's Kafka: nothing there
        DNC_PUBLISH_TIMEOUT_SECONDS="2",
        DNC_AUDIT_TIMEOUT_SECONDS="1",
    )
    gateway.start(wait_ready=False)
    try:
        with gateway.client(tokens["acme/dialer"]) as dialer:
            checked = dialer.get("/v1/suppressions/0633445566", params={"campaign_id": "capped"})
            assert checked.json()["answer"] == "callable", checked.text  # the view is fine
            started = time.monotonic()
            attempt = dialer.post(
                "/v1/attempts", json={"phone": "0633445566", "campaign_id": "capped"}
            )
            assert attempt.status_code == 503, attempt.text
            body = attempt.json()
            assert (body["go"], body["may_call"], body["answer"]) == (False, False, "unavailable")
            assert body["attempt_id"] is None
            assert "could not be recorded" in body["why"] and "do not call" in body["why"]
            assert time.monotonic() - started < 15
            # The reservation stays counted (the cap is reached sooner, never later).
            again = dialer.post(
                "/v1/attempts", json={"phone": "0633445566", "campaign_id": "capped"}
            )
            assert again.status_code == 503 and again.json()["go"] is False
            capped = dialer.get("/v1/suppressions/0633445566", params={"campaign_id": "capped"})
            assert [r["code"] for r in capped.json()["reasons"]] == ["attempt_cap"]
            metrics = dialer.get("/metrics").text
            assert 'dnc_gateway_attempts_total{outcome="unavailable",tenant="acme"} 2.0' in metrics
    finally:
        gateway.stop()


def test_no_write_or_access_is_served_without_its_audit_record(pipeline: Pipeline) -> None:
    tokens = issue_tokens(pipeline.tmp / "tenants.toml")
    gateway = Gateway(pipeline, "audit", DNC_AUDIT_TIMEOUT_SECONDS="1")
    gateway.start(wait_ready=False)  # no worker here: only Kafka matters
    try:
        with (
            gateway.client(tokens["acme/agent"]) as agent,
            gateway.client(tokens["acme/admin"]) as admin,
        ):
            ok = agent.post("/v1/oppositions", json={"phone": "0622334455", "kind": "opposition"})
            assert ok.status_code == 202, ok.text
            admin_client = AdminClient({"bootstrap.servers": pipeline.stack.bootstrap_servers})
            topic = pipeline.settings.audit_topic
            for future in admin_client.delete_topics([topic]).values():
                future.result(timeout=30)
            wait_for(
                lambda: topic not in admin_client.list_topics(timeout=5).topics,
                what="the audit topic to be deleted",
            )
            refused = agent.post(
                "/v1/oppositions", json={"phone": "0622334456", "kind": "opposition"}
            )
            assert refused.status_code == 503, refused.text
            body = refused.json()
            assert body["error"] == "audit_unavailable" and body["event_id"]
            assert "retry with the same event_id" in body["message"]
            access = admin.get("/v1/subjects/0622334455")
            assert access.status_code == 503 and access.json()["error"] == "audit_unavailable"
            assert "+33622334455" not in access.text  # nothing disclosed
    finally:
        gateway.stop()


def test_rate_limit_per_token_answers_429_with_retry_after(pipeline: Pipeline) -> None:
    tokens = issue_tokens(pipeline.tmp / "tenants.toml")
    gateway = Gateway(
        pipeline, "limited", DNC_GATEWAY_RATE_LIMIT_PER_SECOND="2", DNC_GATEWAY_RATE_LIMIT_BURST="3"
    )
    gateway.start(wait_ready=False)
    try:
        with (
            gateway.client(tokens["acme/dialer"]) as fast,
            gateway.client(tokens["acme/agent"]) as other,
        ):
            codes = [fast.get("/v1/schema/opposition").status_code for _ in range(3)]
            assert codes == [200, 200, 200]
            limited = fast.get("/v1/schema/opposition")
            assert limited.status_code == 429
            assert limited.json()["error"] == "rate_limited"
            assert 0 < limited.json()["retry_after_seconds"] <= 0.5
            assert limited.headers["retry-after"] == "1"
            assert other.get("/v1/schema/opposition").status_code == 200  # per token
            time.sleep(0.6)
            assert fast.get("/v1/schema/opposition").status_code == 200
            metrics = other.get("/metrics").text
            assert 'dnc_gateway_denied_total{reason="rate_limited"} 1.0' in metrics
    finally:
        gateway.stop()
