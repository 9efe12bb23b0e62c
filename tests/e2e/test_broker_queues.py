"""The broker's queues (issue 12, part 7), on the real stack: a submit's time limit counts its
attempts at the broker, not the time it waits for a broker worker; the orders' questions to the
broker go to a queue of their own, so polls never take a submit's or a cancel's slot."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.keys import RedisKeys
from core.statuses import OrderStatus
from tests.support.brokersim import StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import e2e_stack
from tests.support.workerproc import workers_running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def test_a_submit_waiting_for_a_broker_worker_is_sent_when_one_comes(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    """No broker worker for longer than the submit's whole time limit (8 s here) plus the grace
    an absent order gets (6 s): once one starts, the order goes to the broker and settles; it is
    not given up as never received."""
    sim = brokersim_factory(fill_model={"mode": "instant", "parts": 1, "auto": True})
    async with e2e_stack(temporal_env.client, redis_keys, sim, "queues") as stack:
        settings, oc = stack.settings, stack.orders
        assert settings.saga.submit_schedule_to_close_s + settings.saga.absent_grace_s < 16
        acct = await stack.funded_account()
        limit = await stack.price("1.1")
        async with workers_running(temporal_env.client, settings, ("orders",)):
            placed = await oc.place_order(stack.limit_buy(acct, limit))
            assert placed.accepted, placed
            await asyncio.sleep(16)  # the submit waits in the broker queue
            async with workers_running(temporal_env.client, settings, ("broker",)):
                final = await oc.wait(acct, placed.order_id, timeout_s=60)
        assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
        at_broker = [
            o
            for o in await sim.admin("GET", "/v2/orders?status=all")
            if o["client_order_id"] == f"{acct}/{placed.order_id}"
        ]
        assert len(at_broker) == 1
        assert (await check_ledger(stack.pool)).ok

        # Where each broker call went: submits on the broker queue, questions on the asks queue.
        history = await temporal_env.client.get_workflow_handle(final.workflow_id).fetch_history()
        queues = {
            (
                e.activity_task_scheduled_event_attributes.activity_type.name,
                e.activity_task_scheduled_event_attributes.task_queue.name,
            )
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
        }
        assert ("submit_order", settings.broker_task_queue) in queues, queues
        asks = {q for name, q in queues if name == "reconcile_order"}
        assert asks == {settings.asks_task_queue}, queues
