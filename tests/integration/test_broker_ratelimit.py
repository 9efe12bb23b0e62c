"""The adapter against the simulator's rate limit (a tiny one, short windows), real sockets:
a spent window turns into a retryable error that says when to retry, the requests meanwhile are
never sent, and the retry after the reset goes through."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError

from activities.broker import BrokerActivities, ReconcileOrderInput, SubmitOrderInput
from core import errors
from core.broker_client import BrokerClient, BrokerRateLimited
from tests.support.brokersim import BrokerSim, brokersim_fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

sim = brokersim_fixture(scope="module", fill_model={"mode": "instant", "auto": False})
LIMIT = 3
WINDOW_S = 2


def new_client(sim: BrokerSim) -> BrokerClient:
    return BrokerClient(sim.url, key_id=sim.key_id, secret_key=sim.secret_key)


@pytest_asyncio.fixture(loop_scope="session")
async def limited(sim: BrokerSim) -> AsyncIterator[BrokerSim]:
    """The simulator with a fresh window of LIMIT requests per WINDOW_S (counts from zero)."""
    await sim.admin("PUT", "/admin/rate_limit", {"limit": LIMIT, "window_s": WINDOW_S})
    yield sim
    await sim.admin("PUT", "/admin/rate_limit", {"limit": 0})


async def refused(sim: BrokerSim) -> int:
    return int((await sim.admin("GET", "/admin/rate_limit"))["refused"])


def buy() -> SubmitOrderInput:
    order_id = f"rl-{uuid.uuid4().hex[:12]}"
    return SubmitOrderInput(client_order_id=order_id, symbol="AAPL", qty=Decimal(1), side="buy")


async def test_a_spent_window_is_a_retry_at_the_reset_and_nothing_is_sent_meanwhile(
    limited: BrokerSim,
) -> None:
    before = await refused(limited)
    async with new_client(limited) as client:
        acts = BrokerActivities(client)
        for _ in range(LIMIT):
            await acts.submit_order(buy())
        late = buy()
        for _ in range(10):  # the window's last answer said none are left: none of these go out
            with pytest.raises(ApplicationError) as info:
                await acts.submit_order(late)
            err = info.value
            assert (err.type, err.non_retryable) == (errors.BROKER_UNAVAILABLE, False)
            assert err.next_retry_delay is not None
            assert 0 < err.next_retry_delay.total_seconds() <= WINDOW_S + 1
        with pytest.raises(ApplicationError) as asked:  # the asks back off too
            await acts.reconcile_order(ReconcileOrderInput(client_order_id=late.client_order_id))
        assert asked.value.next_retry_delay is not None
        assert await refused(limited) == before  # never hammered: not one 429 was drawn
        # What Temporal does with next_retry_delay: wait, then try again.
        await asyncio.sleep(err.next_retry_delay.total_seconds() + 0.05)
        result = await acts.submit_order(late)
        assert result.order.client_order_id == late.client_order_id


async def test_another_process_spent_the_window_one_429_then_it_waits(limited: BrokerSim) -> None:
    before = await refused(limited)
    async with new_client(limited) as other, new_client(limited) as client:
        for _ in range(LIMIT):  # another worker on the same key uses the window up
            await other.list_orders(limit=1)
        with pytest.raises(BrokerRateLimited) as info:
            await client.list_orders(limit=1)
        assert info.value.retry_after_s is not None and 0 < info.value.retry_after_s <= WINDOW_S + 1
        for _ in range(5):
            with pytest.raises(BrokerRateLimited):
                await client.list_orders(limit=1)
        assert await refused(limited) == before + 1  # the first answer taught it; no more sent
        await asyncio.sleep(info.value.retry_after_s + 0.05)
        assert await client.list_orders(limit=1) is not None
