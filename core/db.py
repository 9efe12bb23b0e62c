"""Postgres: connection pools and the forward-only migration runner.

Migrations are ``migrations/NNNN_name.sql``, applied in order, each in its own transaction and
recorded in ``schema_migrations`` so a second run is a no-op. A transaction-level advisory lock
keeps two processes migrating at once from racing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATE_LOCK_ID = 0x0_5A6A  # any constant; shared by every migrating process


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise ValueError(f"migration file name must look like 0001_name.sql: {path.name}")
        found.append(Migration(int(m.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {directory}")
    return found


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    applied: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for mig in load_migrations(directory):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_ID)
                done = await conn.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = $1", mig.version
                )
                if done:
                    continue
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    mig.version,
                    mig.name,
                )
                applied.append(mig.name)
    finally:
        await conn.close()
    return applied


async def pending_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """The migrations not yet applied to the DSN's database (all of them on a new database);
    raises asyncpg's InvalidCatalogNameError when the database does not exist."""
    conn = await asyncpg.connect(dsn)
    try:
        table = await conn.fetchval("SELECT to_regclass('schema_migrations')")
        done = (
            {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            if table is not None
            else set()
        )
    finally:
        await conn.close()
    return [m.name for m in load_migrations(directory) if m.version not in done]


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """The pool every process uses, with a release that costs no round trip.

    asyncpg's default release runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every connection it takes back: one more round trip per ledger operation. Our
    code leaves no session state behind (advisory locks are transaction-scoped, no SET, LISTEN or
    cursor outlives its transaction), so the pool only does what asyncpg always does before a
    custom reset: roll back a transaction left open (a cancelled activity) and drop listeners.
    """
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, reset=_no_session_state
    )
    assert pool is not None
    return pool


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """Nothing to reset: see ``create_pool``."""


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/") or "postgres"


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database if it does not exist; True when it was created."""
    name = database_name(dsn)
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        await admin.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await admin.close()


async def drop_database(dsn: str) -> None:
    name = database_name(dsn)
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
