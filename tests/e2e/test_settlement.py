"""Settlement of sale proceeds, T+1 (issue 17, part 4) on the real stack: Temporal, the real
workers, Postgres, Redis and the simulator. A sale's proceeds buy at once; a withdrawal of them
before their settlement date is refused with the figures and changes nothing; the settlement job
(driven with a date, not by waiting) settles them on their date, once however often it runs;
then they can be withdrawn. ``ordersaga account show`` shows settled and unsettled cash.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from activities.ledger.settlement import settlement_date
from cli.commands.account import balances_json
from core.calendar import NEW_YORK
from core.errors import UserError
from core.keys import RedisKeys
from core.statuses import OrderStatus
from ordersaga.schedules import (
    SETTLEMENT_SCHEDULE_ID,
    ensure_settlement_schedule,
    run_settlement_now,
)
from tests.support.brokersim import BrokerSim, brokersim_fixture
from tests.support.e2e import Stack, e2e_stack
from tests.support.workerproc import workers_running
from workflows.settlement import SettlementWorkflow, SettleReport

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


sim = brokersim_fixture(
    scope="module",
    fill_model={"mode": "partial", "parts": 2, "tick_ms": 50, "auto": True, "walk": False},
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    temporal_env: WorkflowEnvironment, redis_keys: RedisKeys, sim: BrokerSim
) -> AsyncIterator[Stack]:
    async with e2e_stack(temporal_env.client, redis_keys, sim, "settle") as st:
        async with workers_running(temporal_env.client, st.settings):
            yield st
        report = await check_ledger(st.pool)
        assert report.ok, report.violations()  # lots match their fills' entries too


async def withdrawals(stack: Stack, acct: str) -> int:
    return int(
        await stack.pool.fetchval(
            "SELECT count(*) FROM journal_entries WHERE code = 'withdraw'"
            " AND idempotency_key LIKE $1",
            f"{acct}/%",
        )
    )


async def test_sale_proceeds_buy_at_once_and_are_withdrawn_only_once_settled(
    stack: Stack, temporal_env: WorkflowEnvironment
) -> None:
    acct = await stack.funded_account("5")  # 5 dollars of settled cash
    await stack.orders.deposit(acct, "2", asset="AAPL")
    sell = stack.orders.build_request(
        account_id=acct,
        symbol="AAPL",
        side="sell",
        qty="2",
        order_type="limit",
        limit_price=await stack.price("0.98"),  # marketable: fills in two parts
    )
    assert (await stack.orders.place_order(sell)).accepted
    sold = await stack.orders.wait(acct, sell.order_id, timeout_s=60)
    assert sold.status == OrderStatus.SETTLED, sold
    proceeds = sold.posted_cash - sold.fees
    trade = datetime.now(NEW_YORK).date()
    settles = settlement_date(trade)

    lots = await stack.pool.fetch(
        "SELECT amount, trade_date, settles_on, settled FROM unsettled_lots"
        " WHERE account_id = $1 ORDER BY id",
        acct,
    )
    # one lot per posted fill (the saga may see two parts as one cumulative report)
    assert lots and sum(lot["amount"] for lot in lots) == proceeds
    assert {(lot["trade_date"], lot["settles_on"], lot["settled"]) for lot in lots} == {
        (trade, settles, False)
    }
    usd = (await stack.orders.balance(acct)).of("USD")
    assert (usd.available, usd.unsettled, usd.settled) == (5 + proceeds, proceeds, 5)
    assert usd.next_settles == settles

    # Before settlement: the proceeds cannot leave; nothing changes.
    with pytest.raises(UserError) as refused:
        await stack.orders.withdraw(acct, "5.01")
    assert str(refused.value) == (
        f"insufficient settled USD in {acct}: available {5 + proceeds}, unsettled {proceeds}"
        f" (sale proceeds settle T+1), withdrawable 5.00, requested 5.01"
    )
    assert (await stack.orders.balance(acct)).of("USD") == usd
    assert await withdrawals(stack, acct) == 0

    # ... but they buy at once: a buy bigger than the settled cash is accepted and fills.
    buy = stack.limit_buy(acct, await stack.price("1.02"))
    placed = await stack.orders.place_order(buy)
    assert placed.accepted and placed.held > 5, placed
    bought = await stack.orders.wait(acct, buy.order_id, timeout_s=60)
    assert bought.status == OrderStatus.SETTLED, bought
    usd = (await stack.orders.balance(acct)).of("USD")
    left = 5 + proceeds - (bought.posted_cash + bought.fees)
    # unsettled cash is spent last: the buy took the 5 settled dollars first
    assert (usd.available, usd.settled, usd.unsettled) == (left, 0, left)
    with pytest.raises(UserError, match=r"withdrawable 0\.00, requested 0\.01"):
        await stack.orders.withdraw(acct, "0.01")

    # The job for the trade date settles nothing (the lots are due the next session) ...
    client = temporal_env.client
    early = await run_settlement_now(stack.settings, client, as_of=trade)
    assert (early.as_of, early.settled) == (trade, 0)
    # ... for their settlement date it settles them all, and run again, nothing more.
    first = await run_settlement_now(stack.settings, client, as_of=settles)
    assert (first.settled, first.amounts) == (len(lots), {"USD": proceeds})
    again = await run_settlement_now(stack.settings, client, as_of=settles)
    assert (again.settled, again.amounts) == (0, {})
    settled_for = await stack.pool.fetch(
        "SELECT settled, settled_for, version FROM unsettled_lots WHERE account_id = $1", acct
    )
    assert {tuple(r) for r in settled_for} == {(True, settles, 1)}  # settled once each

    usd = (await stack.orders.balance(acct)).of("USD")
    assert (usd.settled, usd.unsettled, usd.next_settles) == (left, 0, None)
    shown = balances_json(await stack.orders.balance(acct))["balances"]
    assert isinstance(shown, list) and shown[0]["asset"] == "USD"
    assert (shown[0]["settled"], shown[0]["unsettled"]) == (str(left), "0.00")
    done = await stack.orders.withdraw(acct, left)
    assert done.available_after == 0
    assert await withdrawals(stack, acct) == 1


async def test_the_schedule_runs_the_job_weekdays_after_the_close_in_new_york(
    stack: Stack, temporal_env: WorkflowEnvironment
) -> None:
    client = temporal_env.client
    handle = client.get_schedule_handle(SETTLEMENT_SCHEDULE_ID)
    try:
        assert await ensure_settlement_schedule(client, stack.settings)
        await handle.pause()  # no run by the clock during the test: one triggered below
        described = await handle.describe()
        assert described.schedule.spec.time_zone_name == "America/New_York"
        upcoming = [t.astimezone(NEW_YORK) for t in described.info.next_action_times]
        assert upcoming and all(
            t.weekday() < 5 and (t.hour, t.minute) == (17, 30) for t in upcoming
        ), upcoming
        action = described.schedule.action
        assert action.workflow == SettlementWorkflow.__name__  # type: ignore[attr-defined]
        assert not await ensure_settlement_schedule(client, stack.settings)  # updated, paused
        assert (await handle.describe()).schedule.state.paused
        await handle.trigger()
        for _ in range(100):
            recent = (await handle.describe()).info.recent_actions
            if recent:
                break
            await asyncio.sleep(0.1)
        started = recent[0].action
        report = await client.get_workflow_handle(
            started.workflow_id,  # type: ignore[attr-defined]
            result_type=SettleReport,
        ).result()
        assert report.as_of == datetime.now(NEW_YORK).date() and report.pages >= 1
    finally:
        await handle.delete()
