"""The live terminal summary of `dnc up --demo`, read from the local Prometheus.

What ops see on the dashboard, in a terminal: events per second, propagation p50/p99 per
stage, changes pending for each reference list, dead letters, calls placed/blocked/held,
and why calls were not allowed (checks' answers by reason code, every checker scraped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import httpx
from rich.table import Table

STAGES = ("suppression_view", "reference_list")
_BY_STAGE = "sum by (le, stage) (rate(dnc_propagation_seconds_bucket[1m]))"
QUERIES = {
    "events_per_second": "sum(rate(dnc_events_total[30s]))",
    "p50": f"histogram_quantile(0.5, {_BY_STAGE})",
    "p99": f"histogram_quantile(0.99, {_BY_STAGE})",
    "pending": "sum by (tenant) (dnc_reference_list_pending)",
    "oldest": "max by (tenant) (dnc_reference_list_oldest_pending_seconds)",
    "dead_letters": "sum by (reason) (dnc_dead_letters_total)",
    "calls": "sum by (outcome) (dnc_demo_calls_total)",
    "reasons": "sum by (reason) (dnc_check_reasons_total)",
    "suppressed": "sum by (tenant) (dnc_suppressed_numbers)",
}


@dataclass
class Snapshot:
    """One reading of the pipeline's vital signs (None: not known yet)."""

    events_per_second: float | None = None
    p50: dict[str, float] = field(default_factory=dict)
    p99: dict[str, float] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)
    dead_letters: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, float] = field(default_factory=dict)
    suppressed: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _vector(client: httpx.Client, query: str, label: str | None) -> dict[str, float]:
    response = client.get("/api/v1/query", params={"query": query})
    response.raise_for_status()
    out: dict[str, float] = {}
    for sample in response.json()["data"]["result"]:
        value = float(sample["value"][1])
        if not math.isnan(value):
            out[sample["metric"].get(label, "") if label else ""] = value
    return out


def read_snapshot(client: httpx.Client) -> Snapshot:
    """Query Prometheus for everything the summary shows."""
    snap = Snapshot()
    try:
        snap.events_per_second = _vector(client, QUERIES["events_per_second"], None).get("")
        snap.p50 = _vector(client, QUERIES["p50"], "stage")
        snap.p99 = _vector(client, QUERIES["p99"], "stage")
        snap.pending = _vector(client, QUERIES["pending"], "tenant")
        snap.oldest = _vector(client, QUERIES["oldest"], "tenant")
        snap.dead_letters = _vector(client, QUERIES["dead_letters"], "reason")
        snap.calls = _vector(client, QUERIES["calls"], "outcome")
        snap.reasons = _vector(client, QUERIES["reasons"], "reason")
        snap.suppressed = _vector(client, QUERIES["suppressed"], "tenant")
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        snap.error = f"Prometheus not answering: {exc}"
    return snap


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def render(snap: Snapshot, prometheus_url: str) -> Table:
    """The summary table."""
    table = Table(title=f"dnc demo (live, from {prometheus_url})", show_header=False, min_width=60)
    table.add_column("what", style="bold")
    table.add_column("value")
    eps = snap.events_per_second
    table.add_row("events/s (worker)", "-" if eps is None else f"{eps:,.1f}")
    for stage in STAGES:
        table.add_row(
            f"propagation {stage}",
            f"p50 {_ms(snap.p50.get(stage))}   p99 {_ms(snap.p99.get(stage))}",
        )
    pending = ", ".join(
        f"{t} {v:,.0f} (oldest {snap.oldest.get(t, 0):.0f}s)"
        for t, v in sorted(snap.pending.items())
    )
    table.add_row("reference list pending", pending or "-")
    table.add_row(
        "suppressed numbers",
        ", ".join(f"{t} {v:,.0f}" for t, v in sorted(snap.suppressed.items())) or "-",
    )
    letters = sum(snap.dead_letters.values())
    reasons = ", ".join(f"{r} {v:,.0f}" for r, v in sorted(snap.dead_letters.items()) if v)
    table.add_row("dead letters", f"{letters:,.0f}" + (f" ({reasons})" if reasons else ""))
    calls = snap.calls
    table.add_row(
        "calls (dialers)",
        f"placed {calls.get('placed', 0):,.0f}   [red]blocked {calls.get('blocked', 0):,.0f}[/]"
        f"   held {calls.get('held', 0):,.0f}",
    )
    by_count = sorted(snap.reasons.items(), key=lambda item: (-item[1], item[0]))
    table.add_row(
        "answers by reason",
        "   ".join(f"{reason} {count:,.0f}" for reason, count in by_count if count) or "-",
    )
    if snap.error:
        table.add_row("[yellow]note[/]", snap.error)
    return table
