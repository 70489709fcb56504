"""The ops page (Prometheus console template infra/prometheus/consoles/dnc.html) on a live
pipeline: every expression it shows answers, and a real headless browser draws its graphs.

A worker, the reference-list sync and a dialer's checks (made here, exported from this
process as the demo's dialers are) feed a real Prometheus serving the page. Two runs on one
data directory show that the page opens on the last 15 minutes with this run's start marked.
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
from infra.launch.stack import LocalStack
from infra.prometheus_service import (
    OPS_PAGE,
    local_prometheus_config,
    run_rules,
    start_prometheus,
)
from schemas.events import Kind
from schemas.metrics import CHECKS
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
        [RULES, run_rules(tmp_path / "run.rules.yml", time.time())],  # as `dnc up` does
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
    """Per graph title of the rendered page: its lines drawn (SVG paths), error shown, the
    window it shows (Unix seconds) and this run's start mark (its x and the graph's width)."""
    out = {}
    for block in re.split(r'<div class="[^"]*\bdnc-graph\b', dom)[1:]:
        title = html.unescape(re.search(r"<h4>(.*?)</h4>", block, re.S).group(1))  # type: ignore[union-attr]
        lines = re.findall(r'<path[^>]*\bd="M[^"]*L[^"]*"', block)
        error = re.search(r'class="prom_graph_error"[^>]*>([^<]*)<', block)
        shown = re.search(r'^[^>]*data-shown-from="(\d+)"[^>]*data-shown-until="(\d+)"', block)
        mark = re.search(r'class="dnc-run-start"[^>]*left: (\d+)px', block)
        earlier = re.search(r'class="dnc-earlier-run"[^>]*width: (\d+)px', block)
        width = re.search(r'<svg[^>]*\bwidth="(\d+)"', block)
        out[title] = {
            "lines": len(lines),
            "error": error.group(1) if error else None,
            "shown": (int(shown.group(1)), int(shown.group(2))) if shown else None,
            "mark": int(mark.group(1)) if mark else None,
            "earlier": int(earlier.group(1)) if earlier else None,
            "width": int(width.group(1)) if width else None,
        }
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
        assert found["shown"][1] - found["shown"][0] == 60, (title, found)  # the range asked
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


@pytest.mark.timeout(240)
def test_a_new_run_opens_on_15_minutes_with_its_start_marked_and_the_earlier_run_shaded(
    tmp_path: Path,
) -> None:
    """Two `dnc up` runs on one data directory (one TSDB): the second run's page opens on the
    last 15 minutes, says when this run started and marks it on the graph, the first run's
    series left of the mark, shaded; its "now" table no longer counts the first run's process
    (another port here: another series)."""
    data = tmp_path / "prometheus"  # what `dnc up` keeps in DATA_DIR/prometheus
    starts = []
    for run in range(2):
        starts.append(time.time())
        # Each run's dialer (this process's dnc_checks_total) on a port of its own.
        dialer, _thread = start_http_server(0, addr="127.0.0.1")
        config = local_prometheus_config(
            {"dnc-demo": [f"127.0.0.1:{dialer.server_port}"]},
            [run_rules(tmp_path / "run.rules.yml", starts[-1])],
            scrape_interval="1s",
        )
        # Three scrapes, as `dnc up` (PROMETHEUS_LOOKBACK, scraping every 5 s).
        prometheus = start_prometheus(data, config, lookback_delta="3s")
        client = httpx.Client(base_url=f"http://127.0.0.1:{prometheus.port}", timeout=10)
        try:
            # A few scrapes of checks (a rate needs two): counted, not timed (a loaded
            # machine may scrape less often than asked).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                CHECKS.labels(outcome="callable").inc()
                time.sleep(1)
                mine = f'instance="127.0.0.1:{dialer.server_port}"'
                seen = query(client, f"max(count_over_time(dnc_checks_total{{{mine}}}[1m]))")
                if seen and float(seen[0]["value"][1]) >= 5:
                    break
            started = query(client, "max(dnc_run_started_timestamp_seconds)")
            assert started and abs(float(started[0]["value"][1]) - starts[-1]) < 0.01, started
            if run == 1:
                page = f"http://127.0.0.1:{prometheus.port}{OPS_PAGE}"  # no range asked
                dumped = chromium("--dump-dom", page)
        finally:
            client.close()
            prometheus.stop()
            dialer.shutdown()
            dialer.server_close()
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    (tmp_path / "ops-page.html").write_text(dumped.stdout)

    graphs = graphs_in(dumped.stdout)
    assert graphs and all(g["shown"] is not None for g in graphs.values()), graphs
    for title, graph in graphs.items():  # every graph: the last 15 minutes
        assert graph["shown"][1] - graph["shown"][0] == 900, (title, graph)
    (checks,) = [g for t, g in graphs.items() if t.startswith("Dialer checks per second")]
    assert checks["lines"] >= 1 and checks["mark"] is not None, checks
    # The mark is at the second run's start (1 px is about 1.4 s of the 15 minutes), not the
    # first's; everything left of it, the first run's checks included, is shaded.
    frm, until = checks["shown"]
    expected = checks["width"] * (starts[1] - frm) / (until - frm)
    assert abs(checks["mark"] - expected) <= 2, (checks, starts)
    assert checks["earlier"] == checks["mark"]
    assert checks["mark"] - checks["width"] * (starts[0] - frm) / (until - frm) >= 3, checks
    # A graph with no series draws no mark (nothing to tell apart).
    empty = [g for g in graphs.values() if g["error"] == "No timeseries returned"]
    assert empty and all(g["mark"] is None for g in empty)
    now = dumped.stdout.split('id="dnc-now"')[1].split("</table>")[0]
    started = re.search(r'id="dnc-run-started">([^<]*)</td>', now)
    assert started and re.fullmatch(r"\d+(\.\d+)?s ago", started.group(1)), now
    assert re.search(r"Processes scraped</td>\s*<td>1 / 1 up</td>", now), now
