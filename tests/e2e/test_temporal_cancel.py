"""A Temporal cancel of an order's workflow (an operator's ``temporal workflow cancel``, the Web
UI's button) at the two instants that matter, on the real stack: the real workers, Postgres,
Redis, the simulator over HTTP and the dev server.

During the reserve: the reserve has committed its hold, and the worker that ran it dies before
its workflow task completes (tests/e2e/dying_worker.py); the cancel arrives while no worker runs.
The retried task sees the cancel before anything else: the hold it never heard of must be voided
all the same, and nothing reach the broker.

During the submit: the broker is slow to answer the submit, and the cancel arrives while the
submit is in flight. Past the pivot a cancel must not cut the submit short (its answer would be
lost): the submit's answer is kept and the cancel goes to the broker like a customer's.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.keys import RedisKeys
from core.orderkey import OrderKey
from core.statuses import OrderStatus
from tests.support.brokersim import StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import e2e_stack
from tests.support.workerproc import run_until_it_dies, worker_env, workers_running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

DEPOSIT = "5000"


async def wait_for(check: object, timeout_s: float = 30, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_cancel_while_the_reserves_worker_is_dead_voids_the_hold(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = brokersim_factory(fill_model={"mode": "instant", "parts": 1, "auto": True})
    client = temporal_env.client
    async with e2e_stack(
        client, redis_keys, sim, "cancelreserve", workflow_task_timeout_s=1.0
    ) as stack:
        oc = stack.orders
        acct = await stack.funded_account(DEPOSIT)
        limit = await stack.price("1.05")
        env = worker_env(stack.settings, client.service_client.config.target_host)
        req = stack.limit_buy(acct, limit, qty="2")
        placing = asyncio.create_task(oc.place_order(req))
        await run_until_it_dies(env, tmp_path / "dying-reserve.log", "reserve")
        held = await oc.balance(acct)
        assert held.of("USD").held >= limit * 2, held  # the dead worker's hold committed

        handle: WorkflowHandle[object, object] = client.get_workflow_handle(req.workflow_id)
        await handle.cancel()
        async with workers_running(client, stack.settings):
            # The customer is answered, not left with an update cut off by the workflow's end.
            placed = await asyncio.wait_for(placing, 60)
            assert placed.status == OrderStatus.CANCELED, placed

            async def closed() -> bool:
                return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING

            await wait_for(closed, 60, "the cancelled workflow to close")
        desc = await handle.describe()
        assert desc.status == WorkflowExecutionStatus.CANCELED, desc.status
        bal = await oc.balance(acct)
        assert bal.of("USD").held == 0 and bal.of("USD").available == Decimal(DEPOSIT), bal
        row = await oc._store.get(acct, req.order_id)
        assert row is not None and row.status == OrderStatus.CANCELED.value, row
        assert await stack.broker_orders(str(req.key)) == []
        assert (await check_ledger(stack.pool)).ok


async def test_a_cancel_during_the_submit_keeps_its_answer_and_cancels_at_the_broker(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    # Nothing fills unless told: the order rests at the broker until it is canceled there.
    sim = brokersim_factory(fill_model={"mode": "instant", "parts": 1, "auto": False})
    client = temporal_env.client
    async with e2e_stack(client, redis_keys, sim, "cancelsubmit") as stack:
        oc = stack.orders
        acct = await stack.funded_account(DEPOSIT)
        limit = await stack.price("0.9")
        async with workers_running(client, stack.settings):
            # The broker takes 1.2 s to answer each trading request (within the client's 2 s).
            await sim.admin("PUT", "/admin/faults", {"latency_ms": 1_200})
            placed = await oc.place_order(stack.limit_buy(acct, limit))
            assert placed.accepted, placed
            key = OrderKey.of(acct, placed.order_id)
            handle: WorkflowHandle[object, object] = client.get_workflow_handle(key.workflow_id)

            async def submitting() -> bool:
                desc = await handle.describe()
                pending = desc.raw_description.pending_activities
                return any(a.activity_type.name == "submit_order" for a in pending)

            await wait_for(submitting, 30, "the submit to be in flight")
            await handle.cancel()
            await sim.admin("PUT", "/admin/faults", {"latency_ms": 0})

            async def cancel_at_broker() -> bool:
                orders = await stack.broker_orders(str(key))
                return bool(orders) and orders[0]["status"] == "pending_cancel"

            await wait_for(cancel_at_broker, 30, "the cancel to reach the broker")
            await sim.admin("POST", "/admin/tick")  # the broker completes the cancel
            final = await oc.wait(acct, placed.order_id, timeout_s=60)
            desc = await handle.describe()
        assert desc.status == WorkflowExecutionStatus.COMPLETED, desc.status
        assert final.status == OrderStatus.CANCELED, (final.status, final.reason)
        assert final.cancel_requested and final.cancel_sent, final
        notes = [e.event for e in final.timeline]
        assert "workflow cancel requested" in notes, notes
        at_broker = await stack.broker_orders(str(key))
        assert len(at_broker) == 1, at_broker
        assert final.broker_order_id == at_broker[0]["id"]  # the submit's answer was kept
        assert at_broker[0]["status"] == "canceled", at_broker
        bal = await oc.balance(acct)
        assert bal.of("USD").held == 0 and bal.of("USD").available == Decimal(DEPOSIT), bal
        assert (await check_ledger(stack.pool)).ok
