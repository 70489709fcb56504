"""Subject access (`GET /v1/subjects/{phone}`) against real reference lists, a real `dnc sync`,
and the bounds that keep one administrator from hurting dialers.

One stack for the module: Kafka, Redis, a worker, a sync delivering acme's changes to a real
PostgreSQL database and globex's to a webhook receiver on loopback; umbrella has no
reference list. Gateways are real `dnc gateway` processes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Producer

from infra.launch.stack import LocalStack
from infra.toxiproxy import Toxiproxy
from schemas.partitioning import key_partition
from schemas.tokens import Role
from tests.gateway_harness import Gateway, issue_tokens, wait_answer
from tests.harness import TENANTS_TOML, Pipeline, wait_for
from tests.sync_harness import Receiver, SyncProcess, WebhookServer

pytestmark = [pytest.mark.pipeline, pytest.mark.postgres]

SECRET = "subject-access-webhook-secret-0123"
REFUSED_BY_CRM = "+447400900666"
TENANTS = (
    TENANTS_TOML
    + """
[tenants.acme.reference_list]
sink = "postgres"
dsn_env = "ACME_REFERENCE_DSN"

[tenants.globex.reference_list]
sink = "webhook"
url = "{url}"
secret_env = "GLOBEX_WEBHOOK_SECRET"
"""
)


class Stack:
    """The module's pipeline, sync, webhook receiver, reference database and gateway."""

    def __init__(self, pipeline: Pipeline, dsn: str, receiver: Receiver) -> None:
        self.pipeline = pipeline
        self.dsn = dsn
        self.receiver = receiver
        self.tokens: dict[str, str] = {}
        self.gateway: Gateway | None = None

    def client(self, who: str, gateway: Gateway | None = None) -> httpx.Client:
        chosen = gateway or self.gateway
        assert chosen is not None
        return chosen.client(self.tokens[who], timeout=60)

    def row(self, phone: str) -> dict[str, Any] | None:
        with psycopg.connect(self.dsn) as conn:
            try:
                cur = conn.execute(
                    "SELECT do_not_call, kind, updated_at, erased_at FROM reference_list"
                    " WHERE tenant = 'acme' AND phone_e164 = %s",
                    (phone,),
                )
            except psycopg.errors.UndefinedTable:
                return None
            found = cur.fetchone()
            names = [c.name for c in cur.description or ()]
            return dict(zip(names, found, strict=True)) if found else None


@pytest.fixture(scope="module")
def stack(
    local_stack: LocalStack, postgres_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    name = f"subj_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" OWNER dnc')
    dsn = postgres_server.dsn.rsplit("/", 1)[0] + f"/{name}"
    receiver = Receiver(SECRET.encode())
    receiver.reject = lambda body: body["phone_e164"] == REFUSED_BY_CRM
    server = WebhookServer(receiver)
    tmp = tmp_path_factory.mktemp("subjects")
    pipeline = Pipeline(
        local_stack,
        tmp,
        prefix=f"s{uuid.uuid4().hex[:10]}",
        tenants_toml=TENANTS.format(url=server.url),
        extra_env={"ACME_REFERENCE_DSN": dsn, "GLOBEX_WEBHOOK_SECRET": SECRET},
    )
    sync = SyncProcess(pipeline)
    built = Stack(pipeline, dsn, receiver)
    try:
        built.tokens = issue_tokens(
            tmp / "tenants.toml", extra=(("umbrella", Role.ADMIN, "umbrella-admin"),)
        )
        pipeline.start_worker()
        sync.start()
        built.gateway = Gateway(
            pipeline,
            "subjects",
            DNC_GATEWAY_RATE_LIMIT_PER_SECOND="100000",
            DNC_GATEWAY_RATE_LIMIT_BURST="100000",
        )
        built.gateway.start()
        yield built
    finally:
        try:
            if built.gateway is not None:
                built.gateway.stop()
            assert sync.stop() == 0, sync.log()
        finally:
            pipeline.close()
            server.close()
            with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _record(stack: Stack, who: str, phone: str, kind: str = "opposition") -> str:
    with stack.client(who) as agent:
        response = agent.post("/v1/oppositions", json={"phone": phone, "kind": kind})
    assert response.status_code == 202, response.text
    return str(response.json()["phone_e164"])


def _subject(stack: Stack, who: str, phone: str, gateway: Gateway | None = None) -> Any:
    with stack.client(who, gateway) as admin:
        response = admin.get(f"/v1/subjects/{phone}")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_postgres_reference_list_answers_with_the_rows_delivered_and_when(
    stack: Stack,
) -> None:
    opposed = _record(stack, "acme/agent", "06 31 31 31 31")
    erased = _record(stack, "acme/agent", "06 31 31 31 32", "erasure")
    wait_for(lambda: (stack.row(opposed) or {}).get("do_not_call"), what="the opposition row")
    wait_for(lambda: (stack.row(erased) or {}).get("erased_at"), what="the erasure row")

    report = _subject(stack, "acme/admin", opposed)["reference_list"]
    assert (report["status"], report["sink"]) == ("delivered", "postgres")
    row = stack.row(opposed)
    assert row is not None
    contact = report["contact"]
    assert (contact["do_not_call"], contact["kind"], contact["scope"]) == (
        True,
        "opposition",
        "tenant",
    )
    assert datetime.fromisoformat(contact["delivered_at"]) == row["updated_at"]
    assert contact["erased_at"] is None
    [scope] = report["scopes"]
    assert (scope["target"], scope["do_not_call"], scope["kind"], scope["version"]) == (
        "acme",
        True,
        "opposition",
        1,
    )
    datetime.fromisoformat(scope["delivered_at"])

    erasure = _subject(stack, "acme/admin", erased)["reference_list"]["contact"]
    assert erasure["kind"] == "erasure" and erasure["erased_at"] is not None

    never = _subject(stack, "acme/admin", "06 31 31 31 39")["reference_list"]
    assert (never["status"], never["sink"], never["contact"]) == (
        "nothing_delivered",
        "postgres",
        None,
    )


def test_a_webhook_reference_list_answers_with_the_changes_its_lane_acknowledged(
    stack: Stack,
) -> None:
    delivered = _record(stack, "globex/agent", "07400 900555")
    refused = _record(stack, "globex/agent", REFUSED_BY_CRM)

    def acknowledged() -> Any:
        report = _subject(stack, "globex/admin", delivered)["reference_list"]
        changes = report["changes"]
        return report if changes and changes[0]["delivery"] == "acknowledged" else None

    report = wait_for(acknowledged, timeout=60, interval=0.5, what="the lane's commit")
    assert (report["status"], report["sink"]) == ("delivered", "webhook")
    [change] = report["changes"]
    assert (change["target"], change["suppressed"], change["kind"], change["version"]) == (
        "globex",
        True,
        "opposition",
        1,
    )
    datetime.fromisoformat(change["changed_at"])
    assert any(c["phone_e164"] == delivered for c in stack.receiver.applied.values())

    def dead_lettered() -> Any:
        report = _subject(stack, "globex/admin", refused)["reference_list"]
        changes = report["changes"]
        return report if changes and changes[0]["delivery"] == "refused" else None

    report = wait_for(dead_lettered, timeout=60, interval=0.5, what="the refusal")
    assert report["status"] == "nothing_delivered"


def test_subject_access_lists_the_consents_with_their_proof_and_what_ended_them(
    stack: Stack,
) -> None:
    phone = "06 31 31 31 40"
    grants = {}
    for campaign, proof in (("optin", "form-v3/submission-81723"), (None, "call-rec-5521")):
        body = {"phone": phone, "source": "web_form", "proof_ref": proof, "wording_version": "v3"}
        with stack.client("acme/consent") as recorder:
            granted = recorder.post(
                "/v1/consents", json={**body, **({"campaign_id": campaign} if campaign else {})}
            )
        assert granted.status_code == 202, granted.text
        grants[campaign] = granted.json()["event_id"]
    with stack.client("acme/agent") as agent:
        withdrawn = agent.post(
            "/v1/oppositions",
            json={"phone": phone, "kind": "consent_withdrawn", "campaign_id": "optin"},
        )
    assert withdrawn.status_code == 202, withdrawn.text

    data = _subject(stack, "acme/admin", phone)
    assert data["phone_e164"] == "+33631313140"
    entries = {c["campaign_id"]: c for c in data["consents"]}
    assert set(entries) == {"optin", None}
    ended, kept = entries["optin"], entries[None]
    assert (ended["event_id"], ended["scope"], ended["source"], ended["proof_ref"]) == (
        grants["optin"],
        "campaign",
        "web_form",
        "form-v3/submission-81723",
    )
    assert ended["wording_version"] == "v3" and ended["recorded_by"] == "token:acme-consent"
    assert ended["ended_at"] is not None and ended["valid"] is False
    assert ended["ended_by"] == withdrawn.json()["event_id"]  # named: recorded after it
    ended_at, recorded_at = (datetime.fromisoformat(ended[k]) for k in ("ended_at", "recorded_at"))
    assert recorded_at <= ended_at
    # The withdrawal was for the campaign: the tenant-wide consent stands.
    assert (kept["event_id"], kept["scope"], kept["proof_ref"]) == (
        grants[None],
        "tenant",
        "call-rec-5521",
    )
    assert kept["ended_at"] is None and kept["valid"] is True
    # The grants are read from the consents topic; the log of record holds the withdrawal.
    assert [e["kind"] for e in data["events"]] == ["consent_withdrawn"]
    assert data["events"][0]["event_id"] == withdrawn.json()["event_id"]


def test_a_tenant_without_a_reference_list_answers_not_configured(stack: Stack) -> None:
    report = _subject(stack, "umbrella-admin", "06 31 31 31 31")["reference_list"]
    assert (report["status"], report["sink"]) == ("not_configured", None)


def test_a_deeply_nested_message_under_the_subjects_key_is_reported_unreadable(
    stack: Stack,
) -> None:
    p = stack.pipeline
    e164 = _record(stack, "acme/agent", "06 31 31 31 33")
    key = f"acme:{e164}".encode()
    producer = Producer({"bootstrap.servers": p.stack.bootstrap_servers, "acks": "all"})
    nested = b"[" * 5000 + b"]" * 5000  # under max_event_bytes, far past json's recursion
    producer.produce(
        p.settings.oppositions_topic, key=key, value=nested, partition=key_partition(key, 3)
    )
    assert producer.flush(10) == 0
    _record(stack, "acme/agent", "06 31 31 31 33", "refusal")

    data = _subject(stack, "acme/admin", e164)
    assert [e["kind"] for e in data["events"]] == ["opposition", "refusal"]
    [unreadable] = data["unreadable"]
    assert unreadable["reason"] == "too_deeply_nested"
    assert unreadable["partition"] == key_partition(key, 3)
    assert data["scan"]["skipped_invalid"] == 1
    assert {s["target"]: s["suppressed"] for s in data["current_state"]} == {"acme": True}


def test_subject_scans_have_their_own_bounded_pool(
    stack: Stack, toxiproxy: Toxiproxy, postgres_server: Any
) -> None:
    """One scan at a time and no queue: a second access request is 503 with Retry-After,
    while a dialer's check is answered meanwhile. The reference list is read through
    Toxiproxy with latency, so the first scan lasts seconds."""
    proxy = toxiproxy.proxy(
        f"subject-pg-{uuid.uuid4().hex[:8]}", f"127.0.0.1:{postgres_server.port}"
    )
    narrow = Gateway(
        stack.pipeline,
        "narrow",
        DNC_GATEWAY_SUBJECT_SCAN_WORKERS="1",
        DNC_GATEWAY_SUBJECT_SCAN_QUEUE="0",
        ACME_REFERENCE_DSN=stack.dsn.replace(f":{postgres_server.port}/", f":{proxy.port}/"),
    )
    try:
        proxy.add_latency(2000)
        narrow.start()
        e164 = _record(stack, "acme/agent", "06 31 31 31 34")
        with stack.client("acme/dialer", narrow) as dialer:
            wait_answer(dialer, e164, "suppressed")
        answers: list[httpx.Response] = []

        def access() -> None:
            with stack.client("acme/admin", narrow) as admin:
                answers.append(admin.get(f"/v1/subjects/{e164}"))

        first = threading.Thread(target=access)
        first.start()
        wait_for(lambda: _in_flight(narrow), timeout=30, what="the first scan to start")
        access()  # the pool is taken: refused at once
        with stack.client("acme/dialer", narrow) as dialer:
            check = dialer.get(f"/v1/suppressions/{e164}")
        assert first.is_alive(), "the first scan should still be running"
        first.join(timeout=60)
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 503], [a.text for a in answers]
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.json()["error"] == "subject_access_busy"
        assert busy.headers["retry-after"] == "5"
        assert (check.status_code, check.json()["answer"]) == (200, "suppressed")
        served = next(a for a in answers if a.status_code == 200).json()
        assert served["events"] and served["reference_list"]["sink"] == "postgres"
    finally:
        narrow.stop()
        proxy.delete()


def _in_flight(gateway: Gateway) -> bool:
    """The gateway has started a subject-access request (its metric of requests in flight)."""
    metrics = httpx.get(gateway.url + "/metrics", timeout=5).text
    prefix = "dnc_gateway_subject_scans_in_flight "
    return any(
        line.startswith(prefix) and float(line.removeprefix(prefix)) >= 1
        for line in metrics.splitlines()
    )
