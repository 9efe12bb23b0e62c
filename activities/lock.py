"""The fenced per-account lock in Redis.

The lock value is ``"<owner>|<fence>"``: the owner is the holder's identity (the order id), so an
acquire retried after its first answer was lost finds its own value and holds the lock at once
instead of waiting out its own TTL. The fence is a per-account counter that only grows; a reserve
made under the lock passes it, and the database refuses a reserve older than the last it saw.

The counter must keep growing across a Redis restart that loses it or rolls it back. A missing
counter is never re-created at 1: the acquire script answers "need a floor", the caller asks the
ledger for the highest fence it has recorded for the account, and the script seeds the counter
above it. A counter that went back (a lost write, a restore, a lagging replica) is caught by the
ledger, whose StaleFence answer names the newest fence it has seen; the caller passes that as the
next acquire's floor, and every acquire hands out ``max(counter, floor) + 1``. See docs/LOCK.md.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core import errors
from core.keys import RedisKeys

FenceFloor = Callable[[str], Awaitable[int]]

# KEYS[1] lock key, KEYS[2] fence counter; ARGV[1] owner, ARGV[2] ttl ms, ARGV[3] floor (the
# fence must be above it), ARGV[4] "1" when the floor already includes the ledger's max fence.
# Returns {status, fence}: status 1 = acquired, 2 = already ours (re-acquired), 0 = busy,
# -1 = the counter is missing and the ledger was not asked yet (call again with its floor).
# Our own lock whose fence is not above the floor (the ledger refused it) takes a new fence.
_ACQUIRE_LUA = """
local floor = tonumber(ARGV[3])
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder, fence = string.match(cur, '^(.*)|(%d+)$')
  if holder ~= ARGV[1] then
    return {0, 0}
  end
  if tonumber(fence) > floor then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {2, tonumber(fence)}
  end
end
local counter = redis.call('GET', KEYS[2])
if (not counter) and ARGV[4] ~= '1' then
  return {-1, 0}
end
local base = tonumber(counter or '0')
if floor > base then base = floor end
local fence = base + 1
redis.call('SET', KEYS[2], fence)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence, 'PX', ARGV[2])
return {1, fence}
"""

# Compare on the owner part only: the owner alone identifies the holder.
_RELEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(.*)|%d+$') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_EXTEND_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(.*)|%d+$') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_ACQUIRED, _REACQUIRED, _BUSY, _NEED_FLOOR = 1, 2, 0, -1

# Backoff while the lock is busy: exponential from the first step to the cap, with jitter so
# waiters that collided once do not collide again in lockstep.
BACKOFF_FIRST_S = 0.005
BACKOFF_CAP_S = 0.2


@dataclass(frozen=True)
class Acquired:
    fence: int
    reacquired: bool


@dataclass(frozen=True)
class Holder:
    owner: str
    fence: int
    ttl_ms: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class AccountLock:
    """Acquire, extend and release the per-account lock; plain async code, no Temporal."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, fence_floor: FenceFloor) -> None:
        self._redis = redis
        self._keys = keys
        self._fence_floor = fence_floor
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._extend = redis.register_script(_EXTEND_LUA)

    async def try_acquire(
        self, account_id: str, owner: str, ttl_ms: int, floor: int = 0
    ) -> Acquired | None:
        """One atomic attempt; None when another owner holds the lock. The fence is above
        ``floor`` (the newest fence the ledger said it has seen) and above the counter."""
        _check_owner(owner)
        _check_ttl(ttl_ms)
        _check_floor(floor)
        keys = [self._keys.lock(account_id), self._keys.fence(account_id)]
        status, fence = await self._acquire(keys=keys, args=[owner, ttl_ms, floor, ""])
        if status == _NEED_FLOOR:
            floor = max(floor, int(await self._fence_floor(account_id)))
            status, fence = await self._acquire(keys=keys, args=[owner, ttl_ms, floor, "1"])
        if status == _BUSY:
            return None
        return Acquired(fence=int(fence), reacquired=status == _REACQUIRED)

    async def acquire(
        self, account_id: str, owner: str, ttl_ms: int, wait_ms: int, floor: int = 0
    ) -> Acquired | None:
        """Try until acquired or ``wait_ms`` has passed (at least one attempt); None on timeout."""
        deadline = time.monotonic() + max(wait_ms, 0) / 1000
        delay = BACKOFF_FIRST_S
        while True:
            got = await self.try_acquire(account_id, owner, ttl_ms, floor)
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(left, delay / 2 + random.uniform(0, delay / 2)))
            delay = min(delay * 2, BACKOFF_CAP_S)

    async def release(self, account_id: str, owner: str) -> bool:
        """Delete the lock if ``owner`` holds it; False (and nothing changed) otherwise."""
        return bool(await self._release(keys=[self._keys.lock(account_id)], args=[owner]))

    async def extend(self, account_id: str, owner: str, ttl_ms: int) -> bool:
        """Reset the TTL if ``owner`` holds the lock; False when it no longer does.

        A TTL <= 0 is refused: PEXPIRE with 0 would delete the key (redis-py's extend trap).
        """
        _check_ttl(ttl_ms)
        return bool(await self._extend(keys=[self._keys.lock(account_id)], args=[owner, ttl_ms]))

    async def holder(self, account_id: str) -> Holder | None:
        """Who holds the lock now (for status output and tests)."""
        key = self._keys.lock(account_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            value, ttl = await pipe.execute()
        if value is None:
            return None
        owner, _, fence = _text(value).rpartition("|")
        return Holder(owner=owner, fence=int(fence), ttl_ms=int(ttl))


def _check_ttl(ttl_ms: int) -> None:
    if ttl_ms <= 0:
        raise ValueError(f"lock ttl must be positive, got {ttl_ms} ms")


def _check_owner(owner: str) -> None:
    if not owner:
        raise ValueError("lock owner must not be empty")


def _check_floor(floor: int) -> None:
    if floor < 0:
        raise ValueError(f"fence floor must not be negative, got {floor}")


class AcquireLockInput(BaseModel):
    account_id: str
    owner: str
    ttl_ms: int
    wait_ms: int
    # The newest fence the ledger reported seeing (its StaleFence answer): the fence handed out
    # is above it even if the counter went back. Optional, so inputs recorded before it decode.
    floor: int = 0


class AcquireLockResult(BaseModel):
    fence: int
    reacquired: bool


class ReleaseLockInput(BaseModel):
    account_id: str
    owner: str


class ReleaseLockResult(BaseModel):
    released: bool


def _bad_input(exc: ValueError) -> ApplicationError:
    return ApplicationError(str(exc), non_retryable=True, type=errors.LOCK_INVALID_ARGUMENT)


class LockActivities:
    """Temporal activities over an :class:`AccountLock` built by the worker."""

    def __init__(self, lock: AccountLock) -> None:
        self._lock = lock

    @activity.defn
    async def acquire_lock(self, data: AcquireLockInput) -> AcquireLockResult:
        """Take the account's lock for ``owner`` and return its fencing token.

        Retry-safe: a retry by the same owner while its lock is live returns the same fence
        (``reacquired=True``) and refreshes the TTL; it never waits for itself. If the lock
        expired between attempts, the retry takes a new, greater fence. The fence is always above
        ``floor``: a lock of ours whose fence is not takes a new one, so a retry with the same
        floor finds that one. Busy past ``wait_ms`` raises the retryable ``LockNotAcquired``.
        """
        try:
            got = await self._lock.acquire(
                data.account_id, data.owner, data.ttl_ms, data.wait_ms, data.floor
            )
        except ValueError as exc:
            raise _bad_input(exc) from None
        if got is None:
            raise ApplicationError(
                f"account {data.account_id} is locked by another order (waited {data.wait_ms} ms)",
                type=errors.LOCK_NOT_ACQUIRED,
                category=ApplicationErrorCategory.BENIGN,  # busy: an expected retry
            )
        return AcquireLockResult(fence=got.fence, reacquired=got.reacquired)

    @activity.defn
    async def release_lock(self, data: ReleaseLockInput) -> ReleaseLockResult:
        """Release the lock if ``owner`` still holds it.

        Retry-safe: a second release (or one after the lock expired or passed to another
        owner) changes nothing and returns ``released=False``, never an error.
        """
        return ReleaseLockResult(released=await self._lock.release(data.account_id, data.owner))
