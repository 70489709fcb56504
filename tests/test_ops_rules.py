"""Alert rules, their unit tests, the compose Prometheus config and the Grafana dashboard.

promtool (Debian's prometheus package, installed by `bash infra/setup.sh`) checks and
unit-tests the rules offline; a missing promtool is a failure, never a skip. The dashboard's
queries are run against a real Prometheus elsewhere (infra.dashboard_queries gives them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.dashboard_queries import (
    DashboardQueryError,
    console_exprs,
    dashboard_exprs,
    iter_panels,
    rule_exprs,
    substitute,
)

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "dnc-propagation.json"
CONSOLE = PROMETHEUS_DIR / "consoles" / "dnc.html"
# What the ops page (Prometheus console) shows: the graphs ops watch (issue 13).
CONSOLE_METRICS = {
    "dnc_propagation_seconds",
    "dnc_reference_list_pending",
    "dnc_reference_list_oldest_pending_seconds",
    "dnc_consumer_lag",
    "dnc_dead_letters_total",
    "dnc_checks_total",
    "dnc_check_reasons_total",
    "dnc_events_total",
    "dnc_view_staleness_seconds",
    "dnc_view_ready",
}
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

EXPECTED_ALERTS = {
    "DncPropagationP99High",
    "DncReferenceListBacklogTooOld",
    "DncDeadLettersGrowing",
    "DncChecksFailingClosed",
    "DncWorkerHeartbeatMissing",
    "DncConsumerLagGrowing",
    "DncReferenceListSinkErrors",
    "DncServiceDown",
    "DncViewMembersMissing",
}
# Metrics the dashboard must show (the ops view of the whole pipeline).
DASHBOARD_METRICS = {
    "dnc_propagation_seconds_bucket",
    "dnc_reference_list_pending",
    "dnc_reference_list_oldest_pending_seconds",
    "dnc_consumer_lag",
    "dnc_events_total",
    "dnc_dead_letters_total",
    "dnc_reference_list_delivered_total",
    "dnc_reference_list_errors_total",
    "dnc_checks_total",
    "dnc_check_reasons_total",
    "dnc_gateway_checks_total",
    "dnc_check_seconds_bucket",
    "dnc_suppressed_numbers",
    "dnc_worker_heartbeat_timestamp_seconds",
    "dnc_view_ready",
    "ALERTS",
}
# Metrics used outside the catalogue (schemas/metrics.py), with the file that defines them.
EXTRA_METRICS = {
    "dnc_demo_calls_total": ROOT / "dnc" / "demo.py",
    # Recorded by the rule `dnc up` writes: when the run started (marked on the ops page).
    "dnc_run_started_timestamp_seconds": ROOT / "infra" / "prometheus_service.py",
}


def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        pytest.fail(
            "promtool not found: run `bash infra/setup.sh` (installs Debian's prometheus "
            "package, which ships promtool)"
        )
    return found


def run_promtool(*args: str | Path) -> str:
    done = subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def catalogue_metrics() -> set[str]:
    """Metric names declared in schemas/metrics.py (and the few extras)."""
    names = set(re.findall(r'\(\s*"(dnc_[a-z0-9_]+)"', (ROOT / "schemas/metrics.py").read_text()))
    for name, source in EXTRA_METRICS.items():
        assert f'"{name}"' in source.read_text(), f"{name} is no longer defined in {source}"
        names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """dnc_* metric names an expression reads (histogram series mapped to their family)."""
    return {
        re.sub(r"_(bucket|count|sum)$", "", name) for name in re.findall(r"\bdnc_[a-z0-9_]+", expr)
    }


def balanced(expr: str) -> bool:
    """Brackets balanced and string literals closed (a cheap offline syntax check)."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for char in expr:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack and quote is None


# --- Alert rules -------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", ALERTS)


def test_alert_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", ALERTS_TEST)


def test_every_alert_is_there_with_severity_runbook_and_duration() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [g["name"] for g in groups] == ["dnc"]
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert "for" in rule, f"{name}: say how long the condition must hold (for: 0s at least)"
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        # A runbook hint: what it means, and what to do first.
        assert "First:" in annotations["description"], name
        assert len(annotations["description"]) > 200, name
    thresholds = {
        r["labels"].get("objective"): r["expr"]
        for r in rules
        if r["alert"] == "DncPropagationP99High"
    }
    assert thresholds == {
        "5s": 'dnc:propagation_seconds:p99_5m{stage="suppression_view"} > 5',
        "60s": 'dnc:propagation_seconds:p99_5m{stage="reference_list"} > 60',
    }


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
            for alert in case.get("exp_alerts") or []:
                assert alert["exp_annotations"]["summary"], case["alertname"]
                assert alert["exp_annotations"]["description"], case["alertname"]
                assert alert["exp_labels"]["severity"], case["alertname"]
    assert firing == EXPECTED_ALERTS, f"no firing test for {EXPECTED_ALERTS - firing}"
    assert quiet == EXPECTED_ALERTS, f"no quiet test for {EXPECTED_ALERTS - quiet}"


def test_rules_read_only_catalogued_metrics_and_scrape_jobs() -> None:
    known = catalogue_metrics()
    jobs = {
        j["job_name"]
        for j in yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    }
    for expr in rule_exprs(ALERTS):
        assert balanced(expr), expr
        assert metric_names(expr) <= known, f"not in schemas/metrics.py: {expr}"
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, expr
        for pattern in re.findall(r'job=~"([^"]+)"', expr):
            assert all(j in jobs for j in pattern.split("|")), expr


# --- Prometheus configuration --------------------------------------------------------------


@pytest.mark.parametrize("name", ["prometheus", "prometheus-cluster"])
def test_compose_prometheus_config_is_valid_where_compose_mounts_it(
    tmp_path: Path, name: str
) -> None:
    """Lay the mounted files out as in the container, then `promtool check config` there."""
    service = COMPOSE["services"][name]
    for entry in service["volumes"]:
        source, target = str(entry).split(":")[:2]
        if not source.startswith("."):
            continue  # a named volume (the TSDB)
        destination = tmp_path / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, destination)
    config_path = tmp_path / "etc" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"], "the compose Prometheus must load the alert rules"
    if any(Path(p).is_absolute() for p in config["rule_files"]):
        # Absolute paths point into the container: re-root them in the temporary layout.
        config["rule_files"] = [
            str(tmp_path / p.lstrip("/")) if Path(p).is_absolute() else p
            for p in config["rule_files"]
        ]
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    output = run_promtool("check", "config", config_path)
    assert "SUCCESS" in output
    assert "rules found" in output  # the rule file was found and read, not just listed


# --- Grafana dashboard ---------------------------------------------------------------------


def test_dashboard_panels_query_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "dnc-propagation"
    panels = [p for p in iter_panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels
    assert {p["type"] for p in panels} <= {"timeseries", "stat", "table", "bargauge", "gauge"}
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
        targets = [t for t in panel.get("targets", []) if t.get("expr", "").strip()]
        assert targets, f"{title}: no query"
        assert len({t["refId"] for t in targets}) == len(targets), title
        for target in targets:
            assert target.get("datasource", panel["datasource"])["uid"] == "prometheus", title
            assert balanced(target["expr"]), f"{title}: {target['expr']}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, title
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "tenant"
    assert variable["datasource"]["uid"] == "prometheus"
    assert variable["includeAll"] is True


def test_dashboard_opens_on_15_minutes_and_marks_each_process_start() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["time"] == {"from": "now-15m", "to": "now"}
    (started,) = [a for a in dashboard["annotations"]["list"] if a.get("expr")]
    assert started["enable"] is True
    assert started["datasource"] == {"type": "prometheus", "uid": "prometheus"}
    # One mark per start: true for under a minute after it, sampled once a minute.
    assert started["expr"] == 'time() - process_start_time_seconds{job=~"dnc-.*"} < 60'
    assert started["step"] == "60s"
    assert started["expr"] in dashboard_exprs(DASHBOARD)  # sent to a live Prometheus too


def test_dashboard_shows_the_pipeline_from_catalogued_metrics() -> None:
    exprs = dashboard_exprs(DASHBOARD)
    text = "\n".join(exprs)
    for metric in DASHBOARD_METRICS:
        assert re.search(rf"\b{metric}\b", text), f"the dashboard does not show {metric}"
    assert 'stage="suppression_view"' in text
    assert 'stage="reference_list"' in text
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(dnc_propagation" in text
    known = catalogue_metrics()
    for expr in exprs:
        assert "$" not in expr, expr
        assert balanced(expr), expr
        assert metric_names(expr) <= known, f"not in schemas/metrics.py: {expr}"
    raw = [
        t["expr"]
        for p in iter_panels(json.loads(DASHBOARD.read_text())["panels"])
        for t in p.get("targets", [])
    ]
    assert any("$__rate_interval" in e for e in raw)
    assert not any(re.search(r"rate\([^)]*\[\d+[smh]\]", e) for e in raw), (
        "use $__rate_interval in dashboard rates"
    )


def test_dashboard_queries_substitute_grafana_variables() -> None:
    assert substitute("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert substitute("increase(x[$__range]) / $__interval") == "increase(x[5m]) / 1m"
    assert substitute('x{tenant=~"$tenant"}') == 'x{tenant=~".*"}'
    assert substitute('x{tenant=~"${tenant}|_global"}') == 'x{tenant=~".*|_global"}'
    assert substitute('x{tenant!~"${tenant:regex}"}') == 'x{tenant!~".*"}'
    with pytest.raises(DashboardQueryError, match="=~"):
        substitute('x{tenant="$tenant"}')
    with pytest.raises(DashboardQueryError, match="unknown"):
        substitute('x{campaign=~"$campaign"}')


def test_rule_exprs_reads_every_rule() -> None:
    exprs = rule_exprs(ALERTS)
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert len(exprs) == sum(len(g["rules"]) for g in groups)
    assert any(e.startswith("histogram_quantile(0.99,") for e in exprs)


def test_the_ops_page_shows_the_graphs_ops_watch_from_catalogued_metrics() -> None:
    exprs = console_exprs(CONSOLE)
    text = "\n".join(exprs)
    shown = set().union(*map(metric_names, exprs))
    assert shown >= CONSOLE_METRICS, f"the ops page does not show {CONSOLE_METRICS - shown}"
    for stage in ("suppression_view", "reference_list"):
        for quantile in ("0.5", "0.99"):
            assert (
                f"histogram_quantile({quantile}, sum by (le) (rate(dnc_propagation_seconds_bucket"
                f'{{stage="{stage}"}}' in text
            )
    known = catalogue_metrics()
    for expr in exprs:
        assert balanced(expr), expr
        assert metric_names(expr) <= known, f"not in schemas/metrics.py: {expr}"


def test_console_exprs_reads_graphs_and_table_queries_and_refuses_what_it_cannot(
    tmp_path: Path,
) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "{{/* a comment that says query */}}\n"
        '<div class="dnc-graph"><code class="dnc-expr" data-name="x">'
        "rate(a[1m]) &gt; 0</code></div>\n"
        '<td>{{ with query `sum(b{c="d"})` }}{{ . | first | value }}{{ end }}</td>\n'
    )
    assert console_exprs(page) == ["rate(a[1m]) > 0", 'sum(b{c="d"})']
    page.write_text('<td>{{ with query "sum(b)" }}{{ . }}{{ end }}</td>')
    with pytest.raises(DashboardQueryError, match="raw string"):
        console_exprs(page)
    page.write_text('<td>{{ with printf "sum(%s)" .x | query }}{{ . }}{{ end }}</td>')
    with pytest.raises(DashboardQueryError, match="raw string"):
        console_exprs(page)
