"""Settlement in the ledger on Postgres (activities/ledger/settlement.py): a sell's fills book
unsettled lots with their posting (once each, however often a fill is reported), a withdrawal
takes only settled cash and changes nothing when refused, a buy spends settled cash first, the
settlement page settles each due lot once (two runs at once included), and ``check_ledger``
finds a lot that does not match its fill."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal as D

import asyncpg
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError

from activities.ledger import (
    DepositInput,
    OpenAccountInput,
    PostFillInput,
    ReserveInput,
    VoidInput,
    WithdrawInput,
    check_ledger,
)
from activities.ledger.settlement import SettleDueInput, settle_page, settlement_date
from core import errors
from core.calendar import NEW_YORK
from core.db import drop_database, ensure_database, migrate, with_database
from tests.conftest import SERVER_DSN, unique_name
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


@pytest_asyncio.fixture(loop_scope="session")
async def ledger() -> AsyncIterator[LedgerUnderTest]:
    """A migrated database of its own: account 'a' with 10 settled dollars and 3 AAPL sold in
    two fills (proceeds 99 + 199, unsettled)."""
    dsn = with_database(SERVER_DSN, unique_name("settle"))
    await ensure_database(dsn)
    await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    led = LedgerUnderTest(pool)
    await led.open_account(OpenAccountInput(account_id="a"))
    await led.deposit(DepositInput(account_id="a", amount=D(10), idempotency_key="d"))
    await led.deposit(DepositInput(account_id="a", asset="AAPL", amount=D(3), idempotency_key="s"))
    await sell(led, "a/s1", D(3))
    await led.post_fill(PostFillInput(order_key="a/s1", cum_qty=1, cum_notional=100, cum_fee=1))
    await led.post_fill(PostFillInput(order_key="a/s1", cum_qty=3, cum_notional=300, cum_fee=2))
    yield led
    await pool.close()
    await drop_database(dsn)


async def sell(led: LedgerUnderTest, key: str, qty: D) -> None:
    await led.reserve_funds(
        ReserveInput(
            account_id="a",
            order_key=key,
            asset="AAPL",
            amount=qty,
            fence=1,
            idempotency_key=f"{key}:reserve",
            side="sell",
            symbol="AAPL",
        )
    )


def today() -> datetime:
    return datetime.now(NEW_YORK)


async def withdraw(led: LedgerUnderTest, amount: str, key: str) -> None:
    await led.withdraw(WithdrawInput(account_id="a", amount=D(amount), idempotency_key=key))


async def test_fills_book_lots_once_and_a_withdrawal_takes_only_settled_cash(
    ledger: LedgerUnderTest,
) -> None:
    # the same cumulative fill reported again books nothing more
    await ledger.post_fill(PostFillInput(order_key="a/s1", cum_qty=3, cum_notional=300, cum_fee=2))
    lots = await ledger.pool.fetch("SELECT amount, trade_date, settles_on FROM unsettled_lots")
    trade = today().date()
    assert [tuple(r) for r in lots] == [
        (D(99), trade, settlement_date(trade)),
        (D(199), trade, settlement_date(trade)),
    ]
    before = await ledger.get_balances("a")
    usd = before.of("USD")
    assert (usd.available, usd.unsettled, usd.settled) == (D(308), D(298), D(10))
    with pytest.raises(ApplicationError) as refused:
        await withdraw(ledger, "10.01", "w1")
    assert refused.value.type == errors.INSUFFICIENT_FUNDS
    assert "withdrawable 10.00, requested 10.01" in str(refused.value)
    assert await ledger.get_balances("a") == before  # nothing changed
    await withdraw(ledger, "10", "w2")  # the settled dollars may leave
    assert (await ledger.get_balances("a")).of("USD").available == D(298)


async def test_a_buy_spends_settled_cash_first(ledger: LedgerUnderTest) -> None:
    await ledger.reserve_funds(
        ReserveInput(
            account_id="a",
            order_key="a/b1",
            asset="USD",
            amount=D(250),
            fence=2,
            idempotency_key="a/b1:reserve",
            side="buy",
            symbol="AAPL",
        )
    )
    usd = (await ledger.get_balances("a")).of("USD")
    assert (usd.available, usd.settled, usd.unsettled) == (D(58), D(0), D(58))
    with pytest.raises(ApplicationError, match=r"withdrawable 0\.00"):
        await withdraw(ledger, "0.01", "w3")
    await ledger.void_funds(VoidInput(order_key="a/b1", idempotency_key="a/b1:void"))
    usd = (await ledger.get_balances("a")).of("USD")
    assert (usd.available, usd.settled, usd.unsettled) == (D(308), D(10), D(298))


async def test_the_job_settles_each_due_lot_once(ledger: LedgerUnderTest) -> None:
    trade = today().date()
    settles = settlement_date(trade)
    before = await settle_page(ledger.pool, SettleDueInput(as_of=settles - timedelta(days=1)))
    assert before.settled == 0
    # two runs at once, one lot a page: each lot is settled by exactly one of them
    runs = await asyncio.gather(
        *(settle_page(ledger.pool, SettleDueInput(as_of=settles, limit=1)) for _ in range(2))
    )
    rest = await settle_page(ledger.pool, SettleDueInput(as_of=settles))
    assert sum(r.settled for r in runs) + rest.settled == 2
    again = await settle_page(ledger.pool, SettleDueInput(as_of=settles))
    assert (again.seen, again.settled) == (0, 0)
    assert (
        await ledger.pool.fetchval(
            "SELECT count(*) FROM unsettled_lots"
            " WHERE settled AND version = 1 AND settled_for = $1",
            settles,
        )
        == 2
    )
    usd = (await ledger.get_balances("a")).of("USD")
    assert (usd.settled, usd.unsettled) == (D(308), D(0))
    await withdraw(ledger, "308", "w4")
    report = await check_ledger(ledger.pool)
    assert report.ok, report.violations()


async def test_a_lot_that_does_not_match_its_fill_is_found(ledger: LedgerUnderTest) -> None:
    assert (await check_ledger(ledger.pool)).ok
    await ledger.pool.execute("UPDATE unsettled_lots SET amount = amount + 1 WHERE amount = 99")
    report = await check_ledger(ledger.pool)
    assert not report.ok
    assert [(lot.amount, lot.credited) for lot in report.lots_astray] == [(D(100), D(99))]
    assert "does not match its post entry" in report.violations()[0]
