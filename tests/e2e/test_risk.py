"""Pre-trade risk on the real stack (issue 17, part 3): Temporal, the real workers, Postgres,
Redis and the simulator. An order over a limit is refused with the reason and holds nothing; an
account's override wins over the setting; the daily count holds under concurrency; a halt
refuses the very next order while a live order can still be canceled; REDUCING takes sells only;
resume restores; the Web UI's mirror workflow shows the state.

Buys are limits far below the ask and sells far above it, so accepted orders rest at the broker
(and can be canceled); each test cancels what it left open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.keys import RedisKeys
from core.statuses import OrderStatus
from tests.support.brokersim import BrokerSim, brokersim_fixture
from tests.support.e2e import Stack, e2e_stack
from tests.support.workerproc import workers_running
from workflows.models import OrderRequest, PlaceResult
from workflows.trading import TRADING_WORKFLOW_ID, TradingStateWorkflow

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

MAX_ORDER_NOTIONAL = "1000"  # AAPL is about 190 in the simulator


sim = brokersim_fixture(scope="module", fill_model={"mode": "instant", "parts": 1, "auto": True})


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    temporal_env: WorkflowEnvironment, redis_keys: RedisKeys, sim: BrokerSim
) -> AsyncIterator[Stack]:
    client = temporal_env.client
    risk = {"max_order_notional": MAX_ORDER_NOTIONAL}
    async with e2e_stack(client, redis_keys, sim, "risk", risk=risk) as st:
        async with workers_running(client, st.settings):
            yield st
        assert (await check_ledger(st.pool)).ok


async def cancel_all(stack: Stack, placed: list[PlaceResult]) -> None:
    for p in placed:
        if p.accepted:
            await stack.orders.cancel_order(p.account_id, p.order_id)
    for p in placed:
        if p.accepted:
            final = await stack.orders.wait(p.account_id, p.order_id, timeout_s=60)
            assert final.status == OrderStatus.CANCELED, final


def limit_sell(stack: Stack, account: str, limit: Decimal) -> OrderRequest:
    return stack.orders.build_request(
        account_id=account,
        symbol="AAPL",
        side="sell",
        qty="1",
        order_type="limit",
        limit_price=limit,
    )


async def test_an_order_over_the_per_order_limit_is_refused_and_holds_nothing(
    stack: Stack,
) -> None:
    oc = stack.orders
    acct = await stack.funded_account("100000")
    limit = await stack.price("0.8")  # rests (the simulator refuses limits 50% away)
    placed = await oc.place_order(stack.limit_buy(acct, limit, qty="7"))
    assert not placed.accepted
    assert placed.reason == (
        f"risk limit: notional {limit * 7} USD over the per-order maximum 1000 USD"
    ), placed
    final = await oc.wait(acct, placed.order_id, timeout_s=30)
    assert final.status == OrderStatus.REJECTED and final.reason == placed.reason
    usd = (await oc.balance(acct)).of("USD")
    assert (usd.available, usd.held) == (Decimal("100000.00"), 0)
    row = await oc._store.get(acct, placed.order_id)
    assert row is not None and row.status == "REJECTED" and row.reason == placed.reason
    assert (await oc.risk.account_risk(acct)).usage.orders == 0  # a refusal counts nothing


async def test_an_accounts_override_wins_over_the_setting(stack: Stack) -> None:
    oc = stack.orders
    acct = await stack.funded_account("100000")
    await oc.risk.set_limits(acct, max_order_notional="5000", by="e2e")
    limit = await stack.price("0.8")
    placed = await oc.place_order(stack.limit_buy(acct, limit, qty="7"))
    assert placed.accepted, placed
    shown = await oc.risk.account_risk(acct)
    assert shown.usage.orders == 1 and shown.usage.notional == limit * 7
    await cancel_all(stack, [placed])


async def test_eight_orders_at_once_under_a_daily_count_of_three_accept_exactly_three(
    stack: Stack,
) -> None:
    oc = stack.orders
    acct = await stack.funded_account("100000")
    await oc.risk.set_limits(acct, max_daily_orders=3, by="e2e")
    limit = await stack.price("0.8")  # rests
    requests = [stack.limit_buy(acct, limit) for _ in range(8)]
    placed = await asyncio.wait_for(asyncio.gather(*(oc.place_order(r) for r in requests)), 90)
    accepted = [p for p in placed if p.accepted]
    assert len(accepted) == 3, placed
    for p in placed:
        if not p.accepted:
            assert p.reason == "risk limit: 3 orders today, the daily maximum is 3", p
    assert (await oc.risk.account_risk(acct)).usage.orders == 3
    assert (await oc.balance(acct)).of("USD").held > 0
    await cancel_all(stack, placed)
    # a canceled order gives nothing back: the day's count is of orders sent to the market
    again = await oc.place_order(stack.limit_buy(acct, limit))
    assert not again.accepted and again.reason is not None and "daily maximum" in again.reason


async def mirrored_state(stack: Stack, want: str) -> dict[str, object]:
    """The trading-state workflow's view once it shows ``want`` (within 10 s)."""
    handle = stack.orders.temporal.get_workflow_handle_for(
        TradingStateWorkflow.run, TRADING_WORKFLOW_ID
    )
    deadline = time.monotonic() + 10
    while True:
        view = await handle.query(TradingStateWorkflow.current)
        if view is not None and view.state == want:
            return view.model_dump()
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.2)


async def test_halt_reduce_and_resume(stack: Stack) -> None:
    oc = stack.orders
    acct = await stack.funded_account("100000")
    await oc.deposit(acct, "10", asset="AAPL")
    limit = await stack.price("0.8")  # rests
    live = await oc.place_order(stack.limit_buy(acct, limit))
    assert live.accepted, live
    try:
        await oc.risk.set_trading_state("HALTED", "exchange outage", by="e2e-ops")
        halted_at = time.monotonic()
        refused = await oc.place_order(stack.limit_buy(acct, limit))
        took = time.monotonic() - halted_at
        assert not refused.accepted
        assert refused.reason == "trading halted: no new orders (by e2e-ops: exchange outage)"
        assert took < 1.0, f"the next order was decided {took:.2f} s after the halt"
        sell = await oc.place_order(limit_sell(stack, acct, limit))
        assert not sell.accepted and sell.reason is not None
        # a cancel of a live order still works while halted
        await cancel_all(stack, [live])
        view = await mirrored_state(stack, "HALTED")
        assert view["changed_by"] == "e2e-ops" and view["reason"] == "exchange outage"

        await oc.risk.set_trading_state("REDUCING", "wind down", by="e2e-ops")
        buy = await oc.place_order(stack.limit_buy(acct, limit))
        assert not buy.accepted
        assert buy.reason == "trading reducing: sells only (by e2e-ops: wind down)"
        sell = await oc.place_order(
            limit_sell(stack, acct, limit * Decimal("1.6"))
        )  # rests above the ask
        assert sell.accepted, sell
        await cancel_all(stack, [sell])
        await mirrored_state(stack, "REDUCING")
    finally:
        await oc.risk.set_trading_state("ACTIVE", "all clear", by="e2e-ops")
    resumed = await oc.place_order(stack.limit_buy(acct, limit))
    assert resumed.accepted, resumed
    await cancel_all(stack, [resumed])
    await mirrored_state(stack, "ACTIVE")
    log = await oc.risk.trading_history(3)
    assert [c.state for c in log] == ["ACTIVE", "REDUCING", "HALTED"]
