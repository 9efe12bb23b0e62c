"""SIGKILL the worker in the middle of an order: a new worker process finishes it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.db import create_pool
from core.keys import RedisKeys
from core.statuses import OrderStatus
from ordersaga.client import OrderClient
from tests.conftest import scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.saga import saga_settings
from tests.support.workerproc import start_worker, worker_env

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


@pytest.fixture
def crash_sim(tmp_path: Path) -> Iterator[BrokerSim]:
    sim = BrokerSim.start(
        tmp_path / "broker.db", fill_model={"mode": "partial", "parts": 2, "auto": False}
    )
    yield sim
    sim.stop()


async def _nonempty(listing: Awaitable[list[dict[str, object]]]) -> bool:
    return bool(await listing)


async def test_sigkill_worker_mid_order_then_a_new_worker_finishes_it(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    crash_sim: BrokerSim,
    tmp_path: Path,
) -> None:
    async with scratch_database("crash") as database_url:
        await _crash_and_recover(temporal_env, database_url, redis_keys, crash_sim, tmp_path)


async def _crash_and_recover(
    temporal_env: WorkflowEnvironment,
    database_url: str,
    redis_keys: RedisKeys,
    crash_sim: BrokerSim,
    tmp_path: Path,
) -> None:
    settings = saga_settings(database_url, redis_keys, crash_sim.url)
    env = worker_env(settings, temporal_env.client.service_client.config.target_host)
    log = tmp_path / "worker.log"
    pool = await create_pool(database_url, 1, 4)
    worker = start_worker(env, log)
    try:
        oc = OrderClient(temporal_env.client, pool, settings)
        acct = f"crash-{os.getpid()}-{time.monotonic_ns() % 10**8}"
        await oc.open_account(acct)
        await oc.deposit(acct, "5000")
        quote = await crash_sim.admin("GET", "/v2/stocks/AAPL/quotes/latest")
        limit = (Decimal(str(quote["quote"]["ap"])) * Decimal("1.2")).quantize(Decimal("0.01"))
        placed = await oc.place_order(
            account_id=acct,
            symbol="AAPL",
            side="buy",
            qty="2",
            order_type="limit",
            limit_price=limit,
        )
        assert placed.accepted
        key = f"{acct}/{placed.order_id}"

        async def at_broker() -> list[dict[str, object]]:
            listed = await crash_sim.admin("GET", "/v2/orders?status=all")
            return [o for o in listed if o["client_order_id"] == key]

        async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
            for _ in range(300):
                if await check():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"never happened: {what}")

        async def first_fill_booked() -> bool:
            return (await oc.get_order(acct, placed.order_id)).filled_qty == 1

        # The kill lands mid-order: submitted, and the first partial fill booked.
        await eventually(lambda: _nonempty(at_broker()), "the order at the broker")
        await crash_sim.admin("POST", "/admin/tick")  # first partial fill at the broker
        await eventually(first_fill_booked, "the first partial fill booked")

        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        await crash_sim.admin("POST", "/admin/tick")  # the rest fills while no worker runs

        worker = start_worker(env, log)
        final = await oc.wait(acct, placed.order_id, timeout_s=60)

        assert final.status == OrderStatus.SETTLED
        assert final.filled_qty == Decimal(2)
        assert len(await at_broker()) == 1
        bal = await oc.balance(acct)
        assert bal.of("AAPL").available == Decimal(2)
        assert bal.of("USD").held == 0
        report = await check_ledger(pool)
        assert report.ok, report
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(15)
        await pool.close()
