"""The invariant checker run whole against a real, deliberately broken database: every rule
reports the violation planted for it, and none on the same database before it was broken.

The rules' own tests (test_invariants.py) feed them rows; this one goes through the checker's
SQL too, so a join that matched nothing (and made "no customer charged for late orders" pass
by checking nothing) would show here.
"""

from __future__ import annotations

import itertools
from decimal import ROUND_CEILING
from decimal import Decimal as D

import asyncpg
import pytest

from activities.ledger import (
    DepositInput,
    Ledger,
    OpenAccountInput,
    OrderRecord,
    PostFillInput,
    ReserveInput,
    VoidInput,
)
from activities.orders import OrderStore, UpdateOrderInput
from chaos.invariants import INVARIANTS, InvariantResult, check_invariants
from core.broker_client import BrokerOrder
from core.db import create_pool
from core.settings import SagaSettings
from tests.conftest import scratch_database

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

ACCT = "inv-acct"
WON = "inv-won"  # a won account: its order is paid in KRW through the FX desk
RATE = D("1390.5")
FENCES = itertools.count(1)


def broker(
    oid: str, status: str, filled: str = "0", notional: str = "0", bid: str = "", acct: str = ACCT
) -> BrokerOrder:
    return BrokerOrder(
        id=bid or f"b-{oid}",
        client_order_id=f"{acct}/{oid}",
        symbol="AAPL",
        side="buy",
        qty=D(2),
        filled_qty=D(filled),
        filled_notional=D(notional),
        status=status,
    )


async def held(ledger: Ledger, oid: str) -> str:
    """An order of 2 AAPL at up to 100, held and recorded as the saga's reserve does."""
    key = f"{ACCT}/{oid}"
    record = OrderRecord(
        account_id=ACCT,
        order_id=oid,
        workflow_id=f"order/{key}",
        symbol="AAPL",
        side="buy",
        order_type="limit",
        time_in_force="day",
        qty=D(2),
        limit_price=D(100),
        params_hash=oid,
    )
    await ledger.reserve(
        ReserveInput(
            account_id=ACCT,
            order_key=key,
            asset="USD",
            amount=D("201"),
            fence=next(FENCES),
            idempotency_key=f"{key}:reserve",
            side="buy",
            symbol="AAPL",
            order=record,
        )
    )
    return key


async def held_in_won(ledger: Ledger, oid: str) -> str:
    """A buy of 2 AAPL at up to 100 paid in won: the dollar hold (201) in won at RATE."""
    key = f"{WON}/{oid}"
    record = OrderRecord(
        account_id=WON,
        order_id=oid,
        workflow_id=f"order/{key}",
        symbol="AAPL",
        side="buy",
        order_type="limit",
        time_in_force="day",
        qty=D(2),
        limit_price=D(100),
        params_hash=oid,
    )
    await ledger.reserve(
        ReserveInput(
            account_id=WON,
            order_key=key,
            asset="KRW",
            amount=(D(201) * RATE).to_integral_value(ROUND_CEILING),
            fence=next(FENCES),
            idempotency_key=f"{key}:reserve",
            side="buy",
            symbol="AAPL",
            order=record,
            pay_asset="KRW",
            fx_rate=RATE,
        )
    )
    return key


async def fill(ledger: Ledger, key: str, qty: str, notional: str, fee: str) -> None:
    await ledger.post_fill(
        PostFillInput(order_key=key, cum_qty=D(qty), cum_notional=D(notional), cum_fee=D(fee))
    )


async def ended(
    store: OrderStore, oid: str, status: str, *, broker_id: str | None, qty: str = "0",
    notional: str = "0", fees: str = "0", reason: str | None = None, acct: str = ACCT,
) -> None:  # fmt: skip
    await store.update(
        UpdateOrderInput(
            account_id=acct,
            order_id=oid,
            status=status,
            reason=reason,
            broker_order_id=broker_id,
            filled_qty=D(qty),
            filled_notional=D(notional),
            fees=D(fees),
        )
    )


def by_name(results: list[InvariantResult]) -> dict[str, InvariantResult]:
    return {r.name: r for r in results}


async def test_each_rule_reports_its_planted_violation_on_a_real_database() -> None:
    async with scratch_database("brokeninvariants") as url:
        pool: asyncpg.Pool = await create_pool(url, 1, 4)
        try:
            await check_a_broken_database(pool)
        finally:
            await pool.close()


async def check_a_broken_database(pool: asyncpg.Pool) -> None:
    ledger, store = Ledger(pool), OrderStore(pool)
    await ledger.open_account(OpenAccountInput(account_id=ACCT))
    await ledger.deposit(DepositInput(account_id=ACCT, amount=D(10_000), idempotency_key="d-1"))

    # A: a clean settled order, 2 filled for 200 with a 0.50 fee.
    a = await held(ledger, "A")
    await fill(ledger, a, "2", "200", "0.50")
    await ledger.void(VoidInput(order_key=a, idempotency_key=f"{a}:void"))
    await ended(store, "A", "SETTLED", broker_id="b-A", qty="2", notional="200", fees="0.50")
    # W: a clean order paid in won, filled in two parts (1 for 99.996, then 1 more for 99.987).
    await ledger.open_account(OpenAccountInput(account_id=WON, currency="KRW"))
    await ledger.deposit(
        DepositInput(account_id=WON, amount=D(1_000_000), asset="KRW", idempotency_key="d-w")
    )
    w = await held_in_won(ledger, "W")
    await fill(ledger, w, "1", "99.996", "0.25")
    await fill(ledger, w, "2", "199.983", "0.50")
    await ledger.void(VoidInput(order_key=w, idempotency_key=f"{w}:void"))
    await ended(
        store, "W", "SETTLED", broker_id="b-W", qty="2", notional="199.983", fees="0.50", acct=WON
    )
    clean = [broker("A", "filled", "2", "200"), broker("W", "filled", "2", "199.983", acct=WON)]
    results = by_name(await check_invariants(pool, clean, {a, w}, caller_orders={a}))
    assert set(results) == set(INVARIANTS)
    assert all(r.ok for r in results.values()), [r for r in results.values() if not r.ok]
    assert results["fx_desk_matches_won_orders"].checked == 1
    # KRW, USD and AAPL, each checked on its own
    assert results["conservation_per_currency"].checked == 3

    # B: settled, its hold never voided.
    b = await held(ledger, "B")
    await ended(store, "B", "CANCELED", broker_id="b-B")
    # C: given up (no broker order id), yet the broker filled it and the customer was charged.
    c = await held(ledger, "C")
    await fill(ledger, c, "1", "100", "0.50")
    await ledger.void(VoidInput(order_key=c, idempotency_key=f"{c}:void"))
    await ended(store, "C", "REJECTED", broker_id=None, reason="the broker never received it")
    # D: settled, its fills booked above what the broker filled.
    d = await held(ledger, "D")
    await fill(ledger, d, "2", "200", "0.50")
    await ledger.void(VoidInput(order_key=d, idempotency_key=f"{d}:void"))
    await ended(store, "D", "SETTLED", broker_id="b-D", qty="2", notional="200", fees="0.50")
    # E: the broker says canceled, the row says filled (and E went to the broker twice).
    e = await held(ledger, "E")
    await fill(ledger, e, "1", "100", "0.50")
    await ledger.void(VoidInput(order_key=e, idempotency_key=f"{e}:void"))
    await ended(store, "E", "SETTLED", broker_id="b-E", qty="1", notional="100", fees="0.50")
    # F: still open; G: parked with no reason.
    f = await held(ledger, "F")
    g = await held(ledger, "G")
    await ended(store, "G", "NEEDS_ATTENTION", broker_id="b-G")
    # The ledger's own books: an account's balance moved with no journal line.
    await pool.execute(
        "UPDATE ledger_accounts SET available = available + 1 WHERE owner = $1 AND asset = 'AAPL'",
        ACCT,
    )
    # The desk's books: a won more on one of its rows, and W's rate changed after its fills
    # (so the won it was charged no longer match its dollars).
    await pool.execute(
        "UPDATE ledger_accounts SET available = available + 1"
        " WHERE id = (SELECT min(id) FROM ledger_accounts WHERE kind = 'fx' AND asset = 'KRW')"
    )
    await pool.execute("UPDATE holds SET fx_rate = fx_rate + 1 WHERE order_id = $1", w)
    listing = [
        *clean,
        broker("B", "canceled"),
        broker("C", "filled", "1", "100"),
        broker("D", "partially_filled", "1", "100"),
        broker("E", "canceled", "1", "100"),
        broker("E", "new", bid="b-E-again"),
        broker("F", "new"),
        broker("G", "new"),
    ]
    placed = {a, b, c, d, e, f, g, w}
    expensive = SagaSettings(commission_rate=D("0.05"))  # A paid the default, not this
    results = by_name(
        await check_invariants(
            pool,
            listing,
            placed,
            failed_workflows=["order/inv-acct/X"],
            caller_orders={a},
            saga=expensive,
        )
    )
    planted = {
        "ledger_check": "AAPL",
        "no_open_hold": b,
        "every_order_terminal": f,
        "one_broker_order_per_order": e,
        "fills_match_broker": d,
        "status_agrees_with_broker": e,
        "error_account_holds_late_fills": "AAPL",
        "no_customer_charged_for_late_orders": c,
        "no_fill_above_broker": d,
        "no_order_workflow_failed": "order/inv-acct/X",
        "no_parked_order": g,
        "caller_settings_ignored": a,
        "conservation_per_currency": "KRW",
        "fx_desk_matches_won_orders": w,
    }
    assert set(planted) == set(INVARIANTS)
    for name, key in planted.items():
        result = results[name]
        assert not result.ok, name
        assert any(key in v for v in result.violations), (name, key, result.violations)
    # Both per-currency rules name every broken currency, the desk's row as well as W's rate.
    conservation = results["conservation_per_currency"].violations
    assert any(v.startswith("AAPL:") for v in conservation), conservation
    desk = results["fx_desk_matches_won_orders"].violations
    assert any(v.startswith("$fx KRW") for v in desk), desk
