"""The ops page (Prometheus console template infra/prometheus/consoles/dnc.html) on a live
pipeline: every expression it shows answers.

A worker, the reference-list sync and a dialer's checks (made here, exported from this
process as the demo's dialers are) feed a real Prometheus serving the page.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import start_http_server

from infra.dashboard_queries import console_exprs
from infra.prometheus_service import local_prometheus_config, start_prometheus
from infra.services import LocalStack
from schemas.events import Kind
from tests.harness import raw_event, wait_for
from tests.test_observability import RULES, query
from tests.test_reference_list import RefStack, event

REPO = Path(__file__).resolve().parent.parent
CONSOLE = REPO / "infra" / "prometheus" / "consoles" / "dnc.html"
pytestmark = [pytest.mark.pipeline, pytest.mark.postgres, pytest.mark.prometheus]


@pytest.fixture
def ops_page(
    local_stack: LocalStack, tmp_path: Path, reference_db: str
) -> Iterator[tuple[RefStack, httpx.Client]]:
    """A worker, a sync and this process's checks scraped by a Prometheus serving the page."""
    ref = RefStack(local_stack, tmp_path, reference_db)
    ref.pipeline.start_worker()
    ref.sync.start()
    dialer, _thread = start_http_server(0, addr="127.0.0.1")  # this process's dnc_checks_total
    config = local_prometheus_config(
        {
            "dnc-worker": [f"127.0.0.1:{ref.pipeline.metrics_port}"],
            "dnc-sync": [f"127.0.0.1:{ref.sync.metrics_port}"],
            "dnc-demo": [f"127.0.0.1:{dialer.server_port}"],
        },
        [RULES],
        scrape_interval="1s",
    )
    prometheus = start_prometheus(tmp_path / "prometheus", config)
    client = httpx.Client(base_url=f"http://127.0.0.1:{prometheus.port}", timeout=10)
    try:
        yield ref, client
    finally:
        client.close()
        prometheus.stop()
        dialer.shutdown()
        dialer.server_close()
        try:
            ref.sync.stop()
        finally:
            ref.pipeline.close()


def has_value(result: list[dict[str, Any]]) -> bool:
    """Some series of an instant query's result has a number (not NaN: no rate to show)."""
    return any(r["value"][1] != "NaN" for r in result)


@pytest.mark.timeout(240)
def test_every_expression_of_the_ops_page_answers_on_the_live_pipeline(
    ops_page: tuple[RefStack, httpx.Client],
) -> None:
    ref, client = ops_page
    # Two waves: Prometheus first sees a series once its first event happened, and rate()
    # needs an increase it saw; the second wave is what the graphs show.
    for wave, numbers in enumerate((range(0, 5), range(5, 20))):
        for n in numbers:  # the second wave over a few seconds, as desktops send them
            ref.pipeline.publisher.publish(event(f"06 12 34 {n:02d} 00", Kind.REFUSAL))
            time.sleep(0.4 * wave)
        bad = raw_event(event_id=str(uuid.uuid4()), tenant="acme", phone="12", kind="refusal")
        producer = ref.pipeline.publisher._producer
        producer.produce(ref.pipeline.settings.oppositions_topic, value=bad)
        producer.flush(10)
        ref.wait_row(f"+3361234{numbers[-1]:02d}00", do_not_call=True)
        for n in numbers:  # a dialer's checks (counted in this process, scraped as dnc-demo)
            assert not ref.pipeline.check(f"06 12 34 {n:02d} 00", "acme").may_call
            ref.pipeline.check(f"06 98 76 54 {n:02d}", "acme")
        if wave == 0:
            wait_for(lambda: len(query(client, "dnc_propagation_seconds_count")) >= 2
                     and query(client, 'dnc_checks_total{job="dnc-demo"}')
                     and query(client, "dnc_dead_letters_total"),
                     timeout=30, interval=0.5, what="the first wave scraped")  # fmt: skip

    # Every expression of the page is valid PromQL that the live Prometheus answers; those
    # the page is about have a value (rate() needs two scrapes inside its window: wait).
    exprs = console_exprs(CONSOLE)
    assert len(exprs) >= 20
    for expr in exprs:
        query(client, expr)
    wanted = [e for e in exprs if not re.search(r"dnc_reference_list_errors|ALERTS", e)]
    for expr in wanted:
        wait_for(lambda e=expr: has_value(query(client, e)), timeout=30, interval=0.5,
                 what=f"a value for {expr}")  # fmt: skip
