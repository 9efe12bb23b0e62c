"""The order saga end to end on real parts: Temporal dev server, Postgres, Redis, the simulator."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from temporalio.client import WorkflowExecutionStatus

from core.errors import UserError
from core.money import commission, round_cash
from core.statuses import OrderStatus
from tests.support.saga import SagaStack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

RATE, MINIMUM = Decimal("0.0025"), Decimal("0.50")


async def balances(saga: SagaStack, account_id: str) -> dict[str, tuple[Decimal, Decimal]]:
    acct = await saga.orders.balance(account_id)
    return {b.asset: (b.available, b.held) for b in acct.balances}


async def price_of(saga: SagaStack, symbol: str) -> Decimal:
    quote = await saga.sim.admin("GET", f"/v2/stocks/{symbol}/quotes/latest")
    return Decimal(str(quote["quote"]["ap"]))


async def test_market_buy_settles_and_books_cost_fee_and_shares(saga: SagaStack) -> None:
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="1")
    assert placed.accepted and placed.status == OrderStatus.ACCEPTED
    assert placed.hold_asset == "USD" and placed.held > 0

    final = await saga.wait(acct, placed.order_id)

    assert final.status == OrderStatus.SETTLED
    assert final.filled_qty == Decimal(1)
    cost = round_cash(final.filled_notional)
    fee = commission(cost, RATE, MINIMUM)
    assert final.fees == fee
    bal = await balances(saga, acct)
    assert bal["USD"] == (Decimal("10000") - cost - fee, Decimal(0))
    assert bal["AAPL"] == (Decimal(1), Decimal(0))
    assert final.released == placed.held - cost - fee
    assert len(await saga.broker_orders(f"{acct}/{placed.order_id}")) == 1


async def test_fractional_sell_settles_proceeds_less_fee(saga: SagaStack) -> None:
    acct = await saga.funded_account("100", shares={"MSFT": "2.5"})
    placed = await saga.place(acct, symbol="MSFT", side="sell", qty="0.75")
    assert placed.accepted and placed.hold_asset == "MSFT" and placed.held == Decimal("0.75")

    final = await saga.wait(acct, placed.order_id)

    assert final.status == OrderStatus.SETTLED
    proceeds = round_cash(final.filled_notional)
    bal = await balances(saga, acct)
    assert bal["MSFT"] == (Decimal("1.75"), Decimal(0))
    assert bal["USD"] == (Decimal("100") + proceeds - final.fees, Decimal(0))


async def test_insufficient_funds_is_refused_with_nothing_held(saga: SagaStack) -> None:
    acct = await saga.funded_account("5")
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="1")
    assert not placed.accepted
    assert placed.status == OrderStatus.REJECTED
    assert placed.reason and "insufficient funds" in placed.reason
    assert await balances(saga, acct) == {"USD": (Decimal("5.00"), Decimal(0))}
    await saga.wait(acct, placed.order_id)
    again = await saga.place(acct, symbol="AAPL", side="buy", qty="1", order_id=placed.order_id)
    assert (again.accepted, again.status, again.reason) == (False, placed.status, placed.reason)
    row = await saga.orders._store.get(acct, placed.order_id)
    assert row is not None and row.status == "REJECTED"
    assert await saga.broker_orders(f"{acct}/{placed.order_id}") == []


async def test_no_fresh_quote_is_refused(saga: SagaStack) -> None:
    acct = await saga.funded_account("1000")
    # ZZZZ is never quoted by the feed.
    placed = await saga.place(acct, symbol="ZZZZ", side="buy", qty="1")
    assert placed.status == OrderStatus.REJECTED
    assert placed.reason and placed.reason.startswith("no price")


@pytest.mark.parametrize(
    "record",
    [
        "{not json",
        '{"symbol": "INTC", "bid": "NaN", "ask": "NaN", "timestamp": "2026-11-25T14:30:00Z", '
        '"received_at": NOW}',
        # Stamped an hour ahead: before, it stayed fresh for ever.
        '{"symbol": "INTC", "bid": "29.99", "ask": "30.01", "timestamp": "2026-11-25T14:30:00Z", '
        '"received_at": AHEAD}',
    ],
    ids=["not-json", "nan", "future"],
)
async def test_a_bad_quote_refuses_the_order_and_the_workflow_completes(
    saga: SagaStack, record: str
) -> None:
    acct = await saga.funded_account("1000")
    # INTC is not polled by the stack's feed, so the record stays as written.
    await saga.redis.set(
        saga.keys.quote("INTC"),
        record.replace("NOW", str(time.time())).replace("AHEAD", str(time.time() + 3600)),
    )
    placed = await saga.place(acct, symbol="INTC", side="buy", qty="1")
    assert placed.status == OrderStatus.REJECTED
    assert placed.reason and placed.reason.startswith("no price")
    row = await saga.orders._store.get(acct, placed.order_id)
    assert row is not None and row.status == "REJECTED"
    handle = saga.temporal.get_workflow_handle(f"order/{acct}/{placed.order_id}")
    await handle.result()
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def test_broker_rejection_voids_the_hold(saga: SagaStack) -> None:
    acct = await saga.funded_account("1000")
    placed = await saga.place(
        acct, symbol="ZZZZ", side="buy", qty="1", order_type="limit", limit_price="10"
    )
    assert placed.accepted
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.REJECTED
    assert final.reason and "broker rejected" in final.reason
    assert await balances(saga, acct) == {"USD": (Decimal("1000.00"), Decimal(0))}
    # Placed again once closed: the first answer (it was held), with the status it has now.
    again = await saga.place(
        acct,
        symbol="ZZZZ",
        side="buy",
        qty="1",
        order_type="limit",
        limit_price="10",
        order_id=placed.order_id,
    )
    assert (again.accepted, again.held, again.status) == (True, placed.held, OrderStatus.REJECTED)


async def test_partial_fills_sum_to_the_order(saga: SagaStack) -> None:
    await saga.sim.admin("PUT", "/admin/fill_model", {"mode": "partial", "parts": 4, "auto": True})
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="NVDA", side="buy", qty="3")
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.SETTLED
    assert final.filled_qty == Decimal(3)
    bal = await balances(saga, acct)
    assert bal["NVDA"] == (Decimal(3), Decimal(0))
    assert bal["USD"][1] == 0


async def test_cancel_of_a_resting_limit_releases_everything(saga: SagaStack) -> None:
    acct = await saga.funded_account("10000")
    low = (await price_of(saga, "AAPL") * Decimal("0.7")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct,
        symbol="AAPL",
        side="buy",
        qty="2",
        order_type="limit",
        limit_price=low,
        time_in_force="gtc",
    )
    assert placed.accepted
    await _until(saga, acct, placed.order_id, lambda s: s.broker_order_id is not None)
    res = await saga.orders.cancel_order(acct, placed.order_id)
    assert res.accepted
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.CANCELED
    assert final.filled_qty == 0
    assert await balances(saga, acct) == {"USD": (Decimal("10000.00"), Decimal(0))}
    with pytest.raises(UserError, match="already CANCELED"):
        await saga.orders.cancel_order(acct, placed.order_id)


async def test_day_order_expires_when_the_broker_closes(saga: SagaStack) -> None:
    acct = await saga.funded_account("10000")
    low = (await price_of(saga, "TSLA") * Decimal("0.7")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct, symbol="TSLA", side="buy", qty="1", order_type="limit", limit_price=low
    )
    await _until(saga, acct, placed.order_id, lambda s: s.broker_order_id is not None)
    await saga.sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.EXPIRED
    assert await balances(saga, acct) == {"USD": (Decimal("10000.00"), Decimal(0))}


async def test_same_order_id_concurrently_is_one_order(saga: SagaStack) -> None:
    acct = await saga.funded_account("10000")
    fields = {"symbol": "AAPL", "side": "buy", "qty": "1", "order_id": "dup-1"}
    results = await asyncio.gather(*(saga.place(acct, **fields) for _ in range(5)))
    assert {r.workflow_id for r in results} == {f"order/{acct}/dup-1"}
    assert len({r.held for r in results}) == 1
    with pytest.raises(UserError, match="other parameters"):
        await saga.place(acct, **{**fields, "qty": "2"})
    final = await saga.wait(acct, "dup-1")
    assert final.status == OrderStatus.SETTLED
    assert len(await saga.broker_orders(f"{acct}/dup-1")) == 1
    rows = await saga.pool.fetchval("SELECT count(*) FROM orders WHERE account_id = $1", acct)
    assert rows == 1
    # Placing it again after it finished answers from the finished order.
    again = await saga.place(acct, **fields)
    assert again.status == OrderStatus.SETTLED


async def test_lost_events_the_poll_completes_the_order(saga: SagaStack) -> None:
    """Every event is lost and the fill comes after the submit's answer: only the saga's own
    polls can see it. No signal reached the workflow, its asks did, and it settled."""
    await saga.sim.admin("PUT", "/admin/faults", {"event_drop_prob": 1.0})
    await saga.sim.admin("PUT", "/admin/fill_model", {"mode": "instant", "parts": 1, "auto": False})
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="AMZN", side="buy", qty="1")
    await _until(saga, acct, placed.order_id, lambda s: s.broker_order_id is not None)
    await saga.sim.admin("POST", "/admin/tick")  # the fill, whose event is dropped
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.SETTLED and final.filled_qty == 1
    history = await saga.temporal.get_workflow_handle(final.workflow_id).fetch_history()
    signals = [
        e for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    asks = [
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "reconcile_order"
    ]
    assert signals == [] and asks, (len(signals), len(asks))


async def _until(
    saga: SagaStack, acct: str, order_id: str, pred: object, timeout_s: float = 30
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        state = await saga.orders.get_order(acct, order_id)
        if pred(state):  # type: ignore[operator]
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached; state {state.status}")
        await asyncio.sleep(0.2)


async def test_marketable_limit_buy_fills_at_or_below_its_limit(saga: SagaStack) -> None:
    acct = await saga.funded_account("10000")
    limit = (await price_of(saga, "AMD") * Decimal("1.01")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct, symbol="AMD", side="buy", qty="4", order_type="limit", limit_price=limit
    )
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.SETTLED
    assert final.filled_notional <= 4 * limit
    bal = await balances(saga, acct)
    assert bal["AMD"] == (Decimal(4), Decimal(0))


async def test_cancel_during_partial_fills_keeps_the_fills_and_releases_the_rest(
    saga: SagaStack,
) -> None:
    await saga.sim.admin("PUT", "/admin/fill_model", {"mode": "partial", "parts": 4, "auto": False})
    acct = await saga.funded_account("10000")
    limit = (await price_of(saga, "AAPL") * Decimal("1.2")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct, symbol="AAPL", side="buy", qty="4", order_type="limit", limit_price=limit
    )
    await _until(saga, acct, placed.order_id, lambda s: s.broker_order_id is not None)
    await saga.sim.admin("POST", "/admin/tick")
    await _until(saga, acct, placed.order_id, lambda s: s.filled_qty > 0)

    await saga.orders.cancel_order(acct, placed.order_id)
    for _ in range(3):  # fills may race the cancel until the broker processes it
        await saga.sim.admin("POST", "/admin/tick")
        await asyncio.sleep(0.2)
    final = await saga.wait(acct, placed.order_id)

    [broker_order] = await saga.broker_orders(f"{acct}/{placed.order_id}")
    assert broker_order["status"] == "canceled"
    assert final.status == OrderStatus.CANCELED
    assert 0 < final.filled_qty < 4
    assert final.filled_qty == Decimal(broker_order["filled_qty"])
    bal = await balances(saga, acct)
    assert bal["AAPL"] == (final.filled_qty, Decimal(0))
    cost = round_cash(final.filled_notional)
    assert bal["USD"] == (Decimal("10000") - cost - final.fees, Decimal(0))


async def test_cancel_after_the_order_settled_is_refused(saga: SagaStack) -> None:
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="1")
    await saga.wait(acct, placed.order_id)
    with pytest.raises(UserError, match="already SETTLED"):
        await saga.orders.cancel_order(acct, placed.order_id)


async def test_the_orders_table_answers_place_as_the_workflow_did(saga: SagaStack) -> None:
    """Past Temporal's retention only the orders row is left: it still says the order was held."""
    from ordersaga.client import state_from_row
    from workflows.models import place_result

    acct = await saga.funded_account("1000")
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="1")
    await saga.wait(acct, placed.order_id)
    refused = await saga.place(acct, symbol="AAPL", side="buy", qty="100")
    await saga.wait(acct, refused.order_id)
    for answer in (placed, refused):
        row = await saga.orders._store.get(acct, answer.order_id)
        assert row is not None
        again = place_result(state_from_row(row))
        assert (again.accepted, again.held) == (answer.accepted, answer.held)
    assert place_result(state_from_row(row)).hold_asset is None  # the refused one held nothing


async def test_list_orders_reads_visibility_and_the_table_for_orders_past_retention(
    saga: SagaStack,
) -> None:
    """Orders come from Temporal visibility (their OrderStatus search attribute, as the
    workflow last set it); one whose workflow is gone (past retention) from its orders row."""
    acct = await saga.funded_account("10000")
    settled = await saga.place(acct, symbol="AAPL", side="buy", qty="1")
    refused = await saga.place(
        acct, symbol="AAPL", side="buy", qty="1000", order_type="limit", limit_price="1000"
    )
    assert not refused.accepted
    await saga.wait(acct, settled.order_id)
    await saga.pool.execute(
        "INSERT INTO orders (account_id, order_id, workflow_id, symbol, side, order_type,"
        " time_in_force, qty, params_hash, status)"
        " VALUES ($1, 'old-1', 'order/gone', 'MSFT', 'buy', 'market', 'day', 1, 'h', 'SETTLED')",
        acct,
    )
    want = {f"{acct}/{settled.order_id}": "SETTLED", f"{acct}/{refused.order_id}": "REJECTED"}
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # visibility follows the workflows' last upsert a moment later
        by = {r["order"]: r for r in await saga.orders.list_orders(account_id=acct)}
        now = {key: by[key]["status"] for key in want if key in by}
        if now == want or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert now == want, by
    assert {by[key]["source"] for key in want} == {"temporal"}
    assert (
        by[f"{acct}/old-1"]["source"] == "orders table" and by[f"{acct}/old-1"]["symbol"] == "MSFT"
    )
    assert len(by) == 3
    only = await saga.orders.list_orders(account_id=acct, status="REJECTED")
    assert [r["order"] for r in only] == [f"{acct}/{refused.order_id}"]
