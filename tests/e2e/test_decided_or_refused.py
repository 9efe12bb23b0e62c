"""Decided or refused, always (issue 12, parts 5 and 6), on the real stack.

A step that fails for good before the order is decided refuses it, with a reason and an orders
row; the workflow completes and the customer is answered. The wait for a busy account's lock is
bounded. A closed order is answered from its result or its row, with no worker running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.db import create_pool
from core.errors import UserError
from core.keys import RedisKeys
from core.statuses import OrderStatus
from tests.conftest import REDIS_URL, scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.e2e import Stack, stack_on
from tests.support.workerproc import workers_running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


@pytest.fixture(scope="module")
def refuse_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSim]:
    # Nothing fills unless told: an order can be left resting at the broker.
    sim = BrokerSim.start(
        tmp_path_factory.mktemp("refuse-sim") / "broker.db",
        fill_model={"mode": "instant", "parts": 1, "auto": False},
    )
    yield sim
    sim.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def refuse_db() -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    async with scratch_database("refused") as database_url:
        pool = await create_pool(database_url, 1, 4)
        try:
            yield database_url, pool
        finally:
            await pool.close()


def refuse_stack(
    temporal_env: WorkflowEnvironment,
    refuse_db: tuple[str, asyncpg.Pool],
    redis_keys: RedisKeys,
    sim: BrokerSim,
    **saga: object,
) -> Stack:
    database_url, pool = refuse_db
    return stack_on(temporal_env.client, database_url, pool, redis_keys, sim, "refuse", saga=saga)


async def test_an_account_locked_too_long_is_refused_account_busy(
    temporal_env: WorkflowEnvironment,
    refuse_db: tuple[str, asyncpg.Pool],
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
    refuse_sim: BrokerSim,
) -> None:
    stack = refuse_stack(
        temporal_env, refuse_db, redis_keys, refuse_sim, lock_wait_total_s=3.0, lock_wait_ms=500
    )
    settings, oc, pool = stack.settings, stack.orders, stack.pool
    acct = await stack.funded_account("1000")
    lock = stack.account_lock(redis_client)
    other = await lock.try_acquire(acct, "someone-else/o1", ttl_ms=60_000)
    assert other is not None
    async with workers_running(temporal_env.client, settings):
        started = time.monotonic()
        placed = await asyncio.wait_for(
            oc.place_order(
                account_id=acct,
                symbol="AAPL",
                side="buy",
                qty="1",
                order_type="limit",
                limit_price="100",
            ),
            30,
        )
        waited = time.monotonic() - started
        final = await oc.wait(acct, placed.order_id, timeout_s=30)
    assert not placed.accepted, placed
    assert placed.reason == "account busy: other orders kept the account locked for 3 s", placed
    assert waited < 20, waited
    assert final.status == OrderStatus.REJECTED
    row = await oc._store.get(acct, placed.order_id)
    assert row is not None and row.status == "REJECTED" and row.reason == placed.reason, row
    bal = await oc.balance(acct)
    assert bal.of("USD").available == Decimal(1000) and bal.of("USD").held == 0
    holder = await lock.holder(acct)
    assert holder is not None and holder.owner == "someone-else/o1", holder  # untouched
    assert (await check_ledger(pool)).ok


async def test_a_quote_that_cannot_be_read_refuses_the_order_with_its_row(
    temporal_env: WorkflowEnvironment,
    refuse_db: tuple[str, asyncpg.Pool],
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
    refuse_sim: BrokerSim,
) -> None:
    stack = refuse_stack(temporal_env, refuse_db, redis_keys, refuse_sim)
    settings, oc, pool = stack.settings, stack.orders, stack.pool
    acct = await stack.funded_account("1000")
    # A key of the wrong type: every read of the quote fails (WRONGTYPE), as it would with the
    # cache down; not a quote that reads as stale. Planted as the server's admin: the
    # application's ACL user has no list command that could make it.
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        await admin.rpush(RedisKeys(settings.redis_prefix).quote("AAPL"), "not a quote")
    finally:
        await admin.aclose()
    async with workers_running(temporal_env.client, settings):
        placed = await asyncio.wait_for(
            oc.place_order(account_id=acct, symbol="AAPL", side="buy", qty="1"), 30
        )
        final = await oc.wait(acct, placed.order_id, timeout_s=30)
    assert not placed.accepted, placed
    assert placed.reason is not None and placed.reason.startswith(
        "could not be placed (pricing): "
    ), placed
    assert "WRONGTYPE" in placed.reason, placed
    assert final.status == OrderStatus.REJECTED
    row = await oc._store.get(acct, placed.order_id)
    assert row is not None and row.status == "REJECTED" and row.reason == placed.reason, row
    assert (await oc.balance(acct)).of("USD").held == 0
    assert (await check_ledger(pool)).ok


async def test_a_closed_order_is_answered_with_no_worker_running(
    temporal_env: WorkflowEnvironment,
    refuse_db: tuple[str, asyncpg.Pool],
    redis_keys: RedisKeys,
    refuse_sim: BrokerSim,
) -> None:
    """Completed: its result; terminated (a resting order an operator killed): its row."""
    stack = refuse_stack(temporal_env, refuse_db, redis_keys, refuse_sim)
    settings, oc = stack.settings, stack.orders
    acct = await stack.funded_account("1000")
    too_big = stack.limit_buy(acct, "90", qty="50")
    resting = stack.limit_buy(acct, await stack.price("0.95"))
    async with workers_running(temporal_env.client, settings):
        refused = await oc.place_order(too_big)
        assert not refused.accepted and refused.reason.startswith("insufficient funds"), refused
        await oc.wait(acct, too_big.order_id, timeout_s=30)
        assert (await oc.place_order(resting)).accepted
        for _ in range(100):  # until it rests at the broker
            if (await oc.get_order(acct, resting.order_id)).broker_order_id:
                break
            await asyncio.sleep(0.1)
    # No worker polls the orders queue from here on: a query would wait for one.
    await oc.temporal.get_workflow_handle(resting.workflow_id).terminate("operator")

    again = await asyncio.wait_for(oc.place_order(too_big), 10)
    assert not again.accepted and again.reason == refused.reason, again
    state = await asyncio.wait_for(oc.get_order(acct, too_big.order_id), 10)
    assert state.status == OrderStatus.REJECTED and state.reason == refused.reason
    with pytest.raises(UserError, match="order is already REJECTED"):
        await asyncio.wait_for(oc.cancel_order(acct, too_big.order_id), 10)

    rested = await asyncio.wait_for(oc.get_order(acct, resting.order_id), 10)
    assert rested.status == OrderStatus.SUBMITTED, rested  # the row's word: it is at the broker
    assert rested.broker_order_id is not None
