"""The ops page (Prometheus console template infra/prometheus/consoles/dnc.html) on a live
pipeline: every expression it shows answers, and a real headless browser draws its graphs.

A worker, the reference-list sync and a dialer's checks (made here, exported from this
process as the demo's dialers are) feed a real Prometheus serving the page.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import start_http_server

from infra.dashboard_queries import console_exprs
from infra.prometheus_service import OPS_PAGE, local_prometheus_config, start_prometheus
from infra.services import LocalStack
from schemas.events import Kind
from tests.harness import raw_event, wait_for
from tests.test_observability import RULES, query
from tests.test_reference_list import RefStack, event

REPO = Path(__file__).resolve().parent.parent
CONSOLE = REPO / "infra" / "prometheus" / "consoles" / "dnc.html"
# Graphs that must be drawn with data once events, a dead letter and checks went through.
DRAWN = (
    "Propagation to the suppression view",
    "Propagation to the clients' reference lists",
    "Reference lists: changes pending per tenant",
    "Suppression view: staleness per partition",
    "Consumer lag per group",
    "Events per second",
    "Dead letters per minute",
    "Dialer checks per second",
    "Calls not allowed per second, by reason",
    'Share of checks answered "unavailable"',
)

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


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's chromium headless (no sandbox: tests may run as root in a container)."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run `bash infra/setup.sh`"
    cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--window-size=1400,1900", "--virtual-time-budget=15000",
           *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def graphs_in(dom: str) -> dict[str, dict[str, Any]]:
    """Per graph title of the rendered page: its lines drawn (SVG paths) and error shown."""
    out = {}
    for block in re.split(r'<div class="[^"]*\bdnc-graph\b', dom)[1:]:
        title = html.unescape(re.search(r"<h4>(.*?)</h4>", block, re.S).group(1))  # type: ignore[union-attr]
        lines = re.findall(r'<path[^>]*\bd="M[^"]*L[^"]*"', block)
        error = re.search(r'class="prom_graph_error"[^>]*>([^<]*)<', block)
        out[title] = {"lines": len(lines), "error": error.group(1) if error else None}
    return out


def has_value(result: list[dict[str, Any]]) -> bool:
    """Some series of an instant query's result has a number (not NaN: no rate to show)."""
    return any(r["value"][1] != "NaN" for r in result)


@pytest.mark.timeout(240)
def test_the_ops_page_draws_every_graph_from_the_live_pipeline(
    ops_page: tuple[RefStack, httpx.Client], tmp_path: Path
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
    wanted = [e for e in exprs if "ALERTS" not in e]  # an alert may or may not fire
    for expr in wanted:
        wait_for(lambda e=expr: has_value(query(client, e)), timeout=30, interval=0.5,
                 what=f"a value for {expr}")  # fmt: skip

    # A real browser opens the page as ops do and draws the graphs (the console library's
    # JavaScript queries Prometheus); a 1-minute window, the time this test ran.
    page = f"http://127.0.0.1:{client.base_url.port}{OPS_PAGE}"
    window = "#pctc" + urllib.parse.quote(json.dumps({"duration": 60, "endTime": 0}))
    dumped = chromium("--dump-dom", page + window)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    (tmp_path / "ops-page.html").write_text(dumped.stdout)  # what the browser made of it
    graphs = graphs_in(dumped.stdout)
    for title in DRAWN:
        (found,) = [g for t, g in graphs.items() if t.startswith(title)]
        assert found["error"] is None and found["lines"] >= 1, (title, found)
    now = dumped.stdout.split('id="dnc-now"')[1].split("</table>")[0]
    assert re.search(r"every worker\)</td>\s*<td>yes</td>", now), now  # the server-side table
    # ... with the answers by reason (the dialer's checks of suppressed numbers: opposed).
    assert re.search(r"by reason \(last 5 min[^<]*</td>\s*<td>opposed \d+<br>", now), now

    shot = Path(os.environ.get("DNC_OPS_SCREENSHOT", tmp_path / "ops-page.png"))
    taken = chromium(f"--screenshot={shot}", page + window)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 30_000, "a blank page compresses to a few kilobytes"
    print(f"screenshot: {shot} ({shot.stat().st_size} bytes)")
