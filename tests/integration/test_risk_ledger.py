"""Pre-trade risk in the reserve's transaction, on a real database (no Temporal): limits,
overrides, the day's usage under racing reserves, and the trading state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal as D

import asyncpg
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError

from activities.ledger import Ledger, LedgerActivities, OpenAccountInput, ReserveInput
from activities.ledger import risk as store
from core import errors
from core.risk import Overrides, RiskLimits, TradingState
from tests.conftest import scratch_database
from tests.integration.test_ledger import open_funded, refused, retried, usd
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

LIMITS = RiskLimits(
    max_order_notional=D("1000.00"),
    max_order_qty=D("100"),
    max_daily_notional=D("100000.00"),
    max_daily_orders=3,
)
FENCE = iter(range(1, 10**9))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database("risk") as dsn:
        p = await asyncpg.create_pool(dsn, min_size=2, max_size=20)
        assert p is not None
        try:
            yield p
        finally:
            await p.close()


@pytest.fixture
def ledger(pool: asyncpg.Pool) -> LedgerActivities:
    return LedgerActivities(Ledger(pool, risk=LIMITS))


def reserve(account: str, name: str, qty: str, price: str, side: str = "buy") -> ReserveInput:
    """A limit order's reserve as the saga makes it (order record included)."""
    from activities.ledger import OrderRecord

    key = f"{account}/{name}"
    record = OrderRecord(
        account_id=account,
        order_id=name,
        workflow_id=f"order/{key}",
        symbol="AAPL",
        side=side,  # type: ignore[arg-type]
        order_type="limit",
        time_in_force="day",
        qty=D(qty),
        limit_price=D(price),
        params_hash=uuid.uuid4().hex,
    )
    return ReserveInput(
        account_id=account,
        order_key=key,
        asset="USD" if side == "buy" else "AAPL",
        amount=D(qty) * D(price) if side == "buy" else D(qty),
        fence=next(FENCE),
        idempotency_key=f"{key}:reserve",
        side=side,  # type: ignore[arg-type]
        symbol="AAPL",
        order=record,
    )


async def funded(pool: asyncpg.Pool) -> str:
    return await open_funded(LedgerUnderTest(pool), "100000.00", AAPL="100")


async def usage(pool: asyncpg.Pool, account: str) -> tuple[D, int]:
    got = await store.account_risk(pool, account, LIMITS)
    return got.usage.notional, got.usage.orders


async def test_an_order_over_a_per_order_limit_is_refused_and_holds_nothing(
    pool: asyncpg.Pool, ledger: LedgerActivities
) -> None:
    account = await funded(pool)
    exc = await refused(ledger.reserve_funds(reserve(account, "big", "5", "200.01")))
    assert exc.type == errors.RISK_LIMIT and exc.non_retryable
    assert "notional 1000.05 USD over the per-order maximum 1000.00" in exc.message
    exc = await refused(ledger.reserve_funds(reserve(account, "many", "101", "1")))
    assert exc.type == errors.RISK_LIMIT and "quantity 101" in exc.message
    assert await usd(LedgerUnderTest(pool), account) == (D("100000.00"), D("0.00"))
    assert await usage(pool, account) == (D(0), 0)  # a refusal counts nothing
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE account_id = $1", account) == 0


async def test_an_accounts_override_wins_over_the_default(
    pool: asyncpg.Pool, ledger: LedgerActivities
) -> None:
    account = await funded(pool)
    await store.set_account_limits(
        pool, account, Overrides(max_order_notional=D("5000")), by="tester"
    )
    await ledger.reserve_funds(reserve(account, "a", "5", "200.01"))  # the default refuses it
    assert await usage(pool, account) == (D("1000.05"), 1)
    await store.set_account_limits(pool, account, Overrides(max_daily_orders=1), by="tester")
    exc = await refused(ledger.reserve_funds(reserve(account, "b", "1", "1")))
    assert "1 orders today, the daily maximum is 1" in exc.message
    shown = await store.account_risk(pool, account, LIMITS)
    assert shown.overrides == Overrides(max_order_notional=D("5000.00"), max_daily_orders=1)
    assert shown.limits.max_order_qty == LIMITS.max_order_qty and shown.updated_by == "tester"
    await store.clear_account_limits(pool, account, by="tester")
    assert (await store.account_risk(pool, account, LIMITS)).limits == LIMITS
    await ledger.reserve_funds(reserve(account, "c", "1", "1"))


async def test_racing_reserves_on_one_account_are_counted_exactly(
    pool: asyncpg.Pool, ledger: LedgerActivities
) -> None:
    account = await funded(pool)

    async def one(i: int) -> bool:
        try:
            # each try locks again (a new, greater fence), as the saga does after StaleFence
            # buys and sells: holds on different ledger rows (USD, AAPL), so only the usage's
            # own compare-and-set keeps two of them from counting over each other
            side = "buy" if i % 2 else "sell"
            await retried(lambda: ledger.reserve_funds(reserve(account, f"o{i}", "1", "10", side)))
            return True
        except ApplicationError as exc:
            assert exc.type == errors.RISK_LIMIT, exc
            return False

    outcomes = await asyncio.gather(*(one(i) for i in range(40)))
    assert sum(outcomes) == 3
    assert await usage(pool, account) == (D("30.00"), 3)
    holds = await pool.fetchval("SELECT count(*) FROM holds WHERE owner = $1", account)
    assert holds == 3


async def test_the_trading_state_gates_new_reserves_and_is_logged(
    pool: asyncpg.Pool, ledger: LedgerActivities
) -> None:
    account = await funded(pool)
    held = reserve(account, "before", "1", "10")
    first = await ledger.reserve_funds(held)
    try:
        change = await store.set_trading_state(pool, TradingState.HALTED, "exchange outage", "al")
        assert change.previous == TradingState.ACTIVE and change.state == TradingState.HALTED
        exc = await refused(ledger.reserve_funds(reserve(account, "h-buy", "1", "10")))
        assert exc.type == errors.RISK_LIMIT
        assert exc.message == "trading halted: no new orders (by al: exchange outage)"
        exc = await refused(ledger.reserve_funds(reserve(account, "h-sell", "1", "10", "sell")))
        assert exc.type == errors.RISK_LIMIT
        # a retry of a reserve decided before the halt gets its hold back (the decision stands)
        assert (await ledger.reserve_funds(held)).hold_id == first.hold_id

        await store.set_trading_state(pool, TradingState.REDUCING, "wind down", "bo")
        exc = await refused(ledger.reserve_funds(reserve(account, "r-buy", "1", "10")))
        assert exc.message == "trading reducing: sells only (by bo: wind down)"
        await ledger.reserve_funds(reserve(account, "r-sell", "1", "10", "sell"))
    finally:
        await store.set_trading_state(pool, TradingState.ACTIVE, "all clear", "al")
    await ledger.reserve_funds(reserve(account, "after", "1", "10"))
    status = await store.trading_status(pool)
    assert (status.state, status.changed_by, status.reason) == ("ACTIVE", "al", "all clear")
    log = await store.trading_history(pool, 3)
    assert [(c.previous, c.state, c.changed_by) for c in log] == [
        ("REDUCING", "ACTIVE", "al"),
        ("HALTED", "REDUCING", "bo"),
        ("ACTIVE", "HALTED", "al"),
    ]
    assert [c.version for c in log] == [status.version, status.version - 1, status.version - 2]


async def test_overrides_of_an_unknown_account_or_bad_values_are_refused(
    pool: asyncpg.Pool,
) -> None:
    from core.errors import UserError
    from core.money import InvalidAmount

    with pytest.raises(UserError, match="unknown account"):
        await store.set_account_limits(pool, "nobody", Overrides(max_daily_orders=1), by="t")
    account = f"risk-{uuid.uuid4().hex[:8]}"
    await LedgerUnderTest(pool).open_account(OpenAccountInput(account_id=account))
    with pytest.raises(InvalidAmount):  # the SDK's values meet the CLI's bounds
        await store.set_account_limits(
            pool, account, Overrides(max_order_notional=D("0.001")), by="t"
        )
    with pytest.raises(UserError):
        await store.set_account_limits(pool, account, Overrides(), by="t")
    assert (await store.account_risk(pool, account, LIMITS)).overrides.is_empty()
