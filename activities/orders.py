"""The orders table: the permanent record of orders (outlasts Temporal's history retention).

The reserve writes the row first, in the same transaction as the hold (activities/ledger.py).
These activities record orders refused before any hold, and move a row through its statuses.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ledger import OrderRecord
from core import errors

TERMINAL = ("SETTLED", "CANCELED", "EXPIRED", "REJECTED")

INSERT_ORDER = """
INSERT INTO orders (account_id, order_id, workflow_id, symbol, side, order_type, time_in_force,
                    qty, limit_price, params_hash, status, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (account_id, order_id) DO NOTHING
"""
# Terminal statuses are final, and cumulative fills never go down: a retried or late update
# cannot undo a newer one.
UPDATE_ORDER = """
UPDATE orders
   SET status = $3, reason = COALESCE($4, reason),
       broker_order_id = COALESCE($5, broker_order_id),
       filled_qty = GREATEST(filled_qty, $6), filled_notional = GREATEST(filled_notional, $7),
       fees = GREATEST(fees, $8), updated_at = now(), version = version + 1
 WHERE account_id = $1 AND order_id = $2
   AND status <> ALL($9::text[])
"""
SELECT_ORDER = "SELECT * FROM orders WHERE account_id = $1 AND order_id = $2"


class RecordOrderInput(BaseModel):
    record: OrderRecord
    status: str
    reason: str | None = None


class RecordOrderResult(BaseModel):
    created: bool


class UpdateOrderInput(BaseModel):
    account_id: str
    order_id: str
    status: str
    reason: str | None = None
    broker_order_id: str | None = None
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)


class UpdateOrderResult(BaseModel):
    updated: bool


class OrderRow(BaseModel):
    account_id: str
    order_id: str
    workflow_id: str
    symbol: str
    side: str
    order_type: str
    time_in_force: str
    qty: Decimal
    limit_price: Decimal | None
    params_hash: str
    status: str
    reason: str | None
    broker_order_id: str | None
    filled_qty: Decimal
    filled_notional: Decimal
    fees: Decimal
    created_at: datetime
    updated_at: datetime


class OrderStoreActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def record_order(self, inp: RecordOrderInput) -> RecordOrderResult:
        """Insert the order's row if absent. Retried: the row is written once; the same order id
        with other parameters is refused (OrderConflict), never overwritten."""
        r = inp.record
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                INSERT_ORDER,
                r.account_id,
                r.order_id,
                r.workflow_id,
                r.symbol,
                r.side,
                r.order_type,
                r.time_in_force,
                r.qty,
                r.limit_price,
                r.params_hash,
                inp.status,
                inp.reason,
            )
            if status.endswith(" 1"):
                return RecordOrderResult(created=True)
            existing = await conn.fetchval(
                "SELECT params_hash FROM orders WHERE account_id = $1 AND order_id = $2",
                r.account_id,
                r.order_id,
            )
        if existing != r.params_hash:
            raise ApplicationError(
                f"order {r.order_id} exists with other parameters",
                type=errors.ORDER_CONFLICT,
                non_retryable=True,
            )
        return RecordOrderResult(created=False)

    @activity.defn
    async def update_order(self, inp: UpdateOrderInput) -> UpdateOrderResult:
        """Move the row to a status with its cumulative fills. Retried: same effect; a terminal
        row is never changed again and fills never decrease."""
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                UPDATE_ORDER,
                inp.account_id,
                inp.order_id,
                inp.status,
                inp.reason,
                inp.broker_order_id,
                inp.filled_qty,
                inp.filled_notional,
                inp.fees,
                list(TERMINAL),
            )
        return UpdateOrderResult(updated=status.endswith(" 1"))

    async def get_order(self, account_id: str, order_id: str) -> OrderRow | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(SELECT_ORDER, account_id, order_id)
        return OrderRow(**dict(row)) if row else None

    async def list_orders(
        self,
        account_id: str | None = None,
        status: str | None = None,
        symbol: str | None = None,
        limit: int = 100,
    ) -> list[OrderRow]:
        clauses: list[str] = []
        args: list[object] = []
        for column, value in (("account_id", account_id), ("status", status), ("symbol", symbol)):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} = ${len(args)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        args.append(limit)
        sql = f"SELECT * FROM orders {where} ORDER BY created_at DESC LIMIT ${len(args)}"
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return [OrderRow(**dict(r)) for r in rows]
