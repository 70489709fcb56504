"""Bulk import of a CSV of numbers: validate every row, publish the valid ones, report the rest.

A row that cannot be read as one number (more cells than the header, several values in one
cell, a cell over the csv module's size limit) is a rejected row with its reason, like an
invalid number: the rest of the file is still imported. Only a file that is not UTF-8 stops
the import, before anything is published.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from producers.publisher import OppositionPublisher, Receipt
from schemas.errors import DncError, InvalidEventError, PublishError
from schemas.events import Kind, OppositionEvent, Scope, Source, describe_validation_error
from schemas.phone import MAX_PHONE_INPUT
from schemas.topics import header_text

# Optional columns a CSV with a header may carry (``phone`` is required).
OPTIONAL_COLUMNS = ("campaign_id", "kind", "scope", "reason_code", "agent_id", "occurred_at")
# In a phone cell these mean several values (";" would otherwise be read by phonenumbers as
# the start of RFC 3966 parameters, keeping the first number and dropping the rest).
_SEPARATORS = (";", ",", "|", "\t")
_LAYOUT_HINT = "one number per line, or a comma-separated file with a 'phone' header"


class ImportFileError(DncError):
    """The file as a whole cannot be imported (it is not UTF-8 text)."""


@dataclass(frozen=True)
class CsvRow:
    """One row of the file: its fields, or why it cannot be read as one number."""

    line: int
    fields: dict[str, str]
    problem: str | None = None


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


def read_rows(path: Path) -> Iterator[CsvRow]:
    """Every row of a CSV with a ``phone`` header, or of one number per line.

    Raises :class:`ImportFileError` when the file is not UTF-8; any problem with one row is
    that row's ``problem``.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            yield from _rows(handle)
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"{path} is not UTF-8 text (byte {exc.start} of a read block: {exc.reason}): "
            "save it as UTF-8 CSV"
        ) from None


def _rows(handle: Any) -> Iterator[CsvRow]:
    first = handle.readline()
    handle.seek(0)
    try:
        first_cells = next(csv.reader([first]), [])
    except csv.Error:
        first_cells = []
    header: list[str] | None = None
    reader = csv.reader(handle)
    if "phone" in [c.strip().lower() for c in first_cells]:
        header = [c.strip().lower() for c in next(reader)]
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a cell over csv's field size limit (128 KiB)
            yield CsvRow(reader.line_num, {}, f"unreadable CSV row: {exc}")
            continue
        if not cells or not any(c.strip() for c in cells):
            continue
        yield _row(reader.line_num, [c.strip() for c in cells], header)


def _row(line: int, cells: list[str], header: list[str] | None) -> CsvRow:
    if header is None:
        filled = [c for c in cells if c]
        fields = {"phone": filled[0]}
        if len(filled) > 1:
            return CsvRow(line, fields, f"{len(filled)} values on one line: {_LAYOUT_HINT}")
    else:
        fields = dict(zip(header, cells, strict=False))
        if len(cells) > len(header) and any(cells[len(header) :]):
            return CsvRow(
                line,
                fields,
                f"{len(cells)} cells where the header has {len(header)}: quote values that "
                "contain a comma",
            )
    phone = fields.get("phone", "")
    separator = next((s for s in _SEPARATORS if s in phone), None)
    if separator is not None:
        return CsvRow(
            line,
            fields,
            f"several values in the phone cell (separated by {separator!r}): {_LAYOUT_HINT}",
        )
    return CsvRow(line, fields)


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


def consent_event(
    row: dict[str, str], tenant: str, campaign: str | None, source: str | None
) -> OppositionEvent:
    """A consent grant for one row of a consent platform's or a CRM's export: ``phone``,
    ``proof_ref`` (required), ``source`` (or the command's), ``captured_at``, ``expires_at``,
    ``campaign_id`` (or the command's), ``wording_version``, ``recorded_by``."""
    campaign_id = row.get("campaign_id") or campaign
    fields: dict[str, Any] = {
        "tenant": tenant,
        "phone": row.get("phone", ""),
        "kind": Kind.CONSENT,
        "scope": Scope.CAMPAIGN if campaign_id else Scope.TENANT,
        "source": Source.BULK_IMPORT,
        "consent_source": row.get("source") or source,
        "proof_ref": row.get("proof_ref") or None,
    }
    if campaign_id:
        fields["campaign_id"] = campaign_id
    if row.get("captured_at"):
        fields["occurred_at"] = row["captured_at"]
    for name in ("expires_at", "wording_version", "recorded_by"):
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
    build: Callable[[dict[str, str]], OppositionEvent] | None = None,
) -> ImportReport:
    """Validate and publish every row of ``path``; rows go out in pipelined batches.

    ``build``: the event of a row (default: an opposition of ``kind`` by :func:`build_event`;
    :func:`consent_event` for `dnc consent import`)."""
    make = build or (lambda row: build_event(row, tenant, kind, scope, campaign))
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

    for row in read_rows(path):
        # As shown in the report: one line, no longer than a phone number may be.
        line, phone = row.line, header_text(row.fields.get("phone", ""), MAX_PHONE_INPUT)
        if row.problem is not None:
            report.rejected.append(RejectedRow(line, phone, row.problem))
            if on_progress is not None:
                on_progress(1)
            continue
        try:
            event = make(row.fields)
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
