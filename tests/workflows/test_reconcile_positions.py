"""Positions and cash against the omnibus ledger on the real stack (Temporal dev server, Postgres,
Redis, the broker simulator), issue 15 part 2: orders that settle leave no break; a late order's
fill, booked to the error account through the omnibus, leaves none either; a fill the broker made
and the ledger never booked is in flight while its order is live, a position and a cash break
once its order is final without it, and resolved by the next run once it is accounted for.

The stack is this module's own (its own simulator and database): the comparison is of the whole
firm, and the session's shared stack carries other tests' deliberate mismatches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from core.keys import RedisKeys
from tests.conftest import scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.saga import SagaStack, saga_settings, saga_stack
from workflows.reconcile import IncrementalReconcileWorkflow, ReconcileReport, SweepInput

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    temporal_env: WorkflowEnvironment, redis_keys: RedisKeys, tmp_path_factory: Any
) -> AsyncIterator[SagaStack]:
    sim = BrokerSim.start(Path(tmp_path_factory.mktemp("positions-sim")) / "broker.db", seed=11)
    try:
        async with scratch_database("positions") as database_url:
            keys = RedisKeys(f"{redis_keys.prefix}positions:")
            settings = saga_settings(database_url, keys, sim.url)
            async with saga_stack(temporal_env.client, settings, sim) as saga:
                await saga.reset_sim()
                yield saga
    finally:
        sim.stop()


async def sweep(saga: SagaStack) -> ReconcileReport:
    return await saga.temporal.execute_workflow(
        IncrementalReconcileWorkflow.run,
        SweepInput.from_settings(saga.settings),
        id=f"reconcile/positions/{uuid.uuid4().hex[:10]}",
        task_queue=saga.settings.orders_task_queue,
    )


async def open_breaks(saga: SagaStack) -> dict[str, str]:
    rows = await saga.pool.fetch(
        "SELECT kind, order_key, detail FROM reconcile_breaks"
        " WHERE kind IN ('position', 'cash') AND resolved_at IS NULL"
    )
    return {f"{r['kind']} {r['order_key']}": r["detail"] for r in rows}


async def broker_buy(saga: SagaStack, key: str, symbol: str = "AAPL") -> dict[str, Any]:
    body = {"client_order_id": key, "symbol": symbol, "qty": "1", "side": "buy",
            "type": "market", "time_in_force": "day"}  # fmt: skip
    status, order = await saga.sim.request("POST", "/v2/orders", body)
    assert status == 200, order
    for _ in range(200):
        [now] = await saga.broker_orders(key)
        if now["status"] == "filled":
            return now  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{key} never filled")


async def agrees(saga: SagaStack) -> ReconcileReport:
    report = await sweep(saga)
    assert report.positions_stable is True, report
    assert (report.position_breaks, report.cash_breaks) == (0, 0), await open_breaks(saga)
    assert await open_breaks(saga) == {}
    return report


async def test_orders_that_settle_leave_no_position_or_cash_break(stack: SagaStack) -> None:
    acct = await stack.funded_account("5000", shares={"MSFT": "2"})
    buy = await stack.place(acct, symbol="AAPL", side="buy", qty="1.5")
    sell = await stack.place(acct, symbol="MSFT", side="sell", qty="0.75")
    for placed in (buy, sell):
        final = await stack.wait(acct, placed.order_id)
        assert final.status == "SETTLED", final
    await agrees(stack)
    assert (await stack.ledger_report()).ok


async def test_a_late_orders_fill_is_booked_through_the_omnibus_and_is_no_break(
    stack: SagaStack,
) -> None:
    await agrees(stack)
    # not ours by its form, in no orders row: the reconciler books its fill to $error
    await broker_buy(stack, f"manual-{uuid.uuid4().hex[:8]}", symbol="TSLA")
    report = await agrees(stack)
    assert report.error_fills_booked >= 1 or await stack.pool.fetchval(
        "SELECT count(*) FROM error_positions WHERE symbol = 'TSLA'"
    )


async def test_a_fill_the_ledger_never_booked(stack: SagaStack) -> None:
    await agrees(stack)
    acct, oid = stack.account("drop"), "lost-1"
    key = f"{acct}/{oid}"
    # The broker fills an order of ours whose fill the ledger never books (no workflow follows
    # it: as if every fill message were dropped). Its row is written first, as the saga does, so
    # the reconciler never takes it for a late order.
    await stack.pool.execute(
        "INSERT INTO orders (account_id, order_id, workflow_id, symbol, side, order_type,"
        " time_in_force, qty, params_hash, status)"
        " VALUES ($1, $2, 'w', 'NVDA', 'buy', 'market', 'day', 1, 'h', 'ACCEPTED')",
        acct,
        oid,
    )
    filled = await broker_buy(stack, key, symbol="NVDA")
    await stack.pool.execute(
        "UPDATE orders SET status = 'SUBMITTED', broker_order_id = $2 WHERE account_id = $1",
        acct,
        filled["id"],
    )
    assert (
        await stack.pool.fetchval("SELECT count(*) FROM error_positions WHERE symbol = 'NVDA'") == 0
    )
    # Live: its fill is in flight, not a break.
    await agrees(stack)

    # Final with nothing filled, as a lost fill looks: the broker holds a share the ledger lacks.
    await stack.pool.execute(
        "UPDATE orders SET status = 'SETTLED', filled_qty = 0 WHERE account_id = $1", acct
    )
    report = await sweep(stack)
    assert (report.position_breaks, report.cash_breaks) == (1, 1), report
    found = await open_breaks(stack)
    assert set(found) == {"position NVDA", "cash USD"}, found
    assert found["position NVDA"].startswith("broker 1 vs ledger 0 "), found
    notional = Decimal(filled["filled_avg_price"]) * Decimal(filled["filled_qty"])
    broker_cash, ledger_cash = (
        found["cash USD"].split(" (")[0][len("broker ") :].split(" vs ledger ")
    )
    assert abs(Decimal(ledger_cash) - Decimal(broker_cash) - notional) <= Decimal("0.01"), found

    # Accounted for again (the order back in flight): the next run resolves both itself.
    await stack.pool.execute("UPDATE orders SET status = 'SUBMITTED' WHERE account_id = $1", acct)
    await agrees(stack)
    resolved = await stack.pool.fetch(
        "SELECT resolved_by FROM reconcile_breaks WHERE kind IN ('position', 'cash')"
        " AND order_key IN ('NVDA', 'USD')"
    )
    assert [r["resolved_by"] for r in resolved] == ["reconciler", "reconciler"]
