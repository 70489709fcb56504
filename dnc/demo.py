"""`dnc demo-traffic`: simulated agent desktops and dialers against the running pipeline.

Agents record what people say on calls at a steady rate, in a realistic mix (mostly
refusals during a call, then objections to prospecting, consent withdrawals, a few erasure
requests, admin lifts of earlier suppressions, some campaign-scoped), and now and then a
mistyped number that a desktop without validation would let through (it reaches the
dead letters). Dialers check numbers from the same pools before each call: a suppressed
number is a blocked call, an unknown answer holds the call (fail closed).

Beside them, the consent campaigns of the tenants file (legal basis ``consent``: the bundled
file's ``demo/optin-2027``, with French calling hours and 4 attempts in 30 days): a web form
records consents (with their proof reference, on the consents topic), agents' consent
withdrawals often concern those numbers (sometimes for the campaign alone), and the
campaign's dialers ask for an attempt before each call (:class:`consumers.attempts.AttemptDesk`:
checked under every rule, then reserved under the cap and recorded). Outside French calling
hours (nights, weekends, holidays) every attempt is refused ``outside_calling_hours``.

Everything is counted on ``/metrics`` (job ``dnc-demo``): ``dnc_demo_events_total`` and
``dnc_demo_calls_total``, beside the checker's own ``dnc_checks_total`` and
``dnc_check_reasons_total``.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import Producer
from prometheus_client import Counter, start_http_server

from consumers.attempts import AttemptDesk
from consumers.checker import Answer, SuppressionChecker
from producers.publisher import OppositionPublisher, producer_config
from schemas.errors import DncError
from schemas.events import ConsentSource, Kind, OppositionEvent, Scope, Source
from schemas.policy import LegalBasis
from schemas.settings import Settings
from schemas.tenants import TenantDirectory

log = logging.getLogger("dnc.demo")

DEMO_EVENTS = Counter("dnc_demo_events_total", "Events the simulated agents sent", ["kind"])
DEMO_CALLS = Counter(
    "dnc_demo_calls_total", "Calls the simulated dialers tried", ["tenant", "outcome"]
)
# What agents record, with its share of events (the rest: a mistyped number).
MIX = (
    (Kind.REFUSAL, 0.56),
    (Kind.OPPOSITION, 0.20),
    (Kind.CONSENT_WITHDRAWN, 0.11),
    (Kind.ERASURE, 0.04),
    (Kind.LIFT, 0.06),
)
MISTYPED_SHARE = 0.01
CAMPAIGN_SHARE = 0.15
CAMPAIGNS = ("spring-offer", "renewal-2027", "fibre-upgrade")
POOL_SIZE = 2_000
# Consent campaigns: share of web-form consents given to the campaign alone (the rest: to
# the tenant), of withdrawals about a consented number, of attempts on a consented number.
CAMPAIGN_CONSENT_SHARE = 0.7
WITHDRAWAL_OF_CONSENTED_SHARE = 0.5
ATTEMPT_ON_CONSENTED_SHARE = 0.8
CONSENTED_KEPT = 500  # the numbers a web form recorded lately, per tenant
# Web-form consents that end in 3 weeks (a seasonal offer's form): `dnc status` shows them
# among those expiring within 30 days. The rest last the campaign's consent_validity.
SHORT_CONSENT_SHARE = 0.1
SHORT_CONSENT = timedelta(days=21)
_CALL_OUTCOME = {Answer.CALLABLE: "placed", Answer.SUPPRESSED: "blocked",
                 Answer.UNAVAILABLE: "held"}  # fmt: skip


@dataclass(frozen=True)
class DemoRates:
    """How busy the simulated call centre is."""

    events_per_second: float = 20.0
    checks_per_second: float = 50.0
    agents: int = 40
    consents_per_second: float = 2.0  # the consent campaigns' web form
    attempts_per_second: float = 5.0  # the consent campaigns' dialers


def consent_campaigns(tenants: TenantDirectory) -> list[tuple[str, str]]:
    """The (tenant, campaign) pairs of the tenants file whose legal basis is consent."""
    return [
        (name, campaign)
        for name in tenants.names
        for campaign in tenants.get(name).campaigns
        if tenants.policy(name, campaign).legal_basis is LegalBasis.CONSENT
    ]


class ConsentedNumbers:
    """The numbers the web form recorded consents for lately, per tenant (shared by the web
    form, the agents and the consent campaigns' dialers, in their own threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers: dict[str, list[str]] = {}

    def add(self, tenant: str, phone: str) -> None:
        """Remember a consented number (the latest :data:`CONSENTED_KEPT` are kept)."""
        with self._lock:
            numbers = self._numbers.setdefault(tenant, [])
            numbers.append(phone)
            del numbers[:-CONSENTED_KEPT]

    def pick(self, tenant: str, rng: random.Random) -> str | None:
        """One of the tenant's consented numbers (None: none yet)."""
        with self._lock:
            numbers = self._numbers.get(tenant)
            return rng.choice(numbers) if numbers else None


def paced(rate: float, stop: threading.Event, step: Callable[[], object]) -> None:
    """Call ``step`` ``rate`` times a second until ``stop`` (late steps catch up at once)."""
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        step()
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))


def number_pool(region: str, size: int = POOL_SIZE) -> list[str]:
    """Valid mobile numbers of ``region`` in E.164 (France and the UK; others use France's)."""
    if region == "GB":
        return [f"+447400{100000 + i:06d}" for i in range(size)]
    return [f"+3367{1000000 + i * 37:07d}" for i in range(size)]


class AgentDesktops:
    """Simulated agents: publish events at a steady rate, like desktops would."""

    def __init__(
        self,
        settings: Settings,
        tenants: TenantDirectory,
        rates: DemoRates,
        rng: random.Random,
        consented: ConsentedNumbers | None = None,
    ) -> None:
        self._publisher = OppositionPublisher.from_settings(settings, tenants)
        self._raw = Producer(
            producer_config(
                settings.kafka_bootstrap,
                settings.publish_timeout_seconds,
                **settings.kafka_client_config(),
            )
        )
        self._topic = settings.oppositions_topic
        self._tenants = tenants.names
        self._pools = {t: number_pool(tenants.get(t).default_region) for t in self._tenants}
        self._opposed: dict[str, list[str]] = {t: [] for t in self._tenants}
        self._consent_campaigns: dict[str, list[str]] = {}
        for tenant, campaign in consent_campaigns(tenants):
            self._consent_campaigns.setdefault(tenant, []).append(campaign)
        self._consented = consented or ConsentedNumbers()
        self._rates = rates
        self._rng = rng

    def next_event(self) -> OppositionEvent | bytes:
        """One thing an agent records (bytes: a mistyped number from a careless desktop)."""
        rng = self._rng
        tenant = rng.choice(self._tenants)
        agent = f"agent-{rng.randrange(self._rates.agents):03d}"
        if rng.random() < MISTYPED_SHARE:
            return json.dumps(
                {
                    "schema_version": 1,
                    "event_id": str(uuid.uuid4()),
                    "tenant": tenant,
                    "phone": "06 12 34",
                    "kind": "refusal",
                    "occurred_at": datetime.now(UTC).isoformat(),
                    "agent_id": agent,
                }
            ).encode()
        kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
        opposed = self._opposed[tenant]
        if kind is Kind.LIFT and not opposed:
            kind = Kind.REFUSAL
        fields: dict[str, object] = {"agent_id": agent, "source": Source.AGENT_DESKTOP}
        if kind is Kind.LIFT:
            phone = opposed.pop(rng.randrange(len(opposed)))
            fields = {
                "source": Source.ADMIN,
                "justification": "the person asked to hear about offers again",
            }
        else:
            phone = rng.choice(self._pools[tenant])
            if kind is Kind.CONSENT_WITHDRAWN and rng.random() < WITHDRAWAL_OF_CONSENTED_SHARE:
                phone = self._consented.pick(tenant, rng) or phone
            if kind is not Kind.REFUSAL:
                opposed.append(phone)
                del opposed[:-500]
        if kind is not Kind.LIFT and rng.random() < CAMPAIGN_SHARE:
            # A withdrawal for a campaign alone: the tenant's consent campaign, if it has one.
            own = self._consent_campaigns.get(tenant) if kind is Kind.CONSENT_WITHDRAWN else None
            fields |= {"scope": Scope.CAMPAIGN, "campaign_id": rng.choice(own or CAMPAIGNS)}
        return OppositionEvent(
            event_id=uuid.uuid4(),
            tenant=tenant,
            phone=phone,
            kind=kind,
            occurred_at=datetime.now(UTC),
            reason_code="demo",
            **fields,
        )

    def run(self, stop: threading.Event) -> None:
        """Publish at the configured rate until ``stop``; every 100 ms a small batch."""
        tick = 0.1
        owed = 0.0
        while not stop.is_set():
            started = time.monotonic()
            owed += self._rates.events_per_second * tick
            batch = [self.next_event() for _ in range(int(owed))]
            owed -= int(owed)
            events = [e for e in batch if isinstance(e, OppositionEvent)]
            for raw in (e for e in batch if isinstance(e, bytes)):
                self._raw.produce(self._topic, value=raw)
                DEMO_EVENTS.labels(kind="mistyped").inc()
            try:
                for outcome in self._publisher.publish_many(events):
                    if isinstance(outcome, DncError):
                        log.warning("an agent's event was not recorded: %s", outcome)
                for e in events:
                    DEMO_EVENTS.labels(kind=e.kind.value).inc()
            except DncError as exc:
                log.warning("agents could not record events: %s", exc)
            self._raw.poll(0)
            stop.wait(max(0.0, tick - (time.monotonic() - started)))

    def close(self) -> None:
        """Flush and release the producers."""
        self._raw.flush(5)
        self._publisher.close()


class Dialers:
    """Simulated dialers: check a number before each call, never call unless callable."""

    def __init__(
        self, settings: Settings, tenants: TenantDirectory, rates: DemoRates, rng: random.Random
    ) -> None:
        self._checker = SuppressionChecker.from_settings(settings, tenants)
        self._tenants = tenants.names
        self._pools = {t: number_pool(tenants.get(t).default_region) for t in self._tenants}
        self._rates = rates
        self._rng = rng

    def call_once(self) -> Answer:
        """Check one number as a dialer would before dialling it."""
        tenant = self._rng.choice(self._tenants)
        campaign = self._rng.choice((None, *CAMPAIGNS))
        answer = self._checker.check(self._rng.choice(self._pools[tenant]), tenant, campaign).answer
        DEMO_CALLS.labels(tenant=tenant, outcome=_CALL_OUTCOME[answer]).inc()
        return answer

    def run(self, stop: threading.Event) -> None:
        """Check at the configured rate until ``stop``."""
        paced(self._rates.checks_per_second, stop, self.call_once)


class WebForm:
    """The consent campaigns' web form: each submission is a consent recorded with its proof
    reference (form version and submission number), to the tenant or to the campaign alone,
    for the campaign's consent validity (a few for 3 weeks).

    It publishes with the demo's principal, the gateway's (the form's consent platform posts
    through the gateway), which may write the consents topic; the desktops' principal may not.
    """

    def __init__(
        self,
        publisher: OppositionPublisher,
        tenants: TenantDirectory,
        rates: DemoRates,
        rng: random.Random,
        consented: ConsentedNumbers,
    ) -> None:
        self._publisher = publisher
        self._campaigns = consent_campaigns(tenants)
        self._pools = {t: number_pool(tenants.get(t).default_region) for t, _ in self._campaigns}
        self._rates = rates
        self._rng = rng
        self._consented = consented
        self._submissions = 0

    def next_consent(self) -> OppositionEvent | None:
        """The next submission's consent (None: no consent campaign in the tenants file)."""
        if not self._campaigns:
            return None
        tenant, campaign = self._rng.choice(self._campaigns)
        self._submissions += 1
        now = datetime.now(UTC)
        fields: dict[str, object] = {"scope": Scope.TENANT}
        if self._rng.random() < CAMPAIGN_CONSENT_SHARE:
            fields = {"scope": Scope.CAMPAIGN, "campaign_id": campaign}
        if self._rng.random() < SHORT_CONSENT_SHARE:
            fields["expires_at"] = now + SHORT_CONSENT
        return OppositionEvent(
            event_id=uuid.uuid4(), tenant=tenant, phone=self._rng.choice(self._pools[tenant]),
            kind=Kind.CONSENT, occurred_at=now, source=Source.HTTP_GATEWAY,
            consent_source=ConsentSource.WEB_FORM, proof_ref=f"webform-v3#{self._submissions}",
            wording_version="v3", recorded_by="web-form", **fields,
        )  # fmt: skip

    def submit_once(self) -> None:
        """Record one consent; once Kafka acknowledged it, its number is one to call."""
        consent = self.next_consent()
        if consent is None:
            return
        try:
            self._publisher.publish(consent)
        except DncError as exc:
            log.warning("the web form's consent was not recorded: %s", exc)
            return
        DEMO_EVENTS.labels(kind=Kind.CONSENT.value).inc()
        self._consented.add(consent.tenant, consent.phone)

    def run(self, stop: threading.Event) -> None:
        """Record consents at the configured rate until ``stop``."""
        paced(self._rates.consents_per_second, stop, self.submit_once)


class ConsentDialers:
    """The consent campaigns' dialers: before each call, an attempt (checked under every
    rule of the campaign, reserved under its cap and recorded), mostly on consented numbers."""

    def __init__(
        self,
        desk: AttemptDesk,
        tenants: TenantDirectory,
        rates: DemoRates,
        rng: random.Random,
        consented: ConsentedNumbers,
    ) -> None:
        self._desk = desk
        self._campaigns = consent_campaigns(tenants)
        self._pools = {t: number_pool(tenants.get(t).default_region) for t, _ in self._campaigns}
        self._rates = rates
        self._rng = rng
        self._consented = consented

    def call_once(self) -> Answer | None:
        """Ask for one attempt as a dialer of a consent campaign would (None: no campaign)."""
        if not self._campaigns:
            return None
        tenant, campaign = self._rng.choice(self._campaigns)
        phone = self._rng.choice(self._pools[tenant])
        if self._rng.random() < ATTEMPT_ON_CONSENTED_SHARE:
            phone = self._consented.pick(tenant, self._rng) or phone
        outcome = self._desk.attempt(phone, tenant, campaign)
        answer = outcome.result.answer
        if answer is Answer.CALLABLE and not outcome.go:  # never "placed" without the go
            answer = Answer.UNAVAILABLE
        DEMO_CALLS.labels(tenant=tenant, outcome=_CALL_OUTCOME[answer]).inc()
        return answer

    def run(self, stop: threading.Event) -> None:
        """Ask for attempts at the configured rate until ``stop``."""
        paced(self._rates.attempts_per_second, stop, self.call_once)


def run_demo_traffic(settings: Settings, rates: DemoRates, stop: threading.Event) -> None:
    """Agents and dialers until ``stop`` is set; /metrics on the demo port."""
    tenants = TenantDirectory.load(settings.tenants_file)
    start_http_server(settings.demo_metrics_port, addr=settings.metrics_host)
    rng = random.Random()
    consented = ConsentedNumbers()
    agents = AgentDesktops(settings, tenants, rates, rng, consented)
    dialers = Dialers(settings, tenants, rates, random.Random())
    # The consent campaigns' side: the web form records, the dialers' attempts are recorded.
    publisher = OppositionPublisher.from_settings(settings, tenants)
    form = WebForm(publisher, tenants, rates, random.Random(), consented)
    desk = AttemptDesk(SuppressionChecker.from_settings(settings, tenants), publisher)
    consent_dialers = ConsentDialers(desk, tenants, rates, random.Random(), consented)
    campaigns = ", ".join(f"{t}/{c}" for t, c in consent_campaigns(tenants)) or "none"
    log.info(
        "demo: %d agents at %.0f events/s, dialers at %.0f checks/s; consent campaigns (%s): "
        "web form at %.1f consents/s, dialers at %.1f attempts/s; metrics on %s:%d",
        rates.agents,
        rates.events_per_second,
        rates.checks_per_second,
        campaigns,
        rates.consents_per_second,
        rates.attempts_per_second,
        settings.metrics_host,
        settings.demo_metrics_port,
    )
    threads = [
        threading.Thread(target=agents.run, args=(stop,), name="agents", daemon=True),
        threading.Thread(target=dialers.run, args=(stop,), name="dialers", daemon=True),
        threading.Thread(target=form.run, args=(stop,), name="web-form", daemon=True),
        threading.Thread(
            target=consent_dialers.run, args=(stop,), name="consent-dialers", daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for thread in threads:
            thread.join(10)
        agents.close()
        publisher.close()
