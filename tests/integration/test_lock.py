"""The fenced account lock against real Redis (the session's unique key prefix)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities.lock import (
    AccountLock,
    AcquireLockInput,
    AcquireLockResult,
    LockActivities,
    ReleaseLockInput,
)
from core import errors
from core.keys import RedisKeys

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


class FakeFloor:
    """Stands in for ``LedgerActivities.max_fence``: the highest fence "the ledger" recorded."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.calls: list[str] = []

    async def __call__(self, account_id: str) -> int:
        self.calls.append(account_id)
        return self.value


def new_account() -> str:
    return f"acct-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def floor() -> FakeFloor:
    return FakeFloor()


@pytest.fixture
def lock(redis_client: aioredis.Redis, redis_keys: RedisKeys, floor: FakeFloor) -> AccountLock:
    return AccountLock(redis_client, redis_keys, floor)


async def test_many_tasks_never_hold_one_account_at_once(lock: AccountLock) -> None:
    account = new_account()
    holders: set[str] = set()
    overlaps: list[set[str]] = []
    fences: list[int] = []

    async def worker(owner: str) -> None:
        got = await lock.acquire(account, owner, ttl_ms=10_000, wait_ms=30_000)
        assert got is not None
        holders.add(owner)
        if len(holders) > 1:
            overlaps.append(set(holders))
        fences.append(got.fence)
        await asyncio.sleep(0.002)
        holders.discard(owner)
        assert await lock.release(account, owner)

    await asyncio.gather(*(worker(f"order-{i}") for i in range(30)))
    assert overlaps == []
    # Each holder got a fence greater than every earlier holder's.
    assert fences == sorted(fences)
    assert len(set(fences)) == 30


async def test_same_owner_reacquires_its_own_fence(lock: AccountLock) -> None:
    account = new_account()
    first = await lock.acquire(account, "order-1", ttl_ms=5_000, wait_ms=0)
    again = await lock.acquire(account, "order-1", ttl_ms=5_000, wait_ms=0)
    assert first is not None and not first.reacquired
    assert again is not None and again.reacquired
    assert again.fence == first.fence


async def test_reacquire_refreshes_the_ttl(lock: AccountLock) -> None:
    account = new_account()
    await lock.acquire(account, "order-1", ttl_ms=1_000, wait_ms=0)
    await lock.acquire(account, "order-1", ttl_ms=60_000, wait_ms=0)
    holder = await lock.holder(account)
    assert holder is not None and holder.ttl_ms > 1_000


async def test_other_owner_waits_then_gets_a_greater_fence(lock: AccountLock) -> None:
    account = new_account()
    first = await lock.acquire(account, "order-1", ttl_ms=5_000, wait_ms=0)
    assert first is not None
    assert await lock.acquire(account, "order-2", ttl_ms=5_000, wait_ms=30) is None

    waiter = asyncio.create_task(lock.acquire(account, "order-2", ttl_ms=5_000, wait_ms=5_000))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    assert await lock.release(account, "order-1")
    second = await waiter
    assert second is not None and second.fence > first.fence


async def test_release_by_non_owner_changes_nothing(lock: AccountLock) -> None:
    account = new_account()
    got = await lock.acquire(account, "order-1", ttl_ms=5_000, wait_ms=0)
    assert got is not None
    assert not await lock.release(account, "order-2")
    holder = await lock.holder(account)
    assert holder is not None and (holder.owner, holder.fence) == ("order-1", got.fence)
    assert await lock.release(account, "order-1")
    assert not await lock.release(account, "order-1")  # a retried release is harmless
    assert await lock.holder(account) is None


async def test_owner_containing_the_separator(lock: AccountLock) -> None:
    account = new_account()
    got = await lock.acquire(account, "a|b|7", ttl_ms=5_000, wait_ms=0)
    again = await lock.acquire(account, "a|b|7", ttl_ms=5_000, wait_ms=0)
    assert got is not None and again is not None and again.fence == got.fence
    assert not await lock.release(account, "a|b")
    assert await lock.release(account, "a|b|7")


async def test_extend_refuses_zero_and_keeps_the_lock(lock: AccountLock) -> None:
    account = new_account()
    await lock.acquire(account, "order-1", ttl_ms=5_000, wait_ms=0)
    for ttl in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            await lock.extend(account, "order-1", ttl)
    holder = await lock.holder(account)
    assert holder is not None and holder.owner == "order-1"


async def test_extend_only_by_the_owner(lock: AccountLock) -> None:
    account = new_account()
    await lock.acquire(account, "order-1", ttl_ms=1_000, wait_ms=0)
    assert not await lock.extend(account, "order-2", 60_000)
    assert await lock.extend(account, "order-1", 60_000)
    holder = await lock.holder(account)
    assert holder is not None and holder.ttl_ms > 1_000


async def test_expired_lock_passes_on_and_cannot_be_extended(lock: AccountLock) -> None:
    account = new_account()
    first = await lock.acquire(account, "order-1", ttl_ms=50, wait_ms=0)
    assert first is not None
    second = await lock.acquire(account, "order-2", ttl_ms=5_000, wait_ms=2_000)
    assert second is not None and second.fence > first.fence
    assert not await lock.extend(account, "order-1", 5_000)
    assert not await lock.release(account, "order-1")
    holder = await lock.holder(account)
    assert holder is not None and holder.owner == "order-2"


async def test_missing_counter_is_seeded_above_the_floor(
    lock: AccountLock, floor: FakeFloor, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    account = new_account()
    floor.value = 41
    got = await lock.acquire(account, "order-1", ttl_ms=5_000, wait_ms=0)
    assert got is not None and got.fence == 42
    assert floor.calls == [account]
    await lock.release(account, "order-1")

    # With the counter present the ledger is not asked again.
    got = await lock.acquire(account, "order-2", ttl_ms=5_000, wait_ms=0)
    assert got is not None and got.fence == 43
    assert floor.calls == [account]

    # A floor below the counter never moves it back.
    await lock.release(account, "order-2")
    await redis_client.set(redis_keys.fence(account), 100)
    floor.value = 5
    got = await lock.acquire(account, "order-3", ttl_ms=5_000, wait_ms=0)
    assert got is not None and got.fence == 101


# --- a counter that went back: the ledger's newest fence as the floor ----------------------------


async def acquire_above(
    lock: AccountLock, account: str, owner: str, floor: int
) -> AcquireLockResult:
    """One acquire as the saga makes it after a StaleFence answer: through the activity."""
    return await ActivityEnvironment().run(
        LockActivities(lock).acquire_lock,
        AcquireLockInput(account_id=account, owner=owner, ttl_ms=5_000, wait_ms=0, floor=floor),
    )


async def test_a_floor_lifts_a_rolled_back_counter(
    lock: AccountLock, floor: FakeFloor, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    account = new_account()
    await redis_client.set(redis_keys.fence(account), 3)  # went back: the ledger has seen 50
    got = await acquire_above(lock, account, "order-1", floor=50)
    assert (got.fence, got.reacquired) == (51, False)
    assert int(await redis_client.get(redis_keys.fence(account))) == 51  # raised, not just used
    assert floor.calls == []  # the counter is there: the ledger is not asked
    await lock.release(account, "order-1")

    # The next holder without a floor continues above it; a floor below the counter is a no-op.
    got = await acquire_above(lock, account, "order-2", floor=7)
    assert got.fence == 52


async def test_a_missing_counter_is_seeded_above_both_floors(
    lock: AccountLock, floor: FakeFloor
) -> None:
    floor.value = 5  # what the ledger's max_fence says; the caller's floor is newer
    account = new_account()
    got = await acquire_above(lock, account, "order-1", floor=41)
    assert got.fence == 42 and floor.calls == [account]

    floor.value = 60  # and the other way round
    other = new_account()
    got = await acquire_above(lock, other, "order-1", floor=41)
    assert got.fence == 61


async def test_our_own_lock_not_above_the_floor_takes_a_new_fence(lock: AccountLock) -> None:
    account = new_account()
    first = await lock.acquire(account, "order-1", ttl_ms=5_000, wait_ms=0)
    assert first is not None
    # The ledger refused first.fence (another order was handed it too): the same owner asking
    # again above it must not get it back, though it still holds the lock.
    renewed = await acquire_above(lock, account, "order-1", floor=first.fence)
    assert renewed.fence > first.fence and not renewed.reacquired
    holder = await lock.holder(account)
    assert holder is not None and (holder.owner, holder.fence) == ("order-1", renewed.fence)
    # A retry of that acquire (its answer lost) finds the new fence, as any re-acquire does.
    retried = await acquire_above(lock, account, "order-1", floor=first.fence)
    assert (retried.fence, retried.reacquired) == (renewed.fence, True)
    # Another owner is still kept out whatever its floor.
    assert await lock.acquire(account, "order-2", ttl_ms=5_000, wait_ms=0, floor=999) is None


# --- activities ------------------------------------------------------------------------------


@pytest.fixture
def activities(lock: AccountLock) -> LockActivities:
    return LockActivities(lock)


async def test_activities_acquire_release(activities: LockActivities, lock: AccountLock) -> None:
    env = ActivityEnvironment()
    account = new_account()
    first = await env.run(
        activities.acquire_lock,
        AcquireLockInput(account_id=account, owner="order-1", ttl_ms=5_000, wait_ms=0),
    )
    retried = await env.run(
        activities.acquire_lock,
        AcquireLockInput(account_id=account, owner="order-1", ttl_ms=5_000, wait_ms=0),
    )
    assert (retried.fence, retried.reacquired) == (first.fence, True)

    assert await lock.extend(account, "order-1", ttl_ms=5_000)
    released = await env.run(
        activities.release_lock, ReleaseLockInput(account_id=account, owner="order-1")
    )
    assert released.released
    again = await env.run(
        activities.release_lock, ReleaseLockInput(account_id=account, owner="order-1")
    )
    assert not again.released
    assert not await lock.extend(account, "order-1", ttl_ms=5_000)


async def test_activity_busy_raises_retryable_lock_not_acquired(
    activities: LockActivities, lock: AccountLock
) -> None:
    account = new_account()
    await lock.acquire(account, "order-1", ttl_ms=5_000, wait_ms=0)
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(
            activities.acquire_lock,
            AcquireLockInput(account_id=account, owner="order-2", ttl_ms=5_000, wait_ms=40),
        )
    assert info.value.type == errors.LOCK_NOT_ACQUIRED
    assert not info.value.non_retryable
    assert info.value.category == ApplicationErrorCategory.BENIGN


# --- a Redis restart that loses the counter ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayRedis:
    """A private redis-server without persistence, so a restart loses every key."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    yield server
    server.stop()


async def wait_ready(client: aioredis.Redis) -> None:
    for _ in range(200):
        try:
            await client.ping()
            return
        except (aioredis.ConnectionError, OSError):
            await asyncio.sleep(0.02)
    raise AssertionError("throwaway redis-server did not start")


@pytest_asyncio.fixture(loop_scope="session")
async def throwaway_client(throwaway_redis: ThrowawayRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=throwaway_redis.port, decode_responses=True)
    await wait_ready(client)
    yield client
    await client.aclose()


async def test_fence_keeps_growing_across_a_redis_restart(
    throwaway_redis: ThrowawayRedis, throwaway_client: aioredis.Redis
) -> None:
    recorded = FakeFloor()  # the ledger records the fence of every reserve it accepts
    lock = AccountLock(throwaway_client, RedisKeys(prefix="t:"), recorded)
    first = await lock.acquire("acct-1", "order-1", ttl_ms=60_000, wait_ms=0)
    assert first is not None
    recorded.value = first.fence

    throwaway_redis.stop()
    throwaway_redis.start()
    await wait_ready(throwaway_client)
    assert await throwaway_client.dbsize() == 0  # the counter and the lock are gone

    second = await lock.acquire("acct-1", "order-2", ttl_ms=60_000, wait_ms=0)
    assert second is not None and second.fence > first.fence
