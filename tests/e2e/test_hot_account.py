"""A busy lock on a hot account, on the real stack: orders that find their account locked wait for
it with an ordinary activity (never a local one, which would hold its workflow task open), take
it in turn once it is free, and all settle with the ledger balanced."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.keys import RedisKeys
from core.statuses import OrderStatus
from tests.support.brokersim import StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import e2e_stack
from tests.support.workerproc import workers_running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

ORDERS = 6


async def lock_activities(handle: WorkflowHandle[object, object]) -> int:
    """How many ordinary ``acquire_lock`` activities the order's history has scheduled."""
    n = 0
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            n += attrs.activity_type.name == "acquire_lock"
    return n


async def test_orders_on_a_locked_hot_account_wait_for_the_lock_then_all_settle(
    temporal_env: WorkflowEnvironment,
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(fill_model={"mode": "instant", "parts": 1, "auto": True})
    client = temporal_env.client
    async with e2e_stack(client, redis_keys, sim, "hotaccount") as stack:
        oc = stack.orders
        acct = await stack.funded_account("5000")
        limit = await stack.price("1.05")
        lock = stack.account_lock(redis_client)
        outsider = await lock.try_acquire(acct, "someone-else/o1", ttl_ms=60_000)
        assert outsider is not None
        requests = [stack.limit_buy(acct, limit) for _ in range(ORDERS)]
        handles: list[WorkflowHandle[object, object]] = [
            client.get_workflow_handle(r.workflow_id) for r in requests
        ]
        async with workers_running(client, stack.settings):
            placing = [asyncio.create_task(oc.place_order(r)) for r in requests]

            async def all_waiting() -> bool:
                counts = []
                for h in handles:
                    try:
                        counts.append(await lock_activities(h))
                    except Exception:  # not started yet
                        return False
                return all(counts)

            deadline = asyncio.get_running_loop().time() + 30
            while not await all_waiting():
                assert asyncio.get_running_loop().time() < deadline, "orders did not wait"
                await asyncio.sleep(0.1)
            # While the outsider holds the lock nobody is answered and nothing is held.
            assert not any(p.done() for p in placing)
            assert (await oc.balance(acct)).of("USD").held == 0
            assert await lock.release(acct, "someone-else/o1")

            placed = await asyncio.wait_for(asyncio.gather(*placing), 60)
            finals = [await oc.wait(acct, r.order_id, timeout_s=60) for r in requests]
        assert all(p.accepted for p in placed), placed
        assert [f.status for f in finals] == [OrderStatus.SETTLED] * ORDERS, [
            (f.status, f.reason) for f in finals
        ]
        spent = sum((f.filled_notional + f.fees for f in finals), Decimal(0))
        bal = await oc.balance(acct)
        assert bal.of("AAPL").available == ORDERS, bal
        assert bal.of("USD").held == 0 and bal.of("USD").available == Decimal(5000) - spent, bal
        assert (await check_ledger(stack.pool)).ok
        assert await lock.holder(acct) is None  # every order unlocked
