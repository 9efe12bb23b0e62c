"""Reconciliation: the broker's orders against the orders table and the ledger.

The broker is the source of truth. A broker order with no live order of ours (a request that
arrived late, after we gave up) is a *late order*: the reconciler cancels it at the broker and books
its fills to the firm error account, never to a customer. Orders non-terminal for too long are
reported as stuck; fills that disagree with the broker are reported as mismatches.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
from pydantic import BaseModel, Field
from temporalio import activity

from core.orderkey import InvalidOrderKey, OrderKey
from core.statuses import TERMINAL_STATUS_NAMES
from core.telemetry import BREAK_KINDS, NOOP_METRICS, ProcessMetrics


class BrokerOrderView(BaseModel):
    """The slice of a broker order the reconciler needs (from the broker queue's listing)."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Decimal
    status: str
    filled_qty: Decimal
    filled_notional: Decimal
    terminal: bool


class Break(BaseModel):
    kind: str  # late_order | fill_mismatch | stuck
    client_order_id: str
    broker_order_id: str | None = None
    detail: str


class FindBreaksInput(BaseModel):
    broker_orders: list[BrokerOrderView]
    stuck_after_s: float = 900.0
    # Every broker order was listed (a scheduled run, not one targeted at a few orders): the
    # result is the whole picture, and sets the open-breaks gauges.
    full: bool = False


class FindBreaksResult(BaseModel):
    checked: int
    late: list[BrokerOrderView] = Field(default_factory=list)
    breaks: list[Break] = Field(default_factory=list)


def _ours(client_order_id: str) -> OrderKey | None:
    """The order key a broker order names, or None for one that is not ours (a foreign id)."""
    try:
        return OrderKey.parse(client_order_id)
    except InvalidOrderKey:
        return None


class ReconcileActivities:
    def __init__(self, pool: asyncpg.Pool, metrics: ProcessMetrics = NOOP_METRICS) -> None:
        self._pool = pool
        self._metrics = metrics

    @activity.defn
    async def find_breaks(self, inp: FindBreaksInput) -> FindBreaksResult:
        """Classify broker orders against the orders table; read-only, so retries are free."""
        result = FindBreaksResult(checked=len(inp.broker_orders))
        async with self._pool.acquire() as conn:
            for bo in inp.broker_orders:
                await self._classify(conn, bo, result)
            cutoff = datetime.now().astimezone() - timedelta(seconds=inp.stuck_after_s)
            stuck = await conn.fetch(
                "SELECT account_id, order_id, status, updated_at FROM orders"
                " WHERE status <> ALL($1::text[]) AND updated_at < $2",
                list(TERMINAL_STATUS_NAMES),
                cutoff,
            )
        for row in stuck:
            result.breaks.append(
                Break(
                    kind="stuck",
                    client_order_id=f"{row['account_id']}/{row['order_id']}",
                    detail=f"{row['status']} since {row['updated_at'].isoformat()}",
                )
            )
        if inp.full:
            self._gauge(result)
        return result

    def _gauge(self, result: FindBreaksResult) -> None:
        """The breaks of a full run, by kind, as ``ordersaga_breaks_open`` (and the late orders
        as ``ordersaga_late_orders``). Until the breaks table records their resolution, a late
        order stays in every later run's result (its row is still missing at the broker's side)."""
        for kind in BREAK_KINDS:
            count = sum(1 for b in result.breaks if b.kind == kind)
            self._metrics.breaks_open.set(count, {"kind": kind})
        self._metrics.late_orders.set(len(result.late))

    async def _classify(
        self, conn: asyncpg.Connection, bo: BrokerOrderView, result: FindBreaksResult
    ) -> None:
        key = _ours(bo.client_order_id)
        row = None
        if key is not None:
            row = await conn.fetchrow(
                "SELECT status, broker_order_id, filled_qty FROM orders"
                " WHERE account_id = $1 AND order_id = $2",
                key.account_id,
                key.order_id,
            )
        gave_up = row is None or (
            row["status"] in TERMINAL_STATUS_NAMES and row["broker_order_id"] is None
        )
        if gave_up:
            result.late.append(bo)
            result.breaks.append(
                Break(
                    kind="late_order",
                    client_order_id=bo.client_order_id,
                    broker_order_id=bo.id,
                    detail=f"broker has it {bo.status} with {bo.filled_qty} filled; we do not",
                )
            )
        elif (
            row is not None
            and row["status"] in TERMINAL_STATUS_NAMES
            and bo.terminal
            and row["filled_qty"] != bo.filled_qty
        ):
            result.breaks.append(
                Break(
                    kind="fill_mismatch",
                    client_order_id=bo.client_order_id,
                    broker_order_id=bo.id,
                    detail=f"ledger filled {row['filled_qty']}, broker {bo.filled_qty}",
                )
            )
