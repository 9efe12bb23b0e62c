"""100 concurrent reserves on one account, each under the fenced Redis account lock."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D

import asyncpg
import pytest
import redis.asyncio as aioredis
from temporalio.exceptions import ApplicationError

from activities.lock import AccountLock
from core import errors
from core.keys import RedisKeys
from tests.integration.test_ledger import (
    assert_ledger_clean,
    buy,
    open_funded,
    scratch_pool,
    usd,
)
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


async def test_100_concurrent_reserves_under_the_lock(
    redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    async with scratch_pool("lock") as pool:
        await _run(pool, redis_client, redis_keys)


async def _run(pool: asyncpg.Pool, redis_client: aioredis.Redis, redis_keys: RedisKeys) -> None:
    ledger = LedgerUnderTest(pool)
    lock = AccountLock(redis_client, redis_keys, ledger.max_fence)
    account = await open_funded(ledger, "500.00")
    fences: list[int] = []

    async def one(i: int) -> bool:
        order_id = f"{account}/o{i}"
        got = await lock.acquire(account, order_id, ttl_ms=10_000, wait_ms=60_000)
        assert got is not None
        try:
            await ledger.reserve_funds(buy(account, order_id, "7.00", fence=got.fence))
            fences.append(got.fence)
            return True
        except ApplicationError as exc:
            assert exc.type == errors.INSUFFICIENT_FUNDS
            return False
        finally:
            await lock.release(account, order_id)

    outcomes = await asyncio.gather(*(one(i) for i in range(100)))
    available, held = await usd(ledger, account)
    assert sum(outcomes) == 71
    assert (available, held) == (D("3.00"), D("497.00"))
    assert len(set(fences)) == 71  # every holder had its own, newer token
    assert await ledger.max_fence(account) == max(fences)
    await assert_ledger_clean(pool)
