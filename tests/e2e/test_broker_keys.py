"""A broker key rotation mid-order (issue 12, part 3), on the real stack: the broker refuses the
saga's keys while an order rests there; the order parks (NEEDS_ATTENTION, its hold kept) instead
of failing, keeps asking with a back-off, and once the broker takes the keys again it resumes by
itself and settles. No operator, no lost fill."""

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
from workflows.models import OrderState

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def test_an_order_lives_through_a_broker_key_rotation_and_settles(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    keys_sim = brokersim_factory(fill_model={"mode": "instant", "parts": 1, "auto": False})
    async with e2e_stack(temporal_env.client, redis_keys, keys_sim, "brokerkeys") as stack:
        settings, oc = stack.settings, stack.orders
        acct = await stack.funded_account()
        limit = await stack.price("1.1")
        async with workers_running(temporal_env.client, settings):
            placed = await oc.place_order(stack.limit_buy(acct, limit))
            assert placed.accepted, placed

            async def state() -> OrderState:
                return await oc.get_order(acct, placed.order_id)

            for _ in range(100):
                if (await state()).broker_order_id:
                    break
                await asyncio.sleep(0.1)

            # The broker's keys change; the workers still send the old ones.
            await keys_sim.admin(
                "PUT", "/admin/keys", {"key_id": "rotated", "secret_key": "rotated-secret"}
            )
            keys_sim.key_id, keys_sim.secret_key = "rotated", "rotated-secret"  # our admin's
            parked = await state()
            for _ in range(200):
                parked = await state()
                if parked.status == OrderStatus.NEEDS_ATTENTION:
                    break
                await asyncio.sleep(0.1)
            assert parked.status == OrderStatus.NEEDS_ATTENTION, parked.status
            assert parked.reason and "at the broker" in parked.reason, parked.reason
            assert (await oc.balance(acct)).of("USD").held > 0  # the hold is kept

            # Rolled back (or the workers got the new keys): the broker answers again.
            restored = {
                "key_id": settings.broker_key_id,
                "secret_key": settings.broker_secret_key.get_secret_value(),
            }
            await keys_sim.admin("PUT", "/admin/keys", restored)
            keys_sim.key_id, keys_sim.secret_key = restored["key_id"], restored["secret_key"]
            await keys_sim.admin("POST", "/admin/tick")  # the order fills meanwhile
            final = await oc.wait(acct, placed.order_id, timeout_s=60)
        assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
        notes = [e.event for e in final.timeline]
        assert "the broker answers again; resuming" in notes, notes
        bal = await oc.balance(acct)
        assert bal.of("AAPL").available == 1 and bal.of("USD").held == 0
        assert (await check_ledger(stack.pool)).ok
