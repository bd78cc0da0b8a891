"""Apply the numbered files in migrations/ in order, each once, each in its own transaction.

A file is SQL (`NNNN_name.sql`) or, for data that SQL cannot compute the way the app does,
Python (`NNNN_name.py`) defining `upgrade(cursor)`, which runs its statements on the psycopg2
cursor of the migration's transaction and raises MigrationError to refuse with a sentence.
Each file runs in a transaction that first takes a transaction-level advisory lock and then
checks whether the file is already recorded, so two hosts deploying at once apply every file
exactly once, and nothing outlives a transaction (PgBouncer transaction mode is fine).
A recorded file whose content changed since is refused: write a new migration instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2.extensions

from .models.database import execute_query, fetch_one, transaction

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed number; every deploy of this app contends for the same one.
LOCK_ID = 7_261_942_017
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")
KINDS = (".sql", ".py")


class MigrationError(RuntimeError):
    """A migration file is misnamed, or was edited after it was applied."""


@dataclass(frozen=True)
class Migration:
    """One numbered file: SQL, or Python with an upgrade(cursor) function."""

    version: str
    name: str
    text: str
    kind: str = "sql"

    @property
    def checksum(self) -> str:
        """Return the sha256 of the file's text."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def filename(self) -> str:
        """Return the file's name."""
        return f"{self.version}_{self.name}.{self.kind}"

    def apply(self, cur: psycopg2.extensions.cursor) -> None:
        """Run the file on `cur`, inside the migration's transaction.

        Raises MigrationError when a Python file has no upgrade(cursor) function.
        """
        if self.kind == "sql":
            cur.execute(self.text)
            return
        namespace: dict[str, Any] = {"__name__": f"rentals_migration_{self.version}"}
        # The very text whose checksum is recorded, not whatever the file holds by now.
        exec(compile(self.text, self.filename, "exec"), namespace)  # noqa: S102 (our own migration file)
        upgrade = namespace.get("upgrade")
        if not callable(upgrade):
            raise MigrationError(f"migration {self.filename} must define upgrade(cursor)")
        upgrade(cur)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migrations in version order; raise MigrationError on a bad name or a duplicate version."""
    migrations: dict[str, Migration] = {}
    for path in sorted(p for p in directory.iterdir() if p.suffix in KINDS):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} must be named NNNN_lowercase_words.sql (or .py)")
        version, name, kind = match.groups()
        if version in migrations:
            raise MigrationError(f"migrations {migrations[version].name} and {name} share version {version}")
        migrations[version] = Migration(version, name, path.read_text(), kind)
    return [migrations[v] for v in sorted(migrations)]


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def upgrade(directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet recorded; return the versions applied (empty: up to date).

    Must run inside an app context. Raises MigrationError on an edited applied file, and the
    database's own error (the transaction rolled back) when a file fails.
    """
    applied = []
    migrations = discover(directory)
    for migration in migrations:
        with transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
            # Migrations may build indexes on big tables; no per-statement limit here.
            cur.execute("SET LOCAL statement_timeout = 0")
            cur.execute("SET LOCAL lock_timeout = 0")
            cur.execute(_CREATE_TABLE)
            cur.execute("SELECT checksum FROM schema_migrations WHERE version = %s", (migration.version,))
            row = fetch_one(cur)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            logger.info("applying migration %s_%s", migration.version, migration.name)
            migration.apply(cur)
            cur.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        applied.append(migration.version)
    _warn_about_unknown_versions({m.version for m in migrations})
    return applied


def _warn_about_unknown_versions(known: set[str]) -> None:
    # Not an error: an older release may run against a database a newer one migrated.
    recorded = {row["version"] for row in execute_query("SELECT version FROM schema_migrations")}
    for version in sorted(recorded - known):
        logger.warning("migration %s is recorded in the database but has no file here", version)


def status(directory: Path = MIGRATIONS_DIR) -> list[dict[str, object]]:
    """Return each migration with whether and when it was applied."""
    exists = execute_query("SELECT 1 FROM pg_tables WHERE tablename = 'schema_migrations'")
    recorded = {}
    if exists:
        recorded = {r["version"]: r for r in execute_query("SELECT version, applied_at FROM schema_migrations")}
    return [
        {
            "version": m.version,
            "name": m.name,
            "applied_at": recorded[m.version]["applied_at"] if m.version in recorded else None,
        }
        for m in discover(directory)
    ]
