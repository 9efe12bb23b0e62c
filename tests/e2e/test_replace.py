"""Replace (issue 16, part 5) on the real stack: the workers, Postgres, Redis, the simulator over
HTTP and the dev server. The simulator fills only when a test ticks it, at prices the test sets
(``walk: false``), a quarter of the order per tick, so every race is placed by hand:

- a fill before the replace (booked on the first broker order, carried into the order's total)
  and after it (booked on the replacement, ``<key>/r1``);
- a fill during it (the replace held on its way to the book by ``replace_delay_ms`` while the old
  order fills): the order never fills beyond the quantity asked;
- a cancel racing it: the cancel goes to the replacement;
- a replace of a filled order, or one the account cannot fund, or one the broker refuses: refused,
  and the order, its hold and the broker's book are as they were.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from activities.ledger.risk import account_risk, set_account_limits, set_trading_state
from core.errors import UserError
from core.keys import RedisKeys
from core.money import commission, round_cash
from core.risk import Overrides, TradingState
from core.settings import SagaSettings
from core.statuses import OrderStatus
from tests.support.brokersim import BrokerSim, StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import Stack, e2e_stack
from tests.support.workerproc import worker_env, workers_running
from workflows.models import OrderState, ReplaceResult

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

ORDERSAGA = str(Path(sys.executable).with_name("ordersaga"))
DEPOSIT = "5000"
PRICE = Decimal("100.00")


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def replace_stack(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    start: StartSim,
    kind: str,
    poll_s: float = 1.0,
) -> AsyncIterator[Stack]:
    sim = start(fill_model={"mode": "partial", "parts": 4, "auto": False, "walk": False})
    await sim.admin("PUT", "/admin/prices", {"AAPL": str(PRICE)})
    saga = {"fill_poll_interval_s": poll_s, "fill_poll_max_interval_s": poll_s}
    async with e2e_stack(temporal_env.client, redis_keys, sim, kind, saga=saga) as stack:
        async with workers_running(temporal_env.client, stack.settings):
            yield stack


async def state_of(stack: Stack, acct: str, order_id: str) -> OrderState:
    return await stack.orders.get_order(acct, order_id)


async def booked(stack: Stack, acct: str, order_id: str, qty: str) -> None:
    async def done() -> bool:
        return (await state_of(stack, acct, order_id)).filled_qty == Decimal(qty)

    await eventually(done, f"{qty} filled on the order")


async def placed_and_submitted(stack: Stack, acct: str, limit: str, qty: str) -> str:
    placed = await stack.orders.place_order(stack.limit_buy(acct, Decimal(limit), qty=qty))
    assert placed.accepted, placed

    async def at_broker() -> bool:
        return (await state_of(stack, acct, placed.order_id)).broker_order_id is not None

    await eventually(at_broker, "the order to reach the broker")
    return placed.order_id


async def tick(sim: BrokerSim, times: int = 1) -> None:
    for _ in range(times):
        await sim.admin("POST", "/admin/tick")


async def replacing(sim: BrokerSim) -> bool:
    return (await sim.admin("GET", "/admin/requests"))["replacing"] > 0


async def usd(stack: Stack, acct: str) -> tuple[Decimal, Decimal]:
    bal = (await stack.orders.balance(acct)).of("USD")
    return bal.available, bal.held


def cost(qty: int, price: Decimal = PRICE) -> Decimal:
    """What ``qty`` shares at ``price`` cost with the tests' commission (saga defaults)."""
    saga = SagaSettings()
    cash = round_cash(price * qty)
    return cash + commission(cash, saga.commission_rate, saga.commission_minimum)


async def paid_for(stack: Stack, acct: str, final: OrderState) -> None:
    """A settled order's account: its shares in, what its fills and fees cost out, nothing left
    held, and the ledger's invariants whole."""
    bal = await stack.orders.balance(acct)
    assert bal.of("AAPL").available == final.filled_qty and bal.of("USD").held == 0, bal
    spent = Decimal(DEPOSIT) - bal.of("USD").available
    assert spent == final.filled_notional + final.fees, (spent, final.fees)
    assert (await check_ledger(stack.pool)).ok


async def test_fills_before_and_after_a_replace_are_booked_on_their_broker_orders(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    async with replace_stack(temporal_env, redis_keys, brokersim_factory, "replfill") as stack:
        acct = await stack.funded_account(DEPOSIT)
        oid = await placed_and_submitted(stack, acct, "101.00", "4")
        first = (await state_of(stack, acct, oid)).broker_order_id
        await tick(stack.sim)  # 1 of 4 at 100 on the first broker order
        await booked(stack, acct, oid, "1")

        res = await stack.orders.replace_order(acct, oid, qty="6", limit_price="102.50")
        assert res.accepted, res
        assert (res.qty, res.limit_price) == (Decimal(6), Decimal("102.50"))
        orders = {
            o["client_order_id"]: o for o in await stack.sim.admin("GET", "/v2/orders?status=all")
        }
        old, new = orders[f"{acct}/{oid}"], orders[f"{acct}/{oid}/r1"]
        assert (old["id"], old["status"], old["filled_qty"]) == (first, "replaced", "1")
        assert (new["qty"], new["limit_price"], new["replaces"]) == ("5", "102.5", first)
        assert res.broker_order_id == new["id"]
        row = await stack.orders._store.get(acct, oid)  # the orders row shows the order as it is
        assert row is not None and (row.qty, row.limit_price) == (6, Decimal("102.50")), row
        assert row.broker_order_id == new["id"]
        # The hold now covers what the order can still cost: 5 more at 102.50 on top of the fill.
        available, held = await usd(stack, acct)
        assert held == res.held - cost(1), (held, res.held)
        assert available + held == Decimal(DEPOSIT) - cost(1)

        await stack.sim.admin("PUT", "/admin/prices", {"AAPL": "102.00"})
        await tick(stack.sim, 4)  # the replacement fills, at 102, in parts
        final = await stack.orders.wait(acct, oid, timeout_s=60)
        assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
        assert final.filled_qty == 6 and final.filled_notional == PRICE + 5 * Decimal("102.00")
        assert final.broker_order_id == new["id"] and final.replaced_ids == [first]
        await paid_for(stack, acct, final)


async def test_a_replaced_order_continues_as_new_with_its_broker_orders(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    """A short history limit: the order continues as new around its replace (a replace that
    arrives while the run waits to continue is carried out first), and the runs after carry the
    replaced broker order's fills and follow the replacement."""
    sim = brokersim_factory(
        fill_model={"mode": "partial", "parts": 4, "auto": False, "walk": False}
    )
    await sim.admin("PUT", "/admin/prices", {"AAPL": str(PRICE)})
    saga = {"max_history_events": 30, "fill_poll_interval_s": 0.5, "fill_poll_max_interval_s": 0.5}
    client = temporal_env.client
    async with e2e_stack(client, redis_keys, sim, "replcan", saga=saga) as stack:
        async with workers_running(client, stack.settings):
            acct = await stack.funded_account(DEPOSIT)
            oid = await placed_and_submitted(stack, acct, "101.00", "4")
            await tick(stack.sim)
            await booked(stack, acct, oid, "1")
            res = await stack.orders.replace_order(acct, oid, limit_price="101.50")
            assert res.accepted, res
            await tick(stack.sim, 4)
            final = await stack.orders.wait(acct, oid, timeout_s=60)
            runs = 1 + len(
                [n for n in (e.event for e in final.timeline) if n.startswith("continued as new")]
            )
            assert final.status == OrderStatus.SETTLED and final.filled_qty == 4, final.status
            assert final.client_order_id == f"{acct}/{oid}/r1" and len(final.replaced_ids) == 1
            assert runs > 1, [e.event for e in final.timeline]
            await paid_for(stack, acct, final)


async def test_a_fill_during_the_replace_never_takes_the_order_past_its_quantity(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    async with replace_stack(temporal_env, redis_keys, brokersim_factory, "replrace") as stack:
        acct = await stack.funded_account(DEPOSIT)
        oid = await placed_and_submitted(stack, acct, "101.00", "4")
        await tick(stack.sim)
        await booked(stack, acct, oid, "1")
        await stack.sim.admin("PUT", "/admin/faults", {"replace_delay_ms": 1_000})
        replace = asyncio.create_task(stack.orders.replace_order(acct, oid, limit_price="101.50"))
        await eventually(lambda: replacing(stack.sim), "the replace to be on its way")
        await tick(stack.sim)  # the old order's 2nd share fills before the replace lands
        res = await asyncio.wait_for(replace, 60)
        await stack.sim.admin("PUT", "/admin/faults", {"replace_delay_ms": 0})
        assert res.accepted and res.qty == 4, res
        listing = await stack.sim.admin("GET", "/v2/orders?status=all")
        ours = {o["client_order_id"]: o for o in listing if o["client_order_id"].startswith(acct)}
        # r1 was sized on 1 share filled (3 more); the old order had 2: r2 corrects it to 2.
        assert ours[f"{acct}/{oid}"]["filled_qty"] == "2"
        assert (ours[f"{acct}/{oid}/r1"]["qty"], ours[f"{acct}/{oid}/r1"]["status"]) == (
            "3",
            "replaced",
        )
        assert ours[f"{acct}/{oid}/r2"]["qty"] == "2"
        await tick(stack.sim, 4)
        final = await stack.orders.wait(acct, oid, timeout_s=60)
        assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
        assert final.filled_qty == 4, final.filled_qty
        await paid_for(stack, acct, final)


async def test_a_cancel_racing_a_replace_cancels_the_replacement(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    async with replace_stack(temporal_env, redis_keys, brokersim_factory, "replcancel") as stack:
        acct = await stack.funded_account(DEPOSIT)
        oid = await placed_and_submitted(stack, acct, "99.00", "2")  # rests below the market
        await stack.sim.admin("PUT", "/admin/faults", {"replace_delay_ms": 1_000})
        replace = asyncio.create_task(stack.orders.replace_order(acct, oid, limit_price="98.00"))
        await eventually(lambda: replacing(stack.sim), "the replace to be on its way")
        cancel = await stack.orders.cancel_order(acct, oid)
        assert cancel.accepted, cancel
        res = await asyncio.wait_for(replace, 60)
        assert res.accepted, res
        with pytest.raises(UserError, match="being canceled"):  # and no replace after it
            await stack.orders.replace_order(acct, oid, limit_price="97.00")
        await tick(stack.sim)  # the broker completes the cancel
        final = await stack.orders.wait(acct, oid, timeout_s=60)
        listing = await stack.sim.admin("GET", "/v2/orders?status=all")
        assert final.status == OrderStatus.CANCELED, (final.status, final.reason)
        statuses = {
            o["client_order_id"]: o["status"]
            for o in listing
            if o["client_order_id"].startswith(acct)
        }
        assert statuses == {f"{acct}/{oid}": "replaced", f"{acct}/{oid}/r1": "canceled"}
        assert await usd(stack, acct) == (Decimal(DEPOSIT), 0)
        assert (await check_ledger(stack.pool)).ok


async def test_refused_replaces_leave_the_order_its_hold_and_the_book_as_they_were(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    async with replace_stack(temporal_env, redis_keys, brokersim_factory, "replrefuse") as stack:
        acct = await stack.funded_account("500")
        oid = await placed_and_submitted(stack, acct, "99.00", "2")
        before = await usd(stack, acct)
        key = f"{acct}/{oid}"

        # Through the CLI, as a person would: 6 x 99 + fee > 500; exit status 1, one answer.
        env = worker_env(stack.settings, temporal_env.client.service_client.config.target_host)
        cli = [ORDERSAGA, "order", "replace", "--account", acct, oid, "--qty", "6", "--json"]
        done = await asyncio.to_thread(
            subprocess.run, cli, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, (done.stdout, done.stderr)
        poor = ReplaceResult.model_validate_json(done.stdout)
        assert not poor.accepted and "insufficient funds" in poor.detail, poor
        # 50% from the market: the broker refuses it; the hold grown for it shrinks back.
        far = await stack.orders.replace_order(acct, oid, limit_price="151.00")
        assert not far.accepted and "broker refused" in far.detail, far
        assert await usd(stack, acct) == before
        state = await state_of(stack, acct, oid)
        assert (state.order_qty, state.limit_sent, state.client_order_id) == (
            2,
            Decimal("99.00"),
            None,
        )
        for bad in ({"qty": "-1"}, {"limit_price": "abc"}, {"qty": "2"}, {}):
            with pytest.raises(UserError):
                await stack.orders.replace_order(acct, oid, **bad)
        assert await stack.broker_orders(key) and not await stack.broker_orders(f"{key}/r2")

        await stack.sim.admin("PUT", "/admin/prices", {"AAPL": "98.00"})
        await tick(stack.sim, 4)  # it fills as it was: 2 at 98
        final = await stack.orders.wait(acct, oid, timeout_s=60)
        assert final.status == OrderStatus.SETTLED and final.filled_qty == 2
        with pytest.raises(UserError, match="already SETTLED"):  # a filled order
            await stack.orders.replace_order(acct, oid, limit_price="98.50")
        assert (await check_ledger(stack.pool)).ok


async def test_a_replace_of_an_order_filled_at_the_broker_is_refused(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    """The broker filled it and the saga has not seen it yet: the replace asks first, books the
    fill, ends the order and refuses."""
    slow_polls = {"poll_s": 60.0}  # the saga hears of the fill only by asking
    async with replace_stack(
        temporal_env, redis_keys, brokersim_factory, "replfilled", **slow_polls
    ) as stack:
        acct = await stack.funded_account(DEPOSIT)
        oid = await placed_and_submitted(stack, acct, "101.00", "1")
        await tick(stack.sim, 4)  # filled at the broker; the saga's next poll is a minute away
        res = await stack.orders.replace_order(acct, oid, limit_price="100.50")
        final = await stack.orders.wait(acct, oid, timeout_s=60)
        key = f"{acct}/{oid}"
        assert not await stack.broker_orders(f"{key}/r1")
        assert not res.accepted and "filled" in res.detail, res
        assert final.status == OrderStatus.SETTLED and final.filled_qty == 1
        assert (await check_ledger(stack.pool)).ok


async def test_a_replace_meets_the_pre_trade_checks_of_a_new_order(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    """Issue 17: a replace over the account's per-order notional is refused, and none while
    trading is halted (the state set in Postgres, the authority; this stack's database only);
    the notional a replace adds counts on the day's usage, as a second order it does not."""
    async with replace_stack(temporal_env, redis_keys, brokersim_factory, "replrisk") as stack:
        acct = await stack.funded_account(DEPOSIT)
        oid = await placed_and_submitted(stack, acct, "99.00", "2")  # 198.00 of notional
        await set_account_limits(stack.pool, acct, Overrides(max_order_notional=Decimal(300)), "t")
        big = await stack.orders.replace_order(acct, oid, qty="4")  # 396.00
        assert not big.accepted and "per-order maximum" in big.detail, big
        await set_trading_state(stack.pool, TradingState.HALTED, "outage", "ops")
        halted = await stack.orders.replace_order(acct, oid, limit_price="98.00")
        assert not halted.accepted and "trading halted" in halted.detail, halted
        await set_trading_state(stack.pool, TradingState.ACTIVE, "all clear", "ops")
        ok = await stack.orders.replace_order(acct, oid, limit_price="99.50")  # +1.00
        assert ok.accepted, ok
        usage = (await account_risk(stack.pool, acct, stack.settings.risk)).usage
        assert (usage.orders, usage.notional) == (1, Decimal("199.00")), usage
        assert await stack.broker_orders(f"{acct}/{oid}/r3") and not await stack.broker_orders(
            f"{acct}/{oid}/r4"
        )
