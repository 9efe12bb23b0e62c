"""The posting rules: what each ledger operation moves, as pure functions on plain values.

No database, no Temporal, no pydantic: rows and holds come in as frozen dataclasses the store
read, and out come the balance moves (row, bucket, amount) the store compare-and-sets and
journals, and the hold's new figures. A refusal is a ``Refused`` naming its error type (one of
core/errors.py's names); the service turns it into a non-retryable ApplicationError.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from core import errors
from core.fx import MAX_RATE, krw_cost, krw_proceeds
from core.ids import is_id, is_symbol
from core.money import (
    CASH_ASSET,
    KRW,
    MAX_AMOUNT,
    InvalidAmount,
    is_currency,
    parse_decimal,
    quantum_for,
    round_cash,
    validate_amount,
)

OMNIBUS = "$omnibus"
FEES = "$fees"
EXTERNAL = "$external"
ERROR = "$error"
# The FX desk (migrations/0013): it takes the won of orders paid in won and pays their dollars
# (or the reverse for a sale paid out in won); sharded like the omnibus.
FX = "$fx"
FIRM_KINDS = {OMNIBUS: "omnibus", FEES: "fees", EXTERNAL: "external", ERROR: "error", FX: "fx"}
# The omnibus, fees and external rows take part in every fill and deposit of every customer: as
# single rows they would serialize the whole firm's compare-and-sets on one version column. Each
# is split into FIRM_SHARDS rows ('$omnibus', '$omnibus~1', ...), chosen by a stable hash of the
# order (fills) or the customer (deposits). Sums over a kind are unchanged; every write is still
# a compare-and-set. The error account is written rarely and stays one row.
FIRM_SHARDS = 8

QTY_QUANTUM = Decimal("1e-9")
FEE_QUANTUM = Decimal("0.01")
ZERO = Decimal(0)

Side = Literal["buy", "sell"]
Bucket = Literal["available", "held"]


class Refused(Exception):
    """An operation the rules refuse; ``error_type`` is its core/errors.py name."""

    def __init__(self, message: str, error_type: str, *details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.details = details


def firm_shard(owner: str, key: str) -> str:
    """The shard of firm account ``owner`` that ``key`` (an order or customer id) writes to."""
    n = zlib.crc32(key.encode()) % FIRM_SHARDS
    return owner if n == 0 else f"{owner}~{n}"


def firm_kind(owner: str) -> str:
    """The ``kind`` of a ledger row: a firm account's (shards included) or 'customer'."""
    return FIRM_KINDS.get(owner.split("~", 1)[0], "customer")


# ---------------------------------------------------------------- validation


def amount(value: object, asset: str, what: str = "amount") -> Decimal:
    """A positive amount at the asset's precision (cents, or 9 places for shares)."""
    try:
        return validate_amount(value, asset, what)
    except InvalidAmount as exc:
        raise Refused(str(exc), errors.INVALID_AMOUNT) from None


def cumulative(value: object, what: str, quantize_to: Decimal | None = None) -> Decimal:
    """A cumulative broker figure: finite, >= 0, sane; exact unless a quantum is given."""
    try:
        d = parse_decimal(value, what)
    except InvalidAmount as exc:
        raise Refused(str(exc), errors.INVALID_AMOUNT) from None
    if d < 0 or d > MAX_AMOUNT:
        raise Refused(f"{what} must be between 0 and {MAX_AMOUNT}, got {d}", errors.INVALID_AMOUNT)
    if quantize_to is not None:
        if d != d.quantize(quantize_to):
            raise Refused(f"{what} {d} has too many decimals", errors.INVALID_AMOUNT)
        d = d.quantize(quantize_to)
    return d


def check_asset(asset: str) -> str:
    if not is_currency(asset) and not is_symbol(asset):
        raise Refused(
            f"unknown asset {asset!r} (USD, KRW or a ticker symbol)", errors.INVALID_REQUEST
        )
    return asset


def check_symbol(symbol: str) -> str:
    if not is_symbol(symbol):
        raise Refused(f"invalid symbol {symbol!r}", errors.INVALID_REQUEST)
    return symbol


def price_bound(value: object) -> Decimal:
    """An order's price bound per share: positive and finite, exact (no rounding)."""
    try:
        d = parse_decimal(value, "price bound")
    except InvalidAmount as exc:
        raise Refused(str(exc), errors.INVALID_AMOUNT) from None
    if not 0 < d <= MAX_AMOUNT:
        raise Refused(f"price bound must be in (0, {MAX_AMOUNT}], got {d}", errors.INVALID_AMOUNT)
    return d


def fx_rate(value: object, pay_asset: object) -> Decimal:
    """A hold's won-per-dollar rate (orders paid in won): positive, finite, at most MAX_RATE."""
    if pay_asset != KRW:
        raise Refused(
            f"unknown payment currency {str(pay_asset)[:20]!r} (KRW)", errors.INVALID_REQUEST
        )
    try:
        d = parse_decimal(value, "FX rate")
    except InvalidAmount as exc:
        raise Refused(str(exc), errors.INVALID_AMOUNT) from None
    if not 0 < d <= MAX_RATE:
        raise Refused(f"FX rate must be in (0, {MAX_RATE}], got {d}", errors.INVALID_AMOUNT)
    return d


def check_account_id(account_id: str) -> str:
    if not is_id(account_id):
        raise Refused(f"invalid account id {account_id!r}", errors.INVALID_REQUEST)
    return account_id


# A caller-chosen idempotency key (deposits, withdrawals): any text up to this many characters.
# Keys are per operation, so it may look like anything, a saga step's key included.
MAX_KEY_LENGTH = 200


def check_idempotency_key(key: object) -> str:
    """A caller's idempotency key: 1 to MAX_KEY_LENGTH characters Postgres can store as text
    (so no NUL and no lone surrogate); anything else is refused, never retried."""
    if isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH and "\x00" not in key:
        try:
            key.encode()
            return key
        except UnicodeEncodeError:
            pass
    raise Refused(
        f"an idempotency key must be 1 to {MAX_KEY_LENGTH} characters of text"
        " (no NUL, valid Unicode)",
        errors.INVALID_REQUEST,
    )


def held_asset(side: str, symbol: str, asset: str, pay_asset: str | None = None) -> str:
    """What an order holds: cash for a buy (in the currency it pays in), the symbol's shares
    for a sell."""
    expected = (pay_asset or CASH_ASSET) if side == "buy" else symbol
    if asset != expected:
        raise Refused(f"a {side} of {symbol} holds {expected}, not {asset}", errors.INVALID_REQUEST)
    return asset


def q(value: Decimal, asset: str) -> Decimal:
    """Present an amount at its asset's precision (cents for cash, 9 places for shares)."""
    return value.quantize(quantum_for(asset))


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Row:
    """One ledger account row (owner, asset) as read, with the version its CAS expects."""

    id: int
    owner: str
    kind: str
    asset: str
    available: Decimal
    held: Decimal
    version: int
    last_fence: int


@dataclass(frozen=True)
class Move:
    row: Row
    bucket: Bucket
    amount: Decimal


@dataclass(frozen=True)
class Hold:
    """An order's two-phase hold: what is still held and what has been posted so far."""

    order_id: str  # the order key '<account>/<order>'
    owner: str
    asset: str
    held_remaining: Decimal
    side: str
    symbol: str
    status: str = "open"
    posted_qty: Decimal = ZERO
    posted_notional: Decimal = ZERO
    posted_cash: Decimal = ZERO
    posted_fee: Decimal = ZERO
    # The order's bounds (migrations/0005_hold_bounds.sql): its quantity, and the most a buy may
    # pay (the least a sell may receive) per share. None: not known (a hold made before them, a
    # reserve without an order) or no price bound (a market sell).
    qty: Decimal | None = None
    limit_price: Decimal | None = None
    # An order paid (a buy) or paid out (a sell) in won (migrations/0013): the currency and the
    # won-per-dollar rate fixed at the reserve. None: a USD order.
    pay_asset: str | None = None
    fx_rate: Decimal | None = None


def moves(*wanted: tuple[Row, Bucket, Decimal]) -> list[Move]:
    """The non-zero moves, in the order given (the journal's line order)."""
    return [Move(row, bucket, amt) for row, bucket, amt in wanted if amt != 0]


def balances_after(changes: Iterable[Move]) -> dict[int, tuple[Row, Decimal, Decimal]]:
    """Each touched row (by id) with its available and held after the moves."""
    out: dict[int, tuple[Row, Decimal, Decimal]] = {}
    for m in changes:
        row, available, held = out.get(m.row.id, (m.row, m.row.available, m.row.held))
        if m.bucket == "available":
            available += m.amount
        else:
            held += m.amount
        out[m.row.id] = (row, available, held)
    return out


def check_not_negative(after: Iterable[tuple[Row, Decimal, Decimal]]) -> None:
    """A customer row never goes below zero (the database CHECK says so too; this says why)."""
    for row, available, held in after:
        if row.kind == "customer" and (available < 0 or held < 0):
            raise Refused(
                f"{row.owner} {row.asset} would go negative", errors.HOLD_STATE, str(available)
            )


def net_by_asset(changes: Iterable[Move]) -> dict[str, Decimal]:
    """The sum of the moves per asset: zero for every balanced posting."""
    total: dict[str, Decimal] = defaultdict(Decimal)
    for m in changes:
        total[m.row.asset] += m.amount
    return dict(total)


def insufficient(account_id: str, asset: str, available: Decimal, requested: Decimal) -> Refused:
    return Refused(
        f"insufficient {asset} in {account_id}: available {q(available, asset)}, "
        f"requested {requested}",
        errors.INSUFFICIENT_FUNDS,
        {"asset": asset, "available": str(q(available, asset)), "requested": str(requested)},
    )


def stale_fence(account_id: str, fence: int, seen: int) -> Refused:
    return Refused(
        f"stale fencing token {fence} for {account_id}: the ledger has seen {seen}",
        errors.STALE_FENCE,
        {"fence": fence, "last_fence": seen},
    )


# ---------------------------------------------------------------- transfers and holds


def transfer(customer: Row, external: Row, value: Decimal, *, into_customer: bool) -> list[Move]:
    """A deposit (from '$external' to the customer) or a withdrawal (the other way)."""
    signed = value if into_customer else -value
    if customer.available + signed < 0:
        raise insufficient(customer.owner, customer.asset, customer.available, value)
    return moves((customer, "available", signed), (external, "available", -signed))


def fence_is_stale(fence: int, order_key: str, seen: int, seen_owner: str | None) -> bool:
    """A fence older than the newest one seen, or equal to it but written by another order: two
    orders holding one fence means the lock's counter went back, so only the order that wrote it
    (its own retry) may use it again. ``seen_owner`` is None for fences written before owners
    were recorded: an equal fence is then refused from everyone."""
    return seen > fence or (seen == fence and seen_owner != order_key)


def reserve(
    row: Row | None,
    *,
    account_id: str,
    asset: str,
    value: Decimal,
    fence: int,
    order_key: str,
    customer_fence: int,
    customer_fence_owner: str | None,
) -> list[Move]:
    """Hold ``value`` on the customer's row: available -> held, if it is there and the fence is
    not older than one the account (or the row) has seen, nor the account's newest fence written
    by another order."""
    if fence_is_stale(fence, order_key, customer_fence, customer_fence_owner):
        raise stale_fence(account_id, fence, customer_fence)
    available = row.available if row is not None else ZERO
    if row is None or available < value:
        raise insufficient(account_id, asset, available, value)
    if row.last_fence > fence:
        raise stale_fence(account_id, fence, row.last_fence)
    return moves((row, "available", -value), (row, "held", value))


@dataclass(frozen=True)
class Fill:
    """The increase a cumulative fill report brings over what the hold has posted."""

    side: str
    qty_delta: Decimal
    cash_delta: Decimal
    fee_delta: Decimal
    cum_qty: Decimal
    cum_notional: Decimal
    cash_after: Decimal
    cum_fee: Decimal
    # An order paid in won: the won this fill converts at the hold's rate (a buy pays them, a
    # sale is paid them; ``fx_fill``).
    converted: Decimal | None = None

    @property
    def held_used(self) -> Decimal:
        """What leaves the hold: cash plus fee for a buy (the won they cost, paid in won),
        shares for a sell."""
        if self.side == "sell":
            return self.qty_delta
        return self.converted if self.converted is not None else self.cash_delta + self.fee_delta

    def hold_after(self, hold: Hold) -> Hold:
        return replace(
            hold,
            held_remaining=hold.held_remaining - self.held_used,
            posted_qty=self.cum_qty,
            posted_notional=self.cum_notional,
            posted_cash=self.cash_after,
            posted_fee=self.cum_fee,
        )


def fill(hold: Hold, cum_qty: Decimal, cum_notional: Decimal, cum_fee: Decimal) -> Fill | None:
    """The fill to book for a cumulative report, or None when that quantity is already booked
    (a report seen twice, by two sources, or out of order books once)."""
    if cum_qty <= hold.posted_qty:
        return None
    if hold.status != "open":
        raise Refused(f"hold of order {hold.order_id!r} is voided", errors.HOLD_STATE)
    cash_after = round_cash(cum_notional)
    post = Fill(
        side=hold.side,
        qty_delta=cum_qty - hold.posted_qty,
        cash_delta=cash_after - hold.posted_cash,
        fee_delta=cum_fee - hold.posted_fee,
        cum_qty=cum_qty,
        cum_notional=cum_notional,
        cash_after=cash_after,
        cum_fee=cum_fee,
    )
    if cum_notional < hold.posted_notional or post.fee_delta < 0:
        raise Refused(
            f"cumulative figures of order {hold.order_id!r} went backwards", errors.HOLD_STATE
        )
    check_within_bounds(hold, cum_qty, cum_notional)
    if hold.fx_rate is not None:
        post = fx_fill(hold, post)
    if post.held_used > hold.held_remaining:
        raise Refused(
            f"fill of order {hold.order_id!r} needs {post.held_used} {hold.asset} "
            f"but only {q(hold.held_remaining, hold.asset)} is held",
            errors.HOLD_STATE,
            {"needed": str(post.held_used), "held": str(hold.held_remaining)},
        )
    return post


def check_within_bounds(hold: Hold, cum_qty: Decimal, cum_notional: Decimal) -> None:
    """A fill stays within its order: at most its quantity, and (when the hold knows a price
    bound) a buy's notional at most ``cum_qty * limit``, a sell's at least. The database's
    CHECKs on holds say the same; this says why."""
    if hold.qty is not None and cum_qty > hold.qty:
        raise beyond_bounds(hold.order_id, f"filled {cum_qty} of the order's quantity {hold.qty}")
    limit = hold.limit_price
    if limit is None:
        return
    if hold.side == "buy" and cum_notional > cum_qty * limit:
        raise beyond_bounds(hold.order_id, f"paid {cum_notional} for {cum_qty}, above its limit")
    if hold.side == "sell" and cum_notional < cum_qty * limit:
        raise beyond_bounds(hold.order_id, f"got {cum_notional} for {cum_qty}, below its limit")


def beyond_bounds(order_key: str, why: str) -> Refused:
    return Refused(f"fill of order {order_key!r} is beyond the order: {why}", errors.HOLD_STATE)


def fill_rows(hold: Hold) -> list[tuple[str, str]]:
    """The five rows a fill moves, as (owner, asset), in the order ``fill_moves`` takes them:
    customer cash, customer shares, omnibus cash, omnibus shares, fees (firm rows by shard); an
    order paid in won adds the FX desk's rows (``fx_fill_rows``)."""
    if hold.pay_asset is not None:
        return fx_fill_rows(hold)
    omnibus, fees = (firm_shard(o, hold.order_id) for o in (OMNIBUS, FEES))
    return [
        (hold.owner, CASH_ASSET),
        (hold.owner, hold.symbol),
        (omnibus, CASH_ASSET),
        (omnibus, hold.symbol),
        (fees, CASH_ASSET),
    ]


def fill_moves(post: Fill, rows: Sequence[Row]) -> list[Move]:
    """A buy: held cash pays the omnibus and the fee, shares go omnibus -> customer. A sell:
    held shares go to the omnibus, the proceeds less the fee to the customer."""
    if post.converted is not None:
        return fx_fill_moves(post, rows)
    cust_cash, cust_shares, omni_cash, omni_shares, fees = rows
    cash_bucket: Bucket = "held" if post.side == "buy" else "available"
    legs = trade_legs(post, (cust_cash, cash_bucket), cust_shares, omni_cash, omni_shares)
    return moves(*legs, (fees, "available", post.fee_delta))


def trade_legs(
    post: Fill, cash: tuple[Row, Bucket], cust_shares: Row, omni_cash: Row, omni_shares: Row
) -> list[tuple[Row, Bucket, Decimal]]:
    """A fill's dollar and share legs (the fee's aside): a buy's dollars (cash plus fee) leave
    ``cash`` (the customer's hold, or the FX desk paying for won) for the omnibus, which hands
    the shares over; a sale's held shares go to the omnibus, which pays the proceeds less the
    fee into ``cash`` (the customer, or the FX desk paying out won)."""
    row, bucket = cash
    if post.side == "buy":
        return [
            (row, bucket, -(post.cash_delta + post.fee_delta)),
            (omni_cash, "available", post.cash_delta),
            (omni_shares, "available", -post.qty_delta),
            (cust_shares, "available", post.qty_delta),
        ]
    return [
        (cust_shares, "held", -post.qty_delta),
        (omni_shares, "available", post.qty_delta),
        (omni_cash, "available", -post.cash_delta),
        (row, bucket, post.cash_delta - post.fee_delta),
    ]


def used(hold: Hold, amount: Decimal) -> Decimal:
    """What an open hold of ``amount`` has paid out so far (fills and fees, or shares)."""
    return amount - hold.held_remaining


def resize(
    hold: Hold,
    amount: Decimal,
    row: Row,
    *,
    budget: Decimal,
    qty: Decimal,
    limit_price: Decimal | None,
    fence: int | None,
    customer_fence: int,
    customer_fence_owner: str | None,
) -> tuple[Hold, list[Move]]:
    """An open hold (of ``amount`` in all) given a new ``budget`` and bounds.

    What it keeps becomes ``budget`` less what it has used; the difference moves from the row's
    available funds (a grow: refused without them, and only with a fence not stale, as a
    reserve) or back to them (a shrink). The new bounds must still contain what was posted (the
    database says so too)."""
    if hold.status != "open":
        raise Refused(f"hold of order {hold.order_id!r} is {hold.status}", errors.HOLD_STATE)
    if hold.pay_asset is not None:  # the saga refuses to replace them; this is the last line
        raise Refused(
            f"hold of order {hold.order_id!r} is paid in {hold.pay_asset}: not resized",
            errors.HOLD_STATE,
        )
    spent = used(hold, amount)
    keep = budget - spent
    if keep < 0:
        raise Refused(
            f"order {hold.order_id!r} has used {q(spent, hold.asset)} {hold.asset}, more than "
            f"the new budget {budget}",
            errors.HOLD_STATE,
        )
    after = replace(hold, held_remaining=keep, qty=qty, limit_price=limit_price)
    check_within_bounds(after, hold.posted_qty, hold.posted_notional)
    delta = keep - hold.held_remaining
    if delta > 0:
        if fence is None:
            raise Refused(
                f"hold of order {hold.order_id!r} grows only under the account lock",
                errors.INVALID_REQUEST,
            )
        return after, reserve(
            row,
            account_id=hold.owner,
            asset=hold.asset,
            value=delta,
            fence=fence,
            order_key=hold.order_id,
            customer_fence=customer_fence,
            customer_fence_owner=customer_fence_owner,
        )
    return after, moves((row, "held", delta), (row, "available", -delta))


def released(hold: Hold) -> Decimal:
    """What a void gives back: the rest of an open hold, nothing of a closed one."""
    return hold.held_remaining if hold.status == "open" else ZERO


def void_moves(hold: Hold, row: Row) -> list[Move]:
    """Release the rest of the hold on its row: held -> available."""
    rest = released(hold)
    return moves((row, "held", -rest), (row, "available", rest))


def voided(hold: Hold) -> Hold:
    return replace(hold, held_remaining=ZERO, status="voided")


# ---------------------------------------------------------------- the firm error account


@dataclass(frozen=True)
class ErrorPosition:
    """What the firm error account has booked of one stray broker order."""

    broker_order_id: str
    symbol: str
    side: str
    posted_qty: Decimal = ZERO
    posted_notional: Decimal = ZERO
    posted_cash: Decimal = ZERO


@dataclass(frozen=True)
class ErrorFill:
    qty_delta: Decimal
    cash_delta: Decimal
    cum_qty: Decimal
    cum_notional: Decimal
    cash_after: Decimal


def error_fill(
    pos: ErrorPosition, symbol: str, side: str, cum_qty: Decimal, cum_notional: Decimal
) -> ErrorFill | None:
    """The increase to book for a stray broker order, or None when already booked."""
    if pos.symbol != symbol or pos.side != side:
        raise Refused(
            f"broker order {pos.broker_order_id} was booked as {pos.side} {pos.symbol}",
            errors.HOLD_STATE,
        )
    if cum_qty <= pos.posted_qty:
        return None
    cash_after = round_cash(cum_notional)
    cash_delta = cash_after - pos.posted_cash
    if cash_delta < 0:
        raise Refused(
            f"cumulative notional of broker order {pos.broker_order_id} went backwards",
            errors.HOLD_STATE,
        )
    return ErrorFill(cum_qty - pos.posted_qty, cash_delta, cum_qty, cum_notional, cash_after)


def error_fill_rows(pos: ErrorPosition) -> list[tuple[str, str]]:
    """Error shares, omnibus shares, error cash, omnibus cash (the unsharded omnibus row)."""
    return [(ERROR, pos.symbol), (OMNIBUS, pos.symbol), (ERROR, CASH_ASSET), (OMNIBUS, CASH_ASSET)]


def error_fill_moves(pos: ErrorPosition, post: ErrorFill, rows: Sequence[Row]) -> list[Move]:
    """The error account stands where a customer would: it bought (or sold) what the broker
    did, against the omnibus."""
    error_shares, omni_shares, error_cash, omni_cash = rows
    sign = Decimal(1) if pos.side == "buy" else Decimal(-1)
    return moves(
        (error_shares, "available", sign * post.qty_delta),
        (omni_shares, "available", -sign * post.qty_delta),
        (error_cash, "available", -sign * post.cash_delta),
        (omni_cash, "available", sign * post.cash_delta),
    )


# ---------------------------------------------------------------- the FX desk


def fx_fill(hold: Hold, post: Fill) -> Fill:
    """The won a fill of an order paid in won converts, at the hold's rate, of cumulative
    figures (so rounding never accumulates): a buy pays ``krw_cost`` of its dollars so far
    (cash and fees) less what it has paid, a sale is paid ``krw_proceeds`` of its proceeds so
    far (cash less fees) less what it has been paid. Both round in the firm's favour."""
    rate = hold.fx_rate
    assert rate is not None
    if post.side == "buy":
        before = krw_cost(hold.posted_cash + hold.posted_fee, rate)
        after = krw_cost(post.cash_after + post.cum_fee, rate)
    else:
        before = krw_proceeds(hold.posted_cash - hold.posted_fee, rate)
        after = krw_proceeds(post.cash_after - post.cum_fee, rate)
    if after < before:
        raise Refused(
            f"won of order {hold.order_id!r} would go backwards ({before} -> {after})",
            errors.HOLD_STATE,
        )
    return replace(post, converted=after - before)


def fx_fill_rows(hold: Hold) -> list[tuple[str, str]]:
    """The seven rows a fill of an order paid in won moves, as (owner, asset): the customer's
    won, the customer's shares, omnibus cash, omnibus shares, fees, the FX desk's won and its
    dollars (firm rows by shard)."""
    assert hold.pay_asset is not None
    omnibus, fees, desk = (firm_shard(o, hold.order_id) for o in (OMNIBUS, FEES, FX))
    return [
        (hold.owner, hold.pay_asset),
        (hold.owner, hold.symbol),
        (omnibus, CASH_ASSET),
        (omnibus, hold.symbol),
        (fees, CASH_ASSET),
        (desk, hold.pay_asset),
        (desk, CASH_ASSET),
    ]


def fx_fill_moves(post: Fill, rows: Sequence[Row]) -> list[Move]:
    """A buy paid in won: the held won go to the desk, the desk pays the omnibus and the fee in
    dollars, shares go omnibus -> customer. A sale paid out in won: held shares go to the
    omnibus, the omnibus pays the proceeds to the desk (less the fee), the desk pays the
    customer won. Each currency's lines sum to zero on their own."""
    cust_pay, cust_shares, omni_cash, omni_shares, fees, desk_pay, desk_cash = rows
    won = post.converted
    assert won is not None
    dollars = trade_legs(post, (desk_cash, "available"), cust_shares, omni_cash, omni_shares)
    if post.side == "buy":
        legs: list[tuple[Row, Bucket, Decimal]] = [
            (cust_pay, "held", -won),
            (desk_pay, "available", won),
            *dollars,
        ]
    else:
        legs = [*dollars, (desk_pay, "available", -won), (cust_pay, "available", won)]
    return moves(*legs, (fees, "available", post.fee_delta))
