"""The ledger's SQL: reading rows, the compare-and-sets, the journal, idempotency records, and
the unit of work that reruns a transaction whose compare-and-set lost a race.

Every balance change is written with a compare-and-set on the row's ``version``: ``fenced_cas``
for the reserve (it also refuses a writer whose fencing token is older than one the ledger has
seen, or the same token from another order), ``unfenced_cas`` for every other write (all the
transaction's rows in one statement, locked in id order, so two transactions never wait on each
other in a cycle). A lost race raises ``Conflict``; ``transact`` rolls back and runs the whole
transaction again, and when its attempts are used up raises a *retryable* LedgerConflict, never
a false "insufficient funds".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.ledger.postings import (
    FIRM_KINDS,
    ErrorPosition,
    Hold,
    Move,
    Refused,
    Row,
    balances_after,
    beyond_bounds,
    check_not_negative,
    fence_is_stale,
    firm_kind,
    stale_fence,
)
from core import errors
from core.money import CASH_ASSET

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# An operation's stored result, under the names ``replay`` reads; the combined reads below put
# it beside the rows the operation needs, so a first call and a repeat both cost one round trip.
# A key is unique per operation (migrations/0003_operation_keys.sql): every read names both, so a
# key a caller chose for one operation (a deposit) is never another's (the saga's void).
_OPERATION_COLS = "o.operation AS op_operation, o.args_hash AS op_args_hash, o.result AS op_result"
SELECT_OPERATION = (
    f"SELECT {_OPERATION_COLS} FROM ledger_operations o WHERE o.key = $1 AND o.operation = $2"
)
INSERT_OPERATION = (
    "INSERT INTO ledger_operations (key, operation, args_hash, result) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (key, operation) DO NOTHING RETURNING key"
)
_ROW_COLS = "a.id, a.owner, a.kind, a.asset, a.available, a.held, a.version, a.last_fence"
_ROW_FIELDS = tuple(Row.__dataclass_fields__)
INSERT_ROW = (
    "INSERT INTO ledger_accounts (owner, kind, asset) VALUES ($1, $2, $3)"
    " ON CONFLICT (owner, asset) DO NOTHING"
)
SELECT_ROWS = (
    f"SELECT {_ROW_COLS}"
    " FROM ledger_accounts a JOIN unnest($1::text[], $2::text[]) AS w(owner, asset)"
    " ON a.owner = w.owner AND a.asset = w.asset"
)
INSERT_ROWS = (
    "INSERT INTO ledger_accounts (owner, kind, asset)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
    " ON CONFLICT (owner, asset) DO NOTHING"
)
# The compare-and-set, for every row a transaction moves in one statement: the write lands only on
# the version that was read. The rows are locked in id order first (ORDER BY is applied before
# FOR UPDATE takes its locks), so two transactions never wait on each other in a cycle. A row
# whose version moved is left out, so fewer rows than asked are updated and the caller reruns.
CAS_ROWS = (
    "WITH want AS (SELECT * FROM unnest($1::bigint[], $2::numeric[], $3::numeric[], $4::bigint[])"
    " AS w(id, available, held, version)),"
    " locked AS MATERIALIZED (SELECT a.id FROM ledger_accounts a JOIN want w"
    " ON a.id = w.id AND a.version = w.version ORDER BY a.id FOR UPDATE OF a)"
    " UPDATE ledger_accounts a SET available = w.available, held = w.held,"
    " version = w.version + 1, updated_at = now()"
    " FROM want w WHERE a.id = w.id AND a.version = w.version AND a.id IN (SELECT id FROM locked)"
)
# The reserve's compare-and-set also refuses a writer whose fencing token is older than one seen,
# or equal to the newest but written by another order (the lock's counter went back and handed
# one fence out twice); the same order's equal fence is its own retry. It records the writer.
CAS_ROW_FENCED = (
    "UPDATE ledger_accounts SET available = $2, held = $3, version = $4 + 1, last_fence = $5,"
    " last_fence_owner = $6, updated_at = now() WHERE id = $1 AND version = $4"
    " AND (last_fence < $5 OR (last_fence = $5 AND last_fence_owner = $6))"
)
SELECT_ROW_FENCE = "SELECT last_fence, last_fence_owner FROM ledger_accounts WHERE id = $1"
SELECT_CUSTOMER = "SELECT account_id, currency, last_fence FROM customers WHERE account_id = $1"
INSERT_CUSTOMER = (
    "INSERT INTO customers (account_id, currency) VALUES ($1, $2)"
    " ON CONFLICT (account_id) DO NOTHING RETURNING true"
)
ADVANCE_CUSTOMER_FENCE = (
    "UPDATE customers SET last_fence = $2, last_fence_owner = $3, updated_at = now()"
    " WHERE account_id = $1 AND (last_fence < $2 OR (last_fence = $2 AND last_fence_owner = $3))"
)
_HOLD_COLS = (
    "h.id, h.order_id, h.owner, h.ledger_account_id, h.asset, h.amount, h.held_remaining,"
    " h.posted_qty, h.posted_notional, h.posted_cash, h.posted_fee, h.side, h.symbol, h.status,"
    " h.version, h.qty, h.limit_price, h.pay_asset, h.fx_rate"
)
_HOLD_FIELDS = tuple(Hold.__dataclass_fields__)
# The stored result of operation $3 under key $1 and the order's hold ($2), each possibly absent.
SELECT_OPERATION_AND_HOLD = (
    f"SELECT {_OPERATION_COLS}, {_HOLD_COLS} FROM (SELECT 1) AS one"
    " LEFT JOIN ledger_operations o ON o.key = $1 AND o.operation = $3"
    " LEFT JOIN holds h ON h.order_id = $2"
)
# Everything a reserve decides on, read after its order lock: the stored result ($1), whether
# the order ($2) was voided or already holds, the customer ($3) and its row for the asset ($4).
RESERVE_VIEW = (
    f"SELECT {_OPERATION_COLS},"
    " EXISTS (SELECT 1 FROM hold_tombstones t WHERE t.order_id = $2) AS tombstoned,"
    " h.id IS NOT NULL AS has_hold, h.asset AS hold_asset, h.limit_price AS hold_limit,"
    " r.status AS order_status, r.reason AS order_reason, r.params_hash AS order_params_hash,"
    " c.account_id IS NOT NULL AS customer_exists, c.last_fence AS customer_fence,"
    f" c.last_fence_owner AS customer_fence_owner, {_ROW_COLS}"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN ledger_operations o ON o.key = $1 AND o.operation = 'reserve'"
    " LEFT JOIN holds h ON h.order_id = $2"
    " LEFT JOIN orders r ON r.account_id = $3 AND r.order_id = $5"
    " LEFT JOIN customers c ON c.account_id = $3"
    " LEFT JOIN ledger_accounts a ON a.owner = $3 AND a.asset = $4"
)
CAS_HOLD = (
    "UPDATE holds SET held_remaining = $2, posted_qty = $3, posted_notional = $4,"
    " posted_cash = $5, posted_fee = $6, status = $7, version = $8 + 1, updated_at = now()"
    " WHERE id = $1 AND version = $8"
)
# A hold's new budget, what it keeps and its bounds (a replaced order), on the version read.
RESIZE_HOLD = (
    "UPDATE holds SET amount = $2, held_remaining = $3, qty = $4, limit_price = $5,"
    " version = $6 + 1, updated_at = now() WHERE id = $1 AND version = $6"
)
SELECT_CUSTOMER_FENCE = "SELECT last_fence, last_fence_owner FROM customers WHERE account_id = $1"
INSERT_HOLD = (
    "INSERT INTO holds (order_id, owner, ledger_account_id, asset, amount, held_remaining,"
    " side, symbol, qty, limit_price, pay_asset, fx_rate)"
    " VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10, $11) RETURNING id"
)
# The CHECKs on holds that keep its posts within the order (migrations/0005_hold_bounds.sql),
# with the bound each names.
HOLD_BOUNDS = {
    "hold_within_qty": "quantity",
    "hold_buy_within_limit": "limit",
    "hold_sell_within_limit": "limit",
}
INSERT_TOMBSTONE = "INSERT INTO hold_tombstones (order_id) VALUES ($1) ON CONFLICT DO NOTHING"
# Serializes a reserve and a void of the same order (see ``lock_order``).
LOCK_ORDER = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
# An entry and its lines in one round trip.
INSERT_JOURNAL = (
    "WITH entry AS (INSERT INTO journal_entries (idempotency_key, code, order_id)"
    " VALUES ($1, $2, $3) RETURNING id)"
    " INSERT INTO journal_lines (entry_id, ledger_account_id, asset, bucket, amount)"
    " SELECT entry.id, line.* FROM entry,"
    " unnest($4::bigint[], $5::text[], $6::text[], $7::numeric[]) AS line"
    " RETURNING entry_id"
)
SELECT_ERROR_POSITION = (
    "SELECT broker_order_id, symbol, side, posted_qty, posted_notional, posted_cash, version"
    " FROM error_positions WHERE broker_order_id = $1"
)
INSERT_ERROR_POSITION = (
    "INSERT INTO error_positions (broker_order_id, client_order_id, symbol, side)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (broker_order_id) DO NOTHING"
)
CAS_ERROR_POSITION = (
    "UPDATE error_positions SET posted_qty = $2, posted_notional = $3, posted_cash = $4,"
    " version = $5 + 1, updated_at = now() WHERE broker_order_id = $1 AND version = $5"
)


class Conflict(Exception):
    """A compare-and-set lost a race: roll back and run the whole transaction again."""


@dataclass(frozen=True)
class Fence:
    """A lock's fencing token and the order that carries it (the lock's owner, the order key)."""

    token: int
    owner: str


def application_error(exc: Refused) -> ApplicationError:
    """A refusal of the posting rules as the non-retryable error the workflow's policy names."""
    return ApplicationError(exc.message, *exc.details, type=exc.error_type, non_retryable=True)


# ---------------------------------------------------------------- the unit of work


async def transact(
    pool: asyncpg.Pool, body: Callable[[asyncpg.Connection], Awaitable[T]], attempts: int
) -> T:
    """Run ``body`` in a transaction, rerunning it from the start when a CAS loses a race."""
    for attempt in range(attempts):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await body(conn)
        except (
            Conflict,
            asyncpg.exceptions.UniqueViolationError,
            asyncpg.exceptions.DeadlockDetectedError,
            asyncpg.exceptions.SerializationError,
        ):
            # jittered, capped backoff spreads the losers out so one of them wins next time
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
    raise ApplicationError(
        f"ledger write conflicted {attempts} times; retry",
        type=errors.LEDGER_CONFLICT,
        non_retryable=False,
        category=ApplicationErrorCategory.BENIGN,  # an expected retry, not a failure to log
    )


# ---------------------------------------------------------------- rows and compare-and-set


def row_of(rec: asyncpg.Record) -> Row | None:
    """The ledger row in a record read with the row columns (None when the join found none)."""
    return Row(**{k: rec[k] for k in _ROW_FIELDS}) if rec["id"] is not None else None


async def rows(conn: asyncpg.Connection, *wanted: tuple[str, str]) -> list[Row]:
    """The (owner, asset) rows in the order asked, in one round trip; missing ones (firm rows
    and customer share rows, made on first use) cost two more, once."""
    owners, assets = [w[0] for w in wanted], [w[1] for w in wanted]
    found = {(r["owner"], r["asset"]): r for r in await conn.fetch(SELECT_ROWS, owners, assets)}
    missing = [w for w in dict.fromkeys(wanted) if w not in found]
    if missing:
        await conn.execute(
            INSERT_ROWS,
            [o for o, _ in missing],
            [firm_kind(o) for o, _ in missing],
            [a for _, a in missing],
        )
        again = await conn.fetch(SELECT_ROWS, [o for o, _ in missing], [a for _, a in missing])
        found.update({(r["owner"], r["asset"]): r for r in again})
    return [Row(**dict(found[w])) for w in wanted]


async def fenced_cas(
    conn: asyncpg.Connection, row: Row, available: Decimal, held: Decimal, fence: Fence
) -> None:
    """Write one row if its version is the one read and no newer fence (nor the same fence from
    another order) has written it: a writer whose lock expired, or who was handed a fence twice,
    is refused by the database (StaleFence), a lost race reruns (Conflict)."""
    status = await conn.execute(
        CAS_ROW_FENCED, row.id, available, held, row.version, fence.token, fence.owner
    )
    if status != "UPDATE 1":
        seen = await conn.fetchrow(SELECT_ROW_FENCE, row.id)
        if fence_is_stale(fence.token, fence.owner, seen["last_fence"], seen["last_fence_owner"]):
            raise stale_fence(row.owner, fence.token, seen["last_fence"])
        raise Conflict


async def unfenced_cas(
    conn: asyncpg.Connection, after: Sequence[tuple[Row, Decimal, Decimal]]
) -> None:
    """Write every row (row, available, held) in one statement, each only on the version read;
    if any moved, nothing is written and the transaction reruns."""
    status = await conn.execute(
        CAS_ROWS,
        [row.id for row, _, _ in after],
        [available for _, available, _ in after],
        [held for _, _, held in after],
        [row.version for row, _, _ in after],
    )
    if status != f"UPDATE {len(after)}":
        raise Conflict


async def apply(
    conn: asyncpg.Connection,
    changes: Sequence[Move],
    *,
    key: str,
    code: str,
    order_id: str | None,
    fence: Fence | None = None,
) -> int | None:
    """CAS every touched row (in id order), then journal the moves as one entry; the entry's
    id, or None if there were no moves."""
    by_id = balances_after(changes)
    after = [by_id[row_id] for row_id in sorted(by_id)]
    check_not_negative(after)
    if fence is not None:
        for row, available, held in after:
            await fenced_cas(conn, row, available, held, fence)
    elif after:
        await unfenced_cas(conn, after)
    if not changes:
        return None
    return await write_journal(conn, changes, key=key, code=code, order_id=order_id)


async def write_journal(
    conn: asyncpg.Connection, changes: Sequence[Move], *, key: str, code: str, order_id: str | None
) -> int:
    """One entry and its lines (one per move, in order), in one round trip."""
    entry_id: int = await conn.fetchval(
        INSERT_JOURNAL,
        key,
        code,
        order_id,
        [m.row.id for m in changes],
        [m.row.asset for m in changes],
        [m.bucket for m in changes],
        [m.amount for m in changes],
    )
    return entry_id


# ---------------------------------------------------------------- idempotency


def plain(d: Decimal) -> str:
    """A canonical text form of a number, so 1, 1.0 and 1.000000000 give the same key."""
    return format(d.normalize(), "f") if d else "0"


def args_hash(operation: str, args: dict[str, Any]) -> str:
    text = json.dumps({"op": operation, **args}, sort_keys=True, default=plain)
    return hashlib.sha256(text.encode()).hexdigest()


async def recorded(
    conn: asyncpg.Connection, key: str, operation: str, hashed: str, model: type[M]
) -> M | None:
    """The first result of ``operation`` stored under ``key``; refuse the key reused for the
    same operation with other arguments."""
    rec = await conn.fetchrow(SELECT_OPERATION, key, operation)
    return replay(rec, key, operation, hashed, model)


def replay(
    rec: asyncpg.Record | None, key: str, operation: str, hashed: str, model: type[M]
) -> M | None:
    """``recorded`` on a row already read (with the operation columns, joined on the key and
    the operation)."""
    if rec is None or rec["op_operation"] is None:
        return None
    assert rec["op_operation"] == operation, "the read joins on the operation"
    if rec["op_args_hash"] != hashed:
        raise Refused(
            f"idempotency key {key!r} was already used by another {operation} with other arguments",
            errors.IDEMPOTENCY_MISMATCH,
        )
    return model.model_validate(json.loads(rec["op_result"]))


async def record(
    conn: asyncpg.Connection, key: str, operation: str, hashed: str, result: BaseModel
) -> None:
    stored = await conn.fetchval(INSERT_OPERATION, key, operation, hashed, result.model_dump_json())
    if stored is None:
        raise Conflict  # a concurrent call with the same key won; the rerun returns its result


# ---------------------------------------------------------------- customers, holds, positions


async def customer(conn: asyncpg.Connection | asyncpg.Pool, account_id: str) -> asyncpg.Record:
    rec = await conn.fetchrow(SELECT_CUSTOMER, account_id)
    if rec is None:
        raise Refused(f"unknown account {account_id!r}", errors.UNKNOWN_ACCOUNT)
    return rec


async def ensure_firm_accounts(pool_or_conn: asyncpg.Pool | asyncpg.Connection) -> None:
    """Create the firm's USD rows ('$omnibus', '$fees', '$external', '$error', '$fx') if
    missing."""
    for owner, kind in FIRM_KINDS.items():
        await pool_or_conn.execute(INSERT_ROW, owner, kind, CASH_ASSET)


async def lock_order(conn: asyncpg.Connection, order_key: str) -> None:
    """Serialize a reserve and a void of the same order (held to the end of the transaction).

    Without it, a void that finds no hold (and leaves a tombstone) and a reserve that finds no
    tombstone could both commit, leaving a hold whose order has already ended. Balances are
    still guarded by compare-and-set; this only orders the two decisions about one order.
    """
    await conn.execute(LOCK_ORDER, order_key)


def hold_of(rec: asyncpg.Record) -> Hold | None:
    """The hold in a record read with the hold columns (None when the join found none)."""
    return Hold(**{k: rec[k] for k in _HOLD_FIELDS}) if rec["id"] is not None else None


async def cas_hold(conn: asyncpg.Connection, rec: asyncpg.Record, after: Hold) -> None:
    """Write the hold's new figures on the version read (``rec``). Figures beyond the order's
    quantity or price bound are refused by the database itself (HoldState), whatever the
    caller checked."""
    await _write_hold(
        conn,
        after.order_id,
        CAS_HOLD,
        rec["id"],
        after.held_remaining,
        after.posted_qty,
        after.posted_notional,
        after.posted_cash,
        after.posted_fee,
        after.status,
        rec["version"],
    )


async def _write_hold(conn: asyncpg.Connection, order_key: str, sql: str, *args: Any) -> None:
    """One compare-and-set of a hold; a CHECK on its bounds refused is HoldState (the order's
    quantity or price bound), a version moved is a Conflict (the transaction reruns)."""
    try:
        status = await conn.execute(sql, *args)
    except asyncpg.exceptions.CheckViolationError as exc:
        bound = HOLD_BOUNDS.get(exc.constraint_name or "")
        if bound is None:
            raise
        raise beyond_bounds(
            order_key, f"refused by the database ({exc.constraint_name}: the order's {bound})"
        ) from None
    if status != "UPDATE 1":
        raise Conflict


async def cas_resize(
    conn: asyncpg.Connection, rec: asyncpg.Record, budget: Decimal, after: Hold
) -> None:
    """Write a resized hold (``rec`` as read): its budget, what it keeps, its bounds."""
    await _write_hold(
        conn,
        after.order_id,
        RESIZE_HOLD,
        rec["id"],
        budget,
        after.held_remaining,
        after.qty,
        after.limit_price,
        rec["version"],
    )


async def error_position(
    conn: asyncpg.Connection, broker_order_id: str, client_order_id: str, symbol: str, side: str
) -> tuple[ErrorPosition, int]:
    """The stray broker order's position (made on first use) and its version."""
    await conn.execute(INSERT_ERROR_POSITION, broker_order_id, client_order_id, symbol, side)
    rec = await conn.fetchrow(SELECT_ERROR_POSITION, broker_order_id)
    fields = {k: rec[k] for k in ErrorPosition.__dataclass_fields__}
    return ErrorPosition(**fields), rec["version"]


async def cas_error_position(
    conn: asyncpg.Connection,
    broker_order_id: str,
    cum_qty: Decimal,
    cum_notional: Decimal,
    cash_after: Decimal,
    version: int,
) -> None:
    status = await conn.execute(
        CAS_ERROR_POSITION, broker_order_id, cum_qty, cum_notional, cash_after, version
    )
    if status != "UPDATE 1":
        raise Conflict
