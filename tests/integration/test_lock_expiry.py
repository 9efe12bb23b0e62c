"""The fence protects the ledger when a lock expires under its holder (real Redis and Postgres)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from temporalio.exceptions import ApplicationError

from activities.ledger import DepositInput, OpenAccountInput, ReserveInput
from activities.lock import AccountLock
from core import errors
from core.keys import RedisKeys
from tests.support.ledger import LedgerUnderTest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


async def funded_account(ledger: LedgerUnderTest, amount: str) -> str:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    await ledger.open_account(OpenAccountInput(account_id=account))
    await ledger.deposit(
        DepositInput(account_id=account, amount=Decimal(amount), idempotency_key=f"{account}:dep")
    )
    return account


def reserve(account: str, order_id: str, amount: str, fence: int) -> ReserveInput:
    return ReserveInput(
        account_id=account, order_key=f"{account}/{order_id}", asset="USD",
        amount=Decimal(amount), fence=fence, idempotency_key=f"{account}/{order_id}:reserve",
        side="buy", symbol="AAPL",
    )  # fmt: skip


async def wait_expired(lock: AccountLock, account: str) -> None:
    """A is paused until its lock is gone (polling Redis, not a timed assert)."""
    for _ in range(500):
        if await lock.holder(account) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the lock never expired")


@pytest.fixture
def ledger(db_pool: asyncpg.Pool) -> LedgerUnderTest:
    return LedgerUnderTest(db_pool)


@pytest.fixture
def lock(
    redis_client: aioredis.Redis, redis_keys: RedisKeys, ledger: LedgerUnderTest
) -> AccountLock:
    return AccountLock(redis_client, redis_keys, ledger.max_fence)


async def test_late_reserve_of_an_expired_holder_is_refused(
    ledger: LedgerUnderTest, lock: AccountLock
) -> None:
    account = await funded_account(ledger, "1000")
    a = await lock.acquire(account, "order-a", ttl_ms=100, wait_ms=0)
    assert a is not None
    await wait_expired(lock, account)  # A pauses past its TTL, mid-operation

    b = await lock.acquire(account, "order-b", ttl_ms=10_000, wait_ms=0)
    assert b is not None and b.fence > a.fence
    await ledger.reserve_funds(reserve(account, "order-b", "300", b.fence))

    with pytest.raises(ApplicationError) as info:
        await ledger.reserve_funds(reserve(account, "order-a", "500", a.fence))
    assert info.value.type == errors.STALE_FENCE
    assert info.value.non_retryable

    usd = (await ledger.get_balances(account)).of("USD")
    assert (usd.available, usd.held) == (Decimal("700"), Decimal("300"))

    # What the saga does next: lock again and retry under the same idempotency key.
    await lock.release(account, "order-b")
    again = await lock.acquire(account, "order-a", ttl_ms=10_000, wait_ms=0)
    assert again is not None and again.fence > b.fence
    await ledger.reserve_funds(reserve(account, "order-a", "500", again.fence))
    usd = (await ledger.get_balances(account)).of("USD")
    assert (usd.available, usd.held) == (Decimal("200"), Decimal("800"))


async def test_lost_counter_is_reseeded_above_the_ledgers_fence(
    ledger: LedgerUnderTest,
    lock: AccountLock,
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
) -> None:
    account = await funded_account(ledger, "100")
    first = await lock.acquire(account, "order-1", ttl_ms=10_000, wait_ms=0)
    assert first is not None
    await ledger.reserve_funds(reserve(account, "order-1", "10", first.fence))
    await lock.release(account, "order-1")

    await redis_client.delete(redis_keys.fence(account))  # what a Redis restart loses
    second = await lock.acquire(account, "order-2", ttl_ms=10_000, wait_ms=0)
    assert second is not None and second.fence > first.fence
    await ledger.reserve_funds(reserve(account, "order-2", "10", second.fence))


# --- the counter goes back: one fence handed to two orders ---------------------------------------


def floor_of(refusal: ApplicationError) -> int:
    """What the saga feeds back to the lock from a StaleFence answer: the ledger's newest fence."""
    assert refusal.type == errors.STALE_FENCE
    return int(refusal.details[0]["last_fence"])


async def test_a_rolled_back_counter_cannot_give_two_orders_one_fence(
    ledger: LedgerUnderTest,
    lock: AccountLock,
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
) -> None:
    account = await funded_account(ledger, "1000")
    a = await lock.acquire(account, "order-a", ttl_ms=10_000, wait_ms=0)
    assert a is not None
    await ledger.reserve_funds(reserve(account, "order-a", "300", a.fence))
    await lock.release(account, "order-a")

    # The increment behind A's fence is lost (appendfsync everysec, a restore, a lagging replica).
    await redis_client.set(redis_keys.fence(account), a.fence - 1)
    b = await lock.acquire(account, "order-b", ttl_ms=10_000, wait_ms=0)
    assert b is not None and b.fence == a.fence  # the lock alone cannot tell
    with pytest.raises(ApplicationError) as info:
        await ledger.reserve_funds(reserve(account, "order-b", "500", b.fence))
    assert info.value.non_retryable and floor_of(info.value) == a.fence
    usd = (await ledger.get_balances(account)).of("USD")
    assert (usd.available, usd.held) == (Decimal("700"), Decimal("300"))  # A's write alone

    # B locks again with the ledger's fence as its floor: above it, and the reserve lands.
    await lock.release(account, "order-b")
    again = await lock.acquire(
        account, "order-b", ttl_ms=10_000, wait_ms=0, floor=floor_of(info.value)
    )
    assert again is not None and again.fence > a.fence
    await ledger.reserve_funds(reserve(account, "order-b", "500", again.fence))
    assert await ledger.max_fence(account) == again.fence
    # The counter was raised with it: the next order needs no floor.
    await lock.release(account, "order-b")
    nxt = await lock.acquire(account, "order-c", ttl_ms=10_000, wait_ms=0)
    assert nxt is not None and nxt.fence > again.fence


async def test_a_lost_counter_cannot_give_a_paused_holders_fence_to_another_order(
    ledger: LedgerUnderTest,
    lock: AccountLock,
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
) -> None:
    account = await funded_account(ledger, "1000")
    first = await lock.acquire(account, "order-0", ttl_ms=10_000, wait_ms=0)
    assert first is not None
    await ledger.reserve_funds(reserve(account, "order-0", "100", first.fence))
    await lock.release(account, "order-0")

    # A takes the next fence and pauses before its reserve; its lock expires and the counter is
    # lost. The ledger's newest fence is still order-0's, so the re-seeded counter repeats A's.
    a = await lock.acquire(account, "order-a", ttl_ms=100, wait_ms=0)
    assert a is not None
    await wait_expired(lock, account)
    await redis_client.delete(redis_keys.fence(account))
    b = await lock.acquire(account, "order-b", ttl_ms=10_000, wait_ms=0)
    assert b is not None and b.fence == a.fence
    await ledger.reserve_funds(reserve(account, "order-b", "300", b.fence))

    with pytest.raises(ApplicationError) as info:
        await ledger.reserve_funds(reserve(account, "order-a", "500", a.fence))
    assert floor_of(info.value) == b.fence
    usd = (await ledger.get_balances(account)).of("USD")
    assert (usd.available, usd.held) == (Decimal("600"), Decimal("400"))
