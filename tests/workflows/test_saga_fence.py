"""The saga on real parts when the lock's fence counter went back behind the ledger."""

from __future__ import annotations

import pytest

from core.statuses import OrderStatus
from tests.support.saga import SagaStack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def test_a_rolled_back_fence_counter_costs_one_relock(saga: SagaStack) -> None:
    acct = await saga.funded_account("10000")
    # The ledger has seen fence 50 for the account; Redis lost the increments down to 3.
    await saga.pool.execute(
        "UPDATE customers SET last_fence = 50, last_fence_owner = $2 WHERE account_id = $1",
        acct,
        f"{acct}/earlier",
    )
    await saga.redis.set(saga.keys.fence(acct), 3)

    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="1")

    # Fence 4 is refused (StaleFence, last_fence 50); the next acquire's floor is 50.
    assert placed.accepted and placed.status == OrderStatus.ACCEPTED
    fence = await saga.pool.fetchval("SELECT last_fence FROM customers WHERE account_id = $1", acct)
    assert fence == 51
    assert await saga.redis.get(saga.keys.fence(acct)) == "51"  # the counter was raised
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.SETTLED
