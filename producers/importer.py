"""Bulk import of a CSV of numbers: validate every row, publish the valid ones, report the rest."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from producers.publisher import OppositionPublisher, Receipt
from schemas.errors import InvalidEventError, PublishError
from schemas.events import Kind, OppositionEvent, Scope, Source, describe_validation_error

# Optional columns a CSV with a header may carry (``phone`` is required).
OPTIONAL_COLUMNS = ("campaign_id", "kind", "scope", "reason_code", "agent_id", "occurred_at")


@dataclass(frozen=True)
class RejectedRow:
    """A row that was not published, with its line number and why."""

    line: int
    phone: str
    reason: str


@dataclass
class ImportReport:
    """Summary of an import."""

    published: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    failed: list[RejectedRow] = field(default_factory=list)  # valid but not acknowledged

    @property
    def ok(self) -> bool:
        """True when every row was recorded."""
        return not self.rejected and not self.failed


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a CSV with a ``phone`` header, or one number per line."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        first = handle.readline()
        handle.seek(0)
        has_header = "phone" in [c.strip().lower() for c in next(csv.reader([first]), [])]
        if has_header:
            reader = csv.DictReader(handle)
            for row in reader:
                clean = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
                yield reader.line_num, clean
        else:
            for line_no, cells in enumerate(csv.reader(handle), start=1):
                if cells and any(c.strip() for c in cells):
                    yield line_no, {"phone": cells[0].strip()}


def build_event(
    row: dict[str, str], tenant: str, kind: Kind, scope: Scope, campaign: str | None
) -> OppositionEvent:
    """The event for one row; row values override the command's defaults."""
    fields: dict[str, Any] = {
        "tenant": tenant,
        "phone": row.get("phone", ""),
        "kind": row.get("kind") or kind,
        "scope": row.get("scope") or scope,
        "source": Source.BULK_IMPORT,
    }
    campaign_id = row.get("campaign_id") or campaign
    if campaign_id:
        fields["campaign_id"] = campaign_id
    for name in ("reason_code", "agent_id", "occurred_at"):
        if row.get(name):
            fields[name] = row[name]
    return OppositionEvent.record(**fields)


def import_file(
    path: Path,
    publisher: OppositionPublisher,
    *,
    tenant: str,
    kind: Kind = Kind.OPPOSITION,
    scope: Scope = Scope.TENANT,
    campaign: str | None = None,
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Validate and publish every row of ``path``; rows go out in pipelined batches."""
    if kind is Kind.LIFT:
        raise InvalidEventError(
            "unauthorised_lift", "lifts cannot be bulk-imported: use `dnc lift`"
        )
    report = ImportReport()
    pending: list[tuple[int, OppositionEvent, bytes]] = []

    def flush() -> None:
        lines = {id(e): line for line, e, _payload in pending}

        def done(event: OppositionEvent, outcome: Receipt | PublishError) -> None:
            if isinstance(outcome, PublishError):
                report.failed.append(RejectedRow(lines[id(event)], event.phone, str(outcome)))
            else:
                report.published += 1
            if on_progress is not None:
                on_progress(1)

        publisher.publish_prepared([(e, payload) for _line, e, payload in pending], on_done=done)
        pending.clear()

    for line, row in read_rows(path):
        phone = row.get("phone", "")
        try:
            event = build_event(row, tenant, kind, scope, campaign)
            if event.kind is Kind.LIFT:
                raise InvalidEventError("unauthorised_lift", "lifts cannot be bulk-imported")
            event, payload = publisher.prepare(event)
        except ValidationError as exc:
            report.rejected.append(RejectedRow(line, phone, describe_validation_error(exc)))
            if on_progress is not None:
                on_progress(1)
            continue
        except InvalidEventError as exc:
            report.rejected.append(RejectedRow(line, phone, exc.message))
            if on_progress is not None:
                on_progress(1)
            continue
        pending.append((line, event, payload))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return report


def count_rows(path: Path) -> int:
    """Rows in the file (for the progress bar's total)."""
    return sum(1 for _ in read_rows(path))
