"""The HTTP gateway end to end: a real `dnc gateway` process, a real worker, Kafka and Redis."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from schemas.audit import subject_ref
from schemas.events import event_json_schema
from schemas.partitioning import key_partition
from tests.gateway_harness import ROLES, TENANTS, Gateway, issue_tokens, wait_answer
from tests.harness import REPO, Pipeline

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def tokens(running_pipeline: Pipeline) -> dict[str, str]:
    return issue_tokens(running_pipeline.tmp / "tenants.toml")


@pytest.fixture(scope="module")
def gateway(running_pipeline: Pipeline, tokens: dict[str, str]) -> Iterator[Gateway]:
    g = Gateway(
        running_pipeline,
        "main",
        DNC_GATEWAY_RATE_LIMIT_PER_SECOND="100000",
        DNC_GATEWAY_RATE_LIMIT_BURST="100000",
        DNC_GATEWAY_REQUEST_TIMEOUT_SECONDS="4",
        DNC_GATEWAY_SUBJECT_SCAN_SECONDS="3",
        DNC_GATEWAY_CORS_ORIGINS='["https://desk.example"]',
    )
    g.start()
    yield g
    assert g.stop() in (0, -15), g.tail()  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in g.tail()


@pytest.fixture(scope="module")
def clients(gateway: Gateway, tokens: dict[str, str]) -> Iterator[dict[str, httpx.Client]]:
    made = {name: gateway.client(token) for name, token in tokens.items()}
    made["anonymous"] = gateway.client()
    made["unknown"] = gateway.client("dnc_" + "A" * 43)
    yield made
    for client in made.values():
        client.close()


def test_post_opposition_then_check_says_suppressed_then_lift(
    clients: dict[str, httpx.Client],
) -> None:
    agent, dialer, admin = (clients[f"acme/{r}"] for r in ("agent", "dialer", "admin"))
    assert dialer.get("/v1/suppressions/0610101010").json()["answer"] == "callable"

    recorded = agent.post(
        "/v1/oppositions", json={"phone": "06 10 10 10 10", "kind": "opposition", "agent_id": "a-7"}
    )
    assert recorded.status_code == 202, recorded.text
    body = recorded.json()
    uuid.UUID(body["event_id"])
    assert body["phone_e164"] == "+33610101010" and body["scope"] == "tenant"

    answer = wait_answer(dialer, "+33610101010", "suppressed")
    assert answer["may_call"] is False and answer["scope"] == "tenant"
    other = dialer.get("/v1/suppressions/0610101011")
    assert (other.status_code, other.json()["answer"], other.json()["may_call"]) == (
        200,
        "callable",
        True,
    )

    bulk = dialer.post("/v1/checks", json={"phones": ["0610101010", "0610101011", "nonsense"]})
    assert bulk.status_code == 200, bulk.text
    assert [r["answer"] for r in bulk.json()["results"]] == [
        "suppressed",
        "callable",
        "unavailable",
    ]
    assert bulk.json()["results"][2]["why"]
    assert (bulk.json()["suppressed"], bulk.json()["callable"], bulk.json()["unavailable"]) == (
        1,
        1,
        1,
    )

    lifted = admin.request(
        "DELETE", "/v1/suppressions/0610101010", json={"justification": "recorded by mistake"}
    )
    assert lifted.status_code == 202, lifted.text
    assert lifted.json()["kind"] == "lift"
    wait_answer(dialer, "0610101010", "callable")


def test_campaign_scope_and_client_chosen_event_id(clients: dict[str, httpx.Client]) -> None:
    agent, dialer = clients["acme/agent"], clients["acme/dialer"]
    event_id = str(uuid.uuid4())
    first = agent.post(
        "/v1/oppositions",
        json={
            "phone": "0620202020",
            "kind": "refusal",
            "campaign_id": "spring",
            "event_id": event_id,
        },
    )
    assert first.status_code == 202 and first.json()["scope"] == "campaign"
    again = agent.post(  # a retry with the same event id: accepted, and a no-op downstream
        "/v1/oppositions",
        json={
            "phone": "0620202020",
            "kind": "refusal",
            "campaign_id": "spring",
            "event_id": event_id,
        },
    )
    assert again.status_code == 202 and again.json()["event_id"] == event_id
    wait_answer(dialer, "0620202020", "suppressed", campaign="spring")
    assert dialer.get("/v1/suppressions/0620202020").json()["answer"] == "callable"
    bulk = dialer.post("/v1/checks", json={"phones": ["0620202020"], "campaign": "spring"})
    assert bulk.json()["results"][0]["scope"] == "campaign"


def _error(response: httpx.Response) -> tuple[int, str, list[str]]:
    body = response.json()
    assert set(body) >= {"error", "message", "details"}, body
    return response.status_code, body["error"], [d["field"] for d in body["details"]]


def test_invalid_input_is_422_with_field_level_details(clients: dict[str, httpx.Client]) -> None:
    agent, dialer, admin = (clients[f"acme/{r}"] for r in ("agent", "dialer", "admin"))
    future = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    cases = {
        "bad number": (agent.post, "/v1/oppositions", {"phone": "+33 1", "kind": "refusal"}),
        "unknown kind": (agent.post, "/v1/oppositions", {"phone": "0611", "kind": "maybe"}),
        "missing field": (agent.post, "/v1/oppositions", {"kind": "refusal"}),
        "lift is not a kind": (agent.post, "/v1/oppositions", {"phone": "0612", "kind": "lift"}),
        "future": (
            agent.post,
            "/v1/oppositions",
            {"phone": "0610101012", "kind": "refusal", "occurred_at": future},
        ),
        "extra field": (
            agent.post,
            "/v1/oppositions",
            {"phone": "0610101012", "kind": "refusal", "colour": "red"},
        ),
        "campaign without id": (
            agent.post,
            "/v1/oppositions",
            {"phone": "0610101012", "kind": "refusal", "scope": "campaign"},
        ),
        "bulk too big": (dialer.post, "/v1/checks", {"phones": ["0610101012"] * 1001}),
        "bulk empty": (dialer.post, "/v1/checks", {"phones": []}),
    }
    fields = {}
    for name, (send, path, body) in cases.items():
        status, error, where = _error(send(path, json=body))
        assert (status, error) == (422, "invalid_request"), name
        fields[name] = where
    assert fields["bad number"] == ["phone"]
    assert fields["unknown kind"] == ["body.kind"]
    assert fields["missing field"] == ["body.phone"]
    assert fields["lift is not a kind"] == ["body.kind"]
    assert fields["future"] == ["occurred_at"]
    assert fields["extra field"] == ["body.colour"]
    assert fields["bulk too big"] == ["phones"]
    assert fields["bulk empty"] == ["body.phones"]
    no_reason = admin.request("DELETE", "/v1/suppressions/0610101012", json={"justification": " "})
    assert _error(no_reason)[:2] == (422, "invalid_request")
    missing = admin.request("DELETE", "/v1/suppressions/0610101012", json={})
    assert _error(missing) == (422, "invalid_request", ["body.justification"])
    assert _error(dialer.get("/v1/suppressions/123"))[2] == ["phone"]
    not_json = agent.post(
        "/v1/oppositions", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert _error(not_json)[:2] == (422, "invalid_request")


def test_control_characters_in_free_text_are_refused_naming_the_field(
    clients: dict[str, httpx.Client],
) -> None:
    agent, dialer, admin = (clients[f"acme/{r}"] for r in ("agent", "dialer", "admin"))
    record = {"phone": "0610101013", "kind": "refusal"}
    cases = {
        "body.reason_code": (agent, "POST", "/v1/oppositions", {**record, "reason_code": "a\x00b"}),
        "body.agent_id": (agent, "POST", "/v1/oppositions", {**record, "agent_id": "agent\n42"}),
        "body.phone": (agent, "POST", "/v1/oppositions", {**record, "phone": "06\t10101013"}),
        "body.tenant": (agent, "POST", "/v1/oppositions", {**record, "tenant": "acme\r"}),
        "body.justification": (
            admin,
            "DELETE",
            "/v1/suppressions/0610101013",
            {"justification": "asked\x1b[2J"},
        ),
        "body.phones.1": (dialer, "POST", "/v1/checks", {"phones": ["0610101013", "06\x7f"]}),
    }
    for field, (client, method, path, body) in cases.items():
        response = client.request(method, path, json=body)
        assert _error(response) == (422, "invalid_request", [field]), (field, response.text)
        message = response.json()["details"][0]["message"]
        assert message.startswith("must be a single line of text without control characters")
    in_path = dialer.get("/v1/suppressions/0610101013%00")
    assert _error(in_path) == (422, "invalid_request", ["path.phone"])
    in_query = admin.get("/v1/subjects/0610101013", params={"tenant": "acme\n"})
    assert _error(in_query) == (422, "invalid_request", ["query.tenant"])


def test_subject_access_returns_history_state_and_delivery_status(
    running_pipeline: Pipeline, clients: dict[str, httpx.Client]
) -> None:
    agent, dialer, admin = (clients[f"acme/{r}"] for r in ("agent", "dialer", "admin"))
    ids = []
    for body in (
        {"phone": "0630303030", "kind": "refusal", "reason_code": "rude"},
        {"phone": "+33630303030", "kind": "opposition", "campaign_id": "autumn"},
    ):
        response = agent.post("/v1/oppositions", json=body)
        assert response.status_code == 202
        ids.append(response.json()["event_id"])
    lift = admin.request("DELETE", "/v1/suppressions/0630303030", json={"justification": "asked"})
    ids.append(lift.json()["event_id"])
    wait_answer(dialer, "0630303030", "callable")

    report = admin.get("/v1/subjects/06 30 30 30 30")
    assert report.status_code == 200, report.text
    data = report.json()
    assert (data["tenant"], data["phone_e164"]) == ("acme", "+33630303030")
    assert [e["event_id"] for e in data["events"]] == ids
    assert [e["effect"] for e in data["events"]] == ["applied", "applied", "applied"]
    assert data["events"][0]["reason_code"] == "rude" and data["events"][2]["kind"] == "lift"
    state = {s["target"]: s for s in data["current_state"]}
    assert state["acme"]["suppressed"] is False and state["acme"]["kind"] == "lift"
    assert state["acme/autumn"]["suppressed"] is True
    assert data["view"]["answer"] == "callable"
    # This module's acme declares no reference list, so that is the true answer; tenants with
    # one are answered with what was delivered (tests/test_subject_access.py).
    assert (data["reference_list"]["status"], data["reference_list"]["sink"]) == (
        "not_configured",
        None,
    )
    assert data["unreadable"] == []
    assert data["scan"]["truncated"] is False and data["scan"]["events_found"] == 3
    # The one partition that holds the key is read (and the global key's), not the topic.
    expected = {key_partition(f"{k}:+33630303030".encode(), 3) for k in ("acme", "_global")}
    assert set(data["scan"]["partitions"]) == expected

    # Another tenant's administrator sees none of acme's events about the number.
    theirs = clients["globex/admin"].get("/v1/subjects/+33630303030").json()
    assert theirs["events"] == [] and theirs["current_state"] == []


def test_tenants_are_isolated_in_the_view(clients: dict[str, httpx.Client]) -> None:
    acme_agent = clients["acme/agent"]
    assert (
        acme_agent.post(
            "/v1/oppositions", json={"phone": "+33640404040", "kind": "opposition"}
        ).status_code
        == 202
    )
    wait_answer(clients["acme/dialer"], "+33640404040", "suppressed")
    assert clients["globex/dialer"].get("/v1/suppressions/+33640404040").json()["answer"] == (
        "callable"
    )


# -- may I call now: consents, attempts, hours -----------------------------------------------
def test_a_consent_recorded_by_a_consent_token_makes_a_consent_campaign_callable(
    clients: dict[str, httpx.Client],
) -> None:
    consent, agent, dialer = (clients[f"acme/{r}"] for r in ("consent", "agent", "dialer"))
    phone, other = "0641414141", "0641414142"
    before = dialer.get(f"/v1/suppressions/{phone}", params={"campaign_id": "optin"})
    assert before.status_code == 200, before.text
    body = before.json()
    assert (body["answer"], body["may_call"], body["scope"]) == ("suppressed", False, None)
    assert [r["code"] for r in body["reasons"]] == ["no_consent"]
    assert body["next_allowed_at"] is None and body["consent"] is None  # no time helps
    assert dialer.get(f"/v1/suppressions/{phone}").json()["answer"] == "callable"  # no campaign

    granted = consent.post(
        "/v1/consents",
        json={
            "phone": "06 41 41 41 41",
            "campaign_id": "optin",
            "source": "web_form",
            "proof_ref": "form-v3/submission-81723",
            "wording_version": "v3",
        },
    )
    assert granted.status_code == 202, granted.text
    receipt = granted.json()
    assert (receipt["kind"], receipt["scope"], receipt["campaign_id"]) == (
        "consent",
        "campaign",
        "optin",
    )
    assert receipt["phone_e164"] == "+33641414141"

    callable_now = wait_answer(dialer, phone, "callable", campaign="optin")
    assert callable_now["may_call"] is True and callable_now["reasons"] == []
    assert callable_now["consent"]["proof_ref"] == "form-v3/submission-81723"
    assert callable_now["consent"]["event_id"] == receipt["event_id"]
    assert callable_now["consent"]["scope"] == "campaign"
    # The consent lasts the campaign's validity (a year by default) from its capture.
    expires = datetime.fromisoformat(callable_now["consent"]["expires_at"])
    assert timedelta(days=364) < expires - datetime.now(UTC) <= timedelta(days=366)
    datetime.fromisoformat(callable_now["at"])
    bulk = dialer.post("/v1/checks", json={"phones": [phone, other], "campaign_id": "optin"})
    assert bulk.status_code == 200, bulk.text
    first, second = bulk.json()["results"]
    assert first["answer"] == "callable" and first["consent"]["event_id"] == receipt["event_id"]
    assert second["answer"] == "suppressed" and second["reasons"][0]["code"] == "no_consent"

    # An agent records the withdrawal for the campaign: the consent ends, the number is
    # suppressed on the campaign's list, and the tenant's other calls are untouched.
    withdrawn = agent.post(
        "/v1/oppositions",
        json={"phone": phone, "kind": "consent_withdrawn", "campaign_id": "optin"},
    )
    assert withdrawn.status_code == 202, withdrawn.text
    assert withdrawn.json()["scope"] == "campaign"
    after = wait_answer(dialer, phone, "suppressed", campaign="optin")
    reasons = {(r["code"], r["scope"], r["kind"]) for r in after["reasons"]}
    assert reasons == {
        ("opposed", "campaign", "consent_withdrawn"),
        ("consent_withdrawn", "campaign", None),
    }
    assert after["scope"] == "campaign" and after["consent"] is None
    assert dialer.get(f"/v1/suppressions/{phone}").json()["answer"] == "callable"


@pytest.mark.parametrize("role", ["agent", "dialer", "admin"])
def test_only_a_consent_token_grants_a_consent(clients: dict[str, httpx.Client], role: str) -> None:
    grant = {"phone": "0641414143", "source": "paper", "proof_ref": "scan-1"}
    refused = clients[f"acme/{role}"].post("/v1/consents", json=grant)
    assert _error(refused)[:2] == (403, "forbidden_role")
    assert "cannot record consents" in refused.json()["message"]
    other_tenant = clients["acme/consent"].post("/v1/consents", json={**grant, "tenant": "globex"})
    assert _error(other_tenant)[:2] == (403, "forbidden_tenant")


def test_invalid_consents_are_422_naming_the_field(clients: dict[str, httpx.Client]) -> None:
    consent = clients["acme/consent"]
    grant = {"phone": "0641414144", "source": "web_form", "proof_ref": "form-1"}
    past = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    cases: dict[str, dict[str, Any]] = {
        "body.proof_ref": {"phone": grant["phone"], "source": "web_form"},
        "body.source": {**grant, "source": "telepathy"},
        "phone": {**grant, "phone": "+33 1"},
        "body.captured_at": {**grant, "captured_at": "2026-12-01T10:00:00"},  # no zone
        "captured_at": {
            **grant,
            "captured_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        },
        "expires_at": {**grant, "expires_at": past},
        "body.campaign_id": {**grant, "campaign_id": "no spaces"},
        "body.scope": {**grant, "scope": "global"},
        "body.recorded_by": {**grant, "recorded_by": "a\nb"},
    }
    for field, body in cases.items():
        response = consent.post("/v1/consents", json=body)
        assert _error(response) == (422, "invalid_request", [field]), (field, response.text)
    blank = consent.post("/v1/consents", json={**grant, "proof_ref": "   "})
    assert _error(blank) == (422, "invalid_request", ["body.proof_ref"])
    assert "proof" in blank.json()["details"][0]["message"]


def test_attempts_go_until_the_campaigns_cap_then_say_why_not(
    running_pipeline: Pipeline, clients: dict[str, httpx.Client]
) -> None:
    dialer, agent = clients["acme/dialer"], clients["acme/agent"]
    answers = [
        dialer.post("/v1/attempts", json={"phone": "06 42 42 42 42", "campaign_id": "capped"})
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[-1].text
    first, second, third = (a.json() for a in answers)
    for went in (first, second):
        assert (went["go"], went["may_call"], went["answer"]) == (True, True, "callable")
        assert went["phone_e164"] == "+33642424242" and went["reasons"] == []
    ids = [first["attempt_id"], second["attempt_id"]]
    assert len({uuid.UUID(i) for i in ids}) == 2
    assert (third["go"], third["may_call"], third["answer"]) == (False, False, "suppressed")
    assert third["attempt_id"] is None
    [capped] = third["reasons"]
    assert capped["code"] == "attempt_cap"
    # The window is 30 days: the first attempt leaves it then.
    wait = datetime.fromisoformat(third["next_allowed_at"]) - datetime.fromisoformat(first["at"])
    assert timedelta(days=30) - timedelta(seconds=5) < wait <= timedelta(days=30, seconds=1)
    # The cap is the tenant's for the number: a check for the campaign says so too.
    checked = dialer.get("/v1/suppressions/0642424242", params={"campaign_id": "capped"}).json()
    assert [r["code"] for r in checked["reasons"]] == ["attempt_cap"]

    # "go" only once the attempt is in the log of record (acknowledged by Kafka).
    p = running_pipeline

    def attempts(messages: list[Any]) -> dict[str, dict[str, Any]]:
        events = [json.loads(m.value()) for m in messages]
        return {e["event_id"]: e for e in events if e.get("kind") == "attempt"}

    logged = attempts(
        p.consume(
            p.settings.oppositions_topic,
            100_000,
            timeout=30,
            until=lambda ms: set(ids) <= set(attempts(ms)),
        )
    )
    for attempt_id in ids:
        event = logged[attempt_id]
        assert (event["tenant"], event["phone_e164"], event["campaign_id"]) == (
            "acme",
            "+33642424242",
            "capped",
        )
        assert event["source"] == "http_gateway"

    # Not callable for another reason: no attempt reserved, the reasons say why.
    assert (
        agent.post(
            "/v1/oppositions", json={"phone": "0642424243", "kind": "opposition"}
        ).status_code
        == 202
    )
    wait_answer(dialer, "0642424243", "suppressed")
    opposed = dialer.post("/v1/attempts", json={"phone": "0642424243", "campaign_id": "capped"})
    assert opposed.status_code == 200 and opposed.json()["go"] is False
    assert [(r["code"], r["scope"]) for r in opposed.json()["reasons"]] == [("opposed", "tenant")]
    everything = p.consume(p.settings.oppositions_topic, 100_000, timeout=20, idle=2)
    assert "+33642424243" not in {e["phone_e164"] for e in attempts(everything).values()}

    missing = dialer.post("/v1/attempts", json={"phone": "0642424242"})
    assert _error(missing) == (422, "invalid_request", ["body.campaign_id"])
    invalid = dialer.post("/v1/attempts", json={"phone": "+33 1", "campaign_id": "capped"})
    assert _error(invalid) == (422, "invalid_request", ["phone"])


def test_a_check_at_a_sunday_or_a_holiday_says_when_calls_may_resume(
    clients: dict[str, httpx.Client],
) -> None:
    dialer = clients["acme/dialer"]
    phone = "0643434343"
    cases = {  # asked at -> (reason, next allowed: the next opening, Paris time)
        "2027-03-14T11:00:00+01:00": ("outside_calling_hours", "2027-03-15T10:00:00+01:00"),
        "2027-07-14T11:00:00+02:00": ("public_holiday", "2027-07-15T10:00:00+02:00"),
    }
    for at, (code, opening) in cases.items():
        response = dialer.get(
            f"/v1/suppressions/{phone}", params={"campaign_id": "weekdays", "at": at}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["answer"], body["may_call"]) == ("suppressed", False)
        [reason] = body["reasons"]
        assert reason["code"] == code and reason["detail"]
        assert datetime.fromisoformat(body["at"]) == datetime.fromisoformat(at)
        assert datetime.fromisoformat(body["next_allowed_at"]) == datetime.fromisoformat(opening)
        assert datetime.fromisoformat(reason["next_allowed_at"]) == datetime.fromisoformat(opening)
        bulk = dialer.post(
            "/v1/checks", json={"phones": [phone], "campaign_id": "weekdays", "at": at}
        ).json()["results"][0]
        assert {k: v for k, v in bulk.items() if k != "phone"} == {
            k: v for k, v in body.items() if k != "phone"
        }
    monday = {"campaign_id": "weekdays", "at": "2027-03-15T10:30:00+01:00"}
    opened = dialer.get(f"/v1/suppressions/{phone}", params=monday).json()
    assert (opened["answer"], opened["reasons"], opened["next_allowed_at"]) == (
        "callable",
        [],
        None,
    )
    # Without a campaign, the tenant's defaults: no hours rule.
    sunday = {"at": "2027-03-14T11:00:00+01:00"}
    assert dialer.get(f"/v1/suppressions/{phone}", params=sunday).json()["answer"] == "callable"

    naive = dialer.get(f"/v1/suppressions/{phone}", params={"at": "2027-03-14T11:00:00"})
    assert _error(naive) == (422, "invalid_request", ["query.at"])
    far = dialer.get(f"/v1/suppressions/{phone}", params={"at": "2999-01-01T00:00:00Z"})
    assert _error(far) == (422, "invalid_request", ["at"])
    naive_bulk = dialer.post("/v1/checks", json={"phones": [phone], "at": "2027-03-14T11:00"})
    assert _error(naive_bulk) == (422, "invalid_request", ["body.at"])


def test_the_former_campaign_parameter_still_works(clients: dict[str, httpx.Client]) -> None:
    dialer = clients["acme/dialer"]
    former = dialer.get("/v1/suppressions/0641414145", params={"campaign": "optin"}).json()
    current = dialer.get("/v1/suppressions/0641414145", params={"campaign_id": "optin"}).json()
    assert (
        former["reasons"]
        == current["reasons"]
        == [
            {
                "code": "no_consent",
                "scope": None,
                "kind": None,
                "next_allowed_at": None,
                "detail": None,
            }
        ]
    )
    both = dialer.get(
        "/v1/suppressions/0641414145", params={"campaign": "optin", "campaign_id": "spring"}
    )
    assert _error(both) == (422, "invalid_request", ["campaign"])


# -- the authorisation matrix ---------------------------------------------------------------
ENDPOINTS = ("record", "check", "bulk_check", "lift", "subject", "consent", "attempt")
ALLOWED = {
    "record": {"agent", "admin"},
    "check": {"dialer", "admin"},
    "bulk_check": {"dialer", "admin"},
    "lift": {"admin"},
    "subject": {"admin"},
    "consent": {"consent"},  # a grant makes numbers callable: not even an admin grants
    "attempt": {"dialer", "admin"},
}
SUCCESS = {
    "record": 202,
    "check": 200,
    "bulk_check": 200,
    "lift": 202,
    "subject": 200,
    "consent": 202,
    "attempt": 200,
}
MATRIX = [
    (tenant, role.value, endpoint, whose)
    for tenant in TENANTS
    for role in ROLES
    for endpoint in ENDPOINTS
    for whose in ("own", "other")
]


def _request(client: httpx.Client, endpoint: str, phone: str, tenant: str | None) -> httpx.Response:
    query = {"tenant": tenant} if tenant else {}
    body: dict[str, Any] = {"tenant": tenant} if tenant else {}
    if endpoint == "record":
        return client.post("/v1/oppositions", json={"phone": phone, "kind": "refusal", **body})
    if endpoint == "check":
        return client.get(f"/v1/suppressions/{phone}", params=query)
    if endpoint == "bulk_check":
        return client.post("/v1/checks", json={"phones": [phone], **body})
    if endpoint == "lift":
        return client.request(
            "DELETE", f"/v1/suppressions/{phone}", json={"justification": "matrix", **body}
        )
    if endpoint == "consent":
        grant = {"phone": phone, "source": "other", "proof_ref": "matrix", **body}
        return client.post("/v1/consents", json=grant)
    if endpoint == "attempt":
        return client.post("/v1/attempts", json={"phone": phone, "campaign_id": "matrix", **body})
    return client.get(f"/v1/subjects/{phone}", params=query)


@pytest.mark.parametrize(
    ("tenant", "role", "endpoint", "whose"),
    MATRIX,
    ids=[f"{t}-{r}-{e}-{w}" for t, r, e, w in MATRIX],
)
def test_authorisation_matrix(
    clients: dict[str, httpx.Client], tenant: str, role: str, endpoint: str, whose: str
) -> None:
    other = next(t for t in TENANTS if t != tenant)
    addressed = tenant if whose == "own" else other
    allowed = role in ALLOWED[endpoint] and whose == "own"
    response = _request(clients[f"{tenant}/{role}"], endpoint, "+33650505050", addressed)
    expected = SUCCESS[endpoint] if allowed else 403
    assert response.status_code == expected, response.text
    if not allowed:
        reason = "forbidden_role" if role not in ALLOWED[endpoint] else "forbidden_tenant"
        assert response.json()["error"] == reason


@pytest.mark.parametrize("endpoint", (*ENDPOINTS, "schema"))
@pytest.mark.parametrize("who", ["anonymous", "unknown"])
def test_every_v1_endpoint_needs_a_known_token(
    clients: dict[str, httpx.Client], endpoint: str, who: str
) -> None:
    client = clients[who]
    if endpoint == "schema":
        response = client.get("/v1/schema/opposition")
    else:
        response = _request(client, endpoint, "+33650505050", None)
    assert response.status_code == 401
    assert response.json()["error"] == ("missing_token" if who == "anonymous" else "unknown_token")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("role", [r.value for r in ROLES])
def test_any_role_reads_the_event_schema(clients: dict[str, httpx.Client], role: str) -> None:
    response = clients[f"acme/{role}"].get("/v1/schema/opposition")
    assert response.status_code == 200
    assert response.json() == event_json_schema()


# -- audit ----------------------------------------------------------------------------------
def test_audit_topic_has_a_record_for_each_write_and_access_request(
    running_pipeline: Pipeline, gateway: Gateway, tokens: dict[str, str]
) -> None:
    p = running_pipeline
    marker = f"audit-test-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        agent, dialer, admin, consent = (
            stack.enter_context(gateway.client(tokens[f"acme/{role}"], user_agent=marker))
            for role in ("agent", "dialer", "admin", "consent")
        )
        _audited_requests(p, agent, dialer, admin, marker, tokens)
        _audited_grants(p, consent, admin, marker)


def _audited_grants(p: Pipeline, consent: httpx.Client, admin: httpx.Client, marker: str) -> None:
    grant = {"phone": "0660606061", "source": "paper", "proof_ref": "scan-0042"}
    granted = consent.post("/v1/consents", json=grant)
    refused = admin.post("/v1/consents", json=grant)
    assert (granted.status_code, refused.status_code) == (202, 403), granted.text

    def grants(messages: list[Any]) -> list[dict[str, Any]]:
        records = [json.loads(m.value()) for m in messages]
        return [
            r for r in records if r.get("user_agent") == marker and r["action"] == "record_consent"
        ]

    messages = p.consume(
        p.settings.audit_topic, 10_000, timeout=30, until=lambda ms: len(grants(ms)) >= 2
    )
    summary = [
        (r["status"], r["token_id"], r["role"], r.get("reason"), r.get("event_id"))
        for r in grants(messages)
    ]
    assert summary == [
        (202, "acme-consent", "consent", None, granted.json()["event_id"]),
        (403, "acme-admin", "admin", "forbidden_role", None),
    ]


def _audited_requests(
    p: Pipeline,
    agent: httpx.Client,
    dialer: httpx.Client,
    admin: httpx.Client,
    marker: str,
    tokens: dict[str, str],
) -> None:
    phone, e164 = "0660606060", "+33660606060"
    recorded = agent.post("/v1/oppositions", json={"phone": phone, "kind": "erasure"})
    refused_role = dialer.post("/v1/oppositions", json={"phone": phone, "kind": "erasure"})
    refused_tenant = agent.post(
        "/v1/oppositions", json={"phone": phone, "kind": "erasure", "tenant": "globex"}
    )
    invalid = agent.post("/v1/oppositions", json={"phone": "+33 1", "kind": "erasure"})
    for _ in range(3):  # dialer reads are counted in metrics, not audited
        assert dialer.get(f"/v1/suppressions/{phone}").status_code in (200, 503)
    access = admin.get(f"/v1/subjects/{phone}")
    lifted = admin.request("DELETE", f"/v1/suppressions/{phone}", json={"justification": "x"})
    statuses = [
        r.status_code for r in (recorded, refused_role, refused_tenant, invalid, access, lifted)
    ]
    assert statuses == [202, 403, 403, 422, 200, 202]

    def mine(messages: list[Any]) -> list[dict[str, Any]]:
        records = [json.loads(m.value()) for m in messages]
        return [r for r in records if r.get("user_agent") == marker]

    messages = p.consume(
        p.settings.audit_topic, 10_000, timeout=30, until=lambda ms: len(mine(ms)) >= 6
    )
    records = mine(messages)
    summary = [(r["action"], r["status"], r["token_id"], r.get("reason")) for r in records]
    assert summary == [
        ("record_opposition", 202, "acme-agent", None),
        ("record_opposition", 403, "acme-dialer", "forbidden_role"),
        ("record_opposition", 403, "acme-agent", "forbidden_tenant"),
        ("record_opposition", 422, "acme-agent", "invalid_request"),
        ("subject_access", 200, "acme-admin", None),
        ("lift", 202, "acme-admin", None),
    ]
    subject = subject_ref(p.settings.view_key.get_secret_value().encode(), e164)
    first, *_, access_record, lift_record = records
    assert first["event_id"] == recorded.json()["event_id"] and first["subject"] == subject
    assert first["role"] == "agent" and first["tenant"] == "acme"
    assert first["source_address"] == "127.0.0.1" and first["outcome"] == "succeeded"
    assert records[2]["target_tenant"] == "globex" and records[2]["outcome"] == "refused"
    assert (
        access_record["subject"] == subject and lift_record["event_id"] == lifted.json()["event_id"]
    )
    datetime.fromisoformat(first["at"])
    assert all(
        m.key() == b"acme" for m in messages if json.loads(m.value()).get("user_agent") == marker
    )
    raw = b"".join(m.value() for m in messages)
    assert b"660606060" not in raw  # no number in clear in the audit trail
    for token in tokens.values():
        assert token.encode() not in raw


# -- contract, operations ---------------------------------------------------------------------
def test_openapi_docs_health_and_metrics(
    gateway: Gateway, clients: dict[str, httpx.Client]
) -> None:
    anonymous = clients["anonymous"]
    spec = anonymous.get("/openapi.json").json()
    assert set(spec["paths"]) >= {
        "/v1/oppositions",
        "/v1/suppressions/{phone}",
        "/v1/checks",
        "/v1/subjects/{phone}",
        "/v1/schema/opposition",
        "/v1/consents",
        "/v1/attempts",
        "/healthz",
        "/readyz",
    }
    schemas = spec["components"]["schemas"]
    assert "consents" in schemas["SubjectReport"]["properties"]
    assert {"reasons", "next_allowed_at", "consent", "at", "answer", "scope", "why"} <= set(
        schemas["CheckAnswer"]["properties"]
    )
    assert {"go", "attempt_id", "reasons"} <= set(schemas["AttemptAnswer"]["properties"])
    check = spec["paths"]["/v1/suppressions/{phone}"]["get"]
    assert {"campaign_id", "at", "campaign"} <= {p["name"] for p in check["parameters"]}
    assert {"campaign_id", "at"} <= set(schemas["BulkCheckRequest"]["properties"])
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert "Scrub a list of numbers, up to 1000" in spec["paths"]["/v1/checks"]["post"]["summary"]
    assert anonymous.get("/docs").status_code == 200
    assert anonymous.get("/healthz").json() == {"status": "alive"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    not_found = anonymous.get("/nowhere")
    assert (not_found.status_code, not_found.json()["error"]) == (404, "not_found")
    wrong = anonymous.put("/v1/suppressions/0612345678")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "DELETE, GET"
    assert clients["acme/dialer"].get("/v1/suppressions/0670707070").status_code == 200
    recorded = clients["acme/agent"].post(
        "/v1/oppositions", json={"phone": "0670707071", "kind": "refusal"}
    )
    assert recorded.status_code == 202
    metrics = anonymous.get("/metrics").text
    assert 'dnc_gateway_checks_total{outcome="callable",tenant="acme"}' in metrics
    assert 'dnc_checks_total{outcome="callable"}' in metrics
    assert 'route="/v1/suppressions/{phone}"' in metrics
    assert "dnc_gateway_request_seconds_bucket" in metrics
    assert 'dnc_audit_records_total{action="record_opposition",result="written"}' in metrics
    for fragment in ("610101010", "650505050", "670707070", "670707071"):  # numbers used
        assert fragment not in metrics


# Admins reach every route but one: only a consent recorder's token may grant a consent.
SCHEMATHESIS_RUNS = {
    "admin": ("acme/admin", ("--exclude-path", "/v1/consents")),
    "consent_recorder": ("acme/consent", ("--include-path", "/v1/consents")),
}


@pytest.mark.parametrize("run_as", sorted(SCHEMATHESIS_RUNS))
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    gateway: Gateway, tokens: dict[str, str], tmp_path: Any, run_as: str
) -> None:
    token, operations = SCHEMATHESIS_RUNS[run_as]
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
            f"{gateway.url}/openapi.json",
            *operations,
            "--header",
            f"Authorization: Bearer {tokens[token]}",
            "--checks",
            "all",
            # A phone number's validity is not expressible in JSON Schema: a schema-valid
            # string such as "0" is rightly answered 422, so that check does not apply.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "30",
            "--seed",
            "20261122",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    (tmp_path / "st.out").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:] + gateway.tail()
    assert "No issues found" in run.stdout


def test_no_phone_number_in_the_gateway_log(
    gateway: Gateway, clients: dict[str, httpx.Client]
) -> None:
    dialer, agent = clients["acme/dialer"], clients["acme/agent"]
    dialer.get("/v1/suppressions/+33680808080")
    dialer.get("/v1/suppressions/0680808080?campaign=x")
    agent.post("/v1/oppositions", json={"phone": "06 80 80 80 81", "kind": "refusal"})
    agent.post("/v1/oppositions", json={"phone": "+33 1", "kind": "refusal"})
    clients["anonymous"].get("/v1/suppressions/0680808082")
    clients["acme/admin"].get("/v1/subjects/0680808083")
    log = gateway.log.read_text(errors="replace")
    assert "POST /v1/oppositions 202" in log  # the access log is there, at INFO
    squeezed = re.sub(r"\s+", "", log)
    for fragment in ("80808080", "10101010", "30303030", "60606060", "650505050"):
        assert fragment not in squeezed
    for token in clients["acme/admin"].headers.get("authorization", "").split()[1:]:
        assert token not in log


# -- fuzzed, oversized and slow bodies: 4xx, never 5xx, never a hang -------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "phone",
                    "phones",
                    "kind",
                    "scope",
                    "campaign_id",
                    "justification",
                    "tenant",
                    "event_id",
                    "occurred_at",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)
WRITE_TARGETS = {
    "record": ("acme/agent", "POST", "/v1/oppositions"),
    "bulk_check": ("acme/dialer", "POST", "/v1/checks"),
    "lift": ("acme/admin", "DELETE", "/v1/suppressions/0690909090"),
}


@pytest.mark.parametrize("target", sorted(WRITE_TARGETS))
def test_fuzzed_bodies_get_4xx_never_5xx_never_a_hang(
    clients: dict[str, httpx.Client], target: str
) -> None:
    who, method, path = WRITE_TARGETS[target]
    client = clients[who]

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @hypothesis.given(
        body=st.binary(max_size=2048) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        content_type=st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded"]
        ),
    )
    def fuzz(body: bytes, content_type: str) -> None:
        response = client.request(
            method, path, content=body, headers={"content-type": content_type}, timeout=10
        )
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert response.json()["error"], response.text

    fuzz()


def test_oversized_deep_and_slow_bodies(gateway: Gateway, clients: dict[str, httpx.Client]) -> None:
    agent = clients["acme/agent"]
    big = b'{"phone": "' + b"6" * 300_000 + b'", "kind": "refusal"}'
    declared = agent.post(
        "/v1/oppositions", content=big, headers={"content-type": "application/json"}
    )
    assert (declared.status_code, declared.json()["error"]) == (413, "body_too_large")
    anonymous = clients["anonymous"].post("/v1/oppositions", content=big)
    assert anonymous.status_code == 413  # refused before anything else, token or not

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"[" * 10_000

    streamed = agent.post(
        "/v1/oppositions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert (streamed.status_code, streamed.json()["error"]) == (413, "body_too_large")
    deep = agent.post(
        "/v1/oppositions",
        content=b"[" * 100_000 + b"]" * 100_000,
        headers={"content-type": "application/json"},
    )
    assert 400 <= deep.status_code < 500
    many = clients["acme/dialer"].post("/v1/checks", json={"phones": ["0690909090"] * 5_000})
    assert _error(many) == (422, "invalid_request", ["phones"])  # over the bulk limit (1000)

    # A body that never arrives: 408 once the request timeout (4 s here) is spent.
    host, port = gateway.url.removeprefix("http://").split(":")
    token = agent.headers["authorization"]
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(
            b"POST /v1/oppositions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Authorization: " + token.encode() + b'\r\nContent-Length: 100\r\n\r\n{"phone":'
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b'"request_timeout"' in reply or b"content-length" in reply.lower()
    assert time.monotonic() - started < 10


# -- other producers: the JavaScript snippet, from a browser origin ---------------------------
@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (18+) to run the snippet")
def test_the_javascript_snippet_records_an_opposition(
    gateway: Gateway, tokens: dict[str, str], clients: dict[str, httpx.Client], tmp_path: Any
) -> None:
    shutil.copy(REPO / "producers" / "agent-desktop.js", tmp_path / "agent-desktop.mjs")
    (tmp_path / "run.mjs").write_text(
        'import { recordOpposition } from "./agent-desktop.mjs";\n'
        "const [gatewayUrl, token] = process.argv.slice(2);\n"
        "const id = await recordOpposition({ gatewayUrl, token, phone: '06 12 91 91 91',\n"
        "  kind: 'refusal', agentId: 'agent-js' });\n"
        "console.log(JSON.stringify({ id }));\n"
        "try { await recordOpposition({ gatewayUrl, token, phone: '+33 1' }); }\n"
        "catch (e) { console.log(JSON.stringify({ status: e.status, details: e.details })); }\n"
    )
    run = subprocess.run(
        ["node", "run.mjs", gateway.url, tokens["acme/agent"]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    recorded, refused = (json.loads(line) for line in run.stdout.splitlines())
    uuid.UUID(recorded["id"])
    assert refused["status"] == 422 and refused["details"][0]["field"] == "phone"
    wait_answer(clients["acme/dialer"], "0612919191", "suppressed")


def test_cors_preflight_for_a_declared_agent_desktop_origin(
    clients: dict[str, httpx.Client],
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = clients["anonymous"].options(
        "/v1/oppositions", headers={"Origin": "https://desk.example", **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://desk.example"
    other = clients["anonymous"].options(
        "/v1/oppositions", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers
