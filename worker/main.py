"""The worker process's composition root: settings -> clients -> activity objects -> Workers.

``orders`` runs the workflows and the lock, ledger, market-data and orders-table activities;
``broker`` runs only the broker activities, with its own slot limit, so a hung broker cannot take
the slots ledger work needs (the bulkhead): submits and cancels on the broker queue, the orders'
questions (polls) on the asks queue beside it, each with its own slots. Either or both of
``orders`` and ``broker`` per process.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import functools
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.broker import BrokerActivities
from activities.config import ConfigActivities
from activities.ledger import Ledger, LedgerActivities, max_fence
from activities.ledger.settlement import SettlementActivities
from activities.lock import AccountLock, LockActivities
from activities.market import MarketActivities
from activities.marketdata import MarketDataActivities
from activities.orders import OrderStore, OrderStoreActivities
from activities.positions import PositionActivities
from activities.reconcile import ReconcileActivities
from core.broker_client import BrokerClient
from core.db import create_pool
from core.errors import UserError
from core.keys import RedisKeys
from core.redisconn import check_redis, redis_client
from core.settings import SagaConfig, Settings
from core.telemetry import (
    NOOP_METRICS,
    OpsServer,
    ProcessMetrics,
    Telemetry,
    broker_check,
    new_telemetry,
    postgres_check,
    redis_check,
    temporal_check,
)
from core.temporal import connect
from worker.collector import Collector
from workflows.order import OrderWorkflow
from workflows.reconcile import IncrementalReconcileWorkflow, ReconcileWorkflow
from workflows.settlement import SettlementWorkflow
from workflows.trading import TradingStateWorkflow

log = logging.getLogger("ordersaga.worker")
# Modules the workflow sandbox must never import afresh: the workflows import them passed through,
# but a client object's __del__ (a pool collected inside a workflow run) imports lazily, and the
# sandbox would then re-import the whole library in the middle of a run.
PASSTHROUGH = ("redis", "asyncpg", "aiohttp", "pydantic_settings")
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
)
QUEUES = ("orders", "broker")
# Temporal's own dispatch rate for a task queue without a limit. "No limit" is sent as this, not
# left out: a poller that sends none leaves the limit an earlier poller set on the queue.
UNLIMITED_RATE = 100_000.0
WORKFLOWS = (
    OrderWorkflow,
    ReconcileWorkflow,
    IncrementalReconcileWorkflow,
    TradingStateWorkflow,
    SettlementWorkflow,
)


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """The worker's version in the Worker Deployment, None for an unversioned worker (no build
    id); a UserError of one line when versioning is required and the build id is missing.

    Both workflow types are pinned: a run ends on the build that started it (an order's history
    replays only on the code that wrote it; a reconcile run lasts minutes). The behaviour is the
    worker's default rather than each ``@workflow.defn``'s because an unversioned worker may send
    none (the server refuses the task's completion), and the same classes run unversioned in the
    dev stack and the tests."""
    if not settings.build_id:
        if settings.worker_versioning:
            raise UserError(
                "ORDERSAGA_WORKER_VERSIONING is on but ORDERSAGA_BUILD_ID is empty:"
                " a versioned worker needs its build id"
            )
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(settings.deployment_name, settings.build_id),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


def queue_rate(per_second: float) -> float:
    """A task queue's activity rate for Temporal from a setting where 0 means no limit."""
    return per_second or UNLIMITED_RATE


def cache_workflow_bytecode(workflows: Sequence[type] = WORKFLOWS) -> None:
    """Write the workflow modules' bytecode, even where PYTHONDONTWRITEBYTECODE is set.

    The sandbox imports a workflow's module afresh for every workflow run it starts (a new order,
    or one replayed after a cache eviction). Without cached bytecode, as in the many images that
    set PYTHONDONTWRITEBYTECODE=1, every such import compiles ``workflows/order.py`` and the
    modules beside it that it imports from source: about 6 ms of worker CPU per order in
    ``bench.throughput``. Best effort: on a read-only tree nothing is written and each run
    compiles, as before.
    """
    for wf in workflows:
        path = inspect.getsourcefile(wf)
        if path is not None:
            compileall.compile_dir(Path(path).parent, maxlevels=0, quiet=2)


@dataclass
class Resources:
    """Clients built once per process and injected into every activity object."""

    settings: Settings
    pool: asyncpg.Pool | None = None
    redis: aioredis.Redis | None = None
    broker: BrokerClient | None = None  # the broker queue's only


@contextlib.asynccontextmanager
async def resources(settings: Settings, queues: Sequence[str]) -> AsyncIterator[Resources]:
    res = Resources(settings)
    try:
        if "orders" in queues:
            res.pool = await create_pool(
                settings.database_url, settings.db_pool_min, settings.db_pool_max
            )
            res.redis = redis_client(settings, decode_responses=True)
            await check_redis(res.redis, settings)  # a refused password: one line, no start
        if "broker" in queues:
            res.broker = BrokerClient.from_settings(settings)
        yield res
    finally:
        if res.broker is not None:
            await res.broker.close()
        if res.redis is not None:
            await res.redis.aclose()
        if res.pool is not None:
            await res.pool.close()


def build_workers(
    client: Client,
    res: Resources,
    queues: Sequence[str],
    metrics: ProcessMetrics = NOOP_METRICS,
) -> list[Worker]:
    s = res.settings
    keys = RedisKeys(s.redis_prefix)
    # One version for every queue of this build: a pinned order's activities (on the broker and
    # asks queues) go to the broker workers of the build that runs the order.
    version = deployment_config(s)
    workers: list[Worker] = []
    if "orders" in queues:
        assert res.pool is not None and res.redis is not None
        cache_workflow_bytecode()
        ledger = LedgerActivities(Ledger(res.pool, cas_attempts=s.ledger_cas_attempts, risk=s.risk))
        lock = LockActivities(
            AccountLock(res.redis, keys, fence_floor=functools.partial(max_fence, res.pool))
        )
        quotes = MarketDataActivities(
            res.redis, keys, max_age_s=s.quote_max_age_s, fx_max_age_s=s.fx_max_age_s
        )
        store = OrderStoreActivities(OrderStore(res.pool))
        reconcile = ReconcileActivities(res.pool)
        settlement = SettlementActivities(res.pool)
        positions = PositionActivities(res.pool, s.broker_cash_baseline)
        config = ConfigActivities(SagaConfig.from_settings(s))
        workers.append(
            Worker(
                client,
                task_queue=s.orders_task_queue,
                workflows=list(WORKFLOWS),
                workflow_runner=WORKFLOW_RUNNER,
                activities=[
                    lock.acquire_lock,
                    lock.release_lock,
                    ledger.reserve_funds,
                    ledger.post_fill,
                    ledger.resize_hold,
                    ledger.void_funds,
                    ledger.book_error_fill,
                    quotes.get_quote,
                    quotes.get_fx_quote,
                    store.record_order,
                    store.update_order,
                    reconcile.find_breaks,
                    reconcile.classify_page,
                    reconcile.followed_not_seen,
                    reconcile.read_watermark,
                    reconcile.advance_watermark,
                    reconcile.find_order_breaks,
                    settlement.settle_due,
                    positions.read_ledger_side,
                    positions.record_position_breaks,
                    config.saga_config,
                ],
                max_concurrent_activities=s.orders_max_concurrent_activities,
                max_concurrent_local_activities=s.orders_max_concurrent_local_activities,
                graceful_shutdown_timeout=timedelta(seconds=s.worker_grace_s),
                deployment_config=version,
            )
        )
    if "broker" in queues:
        assert res.broker is not None
        broker = BrokerActivities(res.broker, metrics)
        market = MarketActivities(res.broker)
        workers.append(
            Worker(
                client,
                task_queue=s.broker_task_queue,
                activities=[
                    broker.submit_order,
                    broker.replace_order,
                    broker.cancel_order,
                    # Orders started before the asks queue still ask here.
                    broker.reconcile_order,
                    # ReconcileWorkflow runs started before the incremental reconciler
                    broker.list_broker_orders,
                    broker.list_broker_orders_page,
                    broker.get_broker_orders,
                    broker.get_holdings,
                    market.market_clock,  # orders whose settings have no asks queue
                ],
                max_concurrent_activities=s.broker_max_concurrent_activities,
                # The broker key's rate limit (core/settings.py), shared with the asks queue.
                max_task_queue_activities_per_second=queue_rate(s.broker_max_activities_per_second),
                graceful_shutdown_timeout=timedelta(seconds=s.worker_grace_s),
                deployment_config=version,
            )
        )
        # The orders' questions (polls, lookups) on a queue and slots of their own: however
        # many resting orders poll, a submit or a cancel never waits behind them.
        workers.append(
            Worker(
                client,
                task_queue=s.asks_task_queue,
                activities=[broker.reconcile_order, market.market_clock],
                max_concurrent_activities=s.broker_max_concurrent_activities,
                max_task_queue_activities_per_second=queue_rate(
                    s.broker_asks_max_activities_per_second
                ),
                graceful_shutdown_timeout=timedelta(seconds=s.worker_grace_s),
                deployment_config=version,
            )
        )
    return workers


def parse_queues(text: str) -> list[str]:
    """``orders,broker`` -> the queue names; ValueError names what is wrong."""
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = set(queues) - set(QUEUES)
    if unknown or not queues:
        raise ValueError(f"queues must be a subset of {QUEUES}, got {queues}")
    return queues


async def run_workers(settings: Settings, queues: Sequence[str]) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight work within the grace period."""
    parse_queues(",".join(queues))
    version = deployment_config(settings)  # a versioned worker without a build id: no start
    telemetry = new_telemetry() if settings.metrics_port else None
    client = await connect(settings, telemetry.runtime if telemetry else None)
    metrics = ProcessMetrics(telemetry.meter if telemetry else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with resources(settings, queues) as res, contextlib.AsyncExitStack() as extras:
        workers = build_workers(client, res, queues, metrics)
        tasks = [asyncio.create_task(w.run()) for w in workers]
        names = ", ".join(w.task_queue for w in workers)
        if telemetry is not None:
            ops = await extras.enter_async_context(ops_server(settings, telemetry, client, res))
            print(f"worker metrics: http://{ops.host}:{ops.port}/metrics", flush=True)
            if res.pool is not None:
                collector = Collector(res.pool, metrics, settings.reconcile_stuck_after_s)
                gauges = asyncio.create_task(collector.run(settings.metrics_interval_s, stop))
                extras.push_async_callback(_finish, gauges)
        build = f"; version {version.version.to_canonical_string()}" if version else "; unversioned"
        log.info("worker polling %s on %s%s", names, settings.temporal_address, build)
        print(f"worker ready: queues {names}{build}", flush=True)
        done_waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([done_waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        log.info("draining (grace %.0fs)", settings.worker_grace_s)
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception():
                raise t.exception()  # type: ignore[misc]
        done_waiter.cancel()


def ops_server(
    settings: Settings, telemetry: Telemetry, client: Client, res: Resources
) -> OpsServer:
    """/metrics, /healthz and /readyz: ready when Temporal and the stores this worker uses
    answer; the broker (the broker queue's) only reported."""
    required = {"temporal": temporal_check(client)}
    if res.pool is not None:
        required["postgres"] = postgres_check(res.pool)
    if res.redis is not None:
        required["redis"] = redis_check(res.redis)
    reported = {"broker": broker_check(res.broker)} if res.broker is not None else {}
    return OpsServer(
        settings.metrics_host, settings.metrics_port, telemetry.exporter, required, reported
    )


async def _finish(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
