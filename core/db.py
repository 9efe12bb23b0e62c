"""Postgres: connection pools, the roles, and the forward-only migration runner.

Migrations are ``migrations/NNNN_name.sql``, applied in order, each in its own transaction and
recorded in ``schema_migrations`` so a second run is a no-op. A transaction-level advisory lock
keeps two processes migrating at once from racing.

Two roles (docs/DEPLOY.md, "Postgres roles"): the owner, which owns the schema and runs the
migrations, and the application role, which every other process connects as and which may run
only the DML of :data:`APP_PRIVILEGES`. ``init_roles`` creates both (it needs a role that may
create roles and databases); ``migrate`` re-applies the application role's grants after the
migrations, so they always match this file.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from core.errors import UserError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATE_LOCK_ID = 0x0_5A6A  # any constant; shared by every migrating process

# What the application role may do, table by table: the statements the code runs and nothing
# more (no DELETE anywhere: nothing is ever deleted). The journal is append-only by privilege,
# not only by its triggers. A table missing here gets no privilege at all, and
# tests/integration/test_db_roles.py fails until it is listed. Sequences: USAGE on those owned by
# a column of a table the role inserts into. ``migrate`` applies this after every run.
APP_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "customers": ("SELECT", "INSERT", "UPDATE"),
    "ledger_accounts": ("SELECT", "INSERT", "UPDATE"),
    "holds": ("SELECT", "INSERT", "UPDATE"),
    "hold_tombstones": ("SELECT", "INSERT"),
    "journal_entries": ("SELECT", "INSERT"),
    "journal_lines": ("SELECT", "INSERT"),
    "error_positions": ("SELECT", "INSERT", "UPDATE"),
    "ledger_operations": ("SELECT", "INSERT"),
    "orders": ("SELECT", "INSERT", "UPDATE"),
    # the reconciler's state; `breaks resolve` is an UPDATE too: a break is never deleted
    "reconcile_breaks": ("SELECT", "INSERT", "UPDATE"),
    "reconcile_watermarks": ("SELECT", "INSERT", "UPDATE"),
    "reconcile_followed": ("SELECT", "INSERT", "UPDATE"),
    # pre-trade risk (migrations/0009): overrides are cleared by an UPDATE to NULLs; the trading
    # state's one row is changed, never inserted (the migration made it), its log only appended
    "risk_limits": ("SELECT", "INSERT", "UPDATE"),
    "risk_usage": ("SELECT", "INSERT", "UPDATE"),
    "trading_state": ("SELECT", "UPDATE"),
    "trading_state_log": ("SELECT", "INSERT"),
    # settlement (migrations/0014): a sale's lot is inserted with its fill, settled by UPDATE
    "unsettled_lots": ("SELECT", "INSERT", "UPDATE"),
    "schema_migrations": ("SELECT",),  # commands check the schema is current before they run
}


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


async def migrate(
    dsn: str, directory: Path = MIGRATIONS_DIR, app_role: str | None = None
) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date).

    ``dsn`` connects as the schema's owner; with ``app_role`` the application role's privileges
    are then set to :data:`APP_PRIVILEGES` (also when nothing was pending)."""
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
        if app_role is not None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_ID)
                await grant_app(conn, app_role)
    finally:
        await conn.close()
    return applied


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_OWNED_SEQUENCES = """
SELECT s.relname AS sequence, t.relname AS owner_table
  FROM pg_class s
  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  JOIN pg_class t ON t.oid = d.refobjid
 WHERE s.relkind = 'S' AND s.relnamespace = 'public'::regnamespace
"""


async def grant_app(conn: asyncpg.Connection, app_role: str) -> None:
    """Give ``app_role`` exactly :data:`APP_PRIVILEGES` on the schema's tables and sequences
    (whatever it had before is revoked first). Run by the tables' owner."""
    if app_role == await conn.fetchval("SELECT current_user"):
        return  # one role for everything (an old single-role setup): nothing to narrow
    role = _ident(app_role)
    tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    for row in tables:
        table = row["tablename"]
        await conn.execute(f"REVOKE ALL ON TABLE {_ident(table)} FROM {role}")
        privileges = APP_PRIVILEGES.get(table, ())
        if privileges:
            await conn.execute(f"GRANT {', '.join(privileges)} ON TABLE {_ident(table)} TO {role}")
    for row in await conn.fetch(_OWNED_SEQUENCES):
        sequence = _ident(row["sequence"])
        await conn.execute(f"REVOKE ALL ON SEQUENCE {sequence} FROM {role}")
        if "INSERT" in APP_PRIVILEGES.get(row["owner_table"], ()):
            await conn.execute(f"GRANT USAGE ON SEQUENCE {sequence} TO {role}")


def role_of(dsn: str) -> str:
    """The role a DSN logs in as (libpq's default: the operating system user)."""
    return urlsplit(dsn).username or getpass.getuser()


def _password_of(dsn: str) -> str | None:
    return urlsplit(dsn).password


async def _ensure_role(admin: asyncpg.Connection, dsn: str) -> None:
    """Create the DSN's role if it is missing, unprivileged; set its password when it has one."""
    name, password = role_of(dsn), _password_of(dsn)
    exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
    if not exists:
        statement = await admin.fetchval(
            "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
            " NOREPLICATION NOBYPASSRLS INHERIT', $1::text)",
            name,
        )
        try:
            await admin.execute(statement)
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            pass  # created meanwhile by another process bootstrapping the same cluster
    if password is not None:
        statement = await admin.fetchval(
            "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", name, password
        )
        await admin.execute(statement)


async def _refuse_privileged(admin: asyncpg.Connection, dsn: str, what: str) -> None:
    """An owner or application role that is a superuser, or may create roles or databases,
    is refused: it would get past what the roles are for."""
    name = role_of(dsn)
    row = await admin.fetchrow(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication"
        " FROM pg_roles WHERE rolname = $1",
        name,
    )
    if row is not None and any(row.values()):
        raise UserError(
            f"the {what} role {name!r} is privileged (superuser, CREATEROLE, CREATEDB, BYPASSRLS"
            " or REPLICATION); give it a role of its own"
        )


async def init_roles(admin_dsn: str, owner_dsn: str, app_dsn: str) -> None:
    """Create the owner and application roles if missing, the database (owned by the owner) if
    missing, and the database-level rights: the application role may connect and use the
    schema, nothing else (no CREATE, no TEMPORARY). Idempotent and safe to run from many
    processes at once; roles are the cluster's, everything else is per database. An existing
    database's objects not owned by the owner (made by an older, single-role setup) are handed
    to it, so the owner can migrate them. ``admin_dsn`` must be allowed to create roles and
    databases (a superuser, or CREATEROLE and CREATEDB)."""
    owner, app, name = role_of(owner_dsn), role_of(app_dsn), database_name(owner_dsn)
    if owner == app:
        raise UserError(f"the owner and the application role are both {owner!r}")
    if database_name(app_dsn) != name:
        raise UserError(
            f"the owner's database {name!r} is not the application's {database_name(app_dsn)!r}"
        )
    admin = await asyncpg.connect(with_database(admin_dsn, "postgres"))
    try:
        for dsn, what in ((owner_dsn, "owner"), (app_dsn, "application")):
            await _refuse_privileged(admin, dsn, what)
            await _ensure_role(admin, dsn)
        await _ensure_owned_database(admin, name, owner)
        db, app_id = _ident(name), _ident(app)
        await admin.execute(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
        await admin.execute(f"GRANT CONNECT ON DATABASE {db} TO {app_id}")
    finally:
        await admin.close()
    target = await asyncpg.connect(with_database(admin_dsn, name))
    try:
        await _adopt_schema(target, owner)
        await target.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await target.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {_ident(owner)}")
        await target.execute(f"GRANT USAGE ON SCHEMA public TO {app_id}")
    finally:
        await target.close()


async def _ensure_owned_database(admin: asyncpg.Connection, name: str, owner: str) -> None:
    current = await admin.fetchval(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", name
    )
    if current is None:
        try:
            await admin.execute(f"CREATE DATABASE {_ident(name)} OWNER {_ident(owner)}")
            return
        except asyncpg.DuplicateDatabaseError:
            pass
    if current != owner:
        await admin.execute(f"ALTER DATABASE {_ident(name)} OWNER TO {_ident(owner)}")


_NOT_OWNERS = """
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
              c.oid::regclass, $1::text)
  FROM pg_class c
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'S')
   AND pg_get_userbyid(c.relowner) <> $1
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')
                   AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass)
UNION ALL
SELECT format('ALTER FUNCTION %s OWNER TO %I', p.oid::regprocedure, $1::text)
  FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace AND pg_get_userbyid(p.proowner) <> $1
"""


async def _adopt_schema(conn: asyncpg.Connection, owner: str) -> None:
    """Hand the public schema's tables, sequences and functions to the owner (a sequence owned
    by a column moves with its table)."""
    for row in await conn.fetch(_NOT_OWNERS, owner):
        await conn.execute(row[0])


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
