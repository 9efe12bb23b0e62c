"""The product's workers, feed and listener, in-process, with the knobs a benchmark turns.

The activity lists come from the product's composition root (``worker.main.build_workers``): it
is called with a recording ``Worker`` so the benchmark builds the same workers with extra tuning,
or folds both queues into one worker (the shared-slots variant), without copying the lists.
Counting wrappers around the ledger and the lock are swapped in the same way; they observe and
never change what the product does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from unittest import mock

import asyncpg
import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

import worker.main as composition
from activities.ledger import Ledger
from activities.lock import AccountLock, Acquired
from bench.common import REDIS_URL, Infra
from bench.variants import OrdinaryStepsOrderWorkflow
from core import errors
from core.broker_client import BrokerClient
from core.db import create_pool
from core.keys import RedisKeys
from core.settings import Settings
from feeds.delivery import signal_workflows
from feeds.listener import BrokerListener
from feeds.marketdata import MarketDataFeed
from ordersaga.client import OrderClient
from tests.support.saga import saga_settings
from workflows.reconcile import ReconcileWorkflow

Layout = Literal["separate", "shared"]
# One listener name for every run of a benchmark (the Redis prefix is the benchmark's own), so
# each run's listener resumes where the previous one stopped, as a deployed listener does. A name
# per run would start each listener at offset 0 and replay every earlier run's events, each one
# a signal to a workflow no longer there and so a reconcile run: work the run did not cause.
LISTENER_NAME = "bench"


@dataclass
class Counters:
    """What the wrappers saw: ledger transactions and their CAS reruns, lock attempts."""

    ledger_calls: int = 0
    ledger_runs: int = 0
    lock_acquires: int = 0
    lock_busy_attempts: int = 0
    lock_waited: int = 0
    lock_wait_s: list[float] = field(default_factory=list)

    @property
    def cas_conflicts_retried(self) -> int:
        return self.ledger_runs - self.ledger_calls


def counting_ledger(counters: Counters) -> type[Ledger]:
    class CountingLedger(Ledger):
        async def _transact(self, body: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
            counters.ledger_calls += 1

            async def counted(conn: asyncpg.Connection) -> Any:
                counters.ledger_runs += 1
                return await body(conn)

            return await super()._transact(counted)

    return CountingLedger


def counting_lock(counters: Counters) -> type[AccountLock]:
    class CountingLock(AccountLock):
        async def try_acquire(
            self, account_id: str, owner: str, ttl_ms: int, floor: int = 0
        ) -> Acquired | None:
            got = await super().try_acquire(account_id, owner, ttl_ms, floor)
            if got is None:
                counters.lock_busy_attempts += 1
            return got

        async def acquire(
            self, account_id: str, owner: str, ttl_ms: int, wait_ms: int, floor: int = 0
        ) -> Acquired | None:
            counters.lock_acquires += 1
            busy_before = counters.lock_busy_attempts
            started = time.monotonic()
            got = await super().acquire(account_id, owner, ttl_ms, wait_ms, floor)
            if counters.lock_busy_attempts > busy_before:
                counters.lock_waited += 1
                counters.lock_wait_s.append(time.monotonic() - started)
            return got

    return CountingLock


def worker_specs(client: Client, res: composition.Resources) -> list[dict[str, Any]]:
    """The keyword arguments the product's composition root gives each of its Workers."""
    specs: list[dict[str, Any]] = []

    def record(_client: Client, **kwargs: Any) -> dict[str, Any]:
        specs.append(kwargs)
        return kwargs

    with mock.patch.object(composition, "Worker", record):
        composition.build_workers(client, res, ["orders", "broker"])
    return specs


def build(
    client: Client,
    res: composition.Resources,
    layout: Layout,
    tuning: dict[str, Any],
    shared_slots: int,
) -> list[Worker]:
    specs = worker_specs(client, res)
    if layout == "shared":
        # One pool for everything: broker calls and the customer's steps share a few activity
        # slots. The product runs those steps as local activities, which have slots of their
        # own, so here they run as ordinary activities (the saga as it was before) to share.
        orders, broker = specs
        merged = dict(orders)
        merged["activities"] = [*orders["activities"], *broker["activities"]]
        merged["max_concurrent_activities"] = shared_slots
        merged["workflows"] = [OrdinaryStepsOrderWorkflow, ReconcileWorkflow]
        specs = [merged]
    # Tuning applies to the worker that runs the workflows; the broker worker keeps its own slots.
    return [Worker(client, **{**spec, **_only_for_workflows(spec, tuning)}) for spec in specs]


def _only_for_workflows(spec: dict[str, Any], tuning: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tuning.items() if spec.get("workflows")}


@dataclass
class Running:
    settings: Settings
    orders: OrderClient
    pool: asyncpg.Pool
    redis: aioredis.Redis
    counters: Counters
    workers: list[Worker]


def bench_settings(inf: Infra, *, layout: Layout = "separate", **extra: Any) -> Settings:
    settings = saga_settings(inf.database_url, inf.keys, inf.sim.url, **extra)
    if layout == "shared":
        settings.broker_task_queue = settings.orders_task_queue
    return settings


@contextlib.asynccontextmanager
async def saga_workers(
    inf: Infra,
    settings: Settings,
    *,
    layout: Layout = "separate",
    tuning: dict[str, Any] | None = None,
    pool_max: int = 20,
    shared_slots: int = 4,
    listener: bool = True,
) -> AsyncIterator[Running]:
    """Workers (and the quote feed and broker listener) for the saga, stopped on exit."""
    client = inf.env.client
    pool = await create_pool(settings.database_url, 2, pool_max)
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    broker = BrokerClient.from_settings(settings)
    keys = RedisKeys(settings.redis_prefix)
    res = composition.Resources(settings, pool=pool, redis=redis, broker=broker)
    counters = Counters()
    with (
        mock.patch.object(composition, "Ledger", counting_ledger(counters)),
        mock.patch.object(composition, "AccountLock", counting_lock(counters)),
    ):
        workers = build(client, res, layout, tuning or {}, shared_slots)
    stop = asyncio.Event()
    feed = MarketDataFeed(broker, redis, keys, settings.symbols, settings.marketdata_interval_s)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    tasks.append(asyncio.create_task(feed.run(stop)))
    if listener:
        events = BrokerListener(
            broker, redis, keys, signal_workflows(client, settings), name=LISTENER_NAME
        )
        tasks.append(asyncio.create_task(events.run(stop)))
    try:
        await feed.poll_once()
        yield Running(settings, OrderClient(client, pool, settings), pool, redis, counters, workers)
    finally:
        stop.set()
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await broker.close()
        await redis.aclose()
        await pool.close()


async def funded_accounts(
    orders: OrderClient, n: int, usd: str = "100000", tag: str = "bench"
) -> list[str]:
    """Open and fund ``n`` fresh accounts, a few at a time."""
    import uuid

    run = uuid.uuid4().hex[:6]
    ids = [f"{tag}-{run}-{i}" for i in range(n)]
    # Every deposit moves money out of the one '$external' firm row, so deposits race on its
    # version: few at a time, and a deposit that lost 50 races in a row is simply sent again
    # (the same idempotency key, so it is applied once).
    sem = asyncio.Semaphore(4)

    async def one(account_id: str) -> None:
        async with sem:
            await orders.open_account(account_id)
            for attempt in range(5):
                try:
                    await orders.deposit(account_id, usd, key=f"bench-fund:{account_id}")
                    return
                except ApplicationError as err:
                    if err.type != errors.LEDGER_CONFLICT or attempt == 4:
                        raise

    await asyncio.gather(*(one(a) for a in ids))
    return ids


async def gather_limited(coros: Sequence[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))
