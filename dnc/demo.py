"""`dnc demo-traffic`: simulated agent desktops and dialers against the running pipeline.

Agents record what people say on calls at a steady rate, in a realistic mix (mostly
refusals during a call, then objections to prospecting, consent withdrawals, a few erasure
requests, admin lifts of earlier suppressions, some campaign-scoped), and now and then a
mistyped number that a desktop without validation would let through (it reaches the
dead letters). Dialers check numbers from the same pools before each call: a suppressed
number is a blocked call, an unknown answer holds the call (fail closed).

Everything is counted on ``/metrics`` (job ``dnc-demo``): ``dnc_demo_events_total`` and
``dnc_demo_calls_total``, beside the checker's own ``dnc_checks_total``.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Producer
from prometheus_client import Counter, start_http_server

from consumers.checker import Answer, SuppressionChecker
from producers.publisher import OppositionPublisher, producer_config
from schemas.errors import DncError
from schemas.events import Kind, OppositionEvent, Scope, Source
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


@dataclass(frozen=True)
class DemoRates:
    """How busy the simulated call centre is."""

    events_per_second: float = 20.0
    checks_per_second: float = 50.0
    agents: int = 40


def number_pool(region: str, size: int = POOL_SIZE) -> list[str]:
    """Valid mobile numbers of ``region`` in E.164 (France and the UK; others use France's)."""
    if region == "GB":
        return [f"+447400{100000 + i:06d}" for i in range(size)]
    return [f"+3367{1000000 + i * 37:07d}" for i in range(size)]


class AgentDesktops:
    """Simulated agents: publish events at a steady rate, like desktops would."""

    def __init__(
        self, settings: Settings, tenants: TenantDirectory, rates: DemoRates, rng: random.Random
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
            if kind is not Kind.REFUSAL:
                opposed.append(phone)
                del opposed[:-500]
        if kind is not Kind.LIFT and rng.random() < CAMPAIGN_SHARE:
            fields |= {"scope": Scope.CAMPAIGN, "campaign_id": rng.choice(CAMPAIGNS)}
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
        outcome = {
            Answer.CALLABLE: "placed",
            Answer.SUPPRESSED: "blocked",
            Answer.UNAVAILABLE: "held",
        }[answer]
        DEMO_CALLS.labels(tenant=tenant, outcome=outcome).inc()
        return answer

    def run(self, stop: threading.Event) -> None:
        """Check at the configured rate until ``stop``."""
        interval = 1.0 / self._rates.checks_per_second
        next_at = time.monotonic()
        while not stop.is_set():
            self.call_once()
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))


def run_demo_traffic(settings: Settings, rates: DemoRates, stop: threading.Event) -> None:
    """Agents and dialers until ``stop`` is set; /metrics on the demo port."""
    tenants = TenantDirectory.load(settings.tenants_file)
    start_http_server(settings.demo_metrics_port, addr=settings.metrics_host)
    rng = random.Random()
    agents = AgentDesktops(settings, tenants, rates, rng)
    dialers = Dialers(settings, tenants, rates, random.Random())
    log.info(
        "demo: %d agents at %.0f events/s, dialers at %.0f checks/s, metrics on %s:%d",
        rates.agents,
        rates.events_per_second,
        rates.checks_per_second,
        settings.metrics_host,
        settings.demo_metrics_port,
    )
    threads = [
        threading.Thread(target=agents.run, args=(stop,), name="agents", daemon=True),
        threading.Thread(target=dialers.run, args=(stop,), name="dialers", daemon=True),
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
