"""The ledger CLI as a user runs it: real processes against the test database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal as D
from pathlib import Path

import asyncpg
import pytest

from activities.ledger import DepositInput, OpenAccountInput
from core.db import drop_database, ensure_database, migrate
from tests.conftest import OWNER_ROLE, SERVER_DSN, owner_url, privileged
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

ORDERSAGA = str(Path(sys.executable).with_name("ordersaga"))


def env_for(database_url: str) -> dict[str, str]:
    """The CLI's environment: the application role's URL, and for `db migrate` the owner's and
    the admin's (the test server's superuser)."""
    return {
        **os.environ,
        "ORDERSAGA_DATABASE_URL": database_url,
        "ORDERSAGA_DATABASE_OWNER_URL": owner_url(database_url),
        "ORDERSAGA_DATABASE_ADMIN_URL": SERVER_DSN,
    }


async def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        ORDERSAGA,
        *args,
        env=env_for(database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def show(database_url: str, account: str) -> dict[str, object]:
    done = await cli(database_url, "account", "show", account, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def new_account(database_url: str, deposit: str = "100.00") -> str:
    account = f"cli-{uuid.uuid4().hex[:10]}"
    assert (await cli(database_url, "account", "open", account)).returncode == 0
    done = await cli(database_url, "account", "deposit", account, deposit)
    assert done.returncode == 0, done.stderr
    return account


async def test_open_deposit_withdraw_show(database_url: str) -> None:
    account = await new_account(database_url, "100.50")
    done = await cli(database_url, "account", "withdraw", account, "0.50")
    assert done.returncode == 0 and "available 100.00 USD" in done.stdout
    done = await cli(database_url, "account", "deposit", account, "2.5", "--asset", "AAPL")
    assert done.returncode == 0, done.stderr
    shown = await show(database_url, account)
    assert shown["balances"] == [
        {
            "asset": "USD",
            "available": "100.00",
            "held": "0.00",
            "version": 2,
            "settled": "100.00",
            "unsettled": "0.00",
            "settles_on": None,
        },
        {"asset": "AAPL", "available": "2.500000000", "held": "0.000000000", "version": 1},
    ]
    human = await cli(database_url, "account", "show", account)
    assert "AVAILABLE" in human.stdout and "100.00" in human.stdout
    assert "SETTLED" in human.stdout and "UNSETTLED" in human.stdout


async def test_idempotency_key_makes_a_repeated_deposit_apply_once(
    database_url: str, db_pool: asyncpg.Pool
) -> None:
    account = await open_direct(db_pool, "1.00")
    key = f"k-{uuid.uuid4()}"
    runs = await asyncio.gather(
        *(
            cli(database_url, "account", "deposit", account, "5", "--idempotency-key", key)
            for _ in range(2)
        )
    )
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert runs[0].stdout == runs[1].stdout
    balances = await LedgerUnderTest(db_pool).get_balances(account)
    assert balances.of("USD").available == D("6.00")


BAD_INPUTS = [
    ["deposit", "{a}", "--", "-5"],
    ["deposit", "{a}", "0"],
    ["deposit", "{a}", "NaN"],
    ["deposit", "{a}", "1e400"],
    ["deposit", "{a}", "abc"],
    ["deposit", "{a}", "1.001"],
    ["deposit", "{a}", "1.0000000001", "--asset", "AAPL"],
    ["deposit", "nobody-{a}", "5"],
    ["withdraw", "{a}", "1000"],
    ["show", "nobody-{a}"],
]


async def test_bad_input_is_one_line_and_changes_nothing(
    database_url: str, db_pool: asyncpg.Pool
) -> None:
    account = await shared_account(db_pool)
    before = await snapshot(db_pool)
    results = await asyncio.gather(
        *(cli(database_url, "account", *[a.format(a=account) for a in args]) for args in BAD_INPUTS)
    )
    for args, done in zip(BAD_INPUTS, results, strict=True):
        assert done.returncode != 0, args
        assert done.stdout == "", args
        assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr, args
    assert await snapshot(db_pool) == before


_SHARED: list[str] = []


async def open_direct(pool: asyncpg.Pool, cash: str) -> str:
    """Set-up through the library (CLI processes are slow to start; they are the subject)."""
    ledger = LedgerUnderTest(pool)
    account = f"cli-{uuid.uuid4().hex[:10]}"
    await ledger.open_account(OpenAccountInput(account_id=account))
    await ledger.deposit(DepositInput(account_id=account, amount=D(cash), idempotency_key=account))
    return account


async def shared_account(pool: asyncpg.Pool) -> str:
    """One funded account for the refusal cases (each case changes nothing)."""
    if not _SHARED:
        _SHARED.append(await open_direct(pool, "100"))
    return _SHARED[0]


async def snapshot(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    """Every balance and the journal's size: what a refused command must leave alone."""
    rows = await pool.fetch(
        "SELECT owner, asset, available, held, version FROM ledger_accounts ORDER BY id"
    )
    entries = await pool.fetchval("SELECT count(*) FROM journal_entries")
    return [tuple(r) for r in rows] + [("entries", entries)]


async def test_concurrent_deposits_from_many_processes_lose_none(
    database_url: str, db_pool: asyncpg.Pool
) -> None:
    account = await open_direct(db_pool, "0.01")
    results = await asyncio.gather(
        *(cli(database_url, "account", "deposit", account, "1.25") for _ in range(8))
    )
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    balances = await LedgerUnderTest(db_pool).get_balances(account)
    assert balances.of("USD").available == D("10.01")


async def test_ledger_check_passes_then_fails_on_a_violation(database_url: str) -> None:
    # a scratch database of its own: the planted violation must not leak into other tests
    scratch = database_url.rsplit("/", 1)[0] + f"/ordersaga_test_clicheck_{uuid.uuid4().hex[:8]}"
    try:
        assert (await cli(scratch, "db", "migrate", "--init-roles")).returncode == 0
        await new_account(scratch)
        ok = await cli(scratch, "ledger", "check", "--json")
        assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
        conn = await asyncpg.connect(scratch)
        try:  # the application role may update balances (the CAS), so it can plant this one
            await conn.execute("UPDATE ledger_accounts SET available = 1 WHERE owner = '$fees'")
        finally:
            await conn.close()
        bad = await cli(scratch, "ledger", "check", "--json")
        assert bad.returncode == 1
        assert json.loads(bad.stdout)["conservation"] == [{"asset": "USD", "total": "1.000000000"}]
        human = await cli(scratch, "ledger", "check")
        assert human.returncode == 1 and "not conserved" in human.stdout
    finally:
        await drop_database(privileged(scratch))


async def test_account_commands_need_a_migrated_database(database_url: str) -> None:
    """Migrating is ``ordersaga db migrate`` (or ``dev up``), never a side effect of a command."""
    scratch = database_url.rsplit("/", 1)[0] + f"/ordersaga_test_unmigrated_{uuid.uuid4().hex[:8]}"
    try:
        for args in (["account", "show", "x"], ["ledger", "check"]):
            missing = await cli(scratch, *args)  # the database does not exist yet
            assert missing.returncode != 0 and missing.stdout == ""
            assert missing.stderr.strip().splitlines() == [
                "Error: the ledger database is not migrated: run `ordersaga db migrate`"
            ]
        # the owner alone cannot create it: creating roles and databases is --init-roles' job
        refused = await cli(scratch, "db", "migrate")
        assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
        assert "ordersaga db migrate --init-roles" in refused.stderr
        # created (by an older, single-role setup) but empty: still refused, and left empty
        await ensure_database(privileged(scratch))
        empty = await cli(scratch, "account", "open", "x")
        assert empty.returncode != 0 and len(empty.stderr.strip().splitlines()) == 1
        assert "ordersaga db migrate" in empty.stderr
        conn = await asyncpg.connect(privileged(scratch))
        try:
            assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
        finally:
            await conn.close()
        migrated = await cli(scratch, "db", "migrate", "--init-roles")
        assert migrated.returncode == 0, migrated.stderr
        assert (await cli(scratch, "account", "open", "x")).returncode == 0
        assert (await cli(scratch, "db", "migrate")).stdout == "schema is up to date\n"
    finally:
        await drop_database(privileged(scratch))


async def test_a_database_from_before_the_roles_is_handed_to_the_owner(database_url: str) -> None:
    """Upgrading: a database migrated by the superuser (one role for everything, as before) is
    refused by the owner alone, and `--init-roles` hands it over; the application role works."""
    scratch = database_url.rsplit("/", 1)[0] + f"/ordersaga_test_legacy_{uuid.uuid4().hex[:8]}"
    try:
        await ensure_database(privileged(scratch))
        await migrate(privileged(scratch))
        refused = await cli(scratch, "db", "migrate")
        assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
        assert "ordersaga db migrate --init-roles" in refused.stderr
        migrated = await cli(scratch, "db", "migrate", "--init-roles")
        assert migrated.returncode == 0 and migrated.stdout == "schema is up to date\n"
        await new_account(scratch)
        conn = await asyncpg.connect(privileged(scratch))
        try:
            owners = await conn.fetch(
                "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class"
                " WHERE relnamespace = 'public'::regnamespace"
            )
            assert [r["owner"] for r in owners] == [OWNER_ROLE]
        finally:
            await conn.close()
    finally:
        await drop_database(privileged(scratch))
