"""The incremental reconciler on the real stack (Temporal dev server, Postgres, Redis, the broker
simulator), issue 15: it lists only what is new since its watermark (and the overlap), a late fill
of an order created long before the watermark is still reconciled, a long sweep goes page by page
and continues as new, and the schedule's runs have an execution timeout and bounded retries."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from core.settings import Settings
from ordersaga.schedules import SCHEDULE_ID, ensure_reconcile_schedule, run_reconcile_now
from tests.support.saga import SagaStack
from workflows.reconcile import IncrementalReconcileWorkflow, ReconcileReport, SweepInput

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def sweep(saga: SagaStack, run_id: str | None = None, **fields: Any) -> ReconcileReport:
    inp = SweepInput.from_settings(saga.settings).model_copy(update=fields)
    return await saga.temporal.execute_workflow(
        IncrementalReconcileWorkflow.run,
        inp,
        id=run_id or f"reconcile/test/{uuid.uuid4().hex[:10]}",
        task_queue=saga.settings.orders_task_queue,
    )


async def broker_order(saga: SagaStack, key: str, **fields: Any) -> dict[str, Any]:
    body = {"client_order_id": key, "symbol": "AAPL", "qty": "1", "side": "buy",
            "type": "market", "time_in_force": "day", **fields}  # fmt: skip
    status, order = await saga.sim.request("POST", "/v2/orders", body)
    assert status == 200, order
    return order  # type: ignore[no-any-return]


async def until_status(saga: SagaStack, key: str, statuses: set[str]) -> dict[str, Any]:
    for _ in range(200):
        [order] = await saga.broker_orders(key)
        if order["status"] in statuses:
            return order
        await asyncio.sleep(0.1)
    raise AssertionError(f"{key} never reached {statuses}")


async def the_break(saga: SagaStack, kind: str, key: str) -> Any:
    rows = await saga.pool.fetch(
        "SELECT * FROM reconcile_breaks WHERE kind = $1 AND order_key = $2", kind, key
    )
    assert len(rows) <= 1
    return rows[0] if rows else None


async def seen(saga: SagaStack, kind: str, key: str) -> int:
    found = await the_break(saga, kind, key)
    return 0 if found is None else int(found["times_seen"])


async def settled_down(saga: SagaStack, kind: str, key: str, at_least: int = 1) -> int:
    """The break's sightings once the listener's targeted runs for the order's events are over
    (each event of an order with no workflow starts one, and it records the break too)."""
    last = -1
    for _ in range(60):
        now = await seen(saga, kind, key)
        if now == last and now >= at_least:
            return now
        last = now
        await asyncio.sleep(1.0)
    raise AssertionError(f"{kind} {key} never settled")


async def test_a_run_lists_what_is_new_since_the_watermark(saga: SagaStack) -> None:
    await sweep(saga, overlap_s=0)  # up to date with whatever earlier tests left at the broker
    acct = saga.account("late")
    key = f"{acct}/ghost-1"  # ours by its form, but no saga ever placed it: a late order
    await broker_order(saga, key)
    filled = await until_status(saga, key, {"filled"})
    before = await settled_down(saga, "late_order", key)

    first = await sweep(saga, overlap_s=0)
    assert first.late_orders >= 1 and first.error_fills_booked >= 1
    assert first.watermark is not None
    assert await seen(saga, "late_order", key) == before + 1  # listed: new since the watermark

    # Nothing new since: the order is behind the watermark and not listed again.
    again = await sweep(saga, overlap_s=0)
    assert await seen(saga, "late_order", key) == before + 1
    assert again.late_orders == 0

    # Within the overlap it is listed again: the same break updated, its fill booked once.
    await sweep(saga, overlap_s=3_600)
    assert await seen(saga, "late_order", key) == before + 2
    booked = await saga.pool.fetchval(
        "SELECT posted_qty FROM error_positions WHERE client_order_id = $1", key
    )
    assert Decimal(booked) == Decimal(filled["filled_qty"])


async def test_a_late_fill_of_an_old_order_is_reconciled(saga: SagaStack) -> None:
    """An order the broker still has open when the watermark passes it fills later: the run after
    the fill asks for it (it was followed) and finds what the orders table does not agree with."""
    acct = saga.account("old")
    oid = "resting-1"
    key = f"{acct}/{oid}"
    price = Decimal(
        str((await saga.sim.admin("GET", "/v2/stocks/NVDA/quotes/latest"))["quote"]["ap"])
    )
    low = (price * Decimal("0.7")).quantize(Decimal("0.01"))
    order = await broker_order(
        saga, key, symbol="NVDA", type="limit", limit_price=str(low), time_in_force="gtc"
    )
    # Our row says it ended unfilled (say, an operator's mistake): the broker will disagree.
    await saga.pool.execute(
        "INSERT INTO orders (account_id, order_id, workflow_id, symbol, side, order_type,"
        " time_in_force, qty, limit_price, params_hash, status, broker_order_id)"
        " VALUES ($1, $2, 'w', 'NVDA', 'buy', 'limit', 'gtc', 1, $3, 'h', 'CANCELED', $4)",
        acct,
        oid,
        low,
        order["id"],
    )
    first = await sweep(saga, overlap_s=0)
    assert first.watermark is not None and first.watermark.isoformat() >= order["created_at"][:19]
    assert await the_break(saga, "fill_mismatch", key) is None  # still open at the broker
    assert await saga.pool.fetchval(
        "SELECT open FROM reconcile_followed WHERE broker_order_id = $1", order["id"]
    )

    # The price drops below the limit for one tick, then goes back: the simulator is the whole
    # session's, and a price left far below its base drifts up by several percent a second
    # (mean reversion), past the caps of market buys that later tests price from a quote.
    await saga.sim.admin("PUT", "/admin/prices", {"NVDA": str(low - 1)})
    try:
        await saga.sim.admin("POST", "/admin/tick")
        await until_status(saga, key, {"filled"})
    finally:
        await saga.sim.admin("PUT", "/admin/prices", {"NVDA": str(price)})
    # The listener's fill event may reach a targeted run first (the order has no workflow);
    # the incremental run must find the fill by itself, as when events are lost.
    before = await settled_down(saga, "fill_mismatch", key, at_least=0)

    await sweep(saga, overlap_s=0)
    found = await the_break(saga, "fill_mismatch", key)
    assert found is not None, "the late fill of an order behind the watermark was missed"
    assert found["times_seen"] == before + 1
    assert found["detail"].endswith("broker 1")
    assert not await saga.pool.fetchval(
        "SELECT open FROM reconcile_followed WHERE broker_order_id = $1", order["id"]
    )


async def test_a_full_sweep_goes_page_by_page_and_continues_as_new(saga: SagaStack) -> None:
    acct = saga.account("sweep")
    for i in range(5):
        await broker_order(saga, f"{acct}/many-{i}")
    listed = await saga.sim.admin("GET", "/v2/orders?status=all&limit=500")
    run_id = f"reconcile/test-full/{uuid.uuid4().hex[:10]}"
    report = await sweep(saga, run_id, full=True, page_size=2, pages_per_run=2)
    assert report.full and report.checked >= len(listed)
    assert report.pages >= len(listed) // 2
    runs = [wf.status async for wf in saga.temporal.list_workflows(f"WorkflowId = '{run_id}'")]
    assert runs.count(WorkflowExecutionStatus.CONTINUED_AS_NEW) >= 2, runs
    assert runs.count(WorkflowExecutionStatus.COMPLETED) == 1, runs
    for i in range(5):
        assert await the_break(saga, "late_order", f"{acct}/many-{i}") is not None

    # `run_reconcile_now(full=True)` (what `ordersaga reconcile --full` runs) is the same sweep
    settings = saga.settings.model_copy(update={"reconcile_page_size": 3})
    again = await run_reconcile_now(settings, saga.temporal, full=True)
    assert again.full and again.checked >= len(listed)


async def test_the_schedule_bounds_each_run(saga: SagaStack) -> None:
    settings: Settings = saga.settings.model_copy(
        update={"reconcile_run_timeout_s": 240.0, "reconcile_run_attempts": 3}
    )
    handle = saga.temporal.get_schedule_handle(SCHEDULE_ID)
    try:
        assert await ensure_reconcile_schedule(saga.temporal, settings)
        await handle.pause()
        action = (await handle.describe()).schedule.action
        assert action.workflow == IncrementalReconcileWorkflow.__name__  # type: ignore[attr-defined]
        assert action.execution_timeout == timedelta(seconds=240)  # type: ignore[attr-defined]
        assert action.retry_policy is not None  # type: ignore[attr-defined]
        assert action.retry_policy.maximum_attempts == 3  # type: ignore[attr-defined]
        # an existing schedule (an older release's) is brought up to date, and stays paused
        newer = settings.model_copy(update={"reconcile_run_timeout_s": 120.0})
        assert not await ensure_reconcile_schedule(saga.temporal, newer)
        described = await handle.describe()
        assert described.schedule.action.execution_timeout == timedelta(seconds=120)  # type: ignore[attr-defined]
        assert described.schedule.state.paused
    finally:
        await handle.delete()
