"""A long-lived order continues as new on the real stack (issue 13: it was tested only with
stand-in activities): its history passes the limit while it rests at the broker, the workflow
continues as new carrying its fills, and the fills that come after are booked on top of them."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.keys import RedisKeys
from core.statuses import OrderStatus
from tests.support.brokersim import StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import e2e_stack
from tests.support.workerproc import workers_running
from workflows.models import OrderInput

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def test_a_resting_order_continues_as_new_and_keeps_its_fills(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(fill_model={"mode": "partial", "parts": 4, "auto": False})
    saga = {"max_history_events": 40, "fill_poll_max_interval_s": 2.0}
    async with e2e_stack(temporal_env.client, redis_keys, sim, "canew", saga=saga) as stack:
        oc = stack.orders
        acct = await stack.funded_account()
        limit = await stack.price("1.1")
        async with workers_running(temporal_env.client, stack.settings):
            placed = await oc.place_order(
                account_id=acct, symbol="AAPL", side="buy", qty="4", order_type="limit",
                limit_price=limit, time_in_force="gtc",
            )  # fmt: skip
            handle = oc.temporal.get_workflow_handle(f"order/{acct}/{placed.order_id}")
            first_run = (await handle.describe()).run_id
            for part in range(1, 5):
                for _ in range(300):  # each part once the saga has booked the one before
                    state = await oc.get_order(acct, placed.order_id)
                    if state.broker_order_id and state.filled_qty == part - 1:
                        break
                    await asyncio.sleep(0.1)
                await sim.admin("POST", "/admin/tick")
            final = await oc.wait(acct, placed.order_id, timeout_s=60)
        assert final.status == OrderStatus.SETTLED and final.filled_qty == 4, final.status
        # It ran as a chain of runs, each but the last ending in a continue-as-new, and a run
        # started carrying fills already booked (neither none nor all of them).
        carried: list[Decimal] = []
        run_id: str | None = first_run
        while run_id is not None:
            run = oc.temporal.get_workflow_handle(handle.id, run_id=run_id)
            events = (await run.fetch_history()).events
            start = events[0].workflow_execution_started_event_attributes
            # The input as the workers' converter reads it (payloads are encrypted).
            [inp] = await oc.temporal.data_converter.decode(start.input.payloads, [OrderInput])
            if inp.carried is not None:
                carried.append(inp.carried.filled_qty)
            end = events[-1]
            run_id = None
            if end.HasField("workflow_execution_continued_as_new_event_attributes"):
                run_id = (
                    end.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                )
        assert carried, "the order never continued as new"
        assert any(0 < qty < 4 for qty in carried), carried
        notes = [e.event for e in final.timeline]
        assert any(n.startswith("continued as new") for n in notes), notes
        # Fills booked once each across the runs: the ledger holds exactly the broker's 4.
        bal = await oc.balance(acct)
        assert bal.of("AAPL").available == 4 and bal.of("USD").held == 0
        row = await oc._store.get(acct, placed.order_id)
        assert row is not None and row.status == "SETTLED" and row.filled_qty == 4
        assert (await check_ledger(stack.pool)).ok
