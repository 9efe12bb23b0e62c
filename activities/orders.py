"""The orders table: the permanent record of orders (outlasts Temporal's history retention).

``OrderStore`` does the work (plain async code); ``OrderStoreActivities`` wraps the two writes the
saga makes. The reserve writes an order's row first, inside the ledger's transaction
(activities/ledger/service.py), through ``insert_order`` here: the table's SQL lives only in this
module. The activities record orders refused before any hold, and move a row through its
statuses.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

import asyncpg
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import errors
from core.money import quantum_for
from core.statuses import TERMINAL_STATUS_NAMES, OrderStatus

INSERT_ORDER = """
INSERT INTO orders (account_id, order_id, workflow_id, symbol, side, order_type, time_in_force,
                    qty, limit_price, params_hash, status, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (account_id, order_id) DO NOTHING RETURNING order_id
"""
SELECT_ORDER_HASH = "SELECT params_hash FROM orders WHERE account_id = $1 AND order_id = $2"
# Terminal statuses are final, and cumulative fills never go down: a retried or late update
# cannot undo a newer one.
UPDATE_ORDER = """
UPDATE orders
   SET status = $3, reason = COALESCE($4, reason),
       broker_order_id = COALESCE($5, broker_order_id),
       filled_qty = GREATEST(filled_qty, $6), filled_notional = GREATEST(filled_notional, $7),
       fees = GREATEST(fees, $8), qty = COALESCE($10, qty),
       limit_price = COALESCE($11, limit_price), updated_at = now(), version = version + 1
 WHERE account_id = $1 AND order_id = $2
   AND status <> ALL($9::text[])
"""
# The row with what its order held, if it ever held anything (the hold outlives its void).
SELECT_ORDER = (
    "SELECT o.*, h.amount AS held, h.asset AS hold_asset FROM orders o"
    " LEFT JOIN holds h ON h.order_id = o.account_id || '/' || o.order_id"
    " WHERE o.account_id = $1 AND o.order_id = $2"
)
# The status the reserve writes an order's row with: it holds funds from that moment.
RESERVED_STATUS = OrderStatus.ACCEPTED.value
# The status of an order refused before anything was held.
REFUSED_STATUS = OrderStatus.REJECTED.value


class OrderRecord(BaseModel):
    """An order's row as first written: its parameters and their hash (the bare order id)."""

    account_id: str
    order_id: str
    workflow_id: str
    symbol: str
    side: Literal["buy", "sell"]
    order_type: Literal["market", "limit"]
    time_in_force: Literal["day", "gtc", "ioc"]
    qty: Decimal
    limit_price: Decimal | None = None
    params_hash: str


class RecordOrderInput(BaseModel):
    record: OrderRecord
    status: str
    reason: str | None = None


class RecordOrderResult(BaseModel):
    created: bool
    # When the row was there already: its status and reason (None in results recorded before
    # they were returned). An earlier try of the same decision may have written it, a refusal
    # or a reserve; the first decision stands.
    status: str | None = None
    reason: str | None = None


class UpdateOrderInput(BaseModel):
    account_id: str
    order_id: str
    status: str
    reason: str | None = None
    broker_order_id: str | None = None
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    # A replaced order's quantity and limit now (None: unchanged, as placed).
    qty: Decimal | None = None
    limit_price: Decimal | None = None


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
    held: Decimal = Decimal(0)  # what the order held (0: refused before any hold; not listed)
    hold_asset: str | None = None


OrderRows = list[OrderRow]  # spelled once here: ``OrderStore.list`` shadows the builtin inside


async def insert_order(
    conn: asyncpg.Connection, r: OrderRecord, status: str, reason: str | None = None
) -> bool:
    """Insert the order's row if absent; True when this call created it. The same order id with
    other parameters is refused (OrderConflict), never overwritten."""
    inserted = await conn.fetchval(
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
        status,
        reason,
    )
    if inserted is not None:
        return True
    existing = await conn.fetchval(SELECT_ORDER_HASH, r.account_id, r.order_id)
    if existing != r.params_hash:
        raise ApplicationError(
            f"order {r.order_id!r} exists with other parameters",
            type=errors.ORDER_CONFLICT,
            non_retryable=True,
        )
    return False


class OrderStore:
    """Record, update, get and list orders rows; plain async code, no Temporal."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, r: OrderRecord, status: str, reason: str | None = None) -> bool:
        """Insert the row if absent; True when created (see ``insert_order``)."""
        async with self._pool.acquire() as conn:
            return await insert_order(conn, r, status, reason)

    async def update(self, inp: UpdateOrderInput) -> bool:
        """Move a row to a status with its cumulative fills; False when the row is terminal
        (or absent)."""
        status = await self._pool.execute(
            UPDATE_ORDER,
            inp.account_id,
            inp.order_id,
            inp.status,
            inp.reason,
            inp.broker_order_id,
            inp.filled_qty,
            inp.filled_notional,
            inp.fees,
            list(TERMINAL_STATUS_NAMES),
            inp.qty,
            inp.limit_price,
        )
        return bool(status.endswith(" 1"))

    async def get(self, account_id: str, order_id: str) -> OrderRow | None:
        row = await self._pool.fetchrow(SELECT_ORDER, account_id, order_id)
        if row is None:
            return None
        values = dict(row)
        if values["hold_asset"] is None:
            values.update(held=Decimal(0), hold_asset=None)
        else:
            values["held"] = values["held"].quantize(quantum_for(values["hold_asset"]))
        return OrderRow(**values)

    async def list(
        self,
        account_id: str | None = None,
        status: str | None = None,
        symbol: str | None = None,
        limit: int = 100,
    ) -> OrderRows:
        clauses: list[str] = []
        args: list[object] = []
        for column, value in (("account_id", account_id), ("status", status), ("symbol", symbol)):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} = ${len(args)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        args.append(limit)
        sql = f"SELECT * FROM orders {where} ORDER BY created_at DESC LIMIT ${len(args)}"
        rows = await self._pool.fetch(sql, *args)
        return [OrderRow(**dict(r)) for r in rows]


class OrderStoreActivities:
    def __init__(self, store: OrderStore) -> None:
        self._store = store

    @activity.defn
    async def record_order(self, inp: RecordOrderInput) -> RecordOrderResult:
        """Insert the order's row if absent. Retried: the row is written once; the same order id
        with other parameters is refused (OrderConflict), never overwritten. A row that was
        there already is answered with its status and reason."""
        r = inp.record
        if await self._store.record(r, inp.status, inp.reason):
            return RecordOrderResult(created=True)
        row = await self._store.get(r.account_id, r.order_id)
        if row is None:  # nothing deletes rows
            return RecordOrderResult(created=False)
        return RecordOrderResult(created=False, status=row.status, reason=row.reason)

    @activity.defn
    async def update_order(self, inp: UpdateOrderInput) -> UpdateOrderResult:
        """Move the row to a status with its cumulative fills. Retried: same effect; a terminal
        row is never changed again and fills never decrease."""
        return UpdateOrderResult(updated=await self._store.update(inp))
