"""A replaced order heard of through the listener: the replacement's events (client order id
``<key>/r1``) reach the order's workflow, so the order settles at the broker's word, not at its
next poll (an hour away here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from core.keys import RedisKeys
from core.statuses import OrderStatus
from tests.conftest import scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.saga import SagaStack, saga_settings, saga_stack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

HOUR = 3600.0


@pytest_asyncio.fixture(loop_scope="session")
async def slow_polls(
    temporal_env: WorkflowEnvironment, redis_keys: RedisKeys, saga_sim: BrokerSim
) -> AsyncIterator[SagaStack]:
    async with scratch_database("replace") as database_url:
        keys = RedisKeys(f"{redis_keys.prefix}replace:")
        polls = {"fill_poll_interval_s": HOUR, "fill_poll_max_interval_s": HOUR}
        settings = saga_settings(database_url, keys, saga_sim.url, saga=polls)
        async with saga_stack(temporal_env.client, settings, saga_sim) as stack:
            await stack.reset_sim()
            try:
                yield stack
            finally:
                await stack.reset_sim()
            assert (await stack.ledger_report()).ok


async def test_the_replacements_fill_reaches_the_order_through_the_listener(
    slow_polls: SagaStack,
) -> None:
    saga = slow_polls
    # Matching only when ticked: the fill comes after the replace's own events are long heard.
    await saga.sim.admin("PUT", "/admin/fill_model", {"auto": False})
    acct = await saga.funded_account("10000")
    quote = await saga.sim.admin("GET", "/v2/stocks/AAPL/quotes/latest")
    ask = Decimal(str(quote["quote"]["ap"]))
    low, high = ((ask * Decimal(f)).quantize(Decimal("0.01")) for f in ("0.8", "1.1"))
    placed = await saga.place(
        acct, symbol="AAPL", side="buy", qty="2", order_type="limit", limit_price=low,
        time_in_force="gtc",
    )  # fmt: skip
    assert placed.accepted, placed
    for _ in range(200):
        if (await saga.orders.get_order(acct, placed.order_id)).broker_order_id:
            break
        await asyncio.sleep(0.05)
    res = await saga.orders.replace_order(acct, placed.order_id, limit_price=high)
    assert res.accepted, res
    await asyncio.sleep(1)
    await saga.sim.admin("POST", "/admin/tick")  # the replacement fills: one event, r1's
    final = await saga.wait(acct, placed.order_id, timeout_s=30)  # polls are an hour apart
    assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
    assert final.client_order_id == f"{acct}/{placed.order_id}/r1"
    assert final.filled_qty == 2
