"""Settlement of sale proceeds, T+1 (migrations/0014_settlement.sql; docs/LEDGER.md "Settlement").

A sale's proceeds are credited to the customer's available cash when the fill is posted, so a
buy may spend them at once; the same transaction records them as an unsettled lot that settles
on the trade date's next XNYS session. A withdrawal may take only settled cash.

Which money a buy spends: **unsettled cash is spent last**. Settled cash is
``available - min(available, open lots)``: a reserve (or anything else that lowers available)
eats settled cash first, and only when that runs out does it eat into unsettled cash; what is
left unspent of a lot becomes settled when the lot settles. No figure is kept beside
``available``, so the ledger's compare-and-sets are unchanged; the lots are the only new state
and the settlement job changes them by compare-and-set on their version.

The pure rules come first (no database), then the SQL, then ``SettlementActivities``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal

import asyncpg
from pydantic import BaseModel, Field
from temporalio import activity

from activities.ledger.postings import Hold, Move, Refused, q
from activities.ledger.store import application_error
from core import errors
from core.calendar import NEW_YORK, MarketCalendar, xnys
from core.money import is_currency

ZERO = Decimal(0)
# The most lots one page of the settlement job settles (one activity, one transaction).
MAX_PAGE = 5_000


# ---------------------------------------------------------------- the rules


def settlement_date(trade_date: date, calendar: MarketCalendar | None = None) -> date:
    """T+1: the first XNYS session after the trade date (a weekend or a holiday in between
    moves it; a trade dated on a day without a session settles on the next session too)."""
    return (calendar or xnys()).next_session(trade_date).day


def trade_date_of(at: datetime) -> date:
    """The New York date of a moment (the fill's posting): the trade date."""
    return at.astimezone(NEW_YORK).date()


def proceeds(hold: Hold, changes: Sequence[Move]) -> tuple[str, Decimal] | None:
    """What a sell's fill credited to the customer's available cash (USD, or KRW for a sale paid
    out in won), as (asset, amount); None for a buy, or a fill that credited nothing."""
    if hold.side != "sell":
        return None
    for m in changes:
        if (
            m.row.owner == hold.owner
            and m.bucket == "available"
            and is_currency(m.row.asset)
            and m.amount > 0
        ):
            return m.row.asset, m.amount
    return None


def settled_cash(available: Decimal, unsettled: Decimal) -> Decimal:
    """Settled cash: available less what is still unsettled, never below zero (unsettled cash
    is spent last, so a buy that spent some of it leaves no settled cash at all)."""
    return max(ZERO, available - max(ZERO, unsettled))


def unsettled_cash(available: Decimal, unsettled: Decimal) -> Decimal:
    """The part of available cash that is unsettled: the open lots, at most what is there."""
    return min(max(ZERO, available), max(ZERO, unsettled))


def check_withdrawal(
    account_id: str, asset: str, available: Decimal, unsettled: Decimal, value: Decimal
) -> None:
    """A withdrawal may take only settled cash; refused with the figures otherwise."""
    settled = settled_cash(available, unsettled)
    if value <= settled or unsettled <= 0:
        return  # nothing unsettled: the transfer's own rule refuses an overdraft as before
    raise Refused(
        f"insufficient settled {asset} in {account_id}: available {q(available, asset)}, "
        f"unsettled {q(unsettled_cash(available, unsettled), asset)} (sale proceeds settle T+1), "
        f"withdrawable {q(settled, asset)}, requested {value}",
        errors.INSUFFICIENT_FUNDS,
        {
            "asset": asset,
            "available": str(q(available, asset)),
            "unsettled": str(q(unsettled_cash(available, unsettled), asset)),
            "withdrawable": str(q(settled, asset)),
            "requested": str(value),
        },
    )


def check_page_size(limit: int) -> int:
    if not 0 < limit <= MAX_PAGE:
        raise Refused(f"page size must be in 1..{MAX_PAGE}, got {limit}", errors.INVALID_REQUEST)
    return limit


# ---------------------------------------------------------------- the SQL

INSERT_LOT = (
    "INSERT INTO unsettled_lots (account_id, asset, amount, trade_date, settles_on, order_id,"
    " entry_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
OPEN_LOTS = (
    "SELECT coalesce(sum(amount), 0) FROM unsettled_lots"
    " WHERE account_id = $1 AND asset = $2 AND NOT settled"
)
OPEN_LOTS_BY_ASSET = (
    "SELECT asset, sum(amount) AS amount, min(settles_on) AS next_settles FROM unsettled_lots"
    " WHERE account_id = $1 AND NOT settled GROUP BY asset"
)
DUE_LOTS = (
    "SELECT id, version, asset, amount FROM unsettled_lots"
    " WHERE NOT settled AND settles_on <= $1 AND id > $2 ORDER BY id LIMIT $3"
)
# The compare-and-set of a page of lots: each only on the version read and only if still open.
SETTLE_LOTS = (
    "UPDATE unsettled_lots l SET settled = true, settled_at = now(), settled_for = $3,"
    " version = w.version + 1"
    " FROM unnest($1::bigint[], $2::bigint[]) AS w(id, version)"
    " WHERE l.id = w.id AND l.version = w.version AND NOT l.settled"
    " RETURNING l.id, l.asset, l.amount"
)


async def book_proceeds(
    conn: asyncpg.Connection,
    hold: Hold,
    changes: Sequence[Move],
    entry_id: int | None,
    at: datetime,
) -> None:
    """Record a sell fill's proceeds as an unsettled lot, in the fill's own transaction (called
    after its journal entry is written; the entry id makes the lot unique, so it is booked
    exactly when the fill is)."""
    credited = proceeds(hold, changes)
    if credited is None or entry_id is None:
        return
    asset, amount = credited
    trade = trade_date_of(at)
    await conn.execute(
        INSERT_LOT,
        hold.owner,
        asset,
        amount,
        trade,
        settlement_date(trade),
        hold.order_id,
        entry_id,
    )


async def check_settled(
    conn: asyncpg.Connection, account_id: str, asset: str, available: Decimal, value: Decimal
) -> None:
    """Refuse a withdrawal of cash that has not settled (read in the withdrawal's transaction:
    a fill crediting the row meanwhile moves its version, so the withdrawal's compare-and-set
    loses and the rerun reads the new lot)."""
    if not is_currency(asset):
        return
    unsettled = await conn.fetchval(OPEN_LOTS, account_id, asset)
    check_withdrawal(account_id, asset, available, unsettled, value)


class UnsettledCash(BaseModel):
    asset: str
    amount: Decimal
    next_settles: date


async def open_lots(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: str
) -> dict[str, UnsettledCash]:
    """An account's open lots per asset: their sum and the earliest settlement date."""
    return {
        r["asset"]: UnsettledCash(
            asset=r["asset"], amount=r["amount"], next_settles=r["next_settles"]
        )
        for r in await conn.fetch(OPEN_LOTS_BY_ASSET, account_id)
    }


# ---------------------------------------------------------------- the activity


class SettleDueInput(BaseModel):
    # The session date to settle for: every open lot due on or before it. None: today in New
    # York (the first page resolves it and returns it; the next pages send it back).
    as_of: date | None = None
    after_id: int = 0
    limit: int = Field(default=500)


class SettleDueResult(BaseModel):
    as_of: date
    seen: int
    settled: int
    last_id: int
    amounts: dict[str, Decimal] = Field(default_factory=dict)


class SettlementActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def settle(self, input: SettleDueInput) -> SettleDueResult:
        """Settle one page of lots due on or before ``as_of`` (ids after ``after_id``), each by
        compare-and-set on its version. Retried, it settles nothing twice: a lot already settled
        (by this page's first try or another run) is left out, and the page reports only what
        it settled itself."""
        return await settle_page(self._pool, input)

    @activity.defn(name="settle_due")
    async def settle_due(self, input: SettleDueInput) -> SettleDueResult:
        """One page of the settlement job (see ``settle``); safe to retry."""
        try:
            return await self.settle(input)
        except Refused as exc:
            raise application_error(exc) from None


async def settle_page(pool: asyncpg.Pool, input: SettleDueInput) -> SettleDueResult:
    limit = check_page_size(input.limit)
    as_of = input.as_of or trade_date_of(datetime.now(NEW_YORK))
    async with pool.acquire() as conn, conn.transaction():
        due = await conn.fetch(DUE_LOTS, as_of, input.after_id, limit)
        done = await conn.fetch(
            SETTLE_LOTS, [r["id"] for r in due], [r["version"] for r in due], as_of
        )
    amounts: dict[str, Decimal] = {}
    for r in done:
        amounts[r["asset"]] = amounts.get(r["asset"], ZERO) + r["amount"]
    return SettleDueResult(
        as_of=as_of,
        seen=len(due),
        settled=len(done),
        last_id=max((r["id"] for r in due), default=input.after_id),
        amounts=amounts,
    )
