"""Every PromQL expression of the Grafana dashboards and the alert rules, ready to run.

Tests send them to a real Prometheus, so a typo in a dashboard or a rule is a failure, not an
empty panel nobody notices. Grafana variables are replaced by concrete values (the widest
selection: every tenant), the way Grafana would with the default time range.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Grafana's built-in interval variables, replaced as Grafana would for a short range.
BUILTIN_VALUES = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m"}
# Dashboard template variables: "All" (a regex matching every value).
TEMPLATE_VALUES = {"tenant": ".*"}
# $name, ${name} and ${name:format} (Grafana's variable syntaxes).
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
# A template variable that holds a regex must be matched with =~ (or !~).
_REGEX_MATCHER = re.compile(r'[=!]~\s*"[^"]*$')


class DashboardQueryError(ValueError):
    """A dashboard query uses a variable that cannot be turned into PromQL."""


def substitute(expr: str) -> str:
    """``expr`` with every Grafana variable replaced by concrete PromQL."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTIN_VALUES:
            return BUILTIN_VALUES[name]
        if name in TEMPLATE_VALUES:
            if not _REGEX_MATCHER.search(expr[: match.start()]):
                raise DashboardQueryError(f"${name} must be used with =~ or !~ in: {expr}")
            return TEMPLATE_VALUES[name]
        raise DashboardQueryError(f"unknown Grafana variable ${name} in: {expr}")

    return _VARIABLE.sub(replace, expr)


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs(path: str | Path) -> list[str]:
    """Every panel target's ``expr`` of the dashboard JSON at ``path``, as concrete PromQL."""
    dashboard = json.loads(Path(path).read_text())
    exprs = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                exprs.append(substitute(target["expr"]))
    return exprs


def rule_exprs(path: str | Path) -> list[str]:
    """Every alerting and recording rule's ``expr`` of the Prometheus rule file at ``path``."""
    import yaml  # a test dependency (pyyaml), not needed by the pipeline itself

    document = yaml.safe_load(Path(path).read_text())
    return [
        str(rule["expr"]).strip()
        for group in document.get("groups", [])
        for rule in group.get("rules", [])
    ]
