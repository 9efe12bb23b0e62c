"""The saga under broker faults: lost replies, hangs, late executions, duplicated reports."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from core.statuses import OrderStatus
from tests.support.saga import SagaStack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def usd(saga: SagaStack, account_id: str) -> tuple[Decimal, Decimal]:
    acct = await saga.orders.balance(account_id)
    bal = acct.of("USD")
    return bal.available, bal.held


async def post_entries(saga: SagaStack, key: str) -> int:
    return int(
        await saga.pool.fetchval(
            "SELECT count(*) FROM journal_entries WHERE order_id = $1 AND code = 'post'", key
        )
    )


async def wait_for(pred, timeout_s: float = 60, every_s: float = 0.25) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(every_s)


async def test_execute_then_drop_reply_settles_once(saga: SagaStack) -> None:
    await saga.sim.admin("PUT", "/admin/faults", {"seed": 11, "drop_reply_prob": 0.6})
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="2")
    final = await saga.wait(acct, placed.order_id)
    await saga.reset_sim()  # the checks below talk to the broker too
    key = f"{acct}/{placed.order_id}"
    assert final.status == OrderStatus.SETTLED
    assert final.filled_qty == Decimal(2)
    assert len(await saga.broker_orders(key)) == 1
    assert await post_entries(saga, key) == 1
    acct_bal = await saga.orders.balance(acct)
    assert acct_bal.of("AAPL").available == Decimal(2)


async def test_broker_hang_then_recovery_settles_once(saga: SagaStack) -> None:
    await saga.sim.admin("PUT", "/admin/faults", {"hang_prob": 1.0, "hang_ms": 600_000})
    acct = await saga.funded_account("10000")
    # The customer has an answer at once: within the accept phase's own steps (Redis and
    # Postgres, milliseconds), well before the broker's first submit attempt could time out;
    # every placement, while the broker hangs.
    bound_s = saga.settings.saga.submit_start_to_close_s
    answers = []
    for symbol in ("MSFT", "AAPL", "NVDA"):
        started = asyncio.get_running_loop().time()
        answer = await saga.place(acct, symbol=symbol, side="buy", qty="1")
        took = asyncio.get_running_loop().time() - started
        assert answer.accepted and took < bound_s, (symbol, took, bound_s)
        answers.append(answer)
    await asyncio.sleep(3.5)
    await saga.sim.admin("PUT", "/admin/faults", {"hang_prob": 0.0})
    for placed in answers:
        final = await saga.wait(acct, placed.order_id)
        assert final.status == OrderStatus.SETTLED
        assert len(await saga.broker_orders(f"{acct}/{placed.order_id}")) == 1


async def test_duplicated_events_and_polls_book_each_fill_once(saga: SagaStack) -> None:
    await saga.sim.admin("PUT", "/admin/faults", {"seed": 5, "event_dup_prob": 1.0})
    await saga.sim.admin("PUT", "/admin/fill_model", {"mode": "partial", "parts": 3, "auto": True})
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="AAPL", side="buy", qty="3")
    key = f"{acct}/{placed.order_id}"
    # The same fill also arrives from the other source (a poll's report), twice.
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.SETTLED
    [broker_order] = await saga.broker_orders(key)
    assert Decimal(broker_order["filled_qty"]) == final.filled_qty == Decimal(3)
    assert await post_entries(saga, key) <= 3
    posted = await saga.pool.fetchval("SELECT posted_qty FROM holds WHERE order_id = $1", key)
    assert posted == Decimal(3)


async def test_late_execution_after_we_gave_up_lands_in_the_error_account(
    saga: SagaStack,
) -> None:
    await saga.sim.admin("PUT", "/admin/faults", {"late_prob": 1.0, "late_ms": 20_000})
    acct = await saga.funded_account("10000")
    placed = await saga.place(acct, symbol="NVDA", side="buy", qty="1")
    key = f"{acct}/{placed.order_id}"

    async def submit_gave_up() -> bool:
        state = await saga.orders.get_order(acct, placed.order_id)
        return any("outcome unknown" in e.event for e in state.timeline)

    await wait_for(submit_gave_up, timeout_s=30)
    # Only the submit requests were late; the broker answers lookups again.
    await saga.sim.admin("PUT", "/admin/faults", {"late_prob": 0.0})
    final = await saga.wait(acct, placed.order_id)
    assert final.status == OrderStatus.REJECTED
    assert final.reason == "the broker never received the order"
    assert await usd(saga, acct) == (Decimal("10000.00"), Decimal(0))

    # The request arrives at the broker late; the reconciler finds it, cancels what is left and
    # books what filled to the firm error account, never to the customer. Which comes first at
    # the broker, the fill or the reconciler's cancel, is a race (a loaded machine runs the
    # reconciler sooner relative to the fill): either way the error account ends holding exactly
    # what the broker filled.
    async def settled_at_broker() -> bool:
        listed = await saga.broker_orders(key)
        if not listed or listed[0]["status"] not in ("filled", "canceled"):
            return False
        booked = await saga.pool.fetchval(
            "SELECT posted_qty FROM error_positions WHERE client_order_id = $1", key
        )
        return Decimal(booked or 0) == Decimal(listed[0]["filled_qty"])

    # Deadlines, not timings: generous, since a loaded 2-core machine runs the reconciler late.
    await wait_for(lambda: saga.broker_orders(key), timeout_s=90)  # type: ignore[arg-type]
    await wait_for(settled_at_broker, timeout_s=90)
    assert await usd(saga, acct) == (Decimal("10000.00"), Decimal(0))
    customer = await saga.orders.balance(acct)
    assert customer.of("NVDA").available == 0
