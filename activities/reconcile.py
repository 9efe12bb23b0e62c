"""Reconciliation: the broker's orders against the orders table and the ledger.

The broker is the source of truth. A broker order with no live order of ours (a request that
arrived late, after we gave up) is a *late order*: the reconciler cancels it at the broker and books
its fills to the firm error account, never to a customer. Orders non-terminal for too long are
*stuck*, orders parked in NEEDS_ATTENTION are *parked*, fills that disagree with the broker are
*fill mismatches*. Every break is a row of ``reconcile_breaks`` (found again: updated, not
duplicated); ``ordersaga breaks list | show | resolve`` reads and resolves them.

The incremental reconciler (workflows/reconcile.py, docs/ARCHITECTURE.md "Reconciler") keeps its
state here too: the watermark of broker orders reconciled (by the broker's creation time) and the
broker orders it saw open, followed until the broker says they are final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
from pydantic import BaseModel, Field
from temporalio import activity

from core.orderkey import InvalidOrderKey, OrderKey
from core.statuses import TERMINAL_STATUS_NAMES, OrderStatus

BREAK_KINDS = ("late_order", "fill_mismatch", "stuck", "parked", "position", "cash")
WATERMARK = "broker-orders"  # the one watermark's name (a row, so more could exist later)


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
    created_at: datetime | None = None  # the broker's creation (submission) time


class Break(BaseModel):
    kind: str  # one of BREAK_KINDS (position and cash: activities/positions.py)
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


class ClassifyPageInput(BaseModel):
    broker_orders: list[BrokerOrderView]
    mark: datetime
    """The run's start: open orders are followed with this as their last sighting."""
    forget_ids: list[str] = Field(default_factory=list)
    """Followed broker orders the broker no longer has: stop following them."""


class ClassifyPageResult(BaseModel):
    checked: int
    late: list[BrokerOrderView] = Field(default_factory=list)
    breaks: int = 0


class WatermarkInput(BaseModel):
    created_up_to: datetime | None = None  # advance_watermark: the page's newest creation time


class WatermarkResult(BaseModel):
    created_up_to: datetime | None = None


class FollowedInput(BaseModel):
    mark: datetime
    limit: int = 500


class FollowedResult(BaseModel):
    broker_order_ids: list[str] = Field(default_factory=list)


class OrderBreaksInput(BaseModel):
    stuck_after_s: float = 900.0


class OrderBreaksResult(BaseModel):
    stuck: int = 0
    parked: int = 0
    cleared: int = 0


@dataclass(frozen=True)
class OrderRow:
    status: str
    broker_order_id: str | None
    filled_qty: Decimal


def _ours(client_order_id: str) -> OrderKey | None:
    """The order key a broker order names (a replacement's ``<key>/r<n>`` names its order's), or
    None for one that is not ours (a foreign id)."""
    try:
        return OrderKey.of_client_order_id(client_order_id)[0]
    except InvalidOrderKey:
        return None


def classify(bo: BrokerOrderView, row: OrderRow | None) -> Break | None:
    """The break a broker order makes against its orders row (None: they agree, or it is still
    moving). A pure rule: a late order has no row, or a terminal row without a broker order id
    (we gave up on it); a fill mismatch is two final sides that disagree on the quantity."""
    if row is None or (row.status in TERMINAL_STATUS_NAMES and row.broker_order_id is None):
        return Break(
            kind="late_order",
            client_order_id=bo.client_order_id,
            broker_order_id=bo.id,
            detail=f"broker has it {bo.status} with {bo.filled_qty} filled; we do not",
        )
    # A replaced order's fills are spread over its broker orders (the row has their sum): the
    # positions check (activities/positions.py) compares them in aggregate.
    replaced = bo.status == "replaced" or bo.client_order_id != _ours(bo.client_order_id)
    if (
        row.status in TERMINAL_STATUS_NAMES
        and bo.terminal
        and not replaced
        and row.filled_qty != bo.filled_qty
    ):
        return Break(
            kind="fill_mismatch",
            client_order_id=bo.client_order_id,
            broker_order_id=bo.id,
            detail=f"ledger filled {row.filled_qty}, broker {bo.filled_qty}",
        )
    return None


# --- SQL ----------------------------------------------------------------------------------

# One query per page, not one per broker order.
_ROWS = """
SELECT o.account_id, o.order_id, o.status, o.broker_order_id, o.filled_qty
  FROM unnest($1::text[], $2::text[]) AS k(account_id, order_id)
  JOIN orders o ON o.account_id = k.account_id AND o.order_id = k.order_id
"""

# Found again: updated, not duplicated. A resolved break stays resolved while its detail is the
# same; a new detail (the situation moved) opens it again.
_UPSERT_BREAKS = """
INSERT INTO reconcile_breaks AS b (kind, order_key, broker_order_id, detail)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
ON CONFLICT (kind, order_key) DO UPDATE SET
    last_seen = now(),
    times_seen = b.times_seen + 1,
    broker_order_id = coalesce(EXCLUDED.broker_order_id, b.broker_order_id),
    detail = EXCLUDED.detail,
    resolved_at = CASE WHEN b.detail = EXCLUDED.detail THEN b.resolved_at END,
    resolved_by = CASE WHEN b.detail = EXCLUDED.detail THEN b.resolved_by END,
    resolution = CASE WHEN b.detail = EXCLUDED.detail THEN b.resolution END
"""

_FOLLOW_OPEN = """
INSERT INTO reconcile_followed (broker_order_id, client_order_id, open, last_seen)
SELECT id, cid, true, $3 FROM unnest($1::text[], $2::text[]) AS f(id, cid)
ON CONFLICT (broker_order_id) DO UPDATE SET open = true, last_seen = EXCLUDED.last_seen
"""

_UNFOLLOW = """
UPDATE reconcile_followed SET open = false, last_seen = $2
 WHERE broker_order_id = ANY($1::text[]) AND open
"""

_FOLLOWED_NOT_SEEN = """
SELECT broker_order_id FROM reconcile_followed
 WHERE open AND last_seen < $1 ORDER BY last_seen, broker_order_id LIMIT $2
"""

_LIVE_ORDERS = f"""
SELECT account_id, order_id, status, reason, updated_at FROM orders
 WHERE status NOT IN ({", ".join(f"'{s}'" for s in TERMINAL_STATUS_NAMES)})
   AND (status = $1 OR (updated_at < $2 AND status <> $3))
"""

# Stuck and parked breaks whose order has moved on are resolved by the reconciler itself.
_CLEAR_ORDER_BREAKS = """
UPDATE reconcile_breaks
   SET resolved_at = now(), resolved_by = 'reconciler', resolution = 'the order moved on'
 WHERE kind IN ('stuck', 'parked') AND resolved_at IS NULL
   AND NOT (kind || ' ' || order_key = ANY($1::text[]))
"""

_READ_WATERMARK = "SELECT created_up_to FROM reconcile_watermarks WHERE name = $1"

_ADVANCE_WATERMARK = """
INSERT INTO reconcile_watermarks AS w (name, created_up_to) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE
   SET created_up_to = greatest(w.created_up_to, EXCLUDED.created_up_to), updated_at = now()
RETURNING created_up_to
"""


async def order_rows(conn: asyncpg.Connection, views: list[BrokerOrderView]) -> dict[str, OrderRow]:
    """The orders rows the broker orders name, by client order id, in one query."""
    ours = {bo.client_order_id: k for bo in views if (k := _ours(bo.client_order_id)) is not None}
    keys = list(set(ours.values()))
    if not keys:
        return {}
    rows = await conn.fetch(_ROWS, [k.account_id for k in keys], [k.order_id for k in keys])
    by_key = {
        OrderKey.of(r["account_id"], r["order_id"]): OrderRow(
            r["status"], r["broker_order_id"], r["filled_qty"]
        )
        for r in rows
    }
    return {cid: by_key[key] for cid, key in ours.items() if key in by_key}


async def record_breaks(conn: asyncpg.Connection, breaks: list[Break]) -> None:
    """Insert the breaks, or update the ones already recorded; one statement."""
    unique = list({(b.kind, b.client_order_id): b for b in breaks}.values())
    if unique:
        await conn.execute(
            _UPSERT_BREAKS,
            [b.kind for b in unique],
            [b.client_order_id for b in unique],
            [b.broker_order_id for b in unique],
            [b.detail for b in unique],
        )


async def order_breaks(conn: asyncpg.Connection, stuck_after_s: float) -> list[Break]:
    """Parked orders (any age) and orders not final for longer than ``stuck_after_s``, except
    those QUEUED for the open."""
    cutoff = datetime.now().astimezone() - timedelta(seconds=stuck_after_s)
    # A QUEUED order waits for the market's open by design (over a weekend, say): not stuck.
    rows = await conn.fetch(
        _LIVE_ORDERS, OrderStatus.NEEDS_ATTENTION.value, cutoff, OrderStatus.QUEUED.value
    )
    found = []
    for row in rows:
        parked = row["status"] == OrderStatus.NEEDS_ATTENTION.value
        if parked:
            detail = f"parked: {row['reason'] or 'no reason'}"
        else:
            detail = f"{row['status']} since {row['updated_at'].isoformat()}"
        found.append(
            Break(
                kind="parked" if parked else "stuck",
                client_order_id=OrderKey.of(row["account_id"], row["order_id"]),
                detail=detail,
            )
        )
    return found


async def record_order_breaks(conn: asyncpg.Connection, found: list[Break]) -> int:
    """Record stuck and parked breaks; resolve the recorded ones that no longer hold."""
    await record_breaks(conn, found)
    status = await conn.execute(
        _CLEAR_ORDER_BREAKS, [f"{b.kind} {b.client_order_id}" for b in found]
    )
    return int(status.split()[-1])


class ReconcileActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def find_breaks(self, inp: FindBreaksInput) -> FindBreaksResult:
        """Classify broker orders against the orders table, and stuck and parked orders; record
        every break. Retried: the same rows are updated again (last_seen), nothing duplicated."""
        result = FindBreaksResult(checked=len(inp.broker_orders))
        async with self._pool.acquire() as conn:
            rows = await order_rows(conn, inp.broker_orders)
            for bo in inp.broker_orders:
                found = classify(bo, rows.get(bo.client_order_id))
                if found is not None:
                    result.breaks.append(found)
                    if found.kind == "late_order":
                        result.late.append(bo)
            live = await order_breaks(conn, inp.stuck_after_s)
            async with conn.transaction():
                await record_breaks(conn, result.breaks)
                await record_order_breaks(conn, live)
        result.breaks += live
        return result

    @activity.defn
    async def classify_page(self, inp: ClassifyPageInput) -> ClassifyPageResult:
        """Classify one page of broker orders in one query, record its breaks, and follow the
        page's open orders (final ones are no longer followed); one transaction. Retried: the
        same rows are written again; the late orders are answered again (their settling is
        idempotent)."""
        result = ClassifyPageResult(checked=len(inp.broker_orders))
        breaks: list[Break] = []
        async with self._pool.acquire() as conn:
            rows = await order_rows(conn, inp.broker_orders)
            for bo in inp.broker_orders:
                found = classify(bo, rows.get(bo.client_order_id))
                if found is not None:
                    breaks.append(found)
                    if found.kind == "late_order":
                        result.late.append(bo)
            # A replaced broker order is final too (its order lives on in its replacement).
            ended = [bo for bo in inp.broker_orders if bo.terminal or bo.status == "replaced"]
            still_open = [bo for bo in inp.broker_orders if bo not in ended]
            done = [bo.id for bo in ended] + inp.forget_ids
            async with conn.transaction():
                await record_breaks(conn, breaks)
                if still_open:
                    await conn.execute(
                        _FOLLOW_OPEN,
                        [bo.id for bo in still_open],
                        [bo.client_order_id for bo in still_open],
                        inp.mark,
                    )
                if done:
                    await conn.execute(_UNFOLLOW, done, inp.mark)
        result.breaks = len(breaks)
        return result

    @activity.defn
    async def followed_not_seen(self, inp: FollowedInput) -> FollowedResult:
        """Followed broker orders not seen open since ``mark``: they became final since the
        last run (or the listing missed them); the run asks the broker for each. A read."""
        rows = await self._pool.fetch(_FOLLOWED_NOT_SEEN, inp.mark, inp.limit)
        return FollowedResult(broker_order_ids=[r["broker_order_id"] for r in rows])

    @activity.defn
    async def read_watermark(self, inp: WatermarkInput) -> WatermarkResult:
        """The broker creation time up to which orders are reconciled (None: never). A read."""
        return WatermarkResult(created_up_to=await self._pool.fetchval(_READ_WATERMARK, WATERMARK))

    @activity.defn
    async def advance_watermark(self, inp: WatermarkInput) -> WatermarkResult:
        """Move the watermark to ``created_up_to`` if that is later; never back. Retried: the
        same value again changes nothing."""
        if inp.created_up_to is None:
            return await self.read_watermark(inp)
        return WatermarkResult(
            created_up_to=await self._pool.fetchval(
                _ADVANCE_WATERMARK, WATERMARK, inp.created_up_to
            )
        )

    @activity.defn
    async def find_order_breaks(self, inp: OrderBreaksInput) -> OrderBreaksResult:
        """Record stuck and parked orders as breaks, and resolve (by 'reconciler') the recorded
        ones whose order has moved on. Retried: the same rows are written again."""
        async with self._pool.acquire() as conn:
            found = await order_breaks(conn, inp.stuck_after_s)
            async with conn.transaction():
                cleared = await record_order_breaks(conn, found)
        return OrderBreaksResult(
            stuck=sum(b.kind == "stuck" for b in found),
            parked=sum(b.kind == "parked" for b in found),
            cleared=cleared,
        )


# --- the breaks, for operators (``ordersaga breaks``) --------------------------------------

_BREAK_COLUMNS = (
    "id, kind, order_key, broker_order_id, detail, first_seen, last_seen, times_seen,"
    " resolved_at, resolved_by, resolution"
)


class BreakRecord(BaseModel):
    id: int
    kind: str
    order_key: str
    broker_order_id: str | None
    detail: str
    first_seen: datetime
    last_seen: datetime
    times_seen: int
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


class UnknownBreak(LookupError):
    """No break has this id."""


class BreakAlreadyResolved(ValueError):
    """The break is resolved already (by whom and when is in the message)."""


async def list_breaks(
    pool: asyncpg.Pool, *, resolved: bool | None = False, kind: str | None = None, limit: int = 100
) -> list[BreakRecord]:
    """Breaks, most recently seen first: open ones (``resolved=False``), resolved ones, or all."""
    rows = await pool.fetch(
        f"SELECT {_BREAK_COLUMNS} FROM reconcile_breaks"
        " WHERE ($1::boolean IS NULL OR (resolved_at IS NOT NULL) = $1)"
        "   AND ($2::text IS NULL OR kind = $2)"
        " ORDER BY last_seen DESC, id DESC LIMIT $3",
        resolved,
        kind,
        limit,
    )
    return [BreakRecord(**dict(r)) for r in rows]


async def get_break(pool: asyncpg.Pool, break_id: int) -> BreakRecord:
    row = await pool.fetchrow(
        f"SELECT {_BREAK_COLUMNS} FROM reconcile_breaks WHERE id = $1", break_id
    )
    if row is None:
        raise UnknownBreak(f"no break {break_id}")
    return BreakRecord(**dict(row))


async def resolve_break(pool: asyncpg.Pool, break_id: int, by: str, note: str) -> BreakRecord:
    """Mark an open break resolved by ``by`` now; an UPDATE (a break is never deleted)."""
    row = await pool.fetchrow(
        f"UPDATE reconcile_breaks SET resolved_at = now(), resolved_by = $2, resolution = $3"
        f" WHERE id = $1 AND resolved_at IS NULL RETURNING {_BREAK_COLUMNS}",
        break_id,
        by,
        note,
    )
    if row is not None:
        return BreakRecord(**dict(row))
    found = await get_break(pool, break_id)  # raises UnknownBreak
    assert found.resolved_at is not None
    raise BreakAlreadyResolved(
        f"break {break_id} was resolved by {found.resolved_by}"
        f" at {found.resolved_at.isoformat(timespec='seconds')}"
    )
