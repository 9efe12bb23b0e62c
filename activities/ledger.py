"""The Postgres ledger: accounts per (owner, asset), two-phase holds, an immutable journal.

Every balance change reads its rows with a plain SELECT, computes the new balances, and writes
them with a compare-and-set on the row's ``version`` (plus the fencing token for reserves). Rows
are written in id order so two transactions never wait on each other in a cycle. A lost race
rolls the whole transaction back and runs it again; when ``cas_attempts`` are used up the
operation raises a *retryable* ``LedgerConflict``, never a false "insufficient funds".

Each operation records its idempotency key, the hash of its arguments and its result in
``ledger_operations`` in the same transaction as its effect, so a repeat returns the first
result and changes nothing. Methods are Temporal activities but need no activity context: tests
and the CLI call them directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import errors
from core.money import (
    CASH_ASSET,
    MAX_AMOUNT,
    InvalidAmount,
    parse_decimal,
    quantum_for,
    round_cash,
    validate_amount,
)

OMNIBUS = "$omnibus"
FEES = "$fees"
EXTERNAL = "$external"
ERROR = "$error"
FIRM_KINDS = {OMNIBUS: "omnibus", FEES: "fees", EXTERNAL: "external", ERROR: "error"}
# The omnibus, fees and external rows take part in every fill and deposit of every customer: as
# single rows they would serialize the whole firm's compare-and-sets on one version column. Each
# is split into FIRM_SHARDS rows ('$omnibus', '$omnibus~1', ...), chosen by a stable hash of the
# order (fills) or the customer (deposits). Sums over a kind are unchanged; every write is still
# a compare-and-set. The error account is written rarely and stays one row.
FIRM_SHARDS = 8


def firm_shard(owner: str, key: str) -> str:
    """The shard of firm account ``owner`` that ``key`` (an order or customer id) writes to."""
    n = zlib.crc32(key.encode()) % FIRM_SHARDS
    return owner if n == 0 else f"{owner}~{n}"


def _firm_kind(owner: str) -> str:
    return FIRM_KINDS.get(owner.split("~", 1)[0], "customer")


_SYMBOL = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")

Side = Literal["buy", "sell"]
# Inputs accept any Decimal so a NaN or infinity reaches the activity and is refused there as a
# non-retryable InvalidAmount, rather than failing payload decoding (which Temporal would retry).
AnyDecimal = Annotated[Decimal, Field(allow_inf_nan=True)]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------- models


class OpenAccountInput(BaseModel):
    account_id: str
    currency: str = CASH_ASSET


class OpenAccountResult(BaseModel):
    account_id: str
    currency: str
    created: bool


class DepositInput(BaseModel):
    account_id: str
    amount: AnyDecimal
    idempotency_key: str
    asset: str = CASH_ASSET


class WithdrawInput(DepositInput):
    pass


class TransferResult(BaseModel):
    account_id: str
    asset: str
    amount: Decimal
    available_after: Decimal
    entry_id: int


class OrderRecord(BaseModel):
    account_id: str
    order_id: str
    workflow_id: str
    symbol: str
    side: Side
    order_type: Literal["market", "limit"]
    time_in_force: Literal["day", "gtc", "ioc"]
    qty: Decimal
    limit_price: Decimal | None = None
    params_hash: str


class ReserveInput(BaseModel):
    account_id: str
    order_id: str
    asset: str
    amount: AnyDecimal
    fence: int
    idempotency_key: str
    side: Side
    symbol: str
    order: OrderRecord | None = None


class ReserveResult(BaseModel):
    hold_id: int
    order_id: str
    asset: str
    amount: Decimal
    available_after: Decimal
    fence: int


class PostFillInput(BaseModel):
    order_id: str
    cum_qty: AnyDecimal
    cum_notional: AnyDecimal
    cum_fee: AnyDecimal = Decimal("0")


class PostFillResult(BaseModel):
    order_id: str
    applied: bool  # False: this cumulative quantity was already booked
    qty_delta: Decimal
    cash_delta: Decimal
    fee_delta: Decimal
    posted_qty: Decimal
    posted_notional: Decimal
    posted_cash: Decimal
    posted_fee: Decimal
    held_remaining: Decimal


class VoidInput(BaseModel):
    order_id: str
    idempotency_key: str


class VoidResult(BaseModel):
    order_id: str
    found: bool
    released: Decimal
    asset: str | None = None


class ErrorFillInput(BaseModel):
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    cum_qty: AnyDecimal
    cum_notional: AnyDecimal


class ErrorFillResult(BaseModel):
    broker_order_id: str
    applied: bool
    qty_delta: Decimal
    cash_delta: Decimal
    posted_qty: Decimal
    posted_cash: Decimal


class Balance(BaseModel):
    asset: str
    available: Decimal
    held: Decimal
    version: int


class AccountBalances(BaseModel):
    account_id: str
    currency: str
    last_fence: int
    balances: list[Balance]

    def of(self, asset: str) -> Balance:
        for b in self.balances:
            if b.asset == asset:
                return b
        return Balance(asset=asset, available=Decimal(0), held=Decimal(0), version=0)


# ---------------------------------------------------------------- errors


class _Conflict(Exception):
    """A compare-and-set lost a race: roll back and run the whole transaction again."""


def _fail(message: str, type_: str, *details: Any) -> ApplicationError:
    return ApplicationError(message, *details, type=type_, non_retryable=True)


def _amount(value: object, asset: str, what: str = "amount") -> Decimal:
    try:
        return validate_amount(value, asset, what)
    except InvalidAmount as exc:
        raise _fail(str(exc), errors.INVALID_AMOUNT) from None


def _cumulative(value: object, what: str, quantize_to: Decimal | None = None) -> Decimal:
    """A cumulative broker figure: finite, >= 0, sane; exact unless a quantum is given."""
    try:
        d = parse_decimal(value, what)
    except InvalidAmount as exc:
        raise _fail(str(exc), errors.INVALID_AMOUNT) from None
    if d < 0 or d > MAX_AMOUNT:
        raise _fail(f"{what} must be between 0 and {MAX_AMOUNT}, got {d}", errors.INVALID_AMOUNT)
    if quantize_to is not None:
        if d != d.quantize(quantize_to):
            raise _fail(f"{what} {d} has too many decimals", errors.INVALID_AMOUNT)
        d = d.quantize(quantize_to)
    return d


def _check_asset(asset: str) -> str:
    if asset != CASH_ASSET and not _SYMBOL.match(asset):
        raise _fail(f"unknown asset {asset!r} (USD or a ticker symbol)", errors.INVALID_REQUEST)
    return asset


def _check_account_id(account_id: str) -> str:
    if not _ACCOUNT_ID.match(account_id):
        raise _fail(f"invalid account id {account_id!r}", errors.INVALID_REQUEST)
    return account_id


def _plain(d: Decimal) -> str:
    """A canonical text form of a number, so 1, 1.0 and 1.000000000 give the same key."""
    return format(d.normalize(), "f") if d else "0"


def _args_hash(operation: str, args: dict[str, Any]) -> str:
    text = json.dumps({"op": operation, **args}, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- SQL

# An operation's stored result, under the names ``_replay`` reads; the combined reads below put
# it beside the rows the operation needs, so a first call and a repeat both cost one round trip.
_OPERATION_COLS = "o.operation AS op_operation, o.args_hash AS op_args_hash, o.result AS op_result"
_SELECT_OPERATION = f"SELECT {_OPERATION_COLS} FROM ledger_operations o WHERE o.key = $1"
_INSERT_OPERATION = (
    "INSERT INTO ledger_operations (key, operation, args_hash, result) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (key) DO NOTHING RETURNING key"
)
_ROW_COLS = "a.id, a.owner, a.kind, a.asset, a.available, a.held, a.version, a.last_fence"
_INSERT_ROW = (
    "INSERT INTO ledger_accounts (owner, kind, asset) VALUES ($1, $2, $3)"
    " ON CONFLICT (owner, asset) DO NOTHING"
)
_SELECT_ROWS = (
    f"SELECT {_ROW_COLS}"
    " FROM ledger_accounts a JOIN unnest($1::text[], $2::text[]) AS w(owner, asset)"
    " ON a.owner = w.owner AND a.asset = w.asset"
)
_INSERT_ROWS = (
    "INSERT INTO ledger_accounts (owner, kind, asset)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
    " ON CONFLICT (owner, asset) DO NOTHING"
)
# The compare-and-set, for every row a transaction moves in one statement: the write lands only on
# the version that was read. The rows are locked in id order first (ORDER BY is applied before
# FOR UPDATE takes its locks), so two transactions never wait on each other in a cycle. A row
# whose version moved is left out, so fewer rows than asked are updated and the caller reruns.
_CAS_ROWS = (
    "WITH want AS (SELECT * FROM unnest($1::bigint[], $2::numeric[], $3::numeric[], $4::bigint[])"
    " AS w(id, available, held, version)),"
    " locked AS MATERIALIZED (SELECT a.id FROM ledger_accounts a JOIN want w"
    " ON a.id = w.id AND a.version = w.version ORDER BY a.id FOR UPDATE OF a)"
    " UPDATE ledger_accounts a SET available = w.available, held = w.held,"
    " version = w.version + 1, updated_at = now()"
    " FROM want w WHERE a.id = w.id AND a.version = w.version AND a.id IN (SELECT id FROM locked)"
)
# The reserve's compare-and-set also refuses a writer whose fencing token is older than one seen.
_CAS_ROW_FENCED = (
    "UPDATE ledger_accounts SET available = $2, held = $3, version = $4 + 1, last_fence = $5,"
    " updated_at = now() WHERE id = $1 AND version = $4 AND last_fence <= $5"
)
_SELECT_CUSTOMER = "SELECT account_id, currency, last_fence FROM customers WHERE account_id = $1"
_ADVANCE_CUSTOMER_FENCE = (
    "UPDATE customers SET last_fence = $2, updated_at = now()"
    " WHERE account_id = $1 AND last_fence <= $2"
)
_HOLD_COLS = (
    "h.id, h.order_id, h.owner, h.ledger_account_id, h.asset, h.amount, h.held_remaining,"
    " h.posted_qty, h.posted_notional, h.posted_cash, h.posted_fee, h.side, h.symbol, h.status,"
    " h.version"
)
# The operation's stored result ($1) and the order's hold ($2), each possibly absent.
_SELECT_OPERATION_AND_HOLD = (
    f"SELECT {_OPERATION_COLS}, {_HOLD_COLS} FROM (SELECT 1) AS one"
    " LEFT JOIN ledger_operations o ON o.key = $1 LEFT JOIN holds h ON h.order_id = $2"
)
# Everything a reserve decides on, read after its order lock: the stored result ($1), whether
# the order ($2) was voided or already holds, the customer ($3) and its row for the asset ($4).
_RESERVE_VIEW = (
    f"SELECT {_OPERATION_COLS},"
    " EXISTS (SELECT 1 FROM hold_tombstones t WHERE t.order_id = $2) AS tombstoned,"
    " EXISTS (SELECT 1 FROM holds h WHERE h.order_id = $2) AS has_hold,"
    f" c.account_id IS NOT NULL AS customer_exists, c.last_fence AS customer_fence, {_ROW_COLS}"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN ledger_operations o ON o.key = $1"
    " LEFT JOIN customers c ON c.account_id = $3"
    " LEFT JOIN ledger_accounts a ON a.owner = $3 AND a.asset = $4"
)
_CAS_HOLD = (
    "UPDATE holds SET held_remaining = $2, posted_qty = $3, posted_notional = $4,"
    " posted_cash = $5, posted_fee = $6, status = $7, version = $8 + 1, updated_at = now()"
    " WHERE id = $1 AND version = $8"
)
_INSERT_HOLD = (
    "INSERT INTO holds (order_id, owner, ledger_account_id, asset, amount, held_remaining,"
    " side, symbol) VALUES ($1, $2, $3, $4, $5, $5, $6, $7) RETURNING id"
)
# An entry and its lines in one round trip.
_INSERT_JOURNAL = (
    "WITH entry AS (INSERT INTO journal_entries (idempotency_key, code, order_id)"
    " VALUES ($1, $2, $3) RETURNING id)"
    " INSERT INTO journal_lines (entry_id, ledger_account_id, asset, bucket, amount)"
    " SELECT entry.id, line.* FROM entry,"
    " unnest($4::bigint[], $5::text[], $6::text[], $7::numeric[]) AS line"
    " RETURNING entry_id"
)
_INSERT_ORDER = (
    "INSERT INTO orders (account_id, order_id, workflow_id, symbol, side, order_type,"
    " time_in_force, qty, limit_price, params_hash, status)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'ACCEPTED')"
    " ON CONFLICT (account_id, order_id) DO NOTHING RETURNING order_id"
)
_SELECT_ORDER_HASH = "SELECT params_hash FROM orders WHERE account_id = $1 AND order_id = $2"
_SELECT_ERROR_POSITION = (
    "SELECT broker_order_id, symbol, side, posted_qty, posted_notional, posted_cash, version"
    " FROM error_positions WHERE broker_order_id = $1"
)
_INSERT_ERROR_POSITION = (
    "INSERT INTO error_positions (broker_order_id, client_order_id, symbol, side)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (broker_order_id) DO NOTHING"
)
_CAS_ERROR_POSITION = (
    "UPDATE error_positions SET posted_qty = $2, posted_notional = $3, posted_cash = $4,"
    " version = $5 + 1, updated_at = now() WHERE broker_order_id = $1 AND version = $5"
)


# ---------------------------------------------------------------- the unit of work


@dataclass
class _Row:
    id: int
    owner: str
    kind: str
    asset: str
    available: Decimal
    held: Decimal
    version: int
    last_fence: int


_ROW_FIELDS = tuple(_Row.__dataclass_fields__)


@dataclass
class _Changes:
    """Balance moves of one transaction: applied by CAS in row-id order, journaled as one entry."""

    rows: dict[int, _Row] = field(default_factory=dict)
    deltas: dict[int, list[Decimal]] = field(default_factory=dict)
    lines: list[tuple[int, str, str, Decimal]] = field(default_factory=list)

    def move(self, row: _Row, bucket: Literal["available", "held"], amount: Decimal) -> None:
        if amount == 0:
            return
        self.rows[row.id] = row
        delta = self.deltas.setdefault(row.id, [Decimal(0), Decimal(0)])
        delta[0 if bucket == "available" else 1] += amount
        self.lines.append((row.id, row.asset, bucket, amount))

    def after(self, row: _Row) -> tuple[Decimal, Decimal]:
        da, dh = self.deltas.get(row.id, (Decimal(0), Decimal(0)))
        return row.available + da, row.held + dh


async def _rows(conn: asyncpg.Connection, *wanted: tuple[str, str]) -> list[_Row]:
    """The (owner, asset) rows in the order asked, in one round trip; missing ones (firm rows
    and customer share rows, made on first use) cost two more, once."""
    owners, assets = [w[0] for w in wanted], [w[1] for w in wanted]
    found = {(r["owner"], r["asset"]): r for r in await conn.fetch(_SELECT_ROWS, owners, assets)}
    missing = [w for w in dict.fromkeys(wanted) if w not in found]
    if missing:
        await conn.execute(
            _INSERT_ROWS,
            [o for o, _ in missing],
            [_firm_kind(o) for o, _ in missing],
            [a for _, a in missing],
        )
        again = await conn.fetch(_SELECT_ROWS, [o for o, _ in missing], [a for _, a in missing])
        found.update({(r["owner"], r["asset"]): r for r in again})
    return [_Row(**dict(found[w])) for w in wanted]


async def _apply(
    conn: asyncpg.Connection,
    changes: _Changes,
    *,
    key: str,
    code: str,
    order_id: str | None,
    fence: int | None = None,
) -> int | None:
    """CAS every touched row (by id), then write the journal entry; its id, or None if no lines."""
    rows = [changes.rows[row_id] for row_id in sorted(changes.rows)]
    after = [changes.after(row) for row in rows]
    for row, (available, held) in zip(rows, after, strict=True):
        if row.kind == "customer" and (available < 0 or held < 0):
            raise _fail(
                f"{row.owner} {row.asset} would go negative", errors.HOLD_STATE, str(available)
            )
    if fence is not None:
        for row, (available, held) in zip(rows, after, strict=True):
            status = await conn.execute(
                _CAS_ROW_FENCED, row.id, available, held, row.version, fence
            )
            if status != "UPDATE 1":
                seen = await conn.fetchval(
                    "SELECT last_fence FROM ledger_accounts WHERE id = $1", row.id
                )
                if seen > fence:
                    raise _stale_fence(row.owner, fence, seen)
                raise _Conflict
    elif rows:
        status = await conn.execute(
            _CAS_ROWS,
            [row.id for row in rows],
            [a for a, _ in after],
            [h for _, h in after],
            [row.version for row in rows],
        )
        if status != f"UPDATE {len(rows)}":
            raise _Conflict
    if not changes.lines:
        return None
    ids, assets, buckets, amounts = (list(c) for c in zip(*changes.lines, strict=True))
    entry_id: int = await conn.fetchval(
        _INSERT_JOURNAL, key, code, order_id, ids, assets, buckets, amounts
    )
    return entry_id


def _stale_fence(account_id: str, fence: int, seen: int) -> ApplicationError:
    return _fail(
        f"stale fencing token {fence} for {account_id}: the ledger has seen {seen}",
        errors.STALE_FENCE,
        {"fence": fence, "last_fence": seen},
    )


async def _recorded(
    conn: asyncpg.Connection, key: str, operation: str, args_hash: str, model: type[M]
) -> M | None:
    """The first result stored under ``key``; refuse the key reused with other arguments."""
    return _replay(await conn.fetchrow(_SELECT_OPERATION, key), key, operation, args_hash, model)


def _replay(
    rec: asyncpg.Record | None, key: str, operation: str, args_hash: str, model: type[M]
) -> M | None:
    """``_recorded`` on a row already read (with the ``_OPERATION_COLS`` columns)."""
    if rec is None or rec["op_operation"] is None:
        return None
    if rec["op_operation"] != operation or rec["op_args_hash"] != args_hash:
        raise _fail(
            f"idempotency key {key!r} was already used by {rec['op_operation']}"
            " with other arguments",
            errors.IDEMPOTENCY_MISMATCH,
        )
    return model.model_validate(json.loads(rec["op_result"]))


async def _record(
    conn: asyncpg.Connection, key: str, operation: str, args_hash: str, result: BaseModel
) -> None:
    stored = await conn.fetchval(
        _INSERT_OPERATION, key, operation, args_hash, result.model_dump_json()
    )
    if stored is None:
        raise _Conflict  # a concurrent call with the same key won; the rerun returns its result


async def _customer(conn: asyncpg.Connection, account_id: str) -> asyncpg.Record:
    rec = await conn.fetchrow(_SELECT_CUSTOMER, account_id)
    if rec is None:
        raise _fail(f"unknown account {account_id!r}", errors.UNKNOWN_ACCOUNT)
    return rec


async def ensure_firm_accounts(pool_or_conn: asyncpg.Pool | asyncpg.Connection) -> None:
    """Create the firm's USD rows ('$omnibus', '$fees', '$external', '$error') if missing."""
    for owner, kind in FIRM_KINDS.items():
        await pool_or_conn.execute(_INSERT_ROW, owner, kind, CASH_ASSET)


# ---------------------------------------------------------------- activities


class LedgerActivities:
    def __init__(self, pool: asyncpg.Pool, cas_attempts: int = 50) -> None:
        self._pool = pool
        self._cas_attempts = cas_attempts

    async def _transact(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``body`` in a transaction, rerunning it from the start when a CAS loses a race."""
        for attempt in range(self._cas_attempts):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    return await body(conn)
            except (
                _Conflict,
                asyncpg.exceptions.UniqueViolationError,
                asyncpg.exceptions.DeadlockDetectedError,
                asyncpg.exceptions.SerializationError,
            ):
                # jittered, capped backoff spreads the losers out so one of them wins next time
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise ApplicationError(
            f"ledger write conflicted {self._cas_attempts} times; retry",
            type=errors.LEDGER_CONFLICT,
            non_retryable=False,
        )

    # -- accounts

    @activity.defn
    async def open_account(self, input: OpenAccountInput) -> OpenAccountResult:
        """Open a customer account and its USD row. Retry-safe: opening twice is a no-op."""
        account_id = _check_account_id(input.account_id)
        if input.currency != CASH_ASSET:
            raise _fail(f"unsupported currency {input.currency!r}", errors.INVALID_REQUEST)
        async with self._pool.acquire() as conn, conn.transaction():
            await ensure_firm_accounts(conn)
            created = await conn.fetchval(
                "INSERT INTO customers (account_id, currency) VALUES ($1, $2)"
                " ON CONFLICT (account_id) DO NOTHING RETURNING true",
                account_id,
                input.currency,
            )
            await conn.execute(_INSERT_ROW, account_id, "customer", CASH_ASSET)
        return OpenAccountResult(
            account_id=account_id, currency=input.currency, created=bool(created)
        )

    @activity.defn
    async def deposit(self, input: DepositInput) -> TransferResult:
        """Move ``amount`` of ``asset`` from '$external' to the customer (cash or a share
        transfer-in). Retry-safe: the idempotency key books it once and returns the first result."""
        return await self._transfer("deposit", input, into_customer=True)

    @activity.defn
    async def withdraw(self, input: WithdrawInput) -> TransferResult:
        """Move ``amount`` from the customer's available balance to '$external'. Retry-safe:
        the idempotency key books it once; too little available is InsufficientFunds."""
        return await self._transfer("withdraw", input, into_customer=False)

    async def _transfer(
        self, code: str, input: DepositInput, into_customer: bool
    ) -> TransferResult:
        asset = _check_asset(input.asset)
        amount = _amount(input.amount, asset)
        account_id = input.account_id
        args = _args_hash(code, {"account_id": account_id, "asset": asset, "amount": amount})

        async def body(conn: asyncpg.Connection) -> TransferResult:
            done = await _recorded(conn, input.idempotency_key, code, args, TransferResult)
            if done is not None:
                return done
            await _customer(conn, account_id)
            customer, external = await _rows(
                conn, (account_id, asset), (firm_shard(EXTERNAL, account_id), asset)
            )
            signed = amount if into_customer else -amount
            if customer.available + signed < 0:
                raise _insufficient(account_id, asset, customer.available, amount)
            changes = _Changes()
            changes.move(customer, "available", signed)
            changes.move(external, "available", -signed)
            entry_id = await _apply(
                conn, changes, key=input.idempotency_key, code=code, order_id=None
            )
            assert entry_id is not None
            result = TransferResult(
                account_id=account_id,
                asset=asset,
                amount=amount,
                available_after=_q(changes.after(customer)[0], asset),
                entry_id=entry_id,
            )
            await _record(conn, input.idempotency_key, code, args, result)
            return result

        return await self._transact(body)

    # -- holds

    @activity.defn
    async def reserve_funds(self, input: ReserveInput) -> ReserveResult:
        """Hold ``amount`` of ``asset`` for an order (cash for a buy, shares for a sell), and
        record the order row if given, in one transaction guarded by the fencing token.
        Retry-safe: the idempotency key holds once and returns the first result, even when the
        retry carries a newer fencing token."""
        req = _check_reserve(input)

        async def body(conn: asyncpg.Connection) -> ReserveResult:
            await _lock_order(conn, input.order_id)
            view = await conn.fetchrow(
                _RESERVE_VIEW, input.idempotency_key, input.order_id, input.account_id, req.asset
            )
            done = _replay(view, input.idempotency_key, "reserve", req.args, ReserveResult)
            if done is not None:
                return done
            _refuse_second_hold(view, input.order_id)
            if not view["customer_exists"]:
                raise _fail(f"unknown account {input.account_id!r}", errors.UNKNOWN_ACCOUNT)
            if view["customer_fence"] > input.fence:
                raise _stale_fence(input.account_id, input.fence, view["customer_fence"])
            row = _Row(**{k: view[k] for k in _ROW_FIELDS}) if view["id"] is not None else None
            available = row.available if row is not None else Decimal(0)
            if row is None or available < req.amount:
                raise _insufficient(input.account_id, req.asset, available, req.amount)
            if row.last_fence > input.fence:
                raise _stale_fence(input.account_id, input.fence, row.last_fence)
            status = await conn.execute(_ADVANCE_CUSTOMER_FENCE, input.account_id, input.fence)
            if status != "UPDATE 1":
                raise _Conflict  # a newer fence landed meanwhile; the rerun reports it
            changes = _Changes()
            changes.move(row, "available", -req.amount)
            changes.move(row, "held", req.amount)
            await _apply(
                conn,
                changes,
                key=input.idempotency_key,
                code="reserve",
                order_id=input.order_id,
                fence=input.fence,
            )
            if input.order is not None:
                await _insert_order(conn, input.order)
            hold_id = await conn.fetchval(
                _INSERT_HOLD,
                input.order_id,
                input.account_id,
                row.id,
                req.asset,
                req.amount,
                input.side,
                req.symbol,
            )
            result = ReserveResult(
                hold_id=hold_id,
                order_id=input.order_id,
                asset=req.asset,
                amount=req.amount,
                available_after=_q(changes.after(row)[0], req.asset),
                fence=input.fence,
            )
            await _record(conn, input.idempotency_key, "reserve", req.args, result)
            return result

        return await self._transact(body)

    @activity.defn
    async def post_fill(self, input: PostFillInput) -> PostFillResult:
        """Book the increase of an order's cumulative fill (qty, exact notional, fee) against
        its hold. Retry-safe and source-agnostic: keyed by order id + cumulative qty, so a fill
        seen twice, or once by each source, or out of order, is booked once."""
        cum_qty = _cumulative(input.cum_qty, "cum_qty", Decimal("1e-9"))
        cum_notional = _cumulative(input.cum_notional, "cum_notional")
        cum_fee = _cumulative(input.cum_fee, "cum_fee", Decimal("0.01"))
        key = f"{input.order_id}:fill:{_plain(cum_qty)}"
        args = _args_hash("post", {"notional": cum_notional, "fee": cum_fee})

        async def body(conn: asyncpg.Connection) -> PostFillResult:
            hold = await conn.fetchrow(_SELECT_OPERATION_AND_HOLD, key, input.order_id)
            done = _replay(hold, key, "post", args, PostFillResult)
            if done is not None:
                return done
            if hold["id"] is None:
                raise _fail(f"no hold for order {input.order_id!r}", errors.HOLD_STATE)
            if cum_qty <= hold["posted_qty"]:
                return _post_result(hold, applied=False)
            if hold["status"] != "open":
                raise _fail(f"hold of order {input.order_id!r} is voided", errors.HOLD_STATE)
            post = _Post.of(hold, cum_qty, cum_notional, cum_fee)
            changes = await _post_changes(conn, hold, post)
            await _apply(conn, changes, key=key, code="post", order_id=input.order_id)
            remaining = hold["held_remaining"] - post.held_used
            status = await conn.execute(
                _CAS_HOLD,
                hold["id"],
                remaining,
                cum_qty,
                cum_notional,
                post.cash_after,
                cum_fee,
                "open",
                hold["version"],
            )
            if status != "UPDATE 1":
                raise _Conflict
            result = post.result(input.order_id, _q(remaining, hold["asset"]))
            await _record(conn, key, "post", args, result)
            return result

        return await self._transact(body)

    @activity.defn
    async def void_funds(self, input: VoidInput) -> VoidResult:
        """Release whatever is left of the order's hold and close it. Retry-safe: the key
        returns the first result; an order with no hold answers found=False and no late reserve
        can create one afterwards."""
        args = _args_hash("void", {"order_id": input.order_id})

        async def body(conn: asyncpg.Connection) -> VoidResult:
            await _lock_order(conn, input.order_id)
            hold = await conn.fetchrow(
                _SELECT_OPERATION_AND_HOLD, input.idempotency_key, input.order_id
            )
            done = _replay(hold, input.idempotency_key, "void", args, VoidResult)
            if done is not None:
                return done
            if hold["id"] is None:
                await conn.execute(
                    "INSERT INTO hold_tombstones (order_id) VALUES ($1) ON CONFLICT DO NOTHING",
                    input.order_id,
                )
                result = VoidResult(order_id=input.order_id, found=False, released=Decimal(0))
            else:
                result = await _void_hold(conn, hold, input.idempotency_key)
            await _record(conn, input.idempotency_key, "void", args, result)
            return result

        return await self._transact(body)

    @activity.defn
    async def book_error_fill(self, input: ErrorFillInput) -> ErrorFillResult:
        """Book the increase of a stray broker order's cumulative fill between '$omnibus' and
        '$error' (never a customer). Retry-safe: keyed by broker order id + cumulative qty."""
        symbol = _check_symbol(input.symbol)
        cum_qty = _cumulative(input.cum_qty, "cum_qty", Decimal("1e-9"))
        cum_notional = _cumulative(input.cum_notional, "cum_notional")
        key = f"error:{input.broker_order_id}:fill:{_plain(cum_qty)}"
        args = _args_hash(
            "error_fill", {"symbol": symbol, "side": input.side, "notional": cum_notional}
        )

        async def body(conn: asyncpg.Connection) -> ErrorFillResult:
            done = await _recorded(conn, key, "error_fill", args, ErrorFillResult)
            if done is not None:
                return done
            await conn.execute(
                _INSERT_ERROR_POSITION,
                input.broker_order_id,
                input.client_order_id,
                symbol,
                input.side,
            )
            pos = await conn.fetchrow(_SELECT_ERROR_POSITION, input.broker_order_id)
            if pos["symbol"] != symbol or pos["side"] != input.side:
                raise _fail(
                    f"broker order {input.broker_order_id} was booked as {pos['side']} "
                    f"{pos['symbol']}",
                    errors.HOLD_STATE,
                )
            if cum_qty <= pos["posted_qty"]:
                return _error_result(pos, applied=False)
            result = await _book_error(conn, pos, key, cum_qty, cum_notional)
            await _record(conn, key, "error_fill", args, result)
            return result

        return await self._transact(body)

    # -- reads

    async def get_balances(self, account_id: str) -> AccountBalances:
        """Available, held and version per asset of a customer account."""
        async with self._pool.acquire() as conn:
            customer = await _customer(conn, account_id)
            rows = await conn.fetch(
                "SELECT asset, available, held, version FROM ledger_accounts"
                " WHERE owner = $1 ORDER BY asset = 'USD' DESC, asset",
                account_id,
            )
        return AccountBalances(
            account_id=account_id,
            currency=customer["currency"],
            last_fence=customer["last_fence"],
            balances=[_balance(r) for r in rows],
        )

    async def max_fence(self, account_id: str) -> int:
        """The newest fencing token the ledger has seen for the account (0 if none)."""
        value = await self._pool.fetchval(
            "SELECT GREATEST("
            " (SELECT last_fence FROM customers WHERE account_id = $1),"
            " (SELECT max(last_fence) FROM ledger_accounts WHERE owner = $1))",
            account_id,
        )
        return int(value or 0)


# ---------------------------------------------------------------- helpers of the operations


def _q(amount: Decimal, asset: str) -> Decimal:
    """Present an amount at its asset's precision (cents for cash, 9 places for shares)."""
    return amount.quantize(quantum_for(asset))


def _balance(rec: asyncpg.Record) -> Balance:
    return Balance(
        asset=rec["asset"],
        available=_q(rec["available"], rec["asset"]),
        held=_q(rec["held"], rec["asset"]),
        version=rec["version"],
    )


def _insufficient(
    account_id: str, asset: str, available: Decimal, requested: Decimal
) -> ApplicationError:
    return _fail(
        f"insufficient {asset} in {account_id}: available {_q(available, asset)}, "
        f"requested {requested}",
        errors.INSUFFICIENT_FUNDS,
        {"asset": asset, "available": str(_q(available, asset)), "requested": str(requested)},
    )


def _check_symbol(symbol: str) -> str:
    if not _SYMBOL.match(symbol):
        raise _fail(f"invalid symbol {symbol!r}", errors.INVALID_REQUEST)
    return symbol


@dataclass(frozen=True)
class _ReserveRequest:
    asset: str
    symbol: str
    amount: Decimal
    args: str


def _check_reserve(input: ReserveInput) -> _ReserveRequest:
    symbol = _check_symbol(input.symbol)
    expected = CASH_ASSET if input.side == "buy" else symbol
    if input.asset != expected:
        raise _fail(
            f"a {input.side} of {symbol} holds {expected}, not {input.asset}",
            errors.INVALID_REQUEST,
        )
    amount = _amount(input.amount, input.asset)
    # The fence is left out: a retry after a lost answer may carry a newer token.
    args = _args_hash(
        "reserve",
        {
            "account_id": input.account_id,
            "order_id": input.order_id,
            "asset": input.asset,
            "amount": amount,
            "side": input.side,
            "symbol": symbol,
            "order": input.order.model_dump(mode="json") if input.order else None,
        },
    )
    return _ReserveRequest(asset=input.asset, symbol=symbol, amount=amount, args=args)


async def _lock_order(conn: asyncpg.Connection, order_id: str) -> None:
    """Serialize a reserve and a void of the same order (held to the end of the transaction).

    Without it, a void that finds no hold (and leaves a tombstone) and a reserve that finds no
    tombstone could both commit, leaving a hold whose order has already ended. Balances are
    still guarded by compare-and-set; this only orders the two decisions about one order.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", order_id)


def _refuse_second_hold(view: asyncpg.Record, order_id: str) -> None:
    if view["tombstoned"]:
        raise _fail(f"order {order_id!r} was already voided", errors.HOLD_STATE)
    if view["has_hold"]:
        raise _fail(
            f"order {order_id!r} already has a hold under another idempotency key",
            errors.HOLD_STATE,
        )


async def _insert_order(conn: asyncpg.Connection, order: OrderRecord) -> None:
    inserted = await conn.fetchval(
        _INSERT_ORDER,
        order.account_id,
        order.order_id,
        order.workflow_id,
        order.symbol,
        order.side,
        order.order_type,
        order.time_in_force,
        order.qty,
        order.limit_price,
        order.params_hash,
    )
    if inserted is None:
        existing = await conn.fetchval(_SELECT_ORDER_HASH, order.account_id, order.order_id)
        if existing != order.params_hash:
            raise _fail(
                f"order {order.order_id!r} exists with other parameters", errors.ORDER_CONFLICT
            )


@dataclass(frozen=True)
class _Post:
    """The increase a cumulative fill report brings over what the hold has posted."""

    side: str
    qty_delta: Decimal
    cash_delta: Decimal
    fee_delta: Decimal
    cum_qty: Decimal
    cum_notional: Decimal
    cash_after: Decimal
    cum_fee: Decimal

    @property
    def held_used(self) -> Decimal:
        """What leaves the hold: cash plus fee for a buy, shares for a sell."""
        return self.cash_delta + self.fee_delta if self.side == "buy" else self.qty_delta

    @classmethod
    def of(
        cls, hold: asyncpg.Record, cum_qty: Decimal, cum_notional: Decimal, cum_fee: Decimal
    ) -> _Post:
        cash_after = round_cash(cum_notional)
        post = cls(
            side=hold["side"],
            qty_delta=cum_qty - hold["posted_qty"],
            cash_delta=cash_after - hold["posted_cash"],
            fee_delta=cum_fee - hold["posted_fee"],
            cum_qty=cum_qty,
            cum_notional=cum_notional,
            cash_after=cash_after,
            cum_fee=cum_fee,
        )
        if cum_notional < hold["posted_notional"] or post.fee_delta < 0:
            raise _fail(
                f"cumulative figures of order {hold['order_id']!r} went backwards",
                errors.HOLD_STATE,
            )
        if post.held_used > hold["held_remaining"]:
            raise _fail(
                f"fill of order {hold['order_id']!r} needs {post.held_used} {hold['asset']} "
                f"but only {_q(hold['held_remaining'], hold['asset'])} is held",
                errors.HOLD_STATE,
                {"needed": str(post.held_used), "held": str(hold["held_remaining"])},
            )
        return post

    def result(self, order_id: str, remaining: Decimal) -> PostFillResult:
        return PostFillResult(
            order_id=order_id,
            applied=True,
            qty_delta=self.qty_delta,
            cash_delta=self.cash_delta,
            fee_delta=self.fee_delta,
            posted_qty=self.cum_qty,
            posted_notional=self.cum_notional,
            posted_cash=self.cash_after,
            posted_fee=self.cum_fee,
            held_remaining=remaining,
        )


async def _post_changes(conn: asyncpg.Connection, hold: asyncpg.Record, post: _Post) -> _Changes:
    owner, symbol = hold["owner"], hold["symbol"]
    omnibus, fee_owner = (firm_shard(o, hold["order_id"]) for o in (OMNIBUS, FEES))
    cust_cash, cust_shares, omni_cash, omni_shares, fees = await _rows(
        conn,
        (owner, CASH_ASSET),
        (owner, symbol),
        (omnibus, CASH_ASSET),
        (omnibus, symbol),
        (fee_owner, CASH_ASSET),
    )
    changes = _Changes()
    if post.side == "buy":
        changes.move(cust_cash, "held", -(post.cash_delta + post.fee_delta))
        changes.move(omni_cash, "available", post.cash_delta)
        changes.move(omni_shares, "available", -post.qty_delta)
        changes.move(cust_shares, "available", post.qty_delta)
    else:
        changes.move(cust_shares, "held", -post.qty_delta)
        changes.move(omni_shares, "available", post.qty_delta)
        changes.move(omni_cash, "available", -post.cash_delta)
        changes.move(cust_cash, "available", post.cash_delta - post.fee_delta)
    changes.move(fees, "available", post.fee_delta)
    return changes


def _post_result(hold: asyncpg.Record, applied: bool) -> PostFillResult:
    zero = Decimal(0)
    return PostFillResult(
        order_id=hold["order_id"],
        applied=applied,
        qty_delta=zero,
        cash_delta=zero,
        fee_delta=zero,
        posted_qty=hold["posted_qty"],
        posted_notional=hold["posted_notional"],
        posted_cash=hold["posted_cash"],
        posted_fee=hold["posted_fee"],
        held_remaining=_q(hold["held_remaining"], hold["asset"]),
    )


async def _void_hold(conn: asyncpg.Connection, hold: asyncpg.Record, key: str) -> VoidResult:
    released = hold["held_remaining"] if hold["status"] == "open" else Decimal(0)
    if hold["status"] == "open":
        (row,) = await _rows(conn, (hold["owner"], hold["asset"]))
        changes = _Changes()
        changes.move(row, "held", -released)
        changes.move(row, "available", released)
        await _apply(conn, changes, key=key, code="void", order_id=hold["order_id"])
        status = await conn.execute(
            _CAS_HOLD,
            hold["id"],
            Decimal(0),
            hold["posted_qty"],
            hold["posted_notional"],
            hold["posted_cash"],
            hold["posted_fee"],
            "voided",
            hold["version"],
        )
        if status != "UPDATE 1":
            raise _Conflict
    return VoidResult(
        order_id=hold["order_id"],
        found=True,
        released=_q(released, hold["asset"]),
        asset=hold["asset"],
    )


async def _book_error(
    conn: asyncpg.Connection,
    pos: asyncpg.Record,
    key: str,
    cum_qty: Decimal,
    cum_notional: Decimal,
) -> ErrorFillResult:
    qty_delta = cum_qty - pos["posted_qty"]
    cash_after = round_cash(cum_notional)
    cash_delta = cash_after - pos["posted_cash"]
    if cash_delta < 0:
        raise _fail(
            f"cumulative notional of broker order {pos['broker_order_id']} went backwards",
            errors.HOLD_STATE,
        )
    symbol = pos["symbol"]
    # The error account stands where a customer would: it bought (or sold) what the broker did.
    sign = Decimal(1) if pos["side"] == "buy" else Decimal(-1)
    error_shares, omni_shares, error_cash, omni_cash = await _rows(
        conn, (ERROR, symbol), (OMNIBUS, symbol), (ERROR, CASH_ASSET), (OMNIBUS, CASH_ASSET)
    )
    changes = _Changes()
    changes.move(error_shares, "available", sign * qty_delta)
    changes.move(omni_shares, "available", -sign * qty_delta)
    changes.move(error_cash, "available", -sign * cash_delta)
    changes.move(omni_cash, "available", sign * cash_delta)
    await _apply(conn, changes, key=key, code="error_fill", order_id=pos["broker_order_id"])
    status = await conn.execute(
        _CAS_ERROR_POSITION,
        pos["broker_order_id"],
        cum_qty,
        cum_notional,
        cash_after,
        pos["version"],
    )
    if status != "UPDATE 1":
        raise _Conflict
    return ErrorFillResult(
        broker_order_id=pos["broker_order_id"],
        applied=True,
        qty_delta=qty_delta,
        cash_delta=cash_delta,
        posted_qty=cum_qty,
        posted_cash=cash_after,
    )


def _error_result(pos: asyncpg.Record, applied: bool) -> ErrorFillResult:
    return ErrorFillResult(
        broker_order_id=pos["broker_order_id"],
        applied=applied,
        qty_delta=Decimal(0),
        cash_delta=Decimal(0),
        posted_qty=pos["posted_qty"],
        posted_cash=pos["posted_cash"],
    )
