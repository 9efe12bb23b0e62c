"""What the broker says, as types: its errors, its orders, quotes and trade events, parsed strictly.

The HTTP client (core/broker_client.py) raises these errors and returns these models; the listener
parses the event stream with ``parse_trade_event``. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from core.quotes import InvalidQuote, broker_price, check_size, check_timestamp
from core.statuses import BROKER_STATUSES, BROKER_TERMINAL_STATUSES

TERMINAL_STATUSES = BROKER_TERMINAL_STATUSES  # the broker statuses that end an order
DUPLICATE_CLIENT_ORDER_ID = "client_order_id must be unique"
NOT_CANCELABLE_CODE = 42210000


# --- errors -------------------------------------------------------------------------------


class BrokerError(Exception):
    """Base of every error this client raises."""


class BrokerUnavailable(BrokerError):
    """The request certainly did not reach the broker (or the broker refused it unread)."""


class BrokerRateLimited(BrokerUnavailable):
    """A 429 (the key's requests for this window are spent), or a request held back because the
    broker's last answer said none are left: either way nothing was acted on. ``retry_after_s``
    is how long until the window resets, when the broker said (None: it did not)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BrokerOutcomeUnknown(BrokerError):
    """The request may have reached the broker and may have taken effect."""


class BrokerAuthError(BrokerError):
    """401: wrong keys. A configuration error, not worth retrying.

    A 403 is a refusal of this request (Alpaca: insufficient buying power, account
    restrictions), so it is a BrokerRejected with the broker's reason instead.
    """


class BrokerRejected(BrokerError):
    """The broker answered with a 4xx refusal; nothing was created or changed."""

    def __init__(self, reason: str, status: int, code: int | None = None) -> None:
        super().__init__(f"broker rejected ({status}, code {code}): {reason}")
        self.reason = reason
        self.status = status
        self.code = code


class DuplicateClientOrderId(BrokerRejected):
    """An order with this client_order_id already exists at the broker."""


class OrderNotCancelable(BrokerRejected):
    """The order is already terminal (filled, canceled, expired, rejected)."""


class OrderNotFound(BrokerError):
    """404: the broker has no such order."""


# --- models -------------------------------------------------------------------------------


class BrokerOrder(BaseModel):
    """An order as the broker reports it (Alpaca field names; money and quantities Decimal)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    client_order_id: str
    symbol: str
    side: str
    order_type: str = ""
    time_in_force: str = ""
    qty: Decimal
    filled_qty: Decimal = Decimal(0)
    filled_avg_price: Decimal | None = None
    limit_price: Decimal | None = None
    filled_notional: Decimal = Decimal(0)
    status: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    submitted_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    # A replacement names the order it replaces; a replaced order its replacement (PATCH).
    replaces: str | None = None
    replaced_by: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if not data.get("order_type") and data.get("type"):
            data["order_type"] = data["type"]
        if data.get("filled_notional") is None:
            # Alpaca does not send it; the cumulative average times the cumulative quantity is
            # the exact notional only up to the broker's rounding of the average.
            try:
                qty = Decimal(str(data.get("filled_qty") or 0))
                avg = data.get("filled_avg_price")
                data["filled_notional"] = qty * Decimal(str(avg)) if avg is not None else Decimal(0)
            except ArithmeticError:
                pass  # not numbers: the fields' own validation says so
        return data

    @property
    def is_terminal(self) -> bool:
        """Only the statuses known to be final count; anything unknown is treated as open."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_open(self) -> bool:
        return not self.is_terminal


class BrokerAccount(BaseModel):
    """The brokerage account (Alpaca's Account entity, the fields the project reads)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    id: str
    status: str
    currency: str
    cash: Decimal
    equity: Decimal | None = None


class BrokerPosition(BaseModel):
    """One open position (Alpaca's Position entity, the fields the project reads): ``qty`` is
    negative for a short."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    symbol: str
    qty: Decimal
    side: str = "long"
    avg_entry_price: Decimal | None = None


class Quote(BaseModel):
    model_config = ConfigDict(frozen=True)

    symbol: str
    bid: Decimal
    ask: Decimal
    bid_size: Decimal = Decimal(0)
    ask_size: Decimal = Decimal(0)
    timestamp: datetime

    @classmethod
    def from_alpaca(cls, symbol: str, raw: object) -> Quote:
        """One entry of Alpaca's latest quotes (``bp``/``ap``/``bs``/``as``/``t``), checked by
        the rules of core/quotes.py; raises InvalidQuote with the reason."""
        if not isinstance(raw, Mapping):
            raise InvalidQuote("quote is not a JSON object")
        return cls(
            symbol=symbol,
            bid=broker_price(raw.get("bp"), "bid"),
            ask=broker_price(raw.get("ap"), "ask"),
            bid_size=check_size(raw.get("bs", 0), "bid_size"),
            ask_size=check_size(raw.get("as", 0), "ask_size"),
            timestamp=check_timestamp(raw.get("t")),
        )


class InvalidMarketClock(BrokerError):
    """The broker's market clock does not parse or does not add up; the reason says why."""


# How far ahead a clock's next open or close may be: the longest closure of the NYSE since 1933
# (four days after 11 September 2001) fits many times over; a clock further out is refused.
MAX_CLOCK_HORIZON = timedelta(days=31)
MAX_TIMESTAMP_CHARS = 40


def _clock_time(raw: Mapping[str, Any], name: str) -> datetime:
    value = raw.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TIMESTAMP_CHARS:
        raise InvalidMarketClock(f"{name} is not a timestamp")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidMarketClock(f"{name} is not an RFC 3339 time") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidMarketClock(f"{name} has no time zone")
    return moment


class MarketClock(BaseModel):
    """The broker's market clock (Alpaca's Clock entity: GET /v2/clock), in the broker's own
    time: the authority on whether the market is open, since the broker's clock, not ours,
    decides when an order may trade (the simulator's can run ahead of real time)."""

    model_config = ConfigDict(frozen=True)

    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime

    @property
    def until_open(self) -> timedelta:
        """How long, on the broker's clock, until the market opens (zero while open)."""
        return timedelta(0) if self.is_open else self.next_open - self.timestamp

    @classmethod
    def from_alpaca(cls, raw: object) -> MarketClock:
        """Parse strictly: a JSON object, ``is_open`` a JSON boolean, three RFC 3339 times
        with their offsets, the next open and close after the timestamp and within
        ``MAX_CLOCK_HORIZON`` of it, and in the order ``is_open`` implies (open: the close
        comes first). Raises InvalidMarketClock with the reason."""
        if not isinstance(raw, Mapping):
            raise InvalidMarketClock("the clock is not a JSON object")
        is_open = raw.get("is_open")
        if not isinstance(is_open, bool):
            raise InvalidMarketClock("is_open is not a boolean")
        now = _clock_time(raw, "timestamp")
        opens, closes = _clock_time(raw, "next_open"), _clock_time(raw, "next_close")
        for name, moment in (("next_open", opens), ("next_close", closes)):
            if not now < moment <= now + MAX_CLOCK_HORIZON:
                raise InvalidMarketClock(
                    f"{name} {moment.isoformat()} is not within {MAX_CLOCK_HORIZON.days} days"
                    f" after the clock's timestamp {now.isoformat()}"
                )
        if is_open != (closes < opens):
            state = "open" if is_open else "closed"
            raise InvalidMarketClock(
                f"the market is said to be {state}, but it next opens at {opens.isoformat()}"
                f" and next closes at {closes.isoformat()}"
            )
        return cls(timestamp=now, is_open=is_open, next_open=opens, next_close=closes)


class TradeEvent(BaseModel):
    """One execution event from the trade_updates stream, with the order as it stands after it.

    ``offset`` is the simulator's event offset (its SSE stream); Alpaca's websocket has none, so
    an event from it, or one the listener made from an order it looked up, has None."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    offset: int | None = None
    event: str
    execution_id: str | None = None
    timestamp: datetime | None = None
    price: Decimal | None = None
    qty: Decimal | None = None
    order: BrokerOrder


class InvalidTradeEvent(ValueError):
    """A trade event that does not parse or does not add up; the message is the reason."""


@dataclass(frozen=True)
class EventFrame:
    """One event as it came off the wire, unparsed: its offset (the SSE ``id:``, else the
    payload's ``offset``; None when neither is a positive integer) and its data text."""

    offset: int | None
    text: str


def parse_trade_event(text: str, *, offset_required: bool = True) -> TradeEvent:
    """Parse and check one event; raises InvalidTradeEvent with a one-line reason.

    ``offset_required=False`` is for events of Alpaca's websocket (``data`` of a
    ``trade_updates`` message), which carry no offset.

    Refused: not a JSON object (``NaN``/``Infinity`` literals included), fields of the wrong
    shape (pydantic: non-finite or non-numeric quantities, missing fields), and an order that
    does not add up: empty ids, a status Alpaca does not have, qty <= 0, filled_qty < 0 or
    above qty, filled_notional or filled_avg_price < 0.
    """
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidTradeEvent(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(data, dict):
        raise InvalidTradeEvent("not a JSON object")
    try:
        event = TradeEvent.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidTradeEvent(f"{where}: {first['msg']} ({exc.error_count()} error(s))") from None
    reason = _inconsistency(event, offset_required)
    if reason:
        raise InvalidTradeEvent(reason)
    return event


def _inconsistency(event: TradeEvent, offset_required: bool = True) -> str | None:
    order = event.order
    if event.offset is None and offset_required:
        return "offset: Field required"
    if event.offset is not None and event.offset <= 0:
        return f"offset must be positive: {event.offset}"
    if not order.id.strip() or not order.client_order_id.strip():
        return "order.id and order.client_order_id must not be empty"
    if order.status not in BROKER_STATUSES:
        return f"unknown order status {order.status[:40]!r}"
    if order.qty <= 0:
        return f"order.qty must be positive: {order.qty}"
    if not 0 <= order.filled_qty <= order.qty:
        return f"order.filled_qty {order.filled_qty} outside 0..qty {order.qty}"
    if order.filled_notional < 0:
        return f"order.filled_notional negative: {order.filled_notional}"
    if order.filled_avg_price is not None and order.filled_avg_price < 0:
        return f"order.filled_avg_price negative: {order.filled_avg_price}"
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def plain(value: Decimal) -> str:
    """Decimal as a plain string: the broker must never see an exponent like ``1E+1``."""
    return f"{value:f}"


def loads(body: bytes | str) -> Any:
    return json.loads(body, parse_float=Decimal)


# --- client -------------------------------------------------------------------------------
