"""The order saga's models: requests, state, reports. Pure data, safe in the workflow sandbox."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class OrderStatus(StrEnum):
    NEW = "NEW"  # validating, pricing, reserving
    ACCEPTED = "ACCEPTED"  # funds or shares held; going to the broker
    SUBMITTED = "SUBMITTED"  # the broker has it
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    SETTLED = "SETTLED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {OrderStatus.SETTLED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
TimeInForce = Literal["day", "gtc", "ioc"]


def order_key(account_id: str, order_id: str) -> str:
    """The order's global identity: the broker's client_order_id, the hold's and lock's owner."""
    return f"{account_id}/{order_id}"


def workflow_id_for(account_id: str, order_id: str) -> str:
    return f"order/{order_key(account_id, order_id)}"


def workflow_id_for_key(key: str) -> str:
    """Workflow id from a broker client_order_id (the listener's lookup)."""
    return f"order/{key}"


class OrderRequest(BaseModel):
    """What the customer asked for. Validated in the workflow (pure), hashed for idempotency."""

    account_id: str
    order_id: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType = "market"
    time_in_force: TimeInForce = "day"
    limit_price: Decimal | None = None

    @property
    def key(self) -> str:
        return order_key(self.account_id, self.order_id)

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.account_id, self.order_id)

    def params_hash(self) -> str:
        """Hash of the order's parameters (not its id): same id + same hash = same order."""
        canon = {
            "account_id": self.account_id,
            "symbol": self.symbol.upper(),
            "side": self.side,
            "qty": str(self.qty.normalize()),
            "order_type": self.order_type,
            "time_in_force": self.time_in_force,
            "limit_price": None if self.limit_price is None else str(self.limit_price.normalize()),
        }
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:32]


class SagaConfig(BaseModel):
    """Knobs the starter passes in (from Settings), so workflow code never reads the environment."""

    orders_task_queue: str = "orders"
    broker_task_queue: str = "broker"
    commission_rate: Decimal = Decimal("0.0025")
    commission_minimum: Decimal = Decimal("0.50")
    market_buy_buffer: Decimal = Decimal("0.05")
    lock_ttl_ms: int = 10_000
    lock_wait_ms: int = 5_000
    fill_poll_interval_s: float = 5.0
    # An order the broker does not know is voided only after it stayed absent this long since our
    # last submit attempt: longer than any request can remain in flight (the client's timeout plus
    # the broker's own late-execution window).
    absent_grace_s: float = 120.0
    submit_start_to_close_s: float = 15.0
    submit_schedule_to_close_s: float = 120.0
    max_history_events: int = 2_000


class TimelineEntry(BaseModel):
    at: datetime
    event: str
    detail: str = ""


class BrokerReport(BaseModel):
    """The broker's view of an order at one moment: cumulative figures, from an event or a poll."""

    source: Literal["event", "poll", "submit", "cancel"]
    broker_order_id: str | None = None
    status: str
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    terminal: bool = False
    execution_id: str | None = None


class OrderState(BaseModel):
    """Everything the saga knows about one order (the status query's answer)."""

    request: OrderRequest
    status: OrderStatus = OrderStatus.NEW
    reason: str | None = None
    workflow_id: str = ""
    broker_order_id: str | None = None
    broker_status: str | None = None
    hold_asset: str | None = None
    held: Decimal = Decimal(0)
    limit_sent: Decimal | None = None
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    posted_cash: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    released: Decimal = Decimal(0)
    cancel_requested: bool = False
    cancel_sent: bool = False
    timeline: list[TimelineEntry] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class OrderInput(BaseModel):
    """The workflow's input; `carried` is set when the order continues as new."""

    request: OrderRequest
    config: SagaConfig = Field(default_factory=SagaConfig)
    carried: OrderState | None = None


class PlaceResult(BaseModel):
    """`place_order`'s answer: accepted (held) or refused, never waiting on the broker."""

    account_id: str
    order_id: str
    workflow_id: str
    accepted: bool
    status: OrderStatus
    reason: str | None = None
    held: Decimal = Decimal(0)
    hold_asset: str | None = None


class CancelResult(BaseModel):
    accepted: bool
    status: OrderStatus
    detail: str = ""


def validate_request(req: OrderRequest, known_symbols: frozenset[str] | None = None) -> str | None:
    """Pure validation; the reason the order is invalid, or None."""
    if not ID_PATTERN.match(req.account_id):
        return "account id must be 1-64 characters of letters, digits, '_', '.', '-'"
    if not ID_PATTERN.match(req.order_id):
        return "order id must be 1-64 characters of letters, digits, '_', '.', '-'"
    if not re.match(r"^[A-Z][A-Z.]{0,9}$", req.symbol):
        return f"invalid symbol {req.symbol!r}"
    if known_symbols is not None and req.symbol not in known_symbols:
        return f"unknown symbol {req.symbol}"
    if not req.qty.is_finite() or req.qty <= 0:
        return "quantity must be a positive number"
    if req.qty > Decimal(1_000_000):
        return "quantity exceeds the maximum of 1000000"
    exp = req.qty.normalize().as_tuple().exponent
    if isinstance(exp, int) and exp < -9:
        return "quantity has more than 9 decimals"
    if req.order_type == "limit":
        if req.limit_price is None:
            return "a limit order needs a limit price"
        if not req.limit_price.is_finite() or req.limit_price <= 0:
            return "limit price must be a positive number"
        exp = req.limit_price.normalize().as_tuple().exponent
        if isinstance(exp, int) and exp < -4:
            return "limit price has more than 4 decimals"
        if req.limit_price > Decimal(1_000_000):
            return "limit price exceeds the maximum of 1000000"
    elif req.limit_price is not None:
        return "a market order takes no limit price"
    return None
