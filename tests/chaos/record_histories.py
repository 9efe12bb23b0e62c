"""Record OrderWorkflow histories for the replay tests (tests/workflows/test_replay.py).

    .venv/bin/python -m tests.chaos.record_histories [--out tests/histories]

Runs a few orders on real parts (a Temporal dev server, Postgres, Redis, the broker simulator;
the same stack the saga tests use) through the paths a workflow change is most likely to break:
a cancel, partial fills, an unknown submit outcome reconciled with the broker (found late, and
never found), submit retries after 5xx, and a day order the broker expires. Each history is
written as ``<name>.json`` (``WorkflowHistory.to_json()``); the file name is the replay's
workflow id.
Re-record after an intended, versioned change to the workflow; never to make a replay pass.
``tests/histories/local-steps/`` keeps the histories recorded before the worker owned the saga's
settings and before the trust boundary, ``tests/histories/ordinary-steps/`` those recorded before
the quote, lock, ledger and orders-table steps became local activities; neither is ever
re-recorded, since orders started then must still replay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from activities.ledger import max_fence
from activities.lock import AccountLock
from core.db import drop_database, ensure_database, migrate, with_database
from core.keys import RedisKeys
from core.orderkey import OrderKey
from core.statuses import OrderStatus
from feeds.fx import FxFeed, WalkingRate
from tests.support.brokersim import BrokerSim
from tests.support.saga import SagaStack, saga_settings, saga_stack, start_dev_server
from workflows.models import BrokerReport, OrderState
from workflows.order import OrderWorkflow
from workflows.reconcile import (
    IncrementalReconcileWorkflow,
    ReconcileInput,
    ReconcileWorkflow,
    SweepInput,
)

SERVER_DSN = os.environ.get(
    "ORDERSAGA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("ORDERSAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
OUT = Path(__file__).resolve().parent.parent / "histories"

Scenario = Callable[[SagaStack], Awaitable[OrderState]]


async def _price(saga: SagaStack, symbol: str) -> Decimal:
    quote = await saga.sim.admin("GET", f"/v2/stocks/{symbol}/quotes/latest")
    return Decimal(str(quote["quote"]["ap"]))


async def _until_at_broker(saga: SagaStack, acct: str, order_id: str) -> None:
    for _ in range(300):
        if (await saga.orders.get_order(acct, order_id)).broker_order_id:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("order never reached the broker")


async def cancel_resting_limit(saga: SagaStack) -> OrderState:
    acct = await saga.funded_account("10000")
    low = (await _price(saga, "AAPL") * Decimal("0.7")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct, symbol="AAPL", side="buy", qty="2", order_type="limit", limit_price=low,
        time_in_force="gtc",
    )  # fmt: skip
    await _until_at_broker(saga, acct, placed.order_id)
    await saga.orders.cancel_order(acct, placed.order_id)
    return await saga.wait(acct, placed.order_id)


async def partial_fills_buy(saga: SagaStack) -> OrderState:
    await saga.sim.admin("PUT", "/admin/fill_model", {"mode": "partial", "parts": 4, "auto": True})
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="NVDA", side="buy", qty="3")
    return await saga.wait(acct, placed.order_id)


async def partial_fills_sell(saga: SagaStack) -> OrderState:
    await saga.sim.admin("PUT", "/admin/fill_model", {"mode": "partial", "parts": 3, "auto": True})
    acct = await saga.funded_account("100", shares={"MSFT": "2.5"})
    placed = await saga.place(acct, symbol="MSFT", side="sell", qty="1.75")
    return await saga.wait(acct, placed.order_id)


async def unknown_outcome_found_late(saga: SagaStack) -> OrderState:
    """Every trading request answers after the client gave up; the order exists all the same."""
    acct = await saga.funded_account("10000")
    await saga.sim.admin("PUT", "/admin/faults", {"late_prob": 1.0, "late_ms": 2_500})
    placed = await saga.place(acct, symbol="AMZN", side="buy", qty="1")
    await asyncio.sleep(11)  # past the submit's schedule-to-close: the workflow asks the broker
    await saga.reset_sim()
    return await saga.wait(acct, placed.order_id)


async def unknown_outcome_never_arrived(saga: SagaStack) -> OrderState:
    """Every submit fails with 5xx; the broker never has the order; voided after the grace."""
    acct = await saga.funded_account("10000")
    await saga.sim.admin("PUT", "/admin/faults", {"error_5xx_prob": 1.0})
    placed = await saga.place(acct, symbol="TSLA", side="buy", qty="1")
    await asyncio.sleep(10)
    await saga.reset_sim()
    return await saga.wait(acct, placed.order_id)


async def submit_retries_after_5xx(saga: SagaStack) -> OrderState:
    await saga.sim.admin("PUT", "/admin/faults", {"error_5xx_prob": 0.6, "seed": 11})
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="1")
    return await saga.wait(acct, placed.order_id)


async def day_order_expires(saga: SagaStack) -> OrderState:
    acct = await saga.funded_account("10000")
    low = (await _price(saga, "TSLA") * Decimal("0.7")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct, symbol="TSLA", side="buy", qty="1", order_type="limit", limit_price=low
    )
    await _until_at_broker(saga, acct, placed.order_id)
    await saga.sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    return await saga.wait(acct, placed.order_id)


async def refused_for_funds(saga: SagaStack) -> OrderState:
    acct = await saga.funded_account("5")
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="1")
    return await saga.wait(acct, placed.order_id)


async def forged_signal_checked(saga: SagaStack) -> OrderState:
    """A signal no broker sent (a fill at $1) makes the saga ask the broker; then a cancel."""
    acct = await saga.funded_account("10000")
    low = (await _price(saga, "AAPL") * Decimal("0.7")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct, symbol="AAPL", side="buy", qty="1", order_type="limit", limit_price=low,
        time_in_force="gtc",
    )  # fmt: skip
    await _until_at_broker(saga, acct, placed.order_id)
    state = await saga.orders.get_order(acct, placed.order_id)
    handle = saga.temporal.get_workflow_handle(state.workflow_id)
    forged = BrokerReport(
        source="event",
        broker_order_id=state.broker_order_id,
        status="filled",
        filled_qty=Decimal(1),
        filled_notional=Decimal("1.00"),
        terminal=True,
    )
    await handle.signal(OrderWorkflow.broker_update, forged)
    await asyncio.sleep(2)
    await saga.orders.cancel_order(acct, placed.order_id)
    return await saga.wait(acct, placed.order_id)


async def parked_then_resumed(saga: SagaStack) -> OrderState:
    """The hold is closed behind the saga's back before a fill: parked, reopened, resumed."""
    acct = await saga.funded_account("10000")
    low = (await _price(saga, "NVDA") * Decimal("0.7")).quantize(Decimal("0.01"))
    placed = await saga.place(
        acct, symbol="NVDA", side="buy", qty="1", order_type="limit", limit_price=low,
        time_in_force="gtc",
    )  # fmt: skip
    await _until_at_broker(saga, acct, placed.order_id)
    key = OrderKey.of(acct, placed.order_id)
    await saga.pool.execute("UPDATE holds SET status = 'voided' WHERE order_id = $1", key)
    await saga.sim.admin("PUT", "/admin/prices", {"NVDA": str(low - 1)})
    await saga.sim.admin("POST", "/admin/tick")
    for _ in range(300):
        if (await saga.orders.get_order(acct, placed.order_id)).status == "NEEDS_ATTENTION":
            break
        await asyncio.sleep(0.1)
    await saga.pool.execute("UPDATE holds SET status = 'open' WHERE order_id = $1", key)
    await saga.orders.resume_order(acct, placed.order_id)
    return await saga.wait(acct, placed.order_id)


async def refused_account_busy(saga: SagaStack) -> OrderState:
    """Another order keeps the account locked past the saga's bound: refused, account busy."""
    acct = await saga.funded_account("10000")
    lock = AccountLock(saga.redis, saga.keys, fence_floor=functools.partial(max_fence, saga.pool))
    assert await lock.try_acquire(acct, f"{acct}/another-order", ttl_ms=60_000) is not None
    placed = await saga.place(
        acct, symbol="AAPL", side="buy", qty="1", order_type="limit", limit_price="100"
    )
    await lock.release(acct, f"{acct}/another-order")
    return await saga.wait(acct, placed.order_id)


async def reconcile_late_order(saga: SagaStack) -> str:
    """A broker order no saga placed (a late execution): the reconciler books its fill to the
    error account. Its ReconcileWorkflow's history is the one recorded."""
    acct = await saga.funded_account("10")
    key = f"{acct}/late-1"
    body = {"client_order_id": key, "symbol": "AAPL", "qty": "1", "side": "buy",
            "type": "market", "time_in_force": "day"}  # fmt: skip
    status, _ = await saga.sim.request("POST", "/v2/orders", body)
    if status != 200:
        raise RuntimeError(f"the simulator refused the late order: {status}")
    for _ in range(100):
        if (await saga.broker_orders(key))[0]["status"] == "filled":
            break
        await asyncio.sleep(0.1)
    workflow_id = f"reconcile/record/{uuid.uuid4().hex[:8]}"
    report = await saga.temporal.execute_workflow(
        ReconcileWorkflow.run,
        ReconcileInput.from_settings(saga.settings, [key]),
        id=workflow_id,
        task_queue=saga.settings.orders_task_queue,
    )
    if report.late_orders != 1 or report.error_fills_booked != 1:
        raise RuntimeError(f"reconcile_late_order: {report}")
    return workflow_id


async def reconcile_incremental(saga: SagaStack) -> str:
    """The scheduled reconciler's run: a late order among the new ones (its fill booked to the
    error account), a resting order followed, pages of 2 and a continue-as-new after 3; the
    history recorded is the chain's first run (the watermark read, three pages settled, the
    watermark advanced, the continue-as-new)."""
    acct = await saga.funded_account("10")
    key = f"{acct}/late-2"
    body = {"client_order_id": key, "symbol": "MSFT", "qty": "1", "side": "buy",
            "type": "market", "time_in_force": "day"}  # fmt: skip
    status, _ = await saga.sim.request("POST", "/v2/orders", body)
    if status != 200:
        raise RuntimeError(f"the simulator refused the late order: {status}")
    await cancel_resting_limit(saga)  # a few more broker orders of ours
    inp = SweepInput.from_settings(saga.settings).model_copy(
        update={"page_size": 2, "pages_per_run": 3}
    )
    handle = await saga.temporal.start_workflow(
        IncrementalReconcileWorkflow.run,
        inp,
        id=f"reconcile/record/{uuid.uuid4().hex[:8]}",
        task_queue=saga.settings.orders_task_queue,
    )
    report = await handle.result()
    if report.late_orders < 1 or report.pages < 3:
        raise RuntimeError(f"reconcile_incremental: {report}")
    return f"{handle.id}@{handle.first_execution_run_id}"


async def replaced_then_filled(saga: SagaStack) -> OrderState:
    """A resting limit buy replaced (more shares, a limit above the market) and then filled."""
    acct = await saga.funded_account("10000")
    ask = await _price(saga, "AAPL")
    low, high = ((ask * Decimal(f)).quantize(Decimal("0.01")) for f in ("0.8", "1.1"))
    placed = await saga.place(
        acct, symbol="AAPL", side="buy", qty="2", order_type="limit", limit_price=low,
        time_in_force="gtc",
    )  # fmt: skip
    await _until_at_broker(saga, acct, placed.order_id)
    await saga.orders.replace_order(acct, placed.order_id, qty="3", limit_price=high)
    return await saga.wait(acct, placed.order_id)


async def won_market_buy(saga: SagaStack) -> OrderState:
    """A market buy paid in won (fx-leg-v1): the stock quote, the FX quote, the hold in won,
    the fill converted through the FX desk, the rest refunded in won."""
    acct = saga.account("krw")
    await saga.orders.open_account(acct, currency="KRW")
    await saga.orders.deposit(acct, "2000000", currency="KRW")
    feed = FxFeed(saga.redis, saga.keys, WalkingRate(Decimal(1385), Decimal(0)),
                  spread=Decimal("0.01"), ttl_s=60)  # fmt: skip
    await feed.update_once()
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="2", pay="KRW")
    return await saga.wait(acct, placed.order_id)


# Histories of the reconciler, recorded by workflow id (``id@run``: that run of the chain).
RECONCILES: dict[str, Callable[[SagaStack], Awaitable[str]]] = {
    "reconcile_late_order": reconcile_late_order,
    "reconcile_incremental": reconcile_incremental,
}

SCENARIOS: dict[str, tuple[Scenario, OrderStatus]] = {
    "cancel_resting_limit": (cancel_resting_limit, OrderStatus.CANCELED),
    "partial_fills_buy": (partial_fills_buy, OrderStatus.SETTLED),
    "partial_fills_sell": (partial_fills_sell, OrderStatus.SETTLED),
    "unknown_outcome_found_late": (unknown_outcome_found_late, OrderStatus.SETTLED),
    "unknown_outcome_never_arrived": (unknown_outcome_never_arrived, OrderStatus.REJECTED),
    "submit_retries_after_5xx": (submit_retries_after_5xx, OrderStatus.SETTLED),
    "day_order_expires": (day_order_expires, OrderStatus.EXPIRED),
    "refused_for_funds": (refused_for_funds, OrderStatus.REJECTED),
    "forged_signal_checked": (forged_signal_checked, OrderStatus.CANCELED),
    "parked_then_resumed": (parked_then_resumed, OrderStatus.SETTLED),
    "refused_account_busy": (refused_account_busy, OrderStatus.REJECTED),
    "replaced_then_filled": (replaced_then_filled, OrderStatus.SETTLED),
    "won_market_buy": (won_market_buy, OrderStatus.SETTLED),
}


async def record(out: Path, only: list[str]) -> None:
    dsn = with_database(SERVER_DSN, f"ordersaga_record_{uuid.uuid4().hex[:10]}")
    keys = RedisKeys(prefix=f"ordersaga_record_{uuid.uuid4().hex[:10]}:")
    await ensure_database(dsn)
    await migrate(dsn)
    # Recorded in plain payloads: the session's key is random, and a replay must not need it.
    env = await start_dev_server(encrypted=False)
    tmp = tempfile.TemporaryDirectory()
    sim = BrokerSim.start(Path(tmp.name) / "broker.db", seed=7)
    try:
        # A short bound on the lock wait, for refused_account_busy.
        settings = saga_settings(
            dsn,
            keys,
            sim.url,
            redis_url=REDIS_URL,
            codec_keys="",
            saga={"lock_wait_total_s": 3.0},
        )
        async with saga_stack(env.client, settings, sim) as saga:
            for name in only or [*SCENARIOS, *RECONCILES]:
                await _record_one(saga, name, out)
    finally:
        sim.stop()
        await env.shutdown()
        await drop_database(dsn)
        await _drop_keys(keys)
        tmp.cleanup()


async def _record_one(saga: SagaStack, name: str, out: Path) -> None:
    await saga.reset_sim()
    if name in RECONCILES:
        workflow_id, ended = await RECONCILES[name](saga), "reconciled"
    else:
        scenario, expected = SCENARIOS[name]
        final = await scenario(saga)
        if final.status != expected:
            raise RuntimeError(f"{name}: ended {final.status}, expected {expected}: {final.reason}")
        workflow_id, ended = final.workflow_id, final.status.value
    workflow_id, _, run_id = workflow_id.partition("@")
    handle = saga.temporal.get_workflow_handle(workflow_id, run_id=run_id or None)
    history = await handle.fetch_history()
    (out / f"{name}.json").write_text(history.to_json() + "\n")
    print(f"{name}: {ended}, {len(history.events)} events")


async def _drop_keys(keys: RedisKeys) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    with contextlib.suppress(Exception):
        found = [k async for k in client.scan_iter(match=keys.pattern(), count=500)]
        if found:
            await client.delete(*found)
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    names = [*SCENARIOS, *RECONCILES]
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(names)}")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(names)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(record(args.out, args.scenarios))
    os._exit(0)  # the SDK can abort at interpreter exit (sdk-python#300)


if __name__ == "__main__":
    main()
