"""The trust boundary of the saga on real parts: what a caller sends cannot change what an order
costs or where its broker calls go."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from core.money import commission, round_cash
from core.settings import SagaConfig
from core.statuses import OrderStatus
from tests.support.saga import SagaStack
from workflows.models import OrderInput, OrderRequest
from workflows.order import OrderWorkflow

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
