"""The Postgres ledger's operations on a real database: CAS, fences, idempotency, rounding."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal as D
from typing import TypeVar

import asyncpg
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.ledger import (
    OMNIBUS,
    DepositInput,
    ErrorFillInput,
    OpenAccountInput,
    OrderRecord,
    PostFillInput,
    ReserveInput,
    ResizeHoldInput,
    VoidInput,
    WithdrawInput,
    check_ledger,
    store,
)
from activities.ledger.postings import Refused
from activities.orders import OrderStore
from core import errors
from tests.conftest import scratch_database
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]
T = TypeVar("T")
# Fences as the lock hands them out: each reserve carries a greater one than every earlier one (an
# equal fence is accepted only from the order that wrote it).
FENCES = itertools.count(1)


@asynccontextmanager
async def scratch_pool(kind: str) -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database(kind) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=30)
        assert pool is not None
        try:
            yield pool
        finally:
            await pool.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger_pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_pool("ledger") as pool:
        yield pool


@pytest.fixture
def ledger(ledger_pool: asyncpg.Pool) -> LedgerUnderTest:
    return LedgerUnderTest(ledger_pool)


async def open_funded(ledger: LedgerUnderTest, cash: str = "0", **shares: str) -> str:
    """A fresh customer account holding ``cash`` USD and the given shares."""
    account = f"acct-{uuid.uuid4().hex[:12]}"
    await ledger.open_account(OpenAccountInput(account_id=account))
    for asset, amount in [("USD", cash), *shares.items()]:
        if D(amount) > 0:
            await ledger.deposit(
                DepositInput(
                    account_id=account, amount=D(amount), asset=asset, idempotency_key=uuid4()
                )
            )
    return account


def uuid4() -> str:
    return str(uuid.uuid4())


def buy(
    account: str, order_id: str, amount: str, fence: int | None = None, **kw: object
) -> ReserveInput:
    return ReserveInput(
        account_id=account,
        order_key=order_id,
        asset="USD",
        amount=D(amount),
        fence=next(FENCES) if fence is None else fence,
        idempotency_key=f"{order_id}:reserve",
        side="buy",
        symbol="AAPL",
        **kw,  # type: ignore[arg-type]
    )


async def refused(call: Awaitable[object]) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await call
    return info.value


async def retried(call: Callable[[], Awaitable[T]]) -> T:
    """Retry as Temporal and the saga would: the retryable LedgerConflict, and a StaleFence by
    locking again (``call`` builds its input anew, so ``buy`` draws a greater fence)."""
    while True:
        try:
            return await call()
        except ApplicationError as exc:
            if exc.type not in (errors.LEDGER_CONFLICT, errors.STALE_FENCE):
                raise


async def safely(call: Awaitable[T]) -> T | BaseException:
    """``call``'s result or its exception, as ``gather(..., return_exceptions=True)`` gives."""
    try:
        return await call
    except Exception as exc:
        return exc


async def usd(ledger: LedgerUnderTest, account: str) -> tuple[D, D]:
    b = (await ledger.get_balances(account)).of("USD")
    return b.available, b.held


async def assert_ledger_clean(pool: asyncpg.Pool) -> None:
    report = await check_ledger(pool)
    assert report.ok, report.violations()


# ------------------------------------------------------------------ concurrency


async def test_100_concurrent_reserves_lose_no_update(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "500.00")

    async def one(i: int) -> bool:
        try:
            await retried(lambda: ledger.reserve_funds(buy(account, f"{account}/o{i}", "7.00")))
            return True
        except ApplicationError as exc:
            assert exc.type == errors.INSUFFICIENT_FUNDS
            return False

    outcomes = await asyncio.gather(*(one(i) for i in range(100)))
    successes = sum(outcomes)
    available, held = await usd(ledger, account)
    assert successes == 71  # floor(500 / 7)
    assert held == D("7.00") * successes
    assert available == D("500.00") - held == D("3.00")
    await assert_ledger_clean(ledger_pool)


async def test_conflicts_running_out_raise_retryable_conflict(ledger_pool: asyncpg.Pool) -> None:
    # one CAS attempt and many racers: some must lose and say "retry", never "insufficient"
    ledger = LedgerUnderTest(ledger_pool, cas_attempts=1)
    account = await open_funded(LedgerUnderTest(ledger_pool), "1000.00")
    results = await asyncio.gather(
        *(ledger.reserve_funds(buy(account, f"{account}/o{i}", "1.00")) for i in range(20)),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures, "20 racers with one attempt each should conflict"
    for exc in failures:
        # a racer that read after a greater fence landed is told to lock again (StaleFence)
        assert isinstance(exc, ApplicationError)
        assert exc.type in (errors.LEDGER_CONFLICT, errors.STALE_FENCE)
        assert exc.non_retryable == (exc.type == errors.STALE_FENCE)
        if exc.type == errors.LEDGER_CONFLICT:
            assert exc.category == ApplicationErrorCategory.BENIGN
    assert any(exc.type == errors.LEDGER_CONFLICT for exc in failures)  # type: ignore[union-attr]
    assert (await usd(ledger, account))[1] == D(20 - len(failures))


# ------------------------------------------------------------------ fences


async def test_stale_fence_is_refused(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "100.00")
    await ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=5))
    exc = await refused(ledger.reserve_funds(buy(account, f"{account}/b", "20.00", fence=3)))
    assert exc.type == errors.STALE_FENCE and exc.non_retryable
    assert await usd(ledger, account) == (D("90.00"), D("10.00"))
    assert await ledger.max_fence(account) == 5


async def test_fence_is_per_account_across_assets(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "100.00", AAPL="2")
    await ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=7))
    sell = ReserveInput(
        account_id=account,
        order_key=f"{account}/s",
        asset="AAPL",
        amount=D("1"),
        fence=6,
        idempotency_key=f"{account}/s:reserve",
        side="sell",
        symbol="AAPL",
    )
    exc = await refused(ledger.reserve_funds(sell))
    assert exc.type == errors.STALE_FENCE
    assert (await ledger.get_balances(account)).of("AAPL").held == 0


async def test_reserve_retry_with_newer_fence_returns_first_result(
    ledger: LedgerUnderTest,
) -> None:
    account = await open_funded(ledger, "100.00")
    first = await ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=2))
    again = await ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=9))
    assert again == first
    assert await usd(ledger, account) == (D("90.00"), D("10.00"))


async def test_an_equal_fence_is_refused_from_another_order(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "100.00")
    first = await ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=7))
    # The lock's counter went back and handed fence 7 to a second order as well.
    exc = await refused(ledger.reserve_funds(buy(account, f"{account}/b", "20.00", fence=7)))
    assert exc.type == errors.STALE_FENCE and exc.non_retryable
    assert exc.details == ({"fence": 7, "last_fence": 7},)  # what the saga passes as floor
    assert await usd(ledger, account) == (D("90.00"), D("10.00"))
    assert await ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=7)) == first
    await ledger.reserve_funds(buy(account, f"{account}/b", "20.00", fence=8))
    assert await usd(ledger, account) == (D("70.00"), D("30.00"))


async def plant_fence(
    pool: asyncpg.Pool, account: str, fence: int, owner: str | None, *, customer: bool = True
) -> None:
    """Set the newest fence the ledger has seen, and who wrote it, on the USD row (and the
    customer): the state a reserve of ``owner`` under ``fence`` leaves behind."""
    await pool.execute(
        "UPDATE ledger_accounts SET last_fence = $2, last_fence_owner = $3"
        " WHERE owner = $1 AND asset = 'USD'",
        account,
        fence,
        owner,
    )
    if customer:
        await pool.execute(
            "UPDATE customers SET last_fence = $2, last_fence_owner = $3 WHERE account_id = $1",
            account,
            fence,
            owner,
        )


async def test_an_equal_fence_from_the_order_that_wrote_it_is_accepted(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "100.00")
    await plant_fence(ledger_pool, account, 7, f"{account}/a")
    exc = await refused(ledger.reserve_funds(buy(account, f"{account}/b", "20.00", fence=7)))
    assert exc.type == errors.STALE_FENCE
    await ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=7))
    assert await usd(ledger, account) == (D("90.00"), D("10.00"))


async def test_the_rows_compare_and_set_refuses_an_equal_fence_from_another_order(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    # Only the row has seen fence 7 (from order x): the customer check passes, the row's fenced
    # compare-and-set refuses, and the customer's advance rolls back with it.
    account = await open_funded(ledger, "100.00")
    await plant_fence(ledger_pool, account, 7, f"{account}/x", customer=False)
    exc = await refused(ledger.reserve_funds(buy(account, f"{account}/b", "20.00", fence=7)))
    assert exc.type == errors.STALE_FENCE and exc.details == ({"fence": 7, "last_fence": 7},)
    fence = await ledger_pool.fetchval(
        "SELECT last_fence FROM customers WHERE account_id = $1", account
    )
    assert fence == 0
    assert await usd(ledger, account) == (D("100.00"), D("0.00"))


async def test_a_fence_recorded_before_owners_were_is_not_reused(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "100.00")
    await plant_fence(ledger_pool, account, 7, None)  # written before migration 0004
    exc = await refused(ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=7)))
    assert exc.type == errors.STALE_FENCE
    await ledger.reserve_funds(buy(account, f"{account}/a", "10.00", fence=8))


# ------------------------------------------------------------------ refusals


async def test_insufficient_funds_carries_what_was_available(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "12.34")
    exc = await refused(ledger.reserve_funds(buy(account, f"{account}/a", "12.35")))
    assert exc.type == errors.INSUFFICIENT_FUNDS and exc.non_retryable
    assert "12.34" in str(exc)
    assert exc.details[0]["available"] == "12.34"
    assert await usd(ledger, account) == (D("12.34"), D("0.00"))


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-1", "0", "1e400", "0.001"])
async def test_bad_amounts_are_refused(ledger: LedgerUnderTest, amount: str) -> None:
    account = await open_funded(ledger, "10.00")
    exc = await refused(
        ledger.deposit(DepositInput(account_id=account, amount=D(amount), idempotency_key=uuid4()))
    )
    assert exc.type == errors.INVALID_AMOUNT and exc.non_retryable
    assert await usd(ledger, account) == (D("10.00"), D("0.00"))


async def test_unknown_account_is_refused(ledger: LedgerUnderTest) -> None:
    exc = await refused(
        ledger.deposit(
            DepositInput(account_id="nobody-" + uuid4(), amount=D(1), idempotency_key="k")
        )
    )
    assert exc.type == errors.UNKNOWN_ACCOUNT


async def test_withdraw_beyond_available_is_refused(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "50.00")
    await ledger.reserve_funds(buy(account, f"{account}/a", "40.00"))
    exc = await refused(
        ledger.withdraw(WithdrawInput(account_id=account, amount=D(20), idempotency_key=uuid4()))
    )
    assert exc.type == errors.INSUFFICIENT_FUNDS
    assert await usd(ledger, account) == (D("10.00"), D("40.00"))


# ------------------------------------------------------------------ idempotency


async def test_deposit_and_withdraw_apply_once(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger)
    dep = DepositInput(account_id=account, amount=D("25.00"), idempotency_key=uuid4())
    assert await ledger.deposit(dep) == await ledger.deposit(dep)
    wd = WithdrawInput(account_id=account, amount=D("5.00"), idempotency_key=uuid4())
    assert await ledger.withdraw(wd) == await ledger.withdraw(wd)
    assert await usd(ledger, account) == (D("20.00"), D("0.00"))
    other = dep.model_copy(update={"amount": D("26.00")})
    assert (await refused(ledger.deposit(other))).type == errors.IDEMPOTENCY_MISMATCH
    assert await usd(ledger, account) == (D("20.00"), D("0.00"))


async def test_a_deposit_keyed_like_an_order_step_cannot_block_the_void(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    """Issue 11: a deposit keyed ``alice/o1:void`` made the order's void fail with
    IdempotencyMismatch (the workflow failed with $9.92 frozen). User keys and the saga's step
    keys are separate namespaces: the void releases the hold."""
    account = await open_funded(ledger, "20.00")
    order = f"{account}/o1"
    await ledger.reserve_funds(buy(account, order, "9.92"))
    dep = DepositInput(account_id=account, amount=D("1.00"), idempotency_key=f"{order}:void")
    await ledger.deposit(dep)
    void = await ledger.void_funds(VoidInput(order_key=order, idempotency_key=f"{order}:void"))
    assert void.found and void.released == D("9.92")
    assert await usd(ledger, account) == (D("21.00"), D("0.00"))
    assert (await ledger.deposit(dep)).amount == D("1.00")  # still replays as the deposit
    assert await usd(ledger, account) == (D("21.00"), D("0.00"))
    await assert_ledger_clean(ledger_pool)


async def test_user_keys_never_collide_with_any_saga_step(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    """Deposits and withdrawals taking every key an order's steps (and the reconciler) will use
    first: the order still reserves, posts, voids, and a stray broker order still books."""
    account = await open_funded(ledger, "1000.00")
    order, broker_id = f"{account}/o1", f"b-{uuid4()}"
    saga_keys = [
        f"{order}:reserve",
        f"{order}:fill:1",
        f"{order}:void",
        f"error:{broker_id}:fill:1",
    ]
    for key in saga_keys:
        await ledger.deposit(DepositInput(account_id=account, amount=D(2), idempotency_key=key))
        await ledger.withdraw(WithdrawInput(account_id=account, amount=D(1), idempotency_key=key))
    await ledger.reserve_funds(buy(account, order, "110.00"))
    fill = PostFillInput(order_key=order, cum_qty=D(1), cum_notional=D("100"), cum_fee=D(1))
    assert (await ledger.post_fill(fill)).applied
    void = await ledger.void_funds(VoidInput(order_key=order, idempotency_key=f"{order}:void"))
    assert void.released == D("9.00")
    stray = ErrorFillInput(
        broker_order_id=broker_id,
        client_order_id="c1",
        symbol="AAPL",
        side="buy",
        cum_qty=D(1),
        cum_notional=D(100),
    )
    assert (await ledger.book_error_fill(stray)).applied
    assert await usd(ledger, account) == (D("903.00"), D("0.00"))
    await assert_ledger_clean(ledger_pool)


async def test_the_same_user_key_for_a_deposit_and_a_withdrawal_is_two_operations(
    ledger: LedgerUnderTest,
) -> None:
    """Keys are per operation: a withdrawal never replays (or is refused by) a deposit's key."""
    account = await open_funded(ledger, "10.00")
    key = uuid4()
    await ledger.deposit(DepositInput(account_id=account, amount=D(5), idempotency_key=key))
    wd = WithdrawInput(account_id=account, amount=D(3), idempotency_key=key)
    assert await ledger.withdraw(wd) == await ledger.withdraw(wd)
    assert await usd(ledger, account) == (D("12.00"), D("0.00"))


@pytest.mark.parametrize("key", ["x" * 200, "any/thing:void:fill:1 \t\u00e9\u2603", "error:b:f"])
async def test_a_user_key_may_contain_anything(ledger: LedgerUnderTest, key: str) -> None:
    account = await open_funded(ledger)
    dep = DepositInput(account_id=account, amount=D(1), idempotency_key=(account + key)[:200])
    assert await ledger.deposit(dep) == await ledger.deposit(dep)
    assert await usd(ledger, account) == (D("1.00"), D("0.00"))


@pytest.mark.parametrize("key", ["", "x" * 201, "nul\x00byte", "lone\ud800surrogate"])
async def test_a_user_key_too_long_or_unstorable_is_refused(
    ledger: LedgerUnderTest, key: str
) -> None:
    account = await open_funded(ledger)
    for call in (ledger.deposit, ledger.withdraw):
        exc = await refused(
            call(WithdrawInput(account_id=account, amount=D(1), idempotency_key=key))
        )
        assert exc.type == errors.INVALID_REQUEST and exc.non_retryable
        assert "idempotency key" in str(exc)
    assert await usd(ledger, account) == (D("0.00"), D("0.00"))


async def test_open_account_is_idempotent(ledger: LedgerUnderTest) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    assert (await ledger.open_account(OpenAccountInput(account_id=account))).created
    assert not (await ledger.open_account(OpenAccountInput(account_id=account))).created
    assert [b.asset for b in (await ledger.get_balances(account)).balances] == ["USD"]


async def test_reserve_applies_once_and_refuses_other_arguments(
    ledger: LedgerUnderTest,
) -> None:
    account = await open_funded(ledger, "100.00")
    order = f"{account}/a"
    first = await ledger.reserve_funds(buy(account, order, "30.00"))
    assert await ledger.reserve_funds(buy(account, order, "30.00")) == first
    exc = await refused(ledger.reserve_funds(buy(account, order, "31.00")))
    assert exc.type == errors.IDEMPOTENCY_MISMATCH
    second_key = buy(account, order, "30.00").model_copy(update={"idempotency_key": "other"})
    assert (await refused(ledger.reserve_funds(second_key))).type == errors.HOLD_STATE
    assert await usd(ledger, account) == (D("70.00"), D("30.00"))


async def test_post_fill_applies_once_per_cumulative_qty(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "1000.00")
    order = f"{account}/a"
    await ledger.reserve_funds(buy(account, order, "500.00"))
    fill = PostFillInput(order_key=order, cum_qty=D(1), cum_notional=D("150.25"), cum_fee=D("0.50"))
    first = await ledger.post_fill(fill)
    assert first.applied and first.cash_delta == D("150.25")
    assert await ledger.post_fill(fill) == first
    # the same cumulative qty in another spelling is the same fill
    assert await ledger.post_fill(fill.model_copy(update={"cum_qty": D("1.000")})) == first
    changed = fill.model_copy(update={"cum_notional": D("150.26")})
    assert (await refused(ledger.post_fill(changed))).type == errors.IDEMPOTENCY_MISMATCH
    later = PostFillInput(order_key=order, cum_qty=D(2), cum_notional=D("300.5"), cum_fee=D("0.75"))
    assert (await ledger.post_fill(later)).applied
    # an older cumulative report arriving late changes nothing
    stale = PostFillInput(order_key=order, cum_qty=D("1.5"), cum_notional=D("225"), cum_fee=D(1))
    assert not (await ledger.post_fill(stale)).applied
    assert await usd(ledger, account) == (D("500.00"), D("198.75"))
    assert (await ledger.get_balances(account)).of("AAPL").available == D(2)


async def test_void_applies_once_and_unknown_order_is_not_found(
    ledger: LedgerUnderTest,
) -> None:
    account = await open_funded(ledger, "100.00")
    order = f"{account}/a"
    await ledger.reserve_funds(buy(account, order, "30.00"))
    first = await ledger.void_funds(VoidInput(order_key=order, idempotency_key=f"{order}:void"))
    assert first.found and first.released == D("30.00")
    assert await ledger.void_funds(VoidInput(order_key=order, idempotency_key=f"{order}:void")) == (
        first
    )
    again = await ledger.void_funds(VoidInput(order_key=order, idempotency_key="another"))
    assert again.found and again.released == 0
    assert await usd(ledger, account) == (D("100.00"), D("0.00"))
    ghost = f"{account}/never"
    missing = await ledger.void_funds(VoidInput(order_key=ghost, idempotency_key=f"{ghost}:void"))
    assert not missing.found and missing.released == 0
    # a reserve arriving after its order was voided cannot freeze money
    exc = await refused(ledger.reserve_funds(buy(account, ghost, "10.00")))
    assert exc.type == errors.HOLD_STATE
    assert await usd(ledger, account) == (D("100.00"), D("0.00"))


async def test_post_to_voided_hold_is_refused(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "100.00")
    order = f"{account}/a"
    await ledger.reserve_funds(buy(account, order, "30.00"))
    await ledger.void_funds(VoidInput(order_key=order, idempotency_key=f"{order}:void"))
    fill = PostFillInput(order_key=order, cum_qty=D(1), cum_notional=D(10))
    assert (await refused(ledger.post_fill(fill))).type == errors.HOLD_STATE


async def test_reserve_records_the_order_and_refuses_other_parameters(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "100.00")
    order = f"{account}/a"
    record = OrderRecord(
        account_id=account,
        order_id=order,
        workflow_id=f"order-{account}-{order}",
        symbol="AAPL",
        side="buy",
        order_type="limit",
        time_in_force="day",
        qty=D(1),
        limit_price=D("50"),
        params_hash="h1",
    )
    await ledger.reserve_funds(buy(account, order, "50.00", order=record))
    status = await ledger_pool.fetchval(
        "SELECT status FROM orders WHERE account_id = $1 AND order_id = $2", account, order
    )
    assert status == "ACCEPTED"
    other = f"{account}/b"
    await ledger_pool.execute(
        "INSERT INTO orders (account_id, order_id, workflow_id, symbol, side, order_type,"
        " time_in_force, qty, params_hash, status)"
        " VALUES ($1, $2, 'w', 'AAPL', 'buy', 'market', 'day', 1, 'h2', 'ACCEPTED')",
        account,
        other,
    )
    clash = record.model_copy(update={"order_id": other})
    exc = await refused(ledger.reserve_funds(buy(account, other, "20.00", order=clash)))
    assert exc.type == errors.ORDER_CONFLICT
    assert await usd(ledger, account) == (D("50.00"), D("50.00"))


def order_row(account: str, order: str, params_hash: str = "h1") -> OrderRecord:
    return OrderRecord(
        account_id=account,
        order_id=order,
        workflow_id=f"order-{account}-{order}",
        symbol="AAPL",
        side="buy",
        order_type="market",
        time_in_force="day",
        qty=D(1),
        params_hash=params_hash,
    )


async def test_a_reserve_retried_at_another_price_gets_the_first_hold_back(
    ledger: LedgerUnderTest,
) -> None:
    """A retried workflow task prices a market buy again; the hold made first is the order's."""
    account = await open_funded(ledger, "100.00")
    order = f"{account}/a"
    record = order_row(account, order)
    first = await ledger.reserve_funds(
        buy(account, order, "50.00", order=record).model_copy(update={"price_bound": D("49")})
    )
    assert first.price_bound == D("49")
    again = await ledger.reserve_funds(
        buy(account, order, "52.00", order=record).model_copy(update={"price_bound": D("51")})
    )
    assert (again.amount, again.price_bound, again.hold_id) == (D("50.00"), D("49"), first.hold_id)
    assert await usd(ledger, account) == (D("50.00"), D("50.00"))
    # Another order's parameters under the same key is still a misuse of the key.
    other = order_row(account, order, params_hash="h2")
    exc = await refused(ledger.reserve_funds(buy(account, order, "52.00", order=other)))
    assert exc.type == errors.IDEMPOTENCY_MISMATCH


async def test_a_reserve_after_its_order_was_refused_holds_nothing(
    ledger: LedgerUnderTest,
) -> None:
    """An earlier try refused the order (its row says REJECTED): a retried reserve is refused
    with that reason and holds nothing."""
    account = await open_funded(ledger, "100.00")
    order = f"{account}/a"
    record = order_row(account, order)
    store = OrderStore(ledger.pool)
    assert await store.record(record, "REJECTED", "no price: no fresh quote for AAPL")
    exc = await refused(ledger.reserve_funds(buy(account, order, "50.00", order=record)))
    assert exc.type == errors.ORDER_REFUSED
    assert exc.message == "no price: no fresh quote for AAPL"
    assert await usd(ledger, account) == (D("100.00"), D("0.00"))
    # A refused row of another order (other parameters) is that order's: a conflict, as before.
    clash = order_row(account, order, params_hash="h2")
    exc = await refused(ledger.reserve_funds(buy(account, order, "50.00", order=clash)))
    assert exc.type == errors.ORDER_CONFLICT


# ------------------------------------------------------------------ posting and rounding


async def test_many_small_fills_at_awkward_prices_settle_exactly(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "1000.00")
    order = f"{account}/a"
    qty, limit = D(7), D("123.4567")
    hold = (qty * limit).quantize(D("0.01"), rounding="ROUND_CEILING") + D("5.00")  # + fee cap
    await ledger.reserve_funds(buy(account, order, str(hold)))
    prices = [D("123.4567"), D("123.4501"), D("122.9999"), D("123.3333"), D("123.0001")]
    cum_qty, cum_notional = D(0), D(0)
    step = D("0.333333333")
    i = 0
    while cum_qty < qty:
        part = min(step, qty - cum_qty)
        cum_qty += part
        cum_notional += part * prices[i % len(prices)]
        cum_fee = (cum_notional * D("0.0025")).quantize(D("0.01"))
        result = await ledger.post_fill(
            PostFillInput(
                order_key=order, cum_qty=cum_qty, cum_notional=cum_notional, cum_fee=cum_fee
            )
        )
        assert result.held_remaining >= 0
        i += 1
    assert i > 20
    expected_cash = cum_notional.quantize(D("0.01"), rounding="ROUND_HALF_UP")
    _, held = await usd(ledger, account)
    assert held == hold - expected_cash - cum_fee
    void = await ledger.void_funds(VoidInput(order_key=order, idempotency_key=f"{order}:void"))
    assert void.released == held
    assert await usd(ledger, account) == (D("1000.00") - expected_cash - cum_fee, D("0.00"))
    assert (await ledger.get_balances(account)).of("AAPL").available == qty
    await assert_ledger_clean(ledger_pool)


async def test_fill_beyond_the_hold_is_refused(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "1000.00")
    order = f"{account}/a"
    await ledger.reserve_funds(buy(account, order, "100.00"))
    fill = PostFillInput(order_key=order, cum_qty=D(1), cum_notional=D("99.99"), cum_fee=D("0.02"))
    exc = await refused(ledger.post_fill(fill))
    assert exc.type == errors.HOLD_STATE
    assert await usd(ledger, account) == (D("900.00"), D("100.00"))


async def test_sell_posts_shares_and_credits_proceeds_minus_fee(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "0", MSFT="3")
    order = f"{account}/s"
    sell = ReserveInput(
        account_id=account,
        order_id=order,
        asset="MSFT",
        amount=D("2.5"),
        fence=1,
        idempotency_key=f"{order}:reserve",
        side="sell",
        symbol="MSFT",
    )
    await ledger.reserve_funds(sell)
    await ledger.post_fill(
        PostFillInput(order_key=order, cum_qty=D(1), cum_notional=D("400.005"), cum_fee=D(1))
    )
    final = await ledger.post_fill(
        PostFillInput(order_key=order, cum_qty=D("2.5"), cum_notional=D("1000.10"), cum_fee=D(2))
    )
    assert final.held_remaining == 0
    over = PostFillInput(order_key=order, cum_qty=D(3), cum_notional=D(1200), cum_fee=D(2))
    assert (await refused(ledger.post_fill(over))).type == errors.HOLD_STATE
    balances = await ledger.get_balances(account)
    assert balances.of("MSFT").available == D("0.5") and balances.of("MSFT").held == 0
    assert balances.of("USD").available == D("998.10")
    await assert_ledger_clean(ledger_pool)


async def test_error_fills_touch_only_firm_accounts(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    broker_id = f"b-{uuid4()}"
    fill = ErrorFillInput(
        broker_order_id=broker_id,
        client_order_id="c1",
        symbol="TSLA",
        side="buy",
        cum_qty=D("1"),
        cum_notional=D("250.125"),
    )
    first = await ledger.book_error_fill(fill)
    assert first.applied and first.cash_delta == D("250.13")
    assert await ledger.book_error_fill(fill) == first
    more = await ledger.book_error_fill(
        fill.model_copy(update={"cum_qty": D(2), "cum_notional": D("500.25")})
    )
    assert more.qty_delta == 1 and more.cash_delta == D("250.12")
    owners = await ledger_pool.fetch(
        "SELECT DISTINCT a.owner FROM journal_lines l"
        " JOIN journal_entries e ON e.id = l.entry_id"
        " JOIN ledger_accounts a ON a.id = l.ledger_account_id WHERE e.order_id = $1",
        broker_id,
    )
    assert {r["owner"] for r in owners} == {OMNIBUS, "$error"}
    await assert_ledger_clean(ledger_pool)


async def test_a_void_racing_a_reserve_never_leaves_an_open_hold(ledger: LedgerUnderTest) -> None:
    """The saga's compensation (void) may race a reserve still in flight for the same order:
    either the reserve wins and the void releases it, or the void wins and the reserve is
    refused. Never a hold that outlives its voided order."""
    account = await open_funded(ledger, cash="1000")
    outcomes = []
    for i in range(30):
        order_id = f"{account}/{uuid4()}"
        reserve = retried(lambda o=order_id: ledger.reserve_funds(buy(account, o, "10")))
        void = retried(
            lambda o=order_id: ledger.void_funds(
                VoidInput(order_key=o, idempotency_key=f"{o}:void")
            )
        )
        # Most race; one in five runs the void first and one the reserve first, so both
        # orderings are known to have been checked whatever the scheduler does.
        first, second = (void, reserve) if i % 5 == 0 else (reserve, void)
        if i % 5 in (0, 1):
            done = [await safely(first), await safely(second)]
            results = done if first is reserve else done[::-1]
        else:
            results = await asyncio.gather(reserve, void, return_exceptions=True)
        reserved, voided = results
        if isinstance(reserved, ApplicationError):
            assert reserved.type == errors.HOLD_STATE  # the void came first
            assert not voided.found  # type: ignore[union-attr]
        else:
            assert voided.found and voided.released == D(10)  # type: ignore[union-attr]
        outcomes.append(isinstance(reserved, ApplicationError))
        open_holds = await ledger.pool.fetchval(
            "SELECT count(*) FROM holds WHERE order_id = $1 AND status = 'open'", order_id
        )
        assert open_holds == 0
    assert True in outcomes and False in outcomes, outcomes  # both orderings were checked
    assert await usd(ledger, account) == (D("1000.00"), D(0))


async def test_firm_counterparty_rows_are_sharded_and_still_conserve(
    ledger: LedgerUnderTest,
) -> None:
    """Deposits of many customers spread over the '$external' shards instead of one hot row."""
    accounts = [await open_funded(ledger, cash="10") for _ in range(24)]
    shards = await ledger.pool.fetch(
        "SELECT DISTINCT owner FROM ledger_accounts WHERE kind = 'external' AND asset = 'USD'"
    )
    assert len(shards) > 1
    assert {r["owner"].split("~")[0] for r in shards} == {"$external"}
    assert len(accounts) == 24
    await assert_ledger_clean(ledger.pool)


# ------------------------------------------------------------------ the hold's bounds


def record(
    account: str, order: str, side: str = "buy", qty: str = "2", limit: str = ""
) -> OrderRecord:
    """The orders row a reserve carries: a limit order if ``limit`` is given, else a market one."""
    return OrderRecord(
        account_id=account,
        order_id=order.split("/", 1)[1],
        workflow_id=f"order/{order}",
        symbol="AAPL",
        side=side,  # type: ignore[arg-type]
        order_type="limit" if limit else "market",
        time_in_force="day",
        qty=D(qty),
        limit_price=D(limit) if limit else None,
        params_hash=f"h-{order}",
    )


def sell(account: str, order: str, qty: str, limit: str = "") -> ReserveInput:
    return ReserveInput(
        account_id=account,
        order_key=order,
        asset="AAPL",
        amount=D(qty),
        fence=next(FENCES),
        idempotency_key=f"{order}:reserve",
        side="sell",
        symbol="AAPL",
        order=record(account, order, "sell", qty, limit),
    )


async def post(ledger: LedgerUnderTest, order: str, qty: str, notional: str) -> bool:
    fill = PostFillInput(order_key=order, cum_qty=D(qty), cum_notional=D(notional))
    return (await ledger.post_fill(fill)).applied


async def refused_post(ledger: LedgerUnderTest, order: str, qty: str, notional: str) -> str:
    """A post the ledger refuses twice: through the service (its rules), and when the hold's
    figures are written straight through the store, past the rules (the database's CHECKs)."""
    exc = await refused(
        ledger.post_fill(PostFillInput(order_key=order, cum_qty=D(qty), cum_notional=D(notional)))
    )
    assert exc.type == errors.HOLD_STATE and exc.non_retryable
    with pytest.raises(Refused) as info:
        async with ledger.pool.acquire() as conn, conn.transaction():
            rec = await conn.fetchrow(store.SELECT_OPERATION_AND_HOLD, "-", order, "post")
            hold = store.hold_of(rec)
            assert hold is not None
            after = dataclasses.replace(hold, posted_qty=D(qty), posted_notional=D(notional))
            await store.cas_hold(conn, rec, after)
    assert info.value.error_type == errors.HOLD_STATE
    return info.value.message


async def test_the_database_refuses_a_post_beyond_the_orders_qty_or_limit(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    """Issue 11: the hold knows its order's quantity and limit, and the database refuses a post
    beyond them whatever the service checks (the hold here is larger than either bound)."""
    account = await open_funded(ledger, "1000.00")
    order = f"{account}/lim"
    await ledger.reserve_funds(
        buy(account, order, "500.00", order=record(account, order, limit="50"))
    )
    assert "quantity" in await refused_post(ledger, order, "3", "150")
    assert "limit" in await refused_post(ledger, order, "1", "50.01")
    with pytest.raises(asyncpg.CheckViolationError):
        await ledger_pool.execute("UPDATE holds SET posted_qty = 3 WHERE order_id = $1", order)
    assert await post(ledger, order, "1", "49.5")
    assert await post(ledger, order, "2", "100")  # exactly at both bounds
    assert await usd(ledger, account) == (D("500.00"), D("400.00"))
    await assert_ledger_clean(ledger_pool)


async def test_a_market_buy_is_bounded_by_its_cap(ledger: LedgerUnderTest) -> None:
    """A market buy's orders row has no limit; the saga sends its cap as the price bound."""
    account = await open_funded(ledger, "1000.00")
    order = f"{account}/mkt"
    capped = buy(account, order, "300.00", order=record(account, order), price_bound=D("101.01"))
    await ledger.reserve_funds(capped)
    assert "limit" in await refused_post(ledger, order, "1", "101.02")
    assert await post(ledger, order, "1", "101.01")
    assert "quantity" in await refused_post(ledger, order, "2.000000001", "150")


async def test_a_limit_sell_is_bounded_below_and_a_market_sell_is_not(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "0", AAPL="4")
    limit_sell, market_sell = f"{account}/ls", f"{account}/ms"
    await ledger.reserve_funds(sell(account, limit_sell, "2", limit="50"))
    await ledger.reserve_funds(sell(account, market_sell, "2"))
    assert "limit" in await refused_post(ledger, limit_sell, "1", "49.99")
    assert await post(ledger, limit_sell, "1", "50")
    assert await post(ledger, market_sell, "1", "0.01")
    assert "quantity" in await refused_post(ledger, market_sell, "3", "300")
    await assert_ledger_clean(ledger_pool)


# ------------------------------------------------------------------ multi-row compare-and-set


async def test_multi_row_cas_writes_nothing_when_one_row_moved(ledger_pool: asyncpg.Pool) -> None:
    from activities.ledger.postings import EXTERNAL, firm_shard, moves
    from activities.ledger.store import Conflict, apply, rows

    account = await open_funded(LedgerUnderTest(ledger_pool), "100.00")
    external = firm_shard(EXTERNAL, account)
    async with ledger_pool.acquire() as conn:
        customer, ext = await rows(conn, (account, "USD"), (external, "USD"))
        # another writer moves the external row after our read
        await conn.execute("UPDATE ledger_accounts SET version = version + 1 WHERE id = $1", ext.id)
        changes = moves((customer, "available", D("5")), (ext, "available", D("-5")))
        with pytest.raises(Conflict):
            async with conn.transaction():
                await apply(conn, changes, key=uuid4(), code="deposit", order_id=None)
        again = {r.id: r for r in await rows(conn, (account, "USD"), (external, "USD"))}
    assert again[customer.id].available == customer.available  # rolled back with the rest
    assert again[customer.id].version == customer.version
    assert again[ext.id].available == ext.available


async def test_concurrent_fills_sharing_firm_rows_all_book(ledger_pool: asyncpg.Pool) -> None:
    # 40 orders' fills at once: each moves five rows, the omnibus and fee shards shared among
    # them, through the multi-row compare-and-set; every fill is booked exactly once.
    ledger = LedgerUnderTest(ledger_pool)
    accounts = [await open_funded(ledger, "1000.00") for _ in range(40)]
    orders = [f"{a}/o1" for a in accounts]
    for account, order in zip(accounts, orders, strict=True):
        await ledger.reserve_funds(buy(account, order, "210.00"))
    fills = await asyncio.gather(
        *(
            ledger.post_fill(
                PostFillInput(
                    order_key=o, cum_qty=D(1), cum_notional=D("200.00"), cum_fee=D("1.00")
                )
            )
            for o in orders
        )
    )
    assert all(f.applied for f in fills)
    for account in accounts:
        assert await usd(ledger, account) == (D("790.00"), D("9.00"))
    await assert_ledger_clean(ledger_pool)


async def test_two_customers_may_choose_the_same_transfer_key(ledger: LedgerUnderTest) -> None:
    """A caller's deposit or withdrawal key is scoped by its account: Bob's 'deposit-1' is not
    Alice's (it was refused as IdempotencyMismatch), and each still replays as its own."""
    alice, bob = await open_funded(ledger, "0"), await open_funded(ledger, "0")
    key = f"deposit-{uuid.uuid4().hex[:6]}"
    first = await ledger.deposit(DepositInput(account_id=alice, amount=D(10), idempotency_key=key))
    other = await ledger.deposit(DepositInput(account_id=bob, amount=D(20), idempotency_key=key))
    assert (first.account_id, other.account_id) == (alice, bob)
    assert (
        await ledger.deposit(DepositInput(account_id=alice, amount=D(10), idempotency_key=key))
        == first
    )
    out = f"withdraw-{uuid.uuid4().hex[:6]}"
    await ledger.withdraw(WithdrawInput(account_id=alice, amount=D(1), idempotency_key=out))
    await ledger.withdraw(WithdrawInput(account_id=bob, amount=D(2), idempotency_key=out))
    assert await usd(ledger, alice) == (D("9.00"), D(0))
    assert await usd(ledger, bob) == (D("18.00"), D(0))
    # Within one account the key still names one transfer.
    exc = await refused(
        ledger.deposit(DepositInput(account_id=bob, amount=D(5), idempotency_key=key))
    )
    assert exc.type == errors.IDEMPOTENCY_MISMATCH


# ------------------------------------------------------------------ a replaced order's hold
# (issue 16, part 5): it grows from the account's available funds under the lock's fence,
# shrinks back, keeps what it has used, and its new bounds are the ones the database enforces.


def resize(
    order: str, budget: str, qty: str, limit: str | None, step: str, fence: int | None = None
) -> ResizeHoldInput:
    return ResizeHoldInput(
        order_key=order,
        budget=D(budget),
        qty=D(qty),
        limit_price=None if limit is None else D(limit),
        fence=fence,
        idempotency_key=f"{order}:{step}",
    )


async def test_a_hold_grows_under_a_fence_then_shrinks_keeping_what_it_used(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "1000.00")
    order = f"{account}/r"
    await ledger.reserve_funds(
        buy(account, order, "200.00", order=record(account, order, limit="100"))
    )
    assert await post(ledger, order, "1", "99")  # 99.00 used, 101.00 kept
    grow = resize(order, "301.00", "3", "101", "replace:1:grow", fence=next(FENCES))
    grown = await ledger.resize_hold(grow)
    assert (grown.moved, grown.held_remaining, grown.budget) == (
        D("101.00"),
        D("202.00"),
        D("301.00"),
    )
    assert await usd(ledger, account) == (D("699.00"), D("202.00"))
    assert await ledger.resize_hold(grow) == grown  # a repeat of the key changes nothing
    assert await usd(ledger, account) == (D("699.00"), D("202.00"))
    # the new bounds hold: 3 shares, at most 101 a share (the database refuses past them)
    assert await post(ledger, order, "2", "199.5")
    assert "quantity" in await refused_post(ledger, order, "4", "300")
    assert "limit" in await refused_post(ledger, order, "3", "303.01")
    shrink = await ledger.resize_hold(resize(order, "250.00", "3", "101", "replace:1:settle"))
    assert (shrink.moved, shrink.held_remaining) == (D("-51.00"), D("50.50"))
    assert await usd(ledger, account) == (D("750.00"), D("50.50"))
    await assert_ledger_clean(ledger_pool)


async def test_a_grow_without_funds_or_fence_changes_nothing(
    ledger: LedgerUnderTest, ledger_pool: asyncpg.Pool
) -> None:
    account = await open_funded(ledger, "300.00")
    order = f"{account}/g"
    await ledger.reserve_funds(
        buy(account, order, "200.00", order=record(account, order, limit="100"))
    )
    poor = resize(order, "400.01", "4", "100", "replace:1:grow", fence=next(FENCES))
    exc = await refused(ledger.resize_hold(poor))
    assert exc.type == errors.INSUFFICIENT_FUNDS and exc.non_retryable
    unfenced = resize(order, "250.00", "2", "125", "replace:2:grow")
    assert (await refused(ledger.resize_hold(unfenced))).type == errors.INVALID_REQUEST
    assert await usd(ledger, account) == (D("100.00"), D("200.00"))
    await assert_ledger_clean(ledger_pool)


async def test_a_stale_fence_cannot_grow_a_hold(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "1000.00")
    order, other = f"{account}/s1", f"{account}/s2"
    old = next(FENCES)
    await ledger.reserve_funds(
        buy(account, order, "100.00", fence=old, order=record(account, order, limit="50"))
    )
    await ledger.reserve_funds(
        buy(account, other, "100.00", order=record(account, other, limit="50"))
    )
    stale = resize(order, "150.00", "3", "50", "replace:1:grow", fence=old)
    assert (await refused(ledger.resize_hold(stale))).type == errors.STALE_FENCE
    assert await usd(ledger, account) == (D("800.00"), D("200.00"))


async def test_a_budget_below_what_was_used_or_bounds_below_the_posts_are_refused(
    ledger: LedgerUnderTest,
) -> None:
    account = await open_funded(ledger, "1000.00")
    order = f"{account}/b"
    await ledger.reserve_funds(
        buy(account, order, "200.00", order=record(account, order, limit="100"))
    )
    assert await post(ledger, order, "1", "99")
    below = resize(order, "98.99", "2", "100", "replace:1:settle")
    assert (await refused(ledger.resize_hold(below))).type == errors.HOLD_STATE
    tighter = resize(order, "150.00", "2", "98", "replace:2:settle")
    assert (await refused(ledger.resize_hold(tighter))).type == errors.HOLD_STATE
    fewer = resize(order, "150.00", "0.5", "100", "replace:3:settle")
    assert (await refused(ledger.resize_hold(fewer))).type == errors.HOLD_STATE
    assert await usd(ledger, account) == (D("800.00"), D("101.00"))


async def test_a_voided_hold_is_not_resized(ledger: LedgerUnderTest) -> None:
    account = await open_funded(ledger, "0", AAPL="5")
    order = f"{account}/v"
    await ledger.reserve_funds(sell(account, order, "2", limit="10"))
    grown = await ledger.resize_hold(
        resize(order, "3", "3", "9", "replace:1:grow", fence=next(FENCES))
    )
    assert (grown.moved, grown.asset) == (D("1.000000000"), "AAPL")
    await ledger.void_funds(VoidInput(order_key=order, idempotency_key=f"{order}:void"))
    late = resize(order, "2", "2", "9", "replace:1:settle")
    assert (await refused(ledger.resize_hold(late))).type == errors.HOLD_STATE
    assert (await ledger.get_balances(account)).of("AAPL").available == D(5)
