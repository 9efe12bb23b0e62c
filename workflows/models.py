"""The order saga's models: requests, state, reports. Pure data, safe in the workflow sandbox."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ModelWrapValidatorHandler, ValidationError, model_validator

from core.ids import is_id, is_symbol
from core.money import (
    MAX_LIMIT_PRICE,
    MAX_NOTIONAL,
    MAX_ORDER_QTY,
    PRICE_PLACES,
    SHARE_PLACES,
    InvalidAmount,
    canonical,
    exact_product,
    parse_bounded,
)
from core.orderkey import InvalidOrderKey, OrderKey
from core.statuses import OrderStatus

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
TimeInForce = Literal["day", "gtc", "ioc"]
# The currency an order pays in (a buy) or is paid out in (a sell): USD, or won through the
# firm's FX desk (workflows/fxleg.py).
PayCurrency = Literal["USD", "KRW"]


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
    pay: PayCurrency = "USD"

    @property
    def key(self) -> OrderKey:
        return OrderKey.of(self.account_id, self.order_id)

    @property
    def workflow_id(self) -> str:
        return self.key.workflow_id

    def params_hash(self) -> str:
        """Hash of the order's parameters (not its id): same id + same hash = same order."""
        canon = {
            "account_id": self.account_id,
            "symbol": self.symbol.upper(),
            "side": self.side,
            "qty": canonical(self.qty),
            "order_type": self.order_type,
            "time_in_force": self.time_in_force,
            "limit_price": None if self.limit_price is None else canonical(self.limit_price),
            # Only when not USD: the hashes of orders placed before payment in won are unchanged.
            **({"pay": self.pay} if self.pay != "USD" else {}),
        }
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:32]


class TimelineEntry(BaseModel):
    at: datetime
    event: str


class BrokerReport(BaseModel):
    """The broker's view of an order at one moment: cumulative figures, from an event or a poll."""

    source: Literal["event", "poll", "submit", "cancel", "replace"]
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
    # Replaced (issue 16; workflows/replace.py). The order's quantity and price bound over every
    # broker order it has had (None: the request's, never replaced); the replaces sent (the
    # next goes out as ``<key>/r<replaces + 1>``); the client order id of the broker order it
    # follows now (None: the order key); the broker orders it replaced, and their fills, which
    # the order's cumulative figures include.
    qty: Decimal | None = None
    price_bound: Decimal | None = None
    replaces: int = 0
    client_order_id: str | None = None
    replaced_ids: list[str] = Field(default_factory=list)
    prior_filled_qty: Decimal = Decimal(0)
    prior_filled_notional: Decimal = Decimal(0)
    # Paid (or paid out) in won (workflows/fxleg.py): the currency and the won-per-dollar rate the
    # first reserve fixed (the FX ask for a buy, the bid for a sell); ``held_usd`` is a buy's
    # dollar hold that ``held`` (in won) converts (None: a USD order, or a retried task whose
    # quotes differed from the first reserve's: ``held`` and ``fx_rate`` are the first's).
    pay_asset: str | None = None
    fx_rate: Decimal | None = None
    held_usd: Decimal | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def order_qty(self) -> Decimal:
        """The most the order may fill in all: the request's quantity until it is replaced."""
        return self.request.qty if self.qty is None else self.qty

    @property
    def leg_id(self) -> str:
        """The client order id of the broker order the order follows now."""
        return self.client_order_id or self.request.key

    @property
    def bound(self) -> Decimal | None:
        """The hold's price bound: over every limit the order has been sent with."""
        return self.limit_sent if self.price_bound is None else self.price_bound


class OrderInput(BaseModel):
    """The workflow's input; `carried` is set when the order continues as new."""

    request: OrderRequest
    # Only runs started before the worker owned the saga's settings read this (see
    # OrderWorkflow.run); what a caller sends here is ignored, and not even parsed, so no value
    # in it can stop the workflow's input from decoding.
    config: dict[str, Any] | None = None
    carried: OrderState | None = None
    # Set only when the input as sent did not decode (a start straight through the Temporal
    # frontend: a number no Decimal holds, a side that is none of the sides, an id that is not
    # text): ``request`` is then a placeholder and the workflow refuses the order at the door.
    # Without it such an input failed every workflow task before any workflow code ran, and the
    # workflow stayed Running for ever.
    undecodable: str | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _undecodable_is_refused(
        cls, data: Any, handler: ModelWrapValidatorHandler[OrderInput]
    ) -> OrderInput:
        try:
            return handler(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the input"
            raw = data.get("request") if isinstance(data, dict) else None
            ids = {
                name: value if isinstance(value, str) and is_id(value) else "?"
                for name in ("account_id", "order_id")
                for value in [raw.get(name) if isinstance(raw, dict) else None]
            }
            placeholder = OrderRequest(symbol="?", side="buy", qty=Decimal(0), **ids)
            return cls(request=placeholder, undecodable=f"{where}: {first['msg']}"[:200])


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


def place_result(state: OrderState) -> PlaceResult:
    """``place``'s answer from an order's state: the workflow's, and the client's once the
    workflow has closed (from its final state or the orders table).

    ``accepted`` says whether the order was held, which never changes: placing the same order
    again answers as the first call did, with the status and reason it has now.
    """
    req = state.request
    return PlaceResult(
        account_id=req.account_id,
        order_id=req.order_id,
        workflow_id=state.workflow_id or req.workflow_id,
        accepted=state.held > 0,
        status=state.status,
        reason=state.reason,
        held=state.held,
        hold_asset=state.hold_asset,
    )


class ReplaceRequest(BaseModel):
    """A customer's amendment of a live limit order: its new total quantity, its new limit, or
    both (None: unchanged). Parsed strictly in the workflow (``replace_problem``)."""

    # Any number decodes (NaN and infinities too), so a hostile one sent straight through the
    # frontend is refused by ``replace_problem`` with its reason, not by the payload's decoding.
    qty: Annotated[Decimal, Field(allow_inf_nan=True)] | None = None
    limit_price: Annotated[Decimal, Field(allow_inf_nan=True)] | None = None


class ReplaceResult(BaseModel):
    """``replace``'s answer, once the broker has said yes or no (the order as it stands)."""

    accepted: bool
    status: OrderStatus
    qty: Decimal
    limit_price: Decimal | None = None
    held: Decimal = Decimal(0)
    broker_order_id: str | None = None
    detail: str = ""


class CancelResult(BaseModel):
    accepted: bool
    status: OrderStatus
    detail: str = ""


ID_RULE = "1-64 characters of letters, digits, '_', '.', '-'"


def validate_request(req: OrderRequest) -> str | None:
    """Pure validation; the reason the order is invalid, or None.

    The numbers go through ``parse_bounded`` (core/money.py), the parser the SDK and CLI use: a
    request started straight through Temporal is held to the same rules as one from the SDK.
    """
    if not is_id(req.account_id):
        return f"account id must be {ID_RULE}"
    if not is_id(req.order_id):
        return f"order id must be {ID_RULE}"
    if not is_symbol(req.symbol):
        return f"invalid symbol {req.symbol[:40]!r}"
    try:
        qty = parse_bounded(req.qty, "quantity", places=SHARE_PLACES, maximum=MAX_ORDER_QTY)
        if req.order_type != "limit":
            return None if req.limit_price is None else "a market order takes no limit price"
        if req.limit_price is None:
            return "a limit order needs a limit price"
        price = parse_bounded(
            req.limit_price, "limit price", places=PRICE_PLACES, maximum=MAX_LIMIT_PRICE
        )
    except InvalidAmount as exc:
        return str(exc)
    notional = exact_product(qty, price)
    if notional > MAX_NOTIONAL:
        return (
            f"the order's notional {canonical(qty)} x {canonical(price)} = "
            f"{canonical(notional)} exceeds the maximum of {MAX_NOTIONAL}"
        )
    return None


def foreign_ids(req: OrderRequest, workflow_id: str) -> str | None:
    """Why ``req`` is not the order of the workflow ``workflow_id`` (``order/<account>/<order>``),
    or None when its account and order ids are the workflow's own."""
    try:
        own = OrderKey.from_workflow_id(workflow_id)
    except InvalidOrderKey:
        return f"workflow id {workflow_id[:140]!r} is not order/<account>/<order>"
    if (req.account_id, req.order_id) != (own.account_id, own.order_id):
        return (
            f"the request's account and order ids ({req.account_id[:64]!r}, "
            f"{req.order_id[:64]!r}) are not those of its workflow {workflow_id!r}"
        )
    return None
