"""What the end-to-end tests start from: a database and a Redis prefix of their own, a client,
a funded account, and prices relative to the simulator's quote."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
from temporalio.client import Client

from core.db import create_pool
from core.keys import RedisKeys
from core.settings import Settings
from ordersaga.client import OrderClient
from tests.conftest import scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.saga import saga_settings


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


@contextlib.asynccontextmanager
async def e2e_stack(
    temporal: Client, redis_keys: RedisKeys, sim: BrokerSim, kind: str, **extra: Any
) -> AsyncIterator[Stack]:
    """Settings (``saga_settings`` with ``extra``) on a scratch database and a Redis prefix under
    the session's, a pool and an OrderClient; the workers are the test's to start."""
    async with scratch_database(kind) as database_url:
        keys = RedisKeys(f"{redis_keys.prefix}{kind}-{uuid.uuid4().hex[:6]}:")
        settings = saga_settings(database_url, keys, sim.url, **extra)
        pool = await create_pool(database_url, 1, 4)
        try:
            yield Stack(settings, pool, OrderClient(temporal, pool, settings), sim)
        finally:
            await pool.close()
