"""Pre-trade risk: the limits an order must fit and the firm-wide trading state, as pure rules.

The ledger's reserve (activities/ledger/risk.py) reads the state, the account's limits and its
usage of the day in the reserve's own transaction and asks these functions; the CLI and the SDK
parse what people type with the same parsers. Nothing here touches a database or a clock.

- An order's **notional** is its quantity times its price: the limit, a market buy's cap, a market
  sell's ask (the quote the saga read); commission is not part of it. Sells count as buys do
  (gross notional).
- **Per order**: notional ≤ ``max_order_notional``, quantity ≤ ``max_order_qty``.
- **Per account per day**: the notional of the day's accepted orders ≤ ``max_daily_notional``
  and their number ≤ ``max_daily_orders``. The day is the New York calendar date of the
  acceptance (the database's clock; docs/OPERATIONS.md says why).
- **Trading state**: ACTIVE takes every order; REDUCING refuses buys (sells still reduce
  positions); HALTED refuses every new order. Cancels never reach these rules.
"""

from __future__ import annotations

import enum
from decimal import Decimal

from pydantic import BaseModel, Field

from core.errors import UserError
from core.money import (
    CASH_PLACES,
    MAX_AMOUNT,
    MAX_NOTIONAL,
    MAX_ORDER_QTY,
    SHARE_PLACES,
    InvalidAmount,
    ceil_cash,
    exact_product,
    parse_bounded,
)

MAX_DAILY_ORDERS = 1_000_000
MAX_REASON_CHARS = 200
MAX_ACTOR_CHARS = 64
RISK_PREFIX = "risk limit"  # every limit refusal starts so (the metrics' category)
TRADING_PREFIX = "trading"  # every state refusal starts so


class TradingState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"  # sells (and cancels) only
    HALTED = "HALTED"  # cancels only


class RiskLimits(BaseModel):
    """The limits one account's orders must fit. In the settings (``ORDERSAGA_RISK__<NAME>``)
    they are the firm's defaults; an account's overrides replace them one by one. Zero is a
    limit too: ``max_daily_orders=0`` stops an account's new orders."""

    max_order_notional: Decimal = Field(
        Decimal("1000000"), ge=0, le=MAX_NOTIONAL, decimal_places=CASH_PLACES
    )
    max_order_qty: Decimal = Field(
        Decimal("100000"), ge=0, le=MAX_ORDER_QTY, decimal_places=SHARE_PLACES
    )
    max_daily_notional: Decimal = Field(
        Decimal("10000000"), ge=0, le=MAX_AMOUNT, decimal_places=CASH_PLACES
    )
    max_daily_orders: int = Field(10_000, ge=0, le=MAX_DAILY_ORDERS)


LIMIT_NAMES = tuple(RiskLimits.model_fields)


class Overrides(BaseModel):
    """An account's own limits; None: the firm's default."""

    max_order_notional: Decimal | None = None
    max_order_qty: Decimal | None = None
    max_daily_notional: Decimal | None = None
    max_daily_orders: int | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in LIMIT_NAMES)


class Usage(BaseModel):
    """What an account's accepted orders used of one day's limits."""

    notional: Decimal = Decimal("0.00")
    orders: int = 0


def effective(defaults: RiskLimits, overrides: Overrides | None) -> RiskLimits:
    """The limits that apply: each override where set, else the default."""
    if overrides is None:
        return defaults
    chosen = {
        name: getattr(overrides, name)
        if getattr(overrides, name) is not None
        else getattr(defaults, name)
        for name in LIMIT_NAMES
    }
    return RiskLimits.model_validate(chosen)


def order_notional(qty: Decimal, price: Decimal | None) -> Decimal | None:
    """qty x price rounded up to the cent (None when the order has no price: a market sell
    without a quote). Rounded up, so an order is never counted below what it may cost. Workflow
    code calls it, so it never raises: a price too wild to multiply exactly (no sane quote) gives
    None, and the order is checked on its quantity and count only."""
    if price is None:
        return None
    try:
        return ceil_cash(exact_product(qty, price))
    except ArithmeticError:
        return None


def state_refusal(state: TradingState, side: str, reason: str, by: str) -> str | None:
    """Why the trading state refuses a new order on ``side``; None: it may go on."""
    why = f"(by {by}: {reason})"
    if state == TradingState.HALTED:
        return f"{TRADING_PREFIX} halted: no new orders {why}"
    if state == TradingState.REDUCING and side != "sell":
        return f"{TRADING_PREFIX} reducing: sells only {why}"
    return None


def limit_refusal(
    limits: RiskLimits, usage: Usage, qty: Decimal, notional: Decimal | None
) -> str | None:
    """Why the order does not fit the account's limits given the day's usage; None: it fits.
    An order without a notional (no price known) is checked on its quantity and count only."""
    if qty > limits.max_order_qty:
        return f"{RISK_PREFIX}: quantity {qty} over the per-order maximum {limits.max_order_qty}"
    if notional is not None and notional > limits.max_order_notional:
        return (
            f"{RISK_PREFIX}: notional {_cash(notional)} USD over the per-order maximum "
            f"{limits.max_order_notional} USD"
        )
    if usage.orders + 1 > limits.max_daily_orders:
        return (
            f"{RISK_PREFIX}: {usage.orders} orders today, the daily maximum is "
            f"{limits.max_daily_orders}"
        )
    if notional is not None and usage.notional + notional > limits.max_daily_notional:
        return (
            f"{RISK_PREFIX}: {_cash(usage.notional + notional)} USD today with this order, over "
            f"the daily maximum {limits.max_daily_notional} USD"
        )
    return None


def counted(usage: Usage, notional: Decimal | None) -> Usage:
    """The day's usage once this order is accepted."""
    return Usage(notional=usage.notional + (notional or 0), orders=usage.orders + 1)


def amendment_refusal(
    limits: RiskLimits, usage: Usage, qty: Decimal, notional: Decimal, added: Decimal
) -> str | None:
    """Why a replace does not fit: the amended order (``qty`` for ``notional`` in all) over a
    per-order limit, or the notional it adds (``added``) over the day's. It is the same order:
    it counts no second order against the daily count."""
    if qty > limits.max_order_qty:
        return f"{RISK_PREFIX}: quantity {qty} over the per-order maximum {limits.max_order_qty}"
    if notional > limits.max_order_notional:
        return (
            f"{RISK_PREFIX}: notional {_cash(notional)} USD over the per-order maximum "
            f"{limits.max_order_notional} USD"
        )
    if added > 0 and usage.notional + added > limits.max_daily_notional:
        return (
            f"{RISK_PREFIX}: {_cash(usage.notional + added)} USD today with this replace, over "
            f"the daily maximum {limits.max_daily_notional} USD"
        )
    return None


def _cash(d: Decimal) -> str:
    return format(d, "f")


# ---------------------------------------------------------------- parsing what people type


def parse_limit(name: str, value: object) -> Decimal | int:
    """One limit, strictly (InvalidAmount with one line): the same bounds as the settings."""
    if name not in LIMIT_NAMES:
        raise InvalidAmount(f"unknown limit {name!r}")
    what = name.replace("_", "-")
    if name == "max_daily_orders":
        text = str(value).strip() if isinstance(value, (str, int)) else ""
        if isinstance(value, bool) or not text.isascii() or not text.isdigit() or len(text) > 7:
            raise InvalidAmount(f"{what} must be a whole number from 0 to {MAX_DAILY_ORDERS}")
        count = int(text)
        if count > MAX_DAILY_ORDERS:
            raise InvalidAmount(f"{what} must be a whole number from 0 to {MAX_DAILY_ORDERS}")
        return count
    places, maximum = {
        "max_order_notional": (CASH_PLACES, MAX_NOTIONAL),
        "max_order_qty": (SHARE_PLACES, MAX_ORDER_QTY),
        "max_daily_notional": (CASH_PLACES, MAX_AMOUNT),
    }[name]
    return parse_bounded(value, what, places=places, maximum=maximum, allow_zero=True)


def parse_state(value: object) -> TradingState:
    if isinstance(value, str) and value.upper() in TradingState.__members__:
        return TradingState(value.upper())
    raise UserError(f"unknown trading state {str(value)[:20]!r} (ACTIVE, REDUCING or HALTED)")


def parse_reason(value: object) -> str:
    """Why the state changes: 1-200 printable characters, not only spaces."""
    if not isinstance(value, str) or not value.strip():
        raise UserError("a reason is required")
    return _printable(value, "reason", MAX_REASON_CHARS)


def parse_actor(value: object) -> str:
    """Who changes it: 1-64 printable characters without spaces at the ends."""
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise UserError("who must be a non-empty name without spaces at its ends")
    return _printable(value, "who", MAX_ACTOR_CHARS)


def _printable(text: str, what: str, limit: int) -> str:
    if len(text) > limit:
        raise UserError(f"{what} is longer than {limit} characters")
    bad = next((ch for ch in text if not ch.isprintable()), None)
    if bad is not None:
        raise UserError(f"{what}: control or unprintable character {bad!r} is not allowed")
    return text
