"""The PostgreSQL reference list: idempotent upserts that never move a row backwards in time.

The shipped migrations are applied on the first connection (a database that is down at
start is just a backlog). A batch is one transaction (the commit is the acknowledgement), so
it is delivered whole or not at all. Each change replaces the ``reference_list_scope`` row
of its number and scope only if it is newer: ``version`` first (the worker counts the changes
applied to each number and scope, so it orders them whatever the workers' clocks say), then
``changed_at`` (an expiry or a re-emission keeps the version). The tenant's
``reference_list`` row is then derived from the scope rows, and an erasure clears the
contact's personal fields. Schema: ``infra/postgres/migrations``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import psycopg

from consumers.sinks.base import Delivery, Result, Verdict
from infra.migrations import apply_migrations

log = logging.getLogger(__name__)

UPSERT_SCOPE = """
INSERT INTO reference_list_scope AS s (
    tenant, phone_e164, target, scope, campaign_id, suppressed, kind, reason_code,
    source_event_id, occurred_at, expires_at, version, changed_at, updated_at)
VALUES (%(tenant)s, %(phone)s, %(target)s, %(scope)s, %(campaign_id)s, %(suppressed)s,
        %(kind)s, %(reason_code)s, %(source_event_id)s, %(occurred_at)s, %(expires_at)s,
        %(version)s, %(changed_at)s, now())
ON CONFLICT (tenant, phone_e164, target) DO UPDATE SET
    scope = EXCLUDED.scope, campaign_id = EXCLUDED.campaign_id,
    suppressed = EXCLUDED.suppressed, kind = EXCLUDED.kind,
    reason_code = EXCLUDED.reason_code, source_event_id = EXCLUDED.source_event_id,
    occurred_at = EXCLUDED.occurred_at, expires_at = EXCLUDED.expires_at,
    version = EXCLUDED.version, changed_at = EXCLUDED.changed_at, updated_at = now()
WHERE (s.version, s.changed_at) < (EXCLUDED.version, EXCLUDED.changed_at)
"""

# The contact row follows the strongest scope row: a suppressing one first (platform-wide,
# then tenant-wide, then a campaign), else the latest change (a lift, an expiry).
DERIVE_CONTACT = """
INSERT INTO reference_list AS r (
    tenant, phone_e164, do_not_call, kind, scope, campaign_id, reason_code,
    source_event_id, occurred_at, updated_at)
SELECT tenant, phone_e164, suppressed, kind, scope, campaign_id, reason_code,
       source_event_id, occurred_at, now()
FROM reference_list_scope
WHERE tenant = %(tenant)s AND phone_e164 = %(phone)s
ORDER BY suppressed DESC,
         CASE scope WHEN 'global' THEN 0 WHEN 'tenant' THEN 1 ELSE 2 END,
         changed_at DESC
LIMIT 1
ON CONFLICT (tenant, phone_e164) DO UPDATE SET
    do_not_call = EXCLUDED.do_not_call, kind = EXCLUDED.kind, scope = EXCLUDED.scope,
    campaign_id = EXCLUDED.campaign_id, reason_code = EXCLUDED.reason_code,
    source_event_id = EXCLUDED.source_event_id, occurred_at = EXCLUDED.occurred_at,
    updated_at = now()
WHERE (r.do_not_call, r.kind, r.scope, r.campaign_id, r.reason_code, r.source_event_id,
       r.occurred_at)
      IS DISTINCT FROM
      (EXCLUDED.do_not_call, EXCLUDED.kind, EXCLUDED.scope, EXCLUDED.campaign_id,
       EXCLUDED.reason_code, EXCLUDED.source_event_id, EXCLUDED.occurred_at)
"""

# Erasure (GDPR Art. 17): the personal data goes, the do-not-call row stays.
ERASE_CONTACT = """
UPDATE reference_list
SET full_name = NULL, email = NULL, postal_address = NULL, notes = NULL,
    erased_at = coalesce(erased_at, now()), updated_at = now()
WHERE tenant = %(tenant)s AND phone_e164 = %(phone)s
  AND (erased_at IS NULL OR full_name IS NOT NULL OR email IS NOT NULL
       OR postal_address IS NOT NULL OR notes IS NOT NULL)
"""

_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError)
_DATA = (psycopg.DataError, psycopg.IntegrityError)


def _row(delivery: Delivery, tenant: str) -> dict[str, object]:
    c = delivery.change
    return {
        "tenant": tenant,
        "phone": c.phone_e164,
        "target": c.target,
        "scope": c.scope.value,
        "campaign_id": c.campaign_id,
        "suppressed": c.suppressed,
        "kind": c.kind.value if c.kind else None,
        "reason_code": _storable(c.reason_code),
        "source_event_id": c.source_event_id,
        "occurred_at": c.occurred_at,
        "expires_at": c.expires_at,
        "version": c.version,
        "changed_at": c.changed_at,
    }


class PostgresSink:
    """One tenant's reference list in PostgreSQL; reconnects by itself after an outage."""

    name = "postgres"

    def __init__(self, tenant: str, dsn: str, connect_timeout: float = 5.0) -> None:
        self._tenant = tenant
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._migrated = False

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            if not self._migrated:  # the schema, once the database is reachable
                applied = apply_migrations(self._dsn)
                if applied:
                    log.info("tenant %s: reference-list schema: applied %s", self._tenant, applied)
                self._migrated = True
            self._conn = psycopg.connect(
                self._dsn,
                connect_timeout=max(1, int(self._connect_timeout)),
                application_name=f"dnc-sync-{self._tenant}",
            )
        return self._conn

    def _write(self, batch: Sequence[Delivery]) -> None:
        conn = self._connection()
        rows = [_row(d, self._tenant) for d in batch]
        contacts = list({(r["tenant"], r["phone"]): r for r in rows}.values())
        erased = [r for d, r in zip(batch, rows, strict=True) if d.change.erasure_requested]
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(UPSERT_SCOPE, rows)
            cur.executemany(DERIVE_CONTACT, contacts)
            if erased:
                cur.executemany(ERASE_CONTACT, erased)

    def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        """Write the batch in one transaction; on a data error, each change on its own.

        Only a change the database refuses as data (a constraint, a bad value) is rejected;
        any other failure (down, missing table, permissions) holds the backlog: a
        misconfigured reference list must raise alerts, not drain into dead letters.
        """
        try:
            self._write(batch)
            return [Result.delivered()] * len(batch)
        except _TRANSIENT as exc:
            self.close()
            return [Result(Verdict.RETRY, "unavailable", describe_error(exc))] * len(batch)
        except _DATA as exc:
            if len(batch) == 1:
                return [Result(Verdict.REJECTED, "rejected", describe_error(exc))]
            log.warning(
                "tenant %s: batch refused (%s): writing its changes one by one",
                self._tenant,
                describe_error(exc),
            )
        except psycopg.Error as exc:
            return [Result(Verdict.RETRY, "sink_error", describe_error(exc))] * len(batch)
        results: list[Result] = []
        for index, delivery in enumerate(batch):
            outcome = self.deliver([delivery])[0]
            results.append(outcome)
            if outcome.verdict is Verdict.RETRY:  # the database went away: the rest waits
                results.extend([outcome] * (len(batch) - index - 1))
                break
        return results

    def close(self) -> None:
        """Drop the connection (the next delivery opens a new one)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):  # closing a broken connection
                self._conn.close()
            self._conn = None


def _storable(text: str | None) -> str | None:
    """PostgreSQL cannot store a NUL in text. The edges refuse control characters now, but a
    state recorded before keeps its reason on every later change: refused as data, each would
    be dead-lettered, and the number's row would never move again."""
    return None if text is None else text.replace("\x00", "")


def describe_error(exc: BaseException) -> str:
    """One line, without the parameters (they hold phone numbers)."""
    text = str(exc).strip().splitlines()
    sqlstate = getattr(exc, "sqlstate", None)
    head = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}{f' [{sqlstate}]' if sqlstate else ''}: {head}"[:300]
