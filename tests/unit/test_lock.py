"""Lock argument checks happen before any Redis I/O (the client here points at a closed port)."""

from __future__ import annotations

import socket

import pytest
import redis.asyncio as aioredis

from activities.lock import AccountLock
from core.keys import RedisKeys

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def no_floor(account_id: str) -> int:
    raise AssertionError("the floor must not be asked for")


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def lock() -> AccountLock:
    client = aioredis.Redis(host="127.0.0.1", port=unused_port())
    return AccountLock(client, RedisKeys(prefix="unit:"), no_floor)


@pytest.mark.parametrize("ttl", [0, -1, -10_000])
async def test_extend_refuses_non_positive_ttl(lock: AccountLock, ttl: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        await lock.extend("acct-1", "order-1", ttl)


@pytest.mark.parametrize("ttl", [0, -5])
async def test_acquire_refuses_non_positive_ttl(lock: AccountLock, ttl: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        await lock.try_acquire("acct-1", "order-1", ttl)


async def test_acquire_refuses_an_empty_owner(lock: AccountLock) -> None:
    with pytest.raises(ValueError, match="owner"):
        await lock.acquire("acct-1", "", 1_000, 0)


async def test_acquire_refuses_a_negative_floor(lock: AccountLock) -> None:
    with pytest.raises(ValueError, match="floor"):
        await lock.try_acquire("acct-1", "order-1", 1_000, floor=-1)
