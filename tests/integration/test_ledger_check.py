"""check_ledger finds each kind of violation planted in a throwaway database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal as D

import asyncpg
import pytest
import pytest_asyncio

from activities.ledger import (
    DepositInput,
    LedgerReport,
    OpenAccountInput,
    OrderRecord,
    ReserveInput,
    check_ledger,
)
from core.db import drop_database, ensure_database, migrate, with_database
from tests.conftest import SERVER_DSN, unique_name
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


async def reserve_limit_buy(
    ledger: LedgerUnderTest, order_id: str, *, hold_key: str, limit: D, fence: int
) -> None:
    """Hold ``limit`` USD of account 'a' for a 1-share limit buy, with its orders row."""
    order = OrderRecord(
        account_id="a",
        order_id=order_id,
        workflow_id=f"order/a/{order_id}",
        symbol="AAPL",
        side="buy",
        order_type="limit",
        time_in_force="gtc",
        qty=D(1),
        limit_price=limit,
        params_hash=f"h-{order_id}",
    )
    await ledger.reserve_funds(
        ReserveInput(
            account_id="a",
            order_key=hold_key,
            asset="USD",
            amount=limit,
            fence=fence,
            idempotency_key=f"{hold_key}:reserve",
            side="buy",
            symbol="AAPL",
            order=order,
        )
    )


@pytest_asyncio.fixture(loop_scope="session")
async def scratch() -> AsyncIterator[asyncpg.Pool]:
    """A migrated database of its own, holding one funded account 'a' with an open buy hold."""
    dsn = with_database(SERVER_DSN, unique_name("check"))
    await ensure_database(dsn)
    await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    assert pool is not None
    ledger = LedgerUnderTest(pool)
    await ledger.open_account(OpenAccountInput(account_id="a"))
    await ledger.deposit(DepositInput(account_id="a", amount=D(100), idempotency_key="d"))
    await reserve_limit_buy(ledger, "o1", hold_key="a/o1", limit=D(10), fence=1)
    yield pool
    await pool.close()
    await drop_database(dsn)


async def only_violation(pool: asyncpg.Pool) -> LedgerReport:
    report = await check_ledger(pool)
    assert not report.ok
    assert report.violations()
    return report


async def test_a_clean_ledger_passes_and_lists_open_holds(scratch: asyncpg.Pool) -> None:
    report = await check_ledger(scratch)
    assert report.ok, report.violations()
    assert [h.order_id for h in report.open_holds] == ["a/o1"]


async def test_unbalanced_entry_is_found(scratch: asyncpg.Pool) -> None:
    async with scratch.acquire() as conn, conn.transaction():
        entry = await conn.fetchval(
            "INSERT INTO journal_entries (idempotency_key, code) VALUES ($1, 'deposit')"
            " RETURNING id",
            str(uuid.uuid4()),
        )
        account = await conn.fetchval("SELECT id FROM ledger_accounts WHERE owner = '$fees'")
        await conn.execute(
            "INSERT INTO journal_lines (entry_id, ledger_account_id, asset, bucket, amount)"
            " VALUES ($1, $2, 'USD', 'available', 1)",
            entry,
            account,
        )
    report = await only_violation(scratch)
    assert [(u.entry_id, u.total) for u in report.unbalanced_entries] == [(entry, D(1))]


async def test_unjournaled_balance_change_breaks_conservation(scratch: asyncpg.Pool) -> None:
    await scratch.execute("UPDATE ledger_accounts SET available = 5 WHERE owner = '$fees'")
    report = await only_violation(scratch)
    assert [(t.asset, t.total) for t in report.conservation] == [("USD", D(5))]
    assert [u.owner for u in report.unjournaled_balances] == ["$fees"]


async def test_negative_customer_balance_is_found(scratch: asyncpg.Pool) -> None:
    # the CHECK constraint normally makes this impossible; drop it to plant the violation
    await scratch.execute("ALTER TABLE ledger_accounts DROP CONSTRAINT customer_never_negative")
    await scratch.execute(
        "UPDATE ledger_accounts SET available = -1 WHERE owner = 'a' AND asset = 'USD'"
    )
    report = await only_violation(scratch)
    assert [(n.owner, n.available) for n in report.negative_balances] == [("a", D(-1))]


async def test_hold_without_owner_is_found(scratch: asyncpg.Pool) -> None:
    await scratch.execute(
        "INSERT INTO holds (order_id, owner, ledger_account_id, asset, amount, held_remaining,"
        " side, symbol) SELECT 'ghost', 'a', id, 'USD', 1, 0, 'buy', 'AAPL'"
        " FROM ledger_accounts WHERE owner = 'a' AND asset = 'USD'"
    )
    report = await only_violation(scratch)
    assert [h.order_id for h in report.holds_without_owner] == ["ghost"]


async def test_open_hold_of_a_finished_order_is_found(scratch: asyncpg.Pool) -> None:
    await scratch.execute("UPDATE orders SET status = 'SETTLED' WHERE order_id = 'o1'")
    report = await only_violation(scratch)
    assert [(h.order_id, h.order_status) for h in report.open_holds_of_finished_orders] == [
        ("a/o1", "SETTLED")
    ]


async def test_open_hold_of_a_finished_saga_order_is_found(scratch: asyncpg.Pool) -> None:
    """The saga keys holds by '<account>/<order>' while the orders row has the bare order id."""
    ledger = LedgerUnderTest(scratch)
    await reserve_limit_buy(ledger, "o2", hold_key="a/o2", limit=D(5), fence=2)
    assert (await check_ledger(scratch)).ok
    await scratch.execute("UPDATE orders SET status = 'CANCELED' WHERE order_id = 'o2'")
    report = await only_violation(scratch)
    assert [(h.order_id, h.order_status) for h in report.open_holds_of_finished_orders] == [
        ("a/o2", "CANCELED")
    ]
