"""A real Prometheus scrapes the running pipeline; every dashboard and alert query works."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.dashboard_queries import dashboard_exprs, rule_exprs
from infra.launch.stack import LocalStack
from infra.prometheus_service import local_prometheus_config, start_prometheus
from schemas.events import Kind
from tests.harness import raw_event, wait_for
from tests.test_reference_list import RefStack, event

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "infra" / "grafana" / "dashboards" / "dnc-propagation.json"
RULES = REPO / "infra" / "prometheus" / "alerts.yml"

pytestmark = [pytest.mark.pipeline, pytest.mark.postgres, pytest.mark.prometheus]


@pytest.fixture
def observed(
    local_stack: LocalStack, tmp_path: Path, reference_db: str
) -> Iterator[tuple[RefStack, httpx.Client]]:
    ref = RefStack(local_stack, tmp_path, reference_db)
    ref.pipeline.start_worker()
    ref.sync.start()
    config = local_prometheus_config(
        {
            "dnc-worker": [f"127.0.0.1:{ref.pipeline.metrics_port}"],
            "dnc-sync": [f"127.0.0.1:{ref.sync.metrics_port}"],
        },
        [RULES],
        scrape_interval="1s",
    )
    prometheus = start_prometheus(tmp_path / "prometheus", config)  # promtool checks it first
    client = httpx.Client(base_url=f"http://127.0.0.1:{prometheus.port}", timeout=10)
    try:
        yield ref, client
    finally:
        client.close()
        prometheus.stop()
        try:
            ref.sync.stop()
        finally:
            ref.pipeline.close()


def query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def test_prometheus_scrapes_the_pipeline_and_every_query_answers(
    observed: tuple[RefStack, httpx.Client],
) -> None:
    ref, client = observed
    for n in range(20):
        ref.pipeline.publisher.publish(event(f"06 12 34 {n:02d} 00", Kind.REFUSAL))
    bad = raw_event(event_id=str(uuid.uuid4()), tenant="acme", phone="12", kind="refusal")
    producer = ref.pipeline.publisher._producer
    producer.produce(ref.pipeline.settings.oppositions_topic, value=bad)
    producer.flush(10)
    ref.wait_row("+33612341900", do_not_call=True)

    def scraped() -> bool:
        stages = {
            r["metric"].get("stage")
            for r in query(client, "dnc_propagation_seconds_count > 0")
            if r["metric"].get("job") in ("dnc-worker", "dnc-sync")
        }
        letters = query(client, "dnc_dead_letters_total > 0")
        return {"suppression_view", "reference_list"} <= stages and bool(letters)

    wait_for(scraped, timeout=60, interval=1, what="Prometheus to scrape both stages")
    targets = client.get("/api/v1/targets").json()["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "dnc-worker": "up",
        "dnc-sync": "up",
    }

    # What the dashboard and the alerts are built on has data now.
    for expr in (
        "histogram_quantile(0.99, sum by (le, stage) (rate(dnc_propagation_seconds_bucket[1m])))",
        "dnc_reference_list_pending",
        "dnc_reference_list_oldest_pending_seconds",
        "dnc_consumer_lag",
        "dnc_worker_heartbeat_timestamp_seconds",
        "sum by (kind, outcome) (dnc_events_total)",
    ):
        # rate() needs two scrapes inside its window: wait for them rather than race them.
        wait_for(lambda e=expr: query(client, e), timeout=30, interval=1, what=f"data for {expr}")
    groups = {ref.pipeline.settings.worker_group, f"{ref.pipeline.prefix}-sync-acme"}

    def lag_of_both() -> bool:  # the worker measures its lag every 5 s, the lane every 5 s
        return groups <= {r["metric"]["group"] for r in query(client, "dnc_consumer_lag")}

    wait_for(lag_of_both, timeout=30, interval=1, what=f"consumer lag of {groups}")

    # Every query of the dashboard and of the rules is valid PromQL that Prometheus answers
    # (an empty result is valid where nothing happened, e.g. no gateway in this test).
    exprs = dashboard_exprs(DASHBOARD) + rule_exprs(RULES)
    assert len(exprs) >= 15
    empty = [e for e in exprs if not query(client, e)]
    assert len(empty) < len(exprs), "every query came back empty"
    print(f"{len(exprs)} queries, {len(empty)} empty:", *empty, sep="\n  ")

    # The rules loaded and evaluate without error.
    def evaluated() -> list[dict[str, Any]]:
        groups = client.get("/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return (
            rules
            if rules and all(r.get("lastEvaluation", "0001")[:4] != "0001" for r in rules)
            else []
        )

    rules = wait_for(evaluated, timeout=30, interval=1, what="every rule to be evaluated")
    assert all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    firing = {a["labels"]["alertname"] for a in query(client, 'ALERTS{alertstate="firing"}')}
    assert "DncWorkerHeartbeatMissing" not in firing
