"""What the end-to-end tests start from: a database and a Redis prefix of their own, a client,
a funded account, and prices relative to the simulator's quote."""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from temporalio.client import Client

from activities.ledger import max_fence
from activities.lock import AccountLock
from core.db import create_pool
from core.keys import RedisKeys
from core.settings import Settings
from ordersaga.client import OrderClient
from tests.conftest import scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.saga import saga_settings
from workflows.models import OrderRequest


@dataclass
class Stack:
    settings: Settings
    pool: asyncpg.Pool
    orders: OrderClient
    sim: BrokerSim

    async def funded_account(self, amount: str = "5000") -> str:
        acct = f"e2e-{uuid.uuid4().hex[:8]}"
        await self.orders.open_account(acct)
        await self.orders.deposit(acct, amount)
        return acct

    async def price(self, times: str = "1", symbol: str = "AAPL") -> Decimal:
        """The simulator's ask for ``symbol`` times ``times``, in cents."""
        latest = await self.sim.admin("GET", f"/v2/stocks/{symbol}/quotes/latest")
        ask = Decimal(str(latest["quote"]["ap"]))
        return (ask * Decimal(times)).quantize(Decimal("0.01"))

    def limit_buy(self, account_id: str, limit: Decimal | str, qty: str = "1") -> OrderRequest:
        """A day limit buy of AAPL with a fresh order id."""
        return self.orders.build_request(
            account_id=account_id,
            symbol="AAPL",
            side="buy",
            qty=qty,
            order_type="limit",
            limit_price=limit,
        )

    def account_lock(self, redis: aioredis.Redis) -> AccountLock:
        """The account lock as the workers see it (this stack's prefix, the ledger's floor)."""
        return AccountLock(
            redis,
            RedisKeys(self.settings.redis_prefix),
            fence_floor=functools.partial(max_fence, self.pool),
        )

    async def broker_orders(self, client_order_id: str) -> list[dict[str, Any]]:
        """The simulator's orders with this client order id (an order key)."""
        listing = await self.sim.admin("GET", "/v2/orders?status=all&limit=500")
        return [o for o in listing if o["client_order_id"] == client_order_id]


def stack_on(
    temporal: Client,
    database_url: str,
    pool: asyncpg.Pool,
    redis_keys: RedisKeys,
    sim: BrokerSim,
    kind: str,
    **extra: Any,
) -> Stack:
    """A Stack on a database a module already holds (settings ``saga_settings`` with ``extra``,
    a Redis prefix of its own under the session's)."""
    keys = RedisKeys(f"{redis_keys.prefix}{kind}-{uuid.uuid4().hex[:6]}:")
    settings = saga_settings(database_url, keys, sim.url, **extra)
    return Stack(settings, pool, OrderClient(temporal, pool, settings), sim)


@contextlib.asynccontextmanager
async def e2e_stack(
    temporal: Client, redis_keys: RedisKeys, sim: BrokerSim, kind: str, **extra: Any
) -> AsyncIterator[Stack]:
    """Settings (``saga_settings`` with ``extra``) on a scratch database and a Redis prefix under
    the session's, a pool and an OrderClient; the workers are the test's to start."""
    async with scratch_database(kind) as database_url:
        pool = await create_pool(database_url, 1, 4)
        try:
            yield stack_on(temporal, database_url, pool, redis_keys, sim, kind, **extra)
        finally:
            await pool.close()
