"""Apply the PostgreSQL migrations the project ships (``infra/postgres/migrations/*.sql``).

Each file runs once, in name order, in its own transaction, recorded in
``dnc_schema_migrations``; an advisory lock lets several `dnc sync` processes start at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "postgres" / "migrations"
_LOCK_ID = 0x646E63  # "dnc"

log = logging.getLogger(__name__)


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The shipped migrations, in the order they apply."""
    return sorted(directory.glob("*.sql"))


def apply_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Bring the database at ``dsn`` up to date; returns the names applied now."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS dnc_schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM dnc_schema_migrations")}
            for path in migration_files(directory):
                if path.name in done:
                    continue
                log.info("applying migration %s", path.name)
                with conn.transaction():
                    conn.execute(path.read_text(encoding="utf-8").encode())
                    conn.execute(
                        "INSERT INTO dnc_schema_migrations (name) VALUES (%s)", (path.name,)
                    )
                applied_now.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now
