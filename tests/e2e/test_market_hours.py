"""Orders placed while the market is closed, on the real stack: the real workers, Postgres,
Redis, the dev server and the simulator over HTTP in its ``enforce`` market-hours mode with its
clock at a closed moment. An order is accepted at once with its funds held, waits QUEUED (the
status query and its orders row), and is either canceled (its hold voided, nothing sent to the
broker) or, once the simulator's clock is advanced to the open, submitted and filled."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.broker_client import BrokerClient
from core.keys import RedisKeys
from core.orderkey import OrderKey
from core.statuses import OrderStatus
from tests.support.brokersim import StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import Stack, e2e_stack
from tests.support.workerproc import workers_running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

DEPOSIT = "5000"


async def status_of(stack: Stack, acct: str, order_id: str) -> OrderStatus:
    return (await stack.orders.get_order(acct, order_id)).status


async def until_status(stack: Stack, acct: str, order_id: str, status: OrderStatus) -> None:
    deadline = time.monotonic() + 30
    while (now := await status_of(stack, acct, order_id)) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"order {order_id} is {now}, not {status}")
        await asyncio.sleep(0.1)


async def test_orders_placed_while_closed_wait_queued_until_the_open(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(
        fill_model={"mode": "instant", "parts": 1, "auto": True}, market_hours="enforce"
    )
    clock = await sim.admin("GET", "/admin/clock")
    if clock["market_open"]:
        await sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    client = temporal_env.client
    saga = {"market_hours": "enforce", "market_recheck_s": 1.0}
    async with e2e_stack(client, redis_keys, sim, "queued", saga=saga) as stack:
        oc = stack.orders
        acct = await stack.funded_account(DEPOSIT)
        limit = await stack.price("1.05")
        async with BrokerClient.from_settings(stack.settings) as broker:
            assert (await broker.market_clock()).is_open is False
        async with workers_running(client, stack.settings):
            started = time.monotonic()
            dropped = await oc.place_order(stack.limit_buy(acct, limit))
            answered_s = time.monotonic() - started
            assert dropped.accepted and dropped.held > 0, dropped
            kept = await oc.place_order(stack.limit_buy(acct, limit))
            assert kept.accepted, kept
            for placed in (dropped, kept):
                await until_status(stack, acct, placed.order_id, OrderStatus.QUEUED)
                row = await oc._store.get(acct, placed.order_id)
                assert row is not None and row.status == OrderStatus.QUEUED.value, row
            held = (await oc.balance(acct)).of("USD").held
            assert held == dropped.held + kept.held, held

            canceled = await oc.cancel_order(acct, dropped.order_id)
            assert canceled.accepted, canceled
            final = await oc.wait(acct, dropped.order_id, timeout_s=30)
            assert final.status == OrderStatus.CANCELED, (final.status, final.reason)
            assert await stack.broker_orders(str(OrderKey.of(acct, dropped.order_id))) == []
            assert (await oc.balance(acct)).of("USD").held == kept.held

            await asyncio.sleep(2)  # rechecks of the still-closed clock send nothing
            assert await status_of(stack, acct, kept.order_id) == OrderStatus.QUEUED
            assert await stack.broker_orders(str(OrderKey.of(acct, kept.order_id))) == []

            await sim.admin("POST", "/admin/clock/advance", {"to": "next_open"})
            settled = await oc.wait(acct, kept.order_id, timeout_s=60)
        assert settled.status == OrderStatus.SETTLED, (settled.status, settled.reason)
        at_broker = await stack.broker_orders(str(OrderKey.of(acct, kept.order_id)))
        assert [o["status"] for o in at_broker] == ["filled"], at_broker
        notes = [e.event for e in settled.timeline]
        assert any(n.startswith("QUEUED: the market is closed") for n in notes), notes
        bal = (await oc.balance(acct)).of("USD")
        assert bal.held == 0, bal
        assert bal.available == Decimal(DEPOSIT) - settled.posted_cash - settled.fees, bal
        assert (await check_ledger(stack.pool)).ok
        print(f"place answered in {answered_s * 1000:.0f} ms while the market was closed")
