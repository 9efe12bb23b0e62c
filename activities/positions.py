"""Positions and cash: the broker's account against the firm's omnibus ledger rows (issue 15).

What must hold, for every symbol and for USD (docs/ARCHITECTURE.md, "Reconciler"):

- broker position qty == -(sum of the symbol's ``$omnibus`` rows) + in-flight qty
- broker cash == baseline - (exact sum behind the ``$omnibus`` USD rows) - in-flight notional

*In flight*: fills the broker made that the ledger has not booked yet. For each of our orders
not yet terminal in the orders table that has a broker order id: the broker's cumulative filled
quantity and notional minus what the ledger booked for it (its hold's ``posted_qty`` and
``posted_notional``, the very figures behind the ``$omnibus`` rows), signed by side (a buy adds
shares and spends cash). Late orders' fills are booked to ``$error`` through ``$omnibus``, so
they are already on the ledger side.

Rounding: the ledger books each order's cash in cents (``round_half_up`` of its cumulative exact
notional); the broker rounds its own total. So the expected cash is computed exactly: the
``$omnibus`` USD sum minus the rounding the ledger applied (``posted_cash - posted_notional`` of
every hold and error position, signed), and the broker's cash (cents) may differ from it by at
most half a cent (any rounding of the exact total to cents). Quantities are compared exactly.

The baseline is the cash the firm funded at the broker (``ORDERSAGA_BROKER_CASH_BASELINE``): the
simulator's starting cash; at a real broker, the funded amount plus every transfer since.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg
from pydantic import BaseModel, Field
from temporalio import activity

from activities.reconcile import Break, record_breaks
from core.statuses import TERMINAL_STATUS_NAMES

CASH_KEY = "USD"
HALF_CENT = Decimal("0.005")
CENTS = Decimal("0.01")


class InFlightOrder(BaseModel):
    """One of our orders not yet terminal that the broker has, with what the ledger booked."""

    client_order_id: str
    broker_order_id: str
    symbol: str
    side: str
    booked_qty: Decimal = Decimal(0)
    booked_notional: Decimal = Decimal(0)


class LedgerSide(BaseModel):
    """The ledger's side, from one transaction: the ``$omnibus`` sums per asset (all shards), the
    rounding the ledger applied to cash, and the orders in flight. Two reads are equal when
    nothing was booked between them."""

    # the orders worker's Settings.broker_cash_baseline (the worker owns it, not the run's input)
    baseline: Decimal = Decimal(0)
    omnibus: dict[str, Decimal] = Field(default_factory=dict)  # asset -> sum of $omnibus rows
    cash_rounding: Decimal = Decimal(0)  # signed Σ (posted_cash - posted_notional)
    in_flight: list[InFlightOrder] = Field(default_factory=list)


class BrokerFill(BaseModel):
    """A broker order's cumulative fill (the slice the comparison needs)."""

    id: str
    filled_qty: Decimal
    filled_notional: Decimal


class BrokerSide(BaseModel):
    """One consistent snapshot of the broker: cash, positions (symbol -> signed qty), and the
    in-flight orders asked for by id (the ones the broker does not have are missing)."""

    cash: Decimal
    positions: dict[str, Decimal] = Field(default_factory=dict)
    orders: list[BrokerFill] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)


def _sign(side: str) -> int:
    return 1 if side == "buy" else -1


def _plain(d: Decimal) -> str:
    """A quantity as text without exponent or trailing zeros (stable in a break's detail)."""
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def compare_positions(ledger: LedgerSide, broker: BrokerSide) -> list[Break]:
    """The position and cash breaks between one ledger read and one broker snapshot (empty: they
    agree). A pure rule; see the module docstring."""
    fills = {o.id: o for o in broker.orders}
    flight_qty: dict[str, Decimal] = {}
    flight_cash = Decimal(0)
    for o in ledger.in_flight:
        got = fills.get(o.broker_order_id)
        if got is None:
            continue  # the broker does not have it: nothing it filled can be in flight
        sign = _sign(o.side)
        extra_qty = got.filled_qty - o.booked_qty
        flight_qty[o.symbol] = flight_qty.get(o.symbol, Decimal(0)) + sign * extra_qty
        flight_cash += sign * (got.filled_notional - o.booked_notional)
    breaks = []
    symbols = {a for a in ledger.omnibus if a != CASH_KEY} | set(broker.positions) | set(flight_qty)
    for symbol in sorted(symbols):
        booked = -ledger.omnibus.get(symbol, Decimal(0))
        flying = flight_qty.get(symbol, Decimal(0))
        expected = booked + flying
        held = broker.positions.get(symbol, Decimal(0))
        if held != expected:
            breaks.append(
                Break(
                    kind="position",
                    client_order_id=symbol,
                    detail=f"broker {_plain(held)} vs ledger {_plain(expected)}"
                    f" (booked {_plain(booked)}, in flight {_plain(flying)})",
                )
            )
    exact = ledger.omnibus.get(CASH_KEY, Decimal(0)) - ledger.cash_rounding
    baseline = ledger.baseline
    expected_cash = baseline - exact - flight_cash
    if abs(broker.cash - expected_cash) > HALF_CENT:
        breaks.append(
            Break(
                kind="cash",
                client_order_id=CASH_KEY,
                detail=f"broker {broker.cash.quantize(CENTS)} vs ledger"
                f" {expected_cash.quantize(CENTS)} (baseline {_plain(baseline)},"
                f" in flight {_plain(-flight_cash)})",
            )
        )
    return breaks


# --- SQL (the ledger side, one repeatable-read transaction) -------------------------------

OMNIBUS_SUMS = """
SELECT asset, sum(available + held) AS total FROM ledger_accounts
 WHERE kind = 'omnibus' GROUP BY asset
"""

# The ledger's cash rounding: what it booked in cents minus the exact notional, signed as the
# $omnibus USD rows move (a buy +cash, a sell -cash), for customers' holds and error positions.
CASH_ROUNDING = """
SELECT coalesce(sum(CASE WHEN side = 'buy' THEN 1 ELSE -1 END
                    * (posted_cash - posted_notional)), 0)
  FROM (SELECT side, posted_cash, posted_notional FROM holds WHERE posted_qty > 0
        UNION ALL
        SELECT side, posted_cash, posted_notional FROM error_positions WHERE posted_qty > 0) f
"""

IN_FLIGHT = f"""
SELECT o.account_id || '/' || o.order_id AS client_order_id, o.broker_order_id, o.symbol, o.side,
       coalesce(h.posted_qty, 0) AS booked_qty, coalesce(h.posted_notional, 0) AS booked_notional
  FROM orders o
  LEFT JOIN holds h ON h.order_id = o.account_id || '/' || o.order_id
 WHERE o.status NOT IN ({", ".join(f"'{s}'" for s in TERMINAL_STATUS_NAMES)})
   AND o.broker_order_id IS NOT NULL
 ORDER BY o.broker_order_id
"""

# Position and cash breaks that no longer differ are resolved by the reconciler itself.
CLEAR_POSITION_BREAKS = """
UPDATE reconcile_breaks
   SET resolved_at = now(), resolved_by = 'reconciler', resolution = 'the broker and ledger agree'
 WHERE kind IN ('position', 'cash') AND resolved_at IS NULL
   AND NOT (kind || ' ' || order_key = ANY($1::text[]))
"""


class LedgerSideInput(BaseModel):
    pass


class PositionBreaksInput(BaseModel):
    breaks: list[Break] = Field(default_factory=list)


class PositionBreaksResult(BaseModel):
    recorded: int = 0
    cleared: int = 0


async def read_ledger_side(conn: asyncpg.Connection, baseline: Decimal) -> LedgerSide:
    """The ledger side, in one repeatable-read transaction (one snapshot of every table)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        sums = await conn.fetch(OMNIBUS_SUMS)
        rounding = await conn.fetchval(CASH_ROUNDING)
        flying = await conn.fetch(IN_FLIGHT)
    return LedgerSide(
        baseline=baseline,
        omnibus={r["asset"]: r["total"] for r in sums},
        cash_rounding=rounding,
        in_flight=[InFlightOrder(**dict(r)) for r in flying],
    )


class PositionActivities:
    def __init__(self, pool: asyncpg.Pool, cash_baseline: Decimal) -> None:
        self._pool = pool
        self._baseline = cash_baseline

    @activity.defn
    async def read_ledger_side(self, inp: LedgerSideInput) -> LedgerSide:
        """The ``$omnibus`` sums, the ledger's cash rounding, the orders in flight and the cash
        baseline. A read."""
        async with self._pool.acquire() as conn:
            return await read_ledger_side(conn, self._baseline)

    @activity.defn
    async def record_position_breaks(self, inp: PositionBreaksInput) -> PositionBreaksResult:
        """Record the position and cash breaks of a stable comparison, and resolve (by
        'reconciler') the recorded ones that no longer differ; one transaction. Retried: the same
        rows are written again."""
        async with self._pool.acquire() as conn, conn.transaction():
            await record_breaks(conn, inp.breaks)
            status = await conn.execute(
                CLEAR_POSITION_BREAKS, [f"{b.kind} {b.client_order_id}" for b in inp.breaks]
            )
        return PositionBreaksResult(recorded=len(inp.breaks), cleared=int(status.split()[-1]))
