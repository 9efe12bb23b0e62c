"""The trust boundary of the saga on real parts: what a caller sends cannot change what an order
costs or where its broker calls go."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest
from temporalio.common import SearchAttributeKey

from core.errors import UserError
from core.money import commission, round_cash
from core.orderkey import OrderKey
from core.settings import SagaConfig
from core.statuses import OrderStatus
from tests.support.saga import SagaStack
from workflows.models import BrokerReport, OrderInput, OrderRequest, OrderState
from workflows.order import OrderWorkflow

ACCOUNT_ID_KEY = SearchAttributeKey.for_keyword("AccountId")

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def test_a_callers_own_saga_settings_are_ignored(saga: SagaStack) -> None:
    """Started straight through the Temporal frontend with no commission, a negative buffer and
    the broker calls routed to a queue of the caller's: the order runs with its worker's."""
    acct = await saga.funded_account("10000")
    req = OrderRequest(
        account_id=acct, order_id=uuid.uuid4().hex[:12], symbol="AAPL", side="buy", qty=Decimal(1)
    )
    hostile = {
        **SagaConfig().model_dump(mode="json"),
        "commission_rate": "0",
        "commission_minimum": "0",
        "market_buy_buffer": "-0.5",
        "broker_task_queue": "a-queue-of-the-callers",
    }
    handle = await saga.temporal.start_workflow(
        OrderWorkflow.run,
        OrderInput(request=req, config=hostile),
        id=req.workflow_id,
        task_queue=saga.settings.orders_task_queue,
    )
    final = await saga.wait(acct, req.order_id)
    assert final.status == OrderStatus.SETTLED, final.reason
    cost = round_cash(final.filled_notional)
    saga_settings = saga.settings.saga
    fee = commission(cost, saga_settings.commission_rate, saga_settings.commission_minimum)
    assert fee > 0 and final.fees == fee
    assert final.limit_sent is not None and final.limit_sent > final.filled_notional
    assert len(await saga.broker_orders(req.key)) == 1
    assert (await handle.describe()).status is not None


async def _resting_buy(saga: SagaStack, acct: str, symbol: str = "AMZN") -> tuple[str, Decimal]:
    """A one-share limit buy far below the market: it rests at the broker. Its id and limit."""
    quote = await saga.sim.admin("GET", f"/v2/stocks/{symbol}/quotes/latest")
    low = (Decimal(str(quote["quote"]["ap"])) * Decimal("0.7")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct,
        symbol=symbol,
        side="buy",
        qty="1",
        order_type="limit",
        limit_price=low,
        time_in_force="gtc",
    )
    assert placed.accepted
    await until(saga, acct, placed.order_id, lambda s: s.broker_order_id is not None)
    return placed.order_id, low


async def until(
    saga: SagaStack, acct: str, order_id: str, pred: Any, timeout_s: float = 30
) -> OrderState:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        state = await saga.orders.get_order(acct, order_id)
        if pred(state):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached; state {state.status} {state.reason}")
        await asyncio.sleep(0.2)


async def until_asked(handle: Any, timeout_s: float = 15) -> None:
    """Until the workflow has asked the broker about the order after the last signal."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        events = (await handle.fetch_history()).events
        last_signal = max(
            i
            for i, e in enumerate(events)
            if e.HasField("workflow_execution_signaled_event_attributes")
        )
        if any(
            e.activity_task_completed_event_attributes.scheduled_event_id
            and events[
                e.activity_task_completed_event_attributes.scheduled_event_id - 1
            ].activity_task_scheduled_event_attributes.activity_type.name
            == "reconcile_order"
            for e in events[last_signal:]
            if e.HasField("activity_task_completed_event_attributes")
        ):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the broker was not asked after the signals")


async def test_forged_broker_reports_move_no_money(saga: SagaStack) -> None:
    """Signals sent straight to the frontend, one naming another broker order with 1,000 shares
    for $1, one naming the order's own broker order, filled at $1: neither is booked; the broker,
    asked, says the order rests, and it ends as the broker says."""
    acct = await saga.funded_account("10000")
    order_id, _ = await _resting_buy(saga, acct)
    before = await saga.orders.get_order(acct, order_id)
    handle = saga.temporal.get_workflow_handle(OrderKey.of(acct, order_id).workflow_id)
    for forged in (
        BrokerReport(
            source="event",
            broker_order_id="someone-elses",
            status="filled",
            filled_qty=Decimal(1000),
            filled_notional=Decimal("1.00"),
            terminal=True,
        ),
        BrokerReport(
            source="event",
            broker_order_id=before.broker_order_id,
            status="filled",
            filled_qty=Decimal(1),
            filled_notional=Decimal("1.00"),
            terminal=True,
        ),
    ):
        await handle.signal(OrderWorkflow.broker_update, forged)
    # the signals made the saga ask the broker, which says the order rests: nothing booked
    await until_asked(handle)
    state = await saga.orders.get_order(acct, order_id)
    assert state.status == OrderStatus.SUBMITTED and state.filled_qty == 0
    bal = (await saga.orders.balance(acct)).balances
    assert [(b.asset, b.held > 0) for b in bal] == [("USD", True)]
    await saga.orders.cancel_order(acct, order_id)
    final = await saga.wait(acct, order_id)
    assert final.status == OrderStatus.CANCELED and final.filled_qty == 0
    assert [(b.asset, b.available, b.held) for b in (await saga.orders.balance(acct)).balances] == [
        ("USD", Decimal("10000.00"), Decimal(0))
    ]


async def test_a_step_that_cannot_go_on_parks_the_order_until_resumed(saga: SagaStack) -> None:
    """Past the pivot the hold is closed behind the saga's back, then the broker fills: the post
    is refused for good. The order is parked (NEEDS_ATTENTION, its reason, the hold kept, the
    workflow running), and once an operator reopens the hold and resumes it, it settles."""
    acct = await saga.funded_account("10000")
    order_id, low = await _resting_buy(saga, acct, "NVDA")
    key = OrderKey.of(acct, order_id)
    await saga.pool.execute("UPDATE holds SET status = 'voided' WHERE order_id = $1", key)
    await saga.sim.admin("PUT", "/admin/prices", {"NVDA": str(low - 1)})
    await saga.sim.admin("POST", "/admin/tick")
    parked = await until(
        saga, acct, order_id, lambda s: s.status == OrderStatus.NEEDS_ATTENTION, timeout_s=30
    )
    assert parked.reason and "post_fill" in parked.reason
    desc = await saga.temporal.get_workflow_handle(key.workflow_id).describe()
    assert desc.status is not None and desc.status.name == "RUNNING"
    row = await saga.orders._store.get(acct, order_id)
    assert row is not None and row.status == "NEEDS_ATTENTION"
    with pytest.raises(UserError, match="not parked"):
        await saga.orders.resume_order(acct, (await _resting_buy(saga, acct, "TSLA"))[0])

    await saga.pool.execute("UPDATE holds SET status = 'open' WHERE order_id = $1", key)
    await saga.orders.resume_order(acct, order_id)
    final = await saga.wait(acct, order_id)
    assert final.status == OrderStatus.SETTLED and final.filled_qty == 1
    shares = (await saga.orders.balance(acct)).of("NVDA")
    assert (shares.available, shares.held) == (Decimal(1), Decimal(0))


async def _started_directly(
    saga: SagaStack, req: OrderRequest, workflow_id: str | None = None
) -> OrderState:
    """An order started straight through the Temporal frontend, past the SDK's checks."""
    handle = await saga.temporal.start_workflow(
        OrderWorkflow.run,
        OrderInput(request=req),
        id=workflow_id or req.workflow_id,
        task_queue=saga.settings.orders_task_queue,
    )
    return await asyncio.wait_for(handle.result(), 60)  # ends: never FAILED, never stuck


async def _no_row_no_hold(saga: SagaStack, account_id: str, order_id: str) -> None:
    assert await saga.orders._store.get(account_id, order_id) is None
    held = await saga.pool.fetchval(
        "SELECT count(*) FROM holds WHERE order_id = $1", f"{account_id}/{order_id}"
    )
    assert held == 0


@pytest.mark.parametrize("side", ["buy", "sell"])
async def test_a_quantity_of_1e_minus_1000030_is_refused_at_the_door(
    saga: SagaStack, side: str
) -> None:
    """It passed validation (normalised to 0): the sell retried a DataError forever and never
    answered, the buy held 0.00 and failed. Now: REJECTED at once, nothing held or written."""
    acct = await saga.funded_account("10000", shares={"AAPL": "5"})
    tiny = Decimal("1e-1000030")
    req = OrderRequest(
        account_id=acct, order_id=uuid.uuid4().hex[:12], symbol="AAPL", side=side, qty=tiny
    )
    with pytest.raises(UserError, match="decimals"):  # it never answered
        await asyncio.wait_for(saga.place(acct, symbol="AAPL", side=side, qty="1e-1000030"), 30)
    final = await _started_directly(saga, req)
    assert final.status == OrderStatus.REJECTED and final.held == 0
    assert final.reason is not None and "quantity" in final.reason
    await _no_row_no_hold(saga, acct, req.order_id)


async def test_a_notional_beyond_the_maximum_is_refused_not_failed(saga: SagaStack) -> None:
    """A 1e6 x 1e6 limit buy answered "CANCELED, compensated" while its workflow FAILED."""
    acct = await saga.funded_account("10000")
    fields: dict[str, Any] = {
        "symbol": "AAPL",
        "side": "buy",
        "qty": "1000000",
        "order_type": "limit",
        "limit_price": "1000000",
    }
    with pytest.raises(UserError, match="notional"):
        await asyncio.wait_for(saga.place(acct, **fields), 30)
    req = OrderRequest(
        account_id=acct,
        order_id=uuid.uuid4().hex[:12],
        symbol="AAPL",
        side="buy",
        qty=Decimal(1_000_000),
        order_type="limit",
        limit_price=Decimal(1_000_000),
    )
    final = await _started_directly(saga, req)
    assert final.status == OrderStatus.REJECTED, final.reason
    assert final.reason is not None and "notional" in final.reason
    await _no_row_no_hold(saga, acct, req.order_id)


async def test_a_request_for_another_order_is_refused_by_the_workflow(saga: SagaStack) -> None:
    """A workflow ``order/<mine>/<x>`` started with someone else's ids holds nothing of theirs
    and writes no row under their ids."""
    mine, theirs = await saga.funded_account("10000"), await saga.funded_account("10000")
    req = OrderRequest(
        account_id=theirs, order_id=uuid.uuid4().hex[:12], symbol="AAPL", side="buy", qty=Decimal(1)
    )
    own_id = OrderKey.of(mine, uuid.uuid4().hex[:12]).workflow_id
    final = await _started_directly(saga, req, own_id)
    assert final.status == OrderStatus.REJECTED and final.held == 0
    assert final.reason is not None and "not those of its workflow" in final.reason
    await _no_row_no_hold(saga, theirs, req.order_id)
    balances = await saga.orders.balance(theirs)
    assert all(b.held == 0 for b in balances.balances)
    # Listed under the workflow's own account, never theirs (the Web UI, list_orders).
    desc = await saga.temporal.get_workflow_handle(own_id).describe()
    assert desc.typed_search_attributes.get(ACCOUNT_ID_KEY) == mine


@pytest.mark.parametrize(
    "bad",
    [
        {"qty": "1E+999999999999999999999"},
        {"qty": "NaN"},
        {"side": "sideways"},
        {"order_type": ["market"]},
        {"symbol": 5},
    ],
    ids=["huge exponent", "NaN", "bad side", "list type", "number symbol"],
)
async def test_an_input_that_does_not_decode_is_refused_not_left_running(
    saga: SagaStack, bad: dict[str, object]
) -> None:
    """A start straight through the frontend with an input no model decodes: the order is
    refused at the door (REJECTED, its reason, no row, nothing held) and the workflow completes;
    it used to fail every workflow task before any workflow code ran, Running for ever."""
    acct = await saga.funded_account("100")
    order_id = uuid.uuid4().hex[:12]
    request = {"account_id": acct, "order_id": order_id, "symbol": "AAPL", "side": "buy",
               "qty": "1", **bad}  # fmt: skip
    handle = await saga.temporal.start_workflow(
        "OrderWorkflow",
        {"request": request},
        id=OrderKey.of(acct, order_id).workflow_id,
        task_queue=saga.settings.orders_task_queue,
    )
    final = await asyncio.wait_for(handle.result(), 30)
    assert final["status"] == "REJECTED", final
    assert final["reason"].startswith("invalid request: request."), final["reason"]
    await _no_row_no_hold(saga, acct, order_id)
    assert all(b.held == 0 for b in (await saga.orders.balance(acct)).balances)
