"""`dnc up --demo`'s consent campaign on a real worker: the web form's consents make numbers
callable for it, its dialers' attempts stop at the cap, agents' withdrawals concern it; and
the live summary shows the checks' answers by reason."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from rich.console import Console

from consumers.attempts import AttemptDesk
from consumers.checker import Answer
from consumers.dial_rules import ReasonCode
from dnc.demo import (
    AgentDesktops,
    ConsentDialers,
    ConsentedNumbers,
    DemoRates,
    WebForm,
    consent_campaigns,
)
from dnc.live_summary import Snapshot, render
from schemas.events import ConsentSource, Kind, Scope
from tests.harness import Pipeline


@pytest.mark.pipeline
@pytest.mark.timeout(180)
def test_the_demo_web_form_dialers_and_agents_play_the_consent_campaign(
    consent_pipeline: Pipeline,
) -> None:
    p = consent_pipeline
    assert consent_campaigns(p.tenants) == [("acme", "optin-2027")]
    consented = ConsentedNumbers()
    rates = DemoRates()

    # The web form: each consent, once acknowledged, is a number the campaign may call.
    form = WebForm(p.publisher, p.tenants, rates, random.Random(1), consented)
    sent = form.next_consent()
    assert sent is not None and sent.kind is Kind.CONSENT and sent.tenant == "acme"
    assert sent.consent_source is ConsentSource.WEB_FORM and sent.proof_ref == "webform-v3#1"
    assert sent.scope in (Scope.TENANT, Scope.CAMPAIGN) and sent.campaign_id in (None, "optin-2027")
    form.submit_once()
    phone = consented.pick("acme", random.Random())
    assert phone is not None
    relied_on = p.wait_answer(phone, "acme", "callable", campaign="optin-2027").consent
    assert relied_on is not None and relied_on.proof_ref == "webform-v3#2"
    # Not the tenant's other campaigns' business: they need no consent.
    assert p.check("0699000001", "acme", "spring-offer").may_call

    # The campaign's dialers: mostly the consented number, placed 4 times at most.
    dialers = ConsentDialers(
        AttemptDesk(p.checker, p.publisher), p.tenants, rates, random.Random(2), consented
    )
    answers = Counter(dialers.call_once() for _ in range(30))
    assert answers[Answer.CALLABLE] == 4, answers
    assert answers[Answer.SUPPRESSED] == 26, answers
    capped = p.check(phone, "acme", "optin-2027")
    assert [r.code for r in capped.reasons] == [ReasonCode.ATTEMPT_CAP], capped
    assert capped.next_allowed_at is not None

    # Agents: withdrawals often concern consented numbers, and a campaign-scoped one is for
    # the tenant's consent campaign; the other kinds keep the demo's other campaigns.
    agents = AgentDesktops(p.settings, p.tenants, rates, random.Random(3), consented)
    try:
        events = [e for e in (agents.next_event() for _ in range(3000)) if not isinstance(e, bytes)]
    finally:
        agents.close()
    withdrawals = [e for e in events if e.kind is Kind.CONSENT_WITHDRAWN and e.tenant == "acme"]
    assert sum(e.phone == phone for e in withdrawals) > len(withdrawals) / 4
    scoped = {e.campaign_id for e in withdrawals if e.scope is Scope.CAMPAIGN}
    assert scoped == {"optin-2027"}
    others = {e.campaign_id for e in events if e.kind is not Kind.CONSENT_WITHDRAWN}
    assert "optin-2027" not in others and len(others - {None}) == 3


def test_the_live_summary_shows_the_answers_by_reason_most_frequent_first() -> None:
    snap = Snapshot(
        calls={"placed": 5, "blocked": 30},
        reasons={"opposed": 12, "outside_calling_hours": 40, "no_consent": 3, "attempt_cap": 0},
    )
    console = Console(width=200, record=True)
    console.print(render(snap, "http://127.0.0.1:9090"))
    text = console.export_text()
    (row,) = [line for line in text.splitlines() if "answers by reason" in line]
    assert "outside_calling_hours 40   opposed 12   no_consent 3" in row, row
    assert "attempt_cap" not in row  # (never counted: nothing to show)
    empty = Console(width=200, record=True)
    empty.print(render(Snapshot(), "http://127.0.0.1:9090"))
    (row,) = [line for line in empty.export_text().splitlines() if "answers by reason" in line]
    assert row.strip(" │").endswith("│ -"), row
