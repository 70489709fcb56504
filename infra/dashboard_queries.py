"""Every PromQL expression of the Grafana dashboards, the ops console page and the alert rules,
ready to run.

Tests send them to a real Prometheus, so a typo in a dashboard or a rule is a failure, not an
empty panel nobody notices. Grafana variables are replaced by concrete values (the widest
selection: every tenant), the way Grafana would with the default time range.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
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


# A console template's server-side query: `query` with a raw (backquoted) Go string.
_CONSOLE_QUERY = re.compile(r"\bquery\s+`([^`]*)`")
# Any other use of `query` (a quoted or computed expression) could not be checked.
_CONSOLE_ANY_QUERY = re.compile(r"\bquery\b(?!\s+`)")


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
    """Every panel target's and annotation's ``expr`` of the dashboard JSON at ``path``, as
    concrete PromQL."""
    dashboard = json.loads(Path(path).read_text())
    exprs = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                exprs.append(substitute(target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            exprs.append(substitute(annotation["expr"]))
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


class _ConsoleGraphs(HTMLParser):
    """Collects the text of every ``<code class="dnc-expr">`` (one graph expression each)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.exprs: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "code" and "dnc-expr" in classes:
            self._inside = True
            self.exprs.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "code":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.exprs[-1] += data


def console_exprs(path: str | Path) -> list[str]:
    """Every PromQL expression of the console template at ``path``: its graphs' expressions
    (``<code class="dnc-expr">``, drawn in the browser) and its tables' ``query `...```
    (evaluated by Prometheus when it renders the page).

    Raises :class:`DashboardQueryError` for a ``query`` this cannot read (a quoted or a
    computed expression), so no expression of the page escapes the tests.
    """
    text = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", Path(path).read_text(), flags=re.S)
    actions = re.findall(r"\{\{.*?\}\}", text, flags=re.S)
    unread = [a for a in actions if _CONSOLE_ANY_QUERY.search(a)]
    if unread:
        raise DashboardQueryError(f"write queries as query `...` (a raw string): {unread[0]}")
    graphs = _ConsoleGraphs()
    graphs.feed(text)
    tables = [q for a in actions for q in _CONSOLE_QUERY.findall(a)]
    return [" ".join(e.split()) for e in graphs.exprs + tables]
