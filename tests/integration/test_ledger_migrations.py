"""The ledger's migrations on a database that already holds data: rows written before a
migration keep meaning what they meant.

Each test migrates a scratch database up to a version, writes rows the way the code of that time
did (plain SQL: today's code writes the new way), applies the rest, and drives today's ledger.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal as D
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from activities.ledger import (
    DepositInput,
    OpenAccountInput,
    PostFillInput,
    ReserveInput,
    VoidInput,
)
from activities.ledger.store import args_hash
from core.db import (
    MIGRATIONS_DIR,
    drop_database,
    ensure_database,
    load_migrations,
    migrate,
    with_database,
)
from tests.conftest import SERVER_DSN, unique_name
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


class Scratch:
    """A scratch database migrated part of the way, with a connection to write old rows;
    ``finish`` applies the remaining migrations and hands back today's ledger over it."""

    def __init__(self, dsn: str, conn: asyncpg.Connection) -> None:
        self.dsn, self.conn = dsn, conn
        self.pool: asyncpg.Pool | None = None

    async def finish(self) -> LedgerUnderTest:
        assert await migrate(self.dsn), "the test meant to migrate over existing rows"
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=3)
        assert self.pool is not None
        return LedgerUnderTest(self.pool)


@asynccontextmanager
async def migrated_before(version: int, directory: Path) -> AsyncIterator[Scratch]:
    """A scratch database with the migrations numbered below ``version`` applied."""
    for mig in load_migrations():
        if mig.version < version:
            shutil.copy(MIGRATIONS_DIR / f"{mig.name}.sql", directory)
    dsn = with_database(SERVER_DSN, unique_name("migrate"))
    await ensure_database(dsn)
    await migrate(dsn, directory)
    scratch = Scratch(dsn, await asyncpg.connect(dsn))
    try:
        yield scratch
    finally:
        await scratch.conn.close()
        if scratch.pool is not None:
            await scratch.pool.close()
        await drop_database(dsn)


@pytest_asyncio.fixture(loop_scope="session")
async def before_0003(tmp_path: Path) -> AsyncIterator[Scratch]:
    """A database at migration 0002 (before keys were per operation)."""
    async with migrated_before(3, tmp_path) as scratch:
        yield scratch


async def old_operation(
    conn: asyncpg.Connection, key: str, operation: str, args: dict[str, object], result: dict
) -> None:
    """An idempotency record as the code before 0003 wrote it (key unique on its own)."""
    await conn.execute(
        "INSERT INTO ledger_operations (key, operation, args_hash, result) VALUES ($1, $2, $3, $4)",
        key,
        operation,
        args_hash(operation, args),
        json.dumps(result),
    )


async def test_operations_recorded_before_0003_still_replay(before_0003: Scratch) -> None:
    """A void recorded before the migration (its order's workflow still retrying it) returns
    its first result; a deposit that took the key ``a/o2:void`` back then still replays as that
    deposit, and no longer blocks the order's void."""
    conn = before_0003.conn
    await conn.execute("INSERT INTO customers (account_id) VALUES ('a')")
    # o1: reserved 10.00 and voided before the migration; the void's answer was lost
    await conn.execute(
        "INSERT INTO ledger_accounts (owner, kind, asset, available) VALUES ('a', 'customer',"
        " 'USD', 0)"
    )
    row_id = await conn.fetchval("SELECT id FROM ledger_accounts WHERE owner = 'a'")
    await conn.execute(
        "INSERT INTO holds (order_id, owner, ledger_account_id, asset, amount, held_remaining,"
        " side, symbol, status) VALUES ('a/o1', 'a', $1, 'USD', 10, 0, 'buy', 'AAPL', 'voided')",
        row_id,
    )
    first_void = {"order_id": "a/o1", "found": True, "released": "10.00", "asset": "USD"}
    await old_operation(conn, "a/o1:void", "void", {"order_id": "a/o1"}, first_void)
    # the attack, stored before the migration: a deposit keyed like o2's void
    entry = await conn.fetchval(
        "INSERT INTO journal_entries (idempotency_key, code) VALUES ('a/o2:void', 'deposit')"
        " RETURNING id"
    )
    first_deposit = {
        "account_id": "a",
        "asset": "USD",
        "amount": "5.00",
        "available_after": "5.00",
        "entry_id": entry,
    }
    deposit_args = {"account_id": "a", "asset": "USD", "amount": D("5.00")}
    await old_operation(conn, "a/o2:void", "deposit", deposit_args, first_deposit)

    ledger = await before_0003.finish()

    void_o1 = await ledger.void_funds(VoidInput(order_key="a/o1", idempotency_key="a/o1:void"))
    assert void_o1.found and void_o1.released == D("10.00")  # the first result, not 0
    replayed = await ledger.deposit(
        DepositInput(account_id="a", amount=D(5), idempotency_key="a/o2:void")
    )
    assert replayed.entry_id == entry and replayed.available_after == D("5.00")

    await ledger.open_account(OpenAccountInput(account_id="a"))
    await ledger.deposit(DepositInput(account_id="a", amount=D(20), idempotency_key="fund"))
    await ledger.reserve_funds(
        ReserveInput(
            account_id="a",
            order_key="a/o2",
            asset="USD",
            amount=D("9.92"),
            fence=1,
            idempotency_key="a/o2:reserve",
            side="buy",
            symbol="AAPL",
        )
    )
    void_o2 = await ledger.void_funds(VoidInput(order_key="a/o2", idempotency_key="a/o2:void"))
    assert void_o2.found and void_o2.released == D("9.92")
    codes = await ledger.pool.fetch(
        "SELECT code FROM journal_entries WHERE idempotency_key = 'a/o2:void' ORDER BY id"
    )
    assert [r["code"] for r in codes] == ["deposit", "void"]


@pytest_asyncio.fixture(loop_scope="session")
async def before_0005(tmp_path: Path) -> AsyncIterator[Scratch]:
    """A database before migration 0005 (holds without their order's bounds)."""
    async with migrated_before(5, tmp_path) as scratch:
        yield scratch


async def test_a_hold_made_before_0005_has_no_bounds_and_still_posts(before_0005: Scratch) -> None:
    conn = before_0005.conn
    await conn.execute("INSERT INTO customers (account_id) VALUES ('a')")
    row_id = await conn.fetchval(
        "INSERT INTO ledger_accounts (owner, kind, asset, held) VALUES ('a', 'customer', 'USD',"
        " 500) RETURNING id"
    )
    await conn.execute(
        "INSERT INTO holds (order_id, owner, ledger_account_id, asset, amount, held_remaining,"
        " side, symbol, posted_qty, posted_notional, posted_cash)"
        " VALUES ('a/o1', 'a', $1, 'USD', 600, 500, 'buy', 'AAPL', 1, 100, 100)",
        row_id,
    )
    ledger = await before_0005.finish()
    bounds = await ledger.pool.fetchrow("SELECT qty, limit_price FROM holds")
    assert (bounds["qty"], bounds["limit_price"]) == (None, None)
    fill = PostFillInput(order_key="a/o1", cum_qty=D(5), cum_notional=D(400))
    assert (await ledger.post_fill(fill)).applied  # within the hold; no order bounds known
    assert await ledger.pool.fetchval("SELECT held_remaining FROM holds") == D(200)


@pytest_asyncio.fixture(loop_scope="session")
async def before_0006(tmp_path: Path) -> AsyncIterator[Scratch]:
    """A database at migration 0005 (transfer keys not yet scoped by account)."""
    async with migrated_before(6, tmp_path) as scratch:
        yield scratch


async def test_a_transfer_recorded_before_0006_replays_and_its_key_is_free_for_others(
    before_0006: Scratch,
) -> None:
    """A deposit made before the migration, retried after it with the same key, returns its
    first result and books nothing twice; another account may now use the same key."""
    conn = before_0006.conn
    await conn.execute("INSERT INTO customers (account_id) VALUES ('a'), ('b')")
    entry = await conn.fetchval(
        "INSERT INTO journal_entries (idempotency_key, code) VALUES ('dep-1', 'deposit')"
        " RETURNING id"
    )
    first = {
        "account_id": "a",
        "asset": "USD",
        "amount": "5.00",
        "available_after": "5.00",
        "entry_id": entry,
    }
    await old_operation(
        conn, "dep-1", "deposit", {"account_id": "a", "asset": "USD", "amount": D("5.00")}, first
    )

    ledger = await before_0006.finish()

    replayed = await ledger.deposit(
        DepositInput(account_id="a", amount=D(5), idempotency_key="dep-1")
    )
    assert replayed.entry_id == entry and replayed.available_after == D("5.00")
    await ledger.open_account(OpenAccountInput(account_id="b"))
    other = await ledger.deposit(DepositInput(account_id="b", amount=D(7), idempotency_key="dep-1"))
    assert other.entry_id != entry and other.available_after == D("7.00")
    entries = await ledger.pool.fetchval(
        "SELECT count(*) FROM journal_entries WHERE code = 'deposit'"
    )
    assert entries == 2  # a's first deposit, b's; a's retry booked nothing
