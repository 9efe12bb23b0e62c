"""The application role can do the saga's DML and nothing more, on the real Postgres.

Every process but `ordersaga db migrate` connects as the application role (docs/DEPLOY.md,
"Postgres roles"). Here that role tries each statement that would get past the ledger's rules
(DDL, TRUNCATE, `session_replication_role`, rewriting the journal, triggers and functions) and
each must be refused for lack of privilege, with nothing in the database changed. The journal is
append-only by privilege, not only by its triggers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal as D

import asyncpg
import pytest
import pytest_asyncio

from activities.ledger import DepositInput, OpenAccountInput
from core.db import APP_PRIVILEGES, migrate
from tests.conftest import APP_ROLE, OWNER_ROLE, owner_url, privileged, scratch_database
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

JOURNAL = ("journal_entries", "journal_lines")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def forbidden_statements() -> list[str]:
    """What the application role must never be able to run."""
    statements = [
        "CREATE TABLE probe (v int)",
        "CREATE TEMP TABLE probe (v int)",
        "CREATE SCHEMA probe",
        "CREATE VIEW probe AS SELECT 1",
        "DROP TABLE orders",
        "DROP TABLE journal_lines",
        "ALTER TABLE ledger_accounts DROP CONSTRAINT customer_never_negative",
        "ALTER TABLE holds ADD COLUMN probe int",
        "ALTER TABLE journal_entries DISABLE TRIGGER journal_entries_immutable",
        "CREATE INDEX probe ON orders (reason)",
        "SET session_replication_role = replica",
        "SET LOCAL session_replication_role = replica",
        "UPDATE journal_entries SET code = 'deposit'",
        "UPDATE journal_lines SET amount = amount * 2",
        "DELETE FROM journal_entries",
        "DELETE FROM journal_lines",
        "CREATE FUNCTION probe() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
        "CREATE TRIGGER probe BEFORE INSERT ON journal_lines"
        " FOR EACH ROW EXECUTE FUNCTION journal_is_immutable()",
        "DROP TRIGGER journal_lines_immutable ON journal_lines",
        "DROP FUNCTION journal_is_immutable() CASCADE",
        "CREATE ROLE probe SUPERUSER",
        f"ALTER ROLE {APP_ROLE} SUPERUSER",
        f"GRANT {OWNER_ROLE} TO {APP_ROLE}",
        "UPDATE schema_migrations SET version = version",
        "INSERT INTO schema_migrations (version, name) VALUES (9999, 'probe')",
        # the trading state's log is append-only, and its one row cannot be doubled
        "UPDATE trading_state_log SET reason = 'probe'",
        "INSERT INTO trading_state (id, state, reason, changed_by)"
        " VALUES (1, 'ACTIVE', 'probe', 'probe')",
        # a lot settles after its trade date, and its rules stay the migration's
        "ALTER TABLE unsettled_lots DROP CONSTRAINT lot_settles_after_trade",
    ]
    statements += [f"TRUNCATE {table}" for table in sorted(APP_PRIVILEGES)]
    statements += [f"DELETE FROM {table}" for table in sorted(APP_PRIVILEGES)]
    return list(dict.fromkeys(statements))


# A fingerprint of everything the statements above could change: the schema (tables, columns,
# constraints, triggers and whether they fire, functions, owners and grants), every table's rows,
# and the roles' attributes.
FINGERPRINT = """
SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM (
  SELECT format('%s %s %s %s', c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl)
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT format('%s.%s %s', a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
   WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT format('%s %s', conname, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT format('%s %s %s', tgrelid::regclass, tgname, tgenabled)
    FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL
  SELECT format('%s %s', oid::regprocedure, pg_get_userbyid(proowner))
    FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL
  SELECT format('%s %s %s %s %s', rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls)
    FROM pg_roles WHERE rolname IN ($1, $2, 'probe')
  UNION ALL
  SELECT nspname FROM pg_namespace WHERE nspname = 'probe'
) AS s(x)
"""


async def fingerprint(admin: asyncpg.Connection) -> str:
    parts = [str(await admin.fetchval(FINGERPRINT, APP_ROLE, OWNER_ROLE))]
    for row in await admin.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    ):
        table = row["tablename"]
        rows = await admin.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
            f' FROM "{table}" AS t'
        )
        parts.append(f"{table}={rows}")
    return "\n".join(parts)


async def not_refused(app: asyncpg.Connection) -> list[str]:
    """The forbidden statements the application role got through (each tried in a transaction
    that is rolled back), and any refused for another reason than a missing privilege."""
    through = []
    for statement in forbidden_statements():
        tx = app.transaction()
        await tx.start()
        try:
            await app.execute(statement)
            through.append(statement)
        except asyncpg.InsufficientPrivilegeError:
            pass
        except asyncpg.PostgresError as exc:
            through.append(f"{statement}: refused, but {type(exc).__name__}: {exc}")
        finally:
            await tx.rollback()
    return through


@pytest_asyncio.fixture(loop_scope="session")
async def roles_db() -> AsyncIterator[tuple[str, asyncpg.Connection, asyncpg.Connection]]:
    """A migrated database with some ledger rows (written as the application role), a
    connection as the application role and one as the superuser."""
    async with scratch_database("roles") as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        assert pool is not None
        ledger = LedgerUnderTest(pool)
        await ledger.open_account(OpenAccountInput(account_id="r1"))
        await ledger.deposit(DepositInput(account_id="r1", amount=D(100), idempotency_key="d1"))
        await pool.close()
        app = await asyncpg.connect(url)
        admin = await asyncpg.connect(privileged(url))
        try:
            yield url, app, admin
        finally:
            await app.close()
            await admin.close()


async def test_the_application_role_is_not_privileged(
    roles_db: tuple[str, asyncpg.Connection, asyncpg.Connection],
) -> None:
    _, app, admin = roles_db
    assert await app.fetchval("SELECT current_user") == APP_ROLE
    for role in (APP_ROLE, OWNER_ROLE):
        row = await admin.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication"
            " FROM pg_roles WHERE rolname = $1",
            role,
        )
        assert row is not None and not any(row.values()), (role, dict(row or {}))
    assert not await app.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')")
    assert not await app.fetchval("SELECT has_database_privilege(current_database(), 'TEMPORARY')")
    assert not await app.fetchval("SELECT has_schema_privilege('public', 'CREATE')")
    # the tables belong to the owner, so no grant of the application role's can be widened by it
    owners = await admin.fetch(
        "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class"
        " WHERE relnamespace = 'public'::regnamespace"
    )
    assert [r["owner"] for r in owners] == [OWNER_ROLE]


async def test_every_table_has_exactly_its_listed_privileges(
    roles_db: tuple[str, asyncpg.Connection, asyncpg.Connection],
) -> None:
    _, app, admin = roles_db
    tables = [
        r["tablename"]
        for r in await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    # A table a migration adds must be listed (with what the code needs, possibly nothing).
    assert sorted(tables) == sorted(APP_PRIVILEGES)
    for table in tables:
        held = {
            p
            for p in TABLE_PRIVILEGES
            if await app.fetchval("SELECT has_table_privilege($1, $2)", table, p)
        }
        assert held == set(APP_PRIVILEGES[table]), table
    for table in (*JOURNAL, "trading_state_log"):
        assert set(APP_PRIVILEGES[table]) == {"SELECT", "INSERT"}


async def test_each_forbidden_statement_is_refused_and_changes_nothing(
    roles_db: tuple[str, asyncpg.Connection, asyncpg.Connection],
) -> None:
    _, app, admin = roles_db
    before = await fingerprint(admin)
    assert await admin.fetchval("SELECT count(*) FROM journal_lines") > 0
    assert await not_refused(app) == []
    # CREATE DATABASE cannot run in a transaction: tried on its own
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.execute("CREATE DATABASE ordersaga_role_probe")
    assert await fingerprint(admin) == before
    assert not await admin.fetchval(
        "SELECT 1 FROM pg_database WHERE datname = 'ordersaga_role_probe'"
    )


async def test_a_privilege_granted_behind_migrate_is_caught_then_taken_back(
    roles_db: tuple[str, asyncpg.Connection, asyncpg.Connection],
) -> None:
    """The check can fail: grant what the role must not have and watch it report it; the next
    `db migrate` sets the grants back to the list."""
    url, app, admin = roles_db
    await admin.execute(f"GRANT TRUNCATE, DELETE ON journal_lines TO {APP_ROLE}")
    try:
        # TRUNCATE gets past the journal's row triggers; only the privilege stops it
        assert sorted(await not_refused(app)) == [
            "DELETE FROM journal_lines: refused, but RaiseError:"
            " journal rows are immutable (DELETE on journal_lines)",
            "TRUNCATE journal_lines",
        ]
    finally:
        await migrate(owner_url(url), app_role=APP_ROLE)
    assert await not_refused(app) == []
