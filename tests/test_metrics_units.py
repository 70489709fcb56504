"""Metric bookkeeping of the worker (pure logic, the process's own Prometheus registry)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from prometheus_client import REGISTRY

from schemas.events import Kind, Scope, Source
from schemas.metrics import SUPPRESSED_NUMBERS
from schemas.state import ActiveSuppression, Stamp, SuppressionState
from streams.processor import _count_suppressed

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _suppressed(tenant: str) -> SuppressionState:
    stamp = Stamp(occurred_at=NOW, event_id=uuid.uuid4())
    entry = ActiveSuppression(stamp=stamp, kind=Kind.OPPOSITION, expires_at=None,
                              source=Source.ADMIN)  # fmt: skip
    return _state(tenant, (entry,))


def _state(tenant: str, active: tuple[ActiveSuppression, ...]) -> SuppressionState:
    return SuppressionState(target=tenant, tenant=tenant, scope=Scope.TENANT, campaign_id=None,
                            phone_e164="+33612345678", active=active, updated_at=NOW)  # fmt: skip


def _gauge(tenant: str) -> float | None:
    return REGISTRY.get_sample_value("dnc_suppressed_numbers", {"tenant": tenant})


def test_the_suppressed_gauge_follows_changes_after_a_rebuild_set_it_anew() -> None:
    for rebuilt_count in (5, 1):  # a rebuild clears the gauge and sets each tenant's count
        SUPPRESSED_NUMBERS.clear()
        SUPPRESSED_NUMBERS.labels(tenant="metrics-t").set(rebuilt_count)
        _count_suppressed(None, _suppressed("metrics-t"), NOW)  # a new suppression
        assert _gauge("metrics-t") == rebuilt_count + 1
    lifted = _state("metrics-t", ())
    _count_suppressed(_suppressed("metrics-t"), lifted, NOW)  # a lift
    assert _gauge("metrics-t") == 1
