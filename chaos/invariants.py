"""The invariant checker: DESIGN.md's invariants over the ledger, the orders table and the broker.

Run once every order is terminal and the reconciler has run. The broker is the source of truth:
its orders (listed in full) are compared with ours order by order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Set as AbstractSet
from decimal import Decimal

import asyncpg
from pydantic import BaseModel, Field

from activities.ledger import check_ledger
from core.broker_client import BrokerOrder
from core.fx import krw_cost, krw_proceeds
from core.money import CASH_ASSET, KRW, round_cash
from core.settings import SagaSettings
from core.statuses import TERMINAL_STATUS_NAMES, OrderStatus
from workflows.pricing import cumulative_fee

# Our terminal status -> the broker statuses it may stand beside (None: no broker order).
AGREES: dict[str, set[str | None]] = {
    "SETTLED": {"filled"},
    "CANCELED": {"canceled", None},
    "EXPIRED": {"expired"},
    "REJECTED": {"rejected", None},
}
INVARIANTS = (
    "ledger_check",
    "no_open_hold",
    "every_order_terminal",
    "one_broker_order_per_order",
    "fills_match_broker",
    "status_agrees_with_broker",
    "error_account_holds_late_fills",
    "no_customer_charged_for_late_orders",
    "no_fill_above_broker",
    "no_order_workflow_failed",
    "no_parked_order",
    "caller_settings_ignored",
    "conservation_per_currency",
    "fx_desk_matches_won_orders",
)
# Temporal visibility's list of order workflows that ended FAILED (invariant 8: never fail open).
FAILED_ORDER_WORKFLOWS = "WorkflowType = 'OrderWorkflow' AND ExecutionStatus = 'Failed'"


class InvariantResult(BaseModel):
    name: str
    ok: bool
    checked: int = 0
    violations: list[str] = Field(default_factory=list)


_ORDERS = """
SELECT o.account_id || '/' || o.order_id AS key, o.status, o.reason, o.broker_order_id,
       o.side, o.filled_qty, o.filled_notional, o.fees,
       h.posted_qty, h.posted_notional, h.status AS hold_status
FROM orders o LEFT JOIN holds h ON h.order_id = o.account_id || '/' || o.order_id
"""
_ERROR_BALANCES = (
    "SELECT asset, available + held AS total FROM ledger_accounts WHERE owner = '$error'"
)
# Per currency (USD, KRW, each symbol): the balances by owner kind, and the journal's lines.
_BALANCES_BY_KIND = """
SELECT asset, kind, sum(available + held) AS total FROM ledger_accounts GROUP BY asset, kind
"""
_JOURNAL_BY_KIND = """
SELECT l.asset, a.kind, sum(l.amount) AS total FROM journal_lines l
JOIN ledger_accounts a ON a.id = l.ledger_account_id GROUP BY l.asset, a.kind
"""
# Each order paid in won: its hold's dollar figures and rate, the won its customer paid or got
# in its fills' entries, and the dollars the desk moved for it.
_WON_ORDERS = """
SELECT h.order_id, h.side, h.fx_rate, h.posted_cash, h.posted_fee,
       coalesce(sum(l.amount) FILTER (WHERE a.kind = 'customer' AND l.asset = 'KRW'), 0)
           AS customer_krw,
       coalesce(sum(l.amount) FILTER (WHERE a.kind = 'fx' AND l.asset = 'KRW'), 0) AS desk_krw,
       coalesce(sum(l.amount) FILTER (WHERE a.kind = 'fx' AND l.asset = 'USD'), 0) AS desk_usd
FROM holds h
LEFT JOIN journal_entries e ON e.order_id = h.order_id AND e.code = 'post'
LEFT JOIN journal_lines l ON l.entry_id = e.id
LEFT JOIN ledger_accounts a ON a.id = l.ledger_account_id
WHERE h.pay_asset = 'KRW'
GROUP BY h.order_id, h.side, h.fx_rate, h.posted_cash, h.posted_fee
"""
_DESK = (
    "SELECT asset, sum(available + held) AS total FROM ledger_accounts WHERE kind = 'fx'"
    " GROUP BY asset"
)
_CUSTOMER_POSTS = """
SELECT DISTINCT order_id FROM journal_entries WHERE code = 'post' AND order_id = ANY($1::text[])
"""


async def check_invariants(
    pool: asyncpg.Pool,
    broker_orders: list[BrokerOrder],
    placed_keys: AbstractSet[str],
    *,
    failed_workflows: list[str] | None = None,
    caller_orders: AbstractSet[str] = frozenset(),
    saga: SagaSettings | None = None,
) -> list[InvariantResult]:
    """Every invariant; ``failed_workflows`` are the ids Temporal lists under
    :data:`FAILED_ORDER_WORKFLOWS`, ``caller_orders`` the orders started with the caller's own
    settings, which must have run with the worker's ``saga`` settings."""
    ledger = await check_ledger(pool)
    async with pool.acquire() as conn:
        rows = {r["key"]: r for r in await conn.fetch(_ORDERS)}
        error_rows = {r["asset"]: r["total"] for r in await conn.fetch(_ERROR_BALANCES)}
        by_client: dict[str, list[BrokerOrder]] = defaultdict(list)
        for bo in broker_orders:
            by_client[bo.client_order_id].append(bo)
        late = [bos[0] for key, bos in by_client.items() if _is_late(rows.get(key))]
        charged = await conn.fetch(_CUSTOMER_POSTS, [bo.client_order_id for bo in late])
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            by_kind = await conn.fetch(_BALANCES_BY_KIND)
            journal = await conn.fetch(_JOURNAL_BY_KIND)
            won_orders = await conn.fetch(_WON_ORDERS)
            desk = {r["asset"]: r["total"] for r in await conn.fetch(_DESK)}
    results = [
        InvariantResult(
            name="ledger_check", ok=ledger.ok, checked=1, violations=ledger.violations()
        ),
        InvariantResult(
            name="no_open_hold",
            ok=not ledger.open_holds,
            checked=1,
            violations=[
                f"hold of {h.order_id} open: {h.held_remaining}" for h in ledger.open_holds
            ],
        ),
        _every_order_terminal(rows, placed_keys),
        _one_broker_order(by_client),
        _fills_match(rows, by_client),
        _status_agrees(rows, by_client),
        _error_account(late, error_rows),
        InvariantResult(
            name="no_customer_charged_for_late_orders",
            ok=not charged,
            checked=len(late),
            violations=[f"late order {r['order_id']} posted to a customer" for r in charged],
        ),
        _no_fill_above_broker(rows, by_client),
        _no_failed_workflows(failed_workflows or []),
        _no_parked_order(rows),
        _caller_settings_ignored(rows, by_client, caller_orders, saga or SagaSettings()),
        conservation_per_currency(by_kind, journal),
        fx_desk_matches_won_orders(won_orders, desk),
    ]
    return results


def _is_late(row: asyncpg.Record | None) -> bool:
    """A broker order for an order we gave up on (or never recorded): the reconciler's case."""
    return row is None or (row["status"] in TERMINAL_STATUS_NAMES and not row["broker_order_id"])


def _every_order_terminal(
    rows: dict[str, asyncpg.Record], placed_keys: AbstractSet[str]
) -> InvariantResult:
    bad = [f"{k}: {rows[k]['status']}" for k in rows if rows[k]["status"] not in AGREES]
    bad += [f"{k}: no orders row" for k in sorted(placed_keys - rows.keys())]
    return InvariantResult(
        name="every_order_terminal", ok=not bad, checked=len(rows), violations=bad
    )


def _one_broker_order(by_client: dict[str, list[BrokerOrder]]) -> InvariantResult:
    bad = [
        f"{key}: {len(bos)} broker orders ({', '.join(b.id for b in bos)})"
        for key, bos in by_client.items()
        if len(bos) > 1
    ]
    return InvariantResult(
        name="one_broker_order_per_order", ok=not bad, checked=len(by_client), violations=bad
    )


def _fills_match(
    rows: dict[str, asyncpg.Record], by_client: dict[str, list[BrokerOrder]]
) -> InvariantResult:
    bad: list[str] = []
    checked = 0
    for key, row in rows.items():
        bos = by_client.get(key, [])
        if _is_late(row) and bos:
            continue  # its fills belong to the error account, checked there
        broker_qty = sum((b.filled_qty for b in bos), Decimal(0))
        broker_notional = sum((b.filled_notional for b in bos), Decimal(0))
        ledger_qty = row["posted_qty"] or Decimal(0)
        ledger_notional = row["posted_notional"] or Decimal(0)
        checked += 1
        if broker_qty != ledger_qty or broker_notional != ledger_notional:
            bad.append(
                f"{key}: broker filled {broker_qty} for {broker_notional},"
                f" ledger posted {ledger_qty} for {ledger_notional}"
            )
        elif row["filled_qty"] != broker_qty:
            bad.append(f"{key}: orders row says {row['filled_qty']} filled, broker {broker_qty}")
    return InvariantResult(name="fills_match_broker", ok=not bad, checked=checked, violations=bad)


def _status_agrees(
    rows: dict[str, asyncpg.Record], by_client: dict[str, list[BrokerOrder]]
) -> InvariantResult:
    bad: list[str] = []
    for key, row in rows.items():
        bos = by_client.get(key, [])
        if _is_late(row) and bos:
            continue
        broker_status = bos[0].status if bos else None
        allowed = AGREES.get(row["status"], set())
        if broker_status not in allowed:
            bad.append(f"{key}: ours {row['status']}, broker {broker_status}")
    return InvariantResult(
        name="status_agrees_with_broker", ok=not bad, checked=len(rows), violations=bad
    )


def _error_account(late: list[BrokerOrder], balances: dict[str, Decimal]) -> InvariantResult:
    """'$error' holds exactly what the late orders did: their shares, and the cash against them."""
    expected: dict[str, Decimal] = defaultdict(Decimal)
    bad = [f"late order {b.client_order_id} still {b.status} at the broker" for b in late
           if b.status not in ("filled", "canceled", "expired", "rejected")]  # fmt: skip
    for bo in late:
        sign = Decimal(1) if bo.side == "buy" else Decimal(-1)
        expected[bo.symbol] += sign * bo.filled_qty
        expected[CASH_ASSET] -= sign * round_cash(bo.filled_notional)
    for asset in sorted(set(expected) | set(balances)):
        want, have = expected.get(asset, Decimal(0)), balances.get(asset, Decimal(0))
        if want != have:
            bad.append(f"$error {asset}: holds {have}, late orders account for {want}")
    return InvariantResult(
        name="error_account_holds_late_fills", ok=not bad, checked=len(late), violations=bad
    )


def _no_fill_above_broker(
    rows: dict[str, asyncpg.Record], by_client: dict[str, list[BrokerOrder]]
) -> InvariantResult:
    """Order by order, what we booked (the hold's posted qty, the row's filled qty) is at most
    what the broker filled: a forged report must never get booked, even in part."""
    bad: list[str] = []
    for key, row in rows.items():
        broker_qty = sum((b.filled_qty for b in by_client.get(key, [])), Decimal(0))
        posted = row["posted_qty"] or Decimal(0)
        if posted > broker_qty or row["filled_qty"] > broker_qty:
            bad.append(
                f"{key}: posted {posted} (row says {row['filled_qty']}),"
                f" the broker filled {broker_qty}"
            )
    return InvariantResult(
        name="no_fill_above_broker", ok=not bad, checked=len(rows), violations=bad
    )


def _no_failed_workflows(failed: list[str]) -> InvariantResult:
    return InvariantResult(
        name="no_order_workflow_failed",
        ok=not failed,
        checked=1,
        violations=[f"{wf}: workflow FAILED" for wf in failed],
    )


def _no_parked_order(rows: dict[str, asyncpg.Record]) -> InvariantResult:
    """A parked order must say why; and none of the default fault kinds parks one, so at the
    end of a run none is left parked."""
    bad = [
        f"{key}: parked " + (f"({row['reason']})" if row["reason"] else "WITHOUT A REASON")
        for key, row in rows.items()
        if row["status"] == OrderStatus.NEEDS_ATTENTION.value
    ]
    return InvariantResult(name="no_parked_order", ok=not bad, checked=len(rows), violations=bad)


def _caller_settings_ignored(
    rows: dict[str, asyncpg.Record],
    by_client: dict[str, list[BrokerOrder]],
    caller_orders: AbstractSet[str],
    saga: SagaSettings,
) -> InvariantResult:
    """Orders started with the caller's own settings (no commission, its own broker queue)
    reached the real broker and paid the worker's commission."""
    bad: list[str] = []
    for key in sorted(caller_orders):
        row = rows.get(key)
        if row is None:
            bad.append(f"{key}: no orders row")
            continue
        if row["status"] in ("SETTLED", "CANCELED", "EXPIRED") and not by_client.get(key):
            bad.append(f"{key}: {row['status']} but the broker never had it")
        want = cumulative_fee(row["side"], row["filled_notional"], saga)
        if row["fees"] != want:
            bad.append(f"{key}: paid fees {row['fees']}, the worker's commission is {want}")
    return InvariantResult(
        name="caller_settings_ignored", ok=not bad, checked=len(caller_orders), violations=bad
    )


async def currency_by_kind(pool: asyncpg.Pool) -> dict[str, dict[str, Decimal]]:
    """The run's per-currency figures: per asset, the balances by owner kind."""
    return currency_totals(await pool.fetch(_BALANCES_BY_KIND))


def currency_totals(by_kind: list[asyncpg.Record]) -> dict[str, dict[str, Decimal]]:
    """Per asset (USD, KRW, each symbol), the balances by owner kind (customer, omnibus, fees,
    external, error, fx): the run's per-currency figures."""
    out: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for r in by_kind:
        out[r["asset"]][r["kind"]] = Decimal(r["total"])
    return {asset: dict(sorted(kinds.items())) for asset, kinds in sorted(out.items())}


def conservation_per_currency(
    by_kind: list[asyncpg.Record], journal: list[asyncpg.Record]
) -> InvariantResult:
    """Per currency and per symbol, nothing made or lost: the balances of every owner sum to
    zero (what customers and the firm hold is what came in from outside), and each owner kind's
    balances are exactly the journal's lines on that kind (one snapshot for both)."""
    balances = currency_totals(by_kind)
    lines = currency_totals(journal)
    bad: list[str] = []
    for asset in sorted(set(balances) | set(lines)):
        have, booked = balances.get(asset, {}), lines.get(asset, {})
        total = sum(have.values(), Decimal(0))
        if total != 0:
            bad.append(f"{asset}: balances sum to {total}, not 0 ({_kinds(have)})")
        for kind in sorted(set(have) | set(booked)):
            h, j = have.get(kind, Decimal(0)), booked.get(kind, Decimal(0))
            if h != j:
                bad.append(f"{asset} {kind}: balances {h}, journal lines {j}")
    return InvariantResult(
        name="conservation_per_currency", ok=not bad, checked=len(balances), violations=bad
    )


def _kinds(totals: dict[str, Decimal]) -> str:
    return ", ".join(f"{k} {v.normalize():f}" for k, v in totals.items())


def fx_desk_matches_won_orders(
    won_orders: list[asyncpg.Record], desk: dict[str, Decimal]
) -> InvariantResult:
    """Order by order, a won buy was charged ``krw_cost`` of its dollars (cash and fees) at its
    hold's rate and a won sale paid ``krw_proceeds`` of its proceeds, to the won; the desk took
    that won and paid those dollars; and the desk holds exactly the sum of what its orders moved,
    in each currency."""
    bad: list[str] = []
    want_krw, want_usd = Decimal(0), Decimal(0)
    for r in won_orders:
        key, rate = r["order_id"], Decimal(r["fx_rate"])
        cash, fee = Decimal(r["posted_cash"]), Decimal(r["posted_fee"])
        if r["side"] == "buy":
            krw, usd = krw_cost(cash + fee, rate), -(cash + fee)
        else:
            krw, usd = -krw_proceeds(cash - fee, rate), cash - fee
        customer = -Decimal(r["customer_krw"])  # the won the customer gave the desk
        if customer != krw:
            bad.append(f"{key}: customer's won moved {customer}, {usd} USD at {rate} is {krw}")
        if Decimal(r["desk_krw"]) != krw or Decimal(r["desk_usd"]) != usd:
            bad.append(
                f"{key}: the desk moved {r['desk_krw']} KRW and {r['desk_usd']} USD,"
                f" the order {krw} KRW and {usd} USD"
            )
        want_krw += krw
        want_usd += usd
    for asset, want in ((KRW, want_krw), (CASH_ASSET, want_usd)):
        have = Decimal(desk.get(asset, 0))
        if have != want:
            bad.append(f"$fx {asset}: holds {have}, its won orders account for {want}")
    return InvariantResult(
        name="fx_desk_matches_won_orders", ok=not bad, checked=len(won_orders), violations=bad
    )
