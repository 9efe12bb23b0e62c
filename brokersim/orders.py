"""The order record, its Alpaca-shaped JSON and request validation.

``Order.to_json`` is Alpaca's Order entity with every field the reference documents, each null
where the reference says it may be (``brokersim/schemas/order.json`` holds the schema, with its
source, and the contract tests check every answer against it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from brokersim import inputs
from brokersim.assets import asset_id
from brokersim.clock import parse_rfc3339, rfc3339
from brokersim.inputs import invalid, shown

OPEN = ("pending_new", "accepted", "new", "partially_filled", "pending_cancel", "pending_replace")
TERMINAL = ("filled", "canceled", "expired", "rejected", "replaced")
# What PATCH /v2/orders/{id} may replace: an order being canceled or replaced may not.
REPLACEABLE = ("pending_new", "accepted", "new", "partially_filled")
SIDES = ("buy", "sell")
TYPES = ("market", "limit")
TIFS = ("day", "gtc", "ioc")
QTY_QUANTUM = Decimal("0.000000001")
AVG_QUANTUM = Decimal("0.000000001")
MAX_CLIENT_ORDER_ID = 128

ZERO = Decimal(0)


def plain(d: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent notation ("100", not "1E+2")."""
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


def _ts(dt: datetime | None) -> str | None:
    return rfc3339(dt) if dt else None


def _dt(text: str | None) -> datetime | None:
    return parse_rfc3339(text) if text else None


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(plain(value))


@dataclass
class Order:
    id: str
    client_order_id: str
    seq: int
    symbol: str
    qty: Decimal
    side: str
    order_type: str
    time_in_force: str
    limit_price: Decimal | None
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    parts: int
    filled_qty: Decimal = ZERO
    filled_notional: Decimal = ZERO
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    matched_once: bool = field(default=False)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled_qty

    def next_fill(self) -> Decimal:
        """The qty of the next of ``parts`` fills (see ``fill_parts``)."""
        return fill_size(self.qty, self.parts, self.filled_qty)

    @property
    def filled_avg_price(self) -> Decimal | None:
        if self.filled_qty == 0:
            return None
        return (self.filled_notional / self.filled_qty).quantize(AVG_QUANTUM)

    def to_json(self) -> dict[str, Any]:
        """Alpaca's Order entity, field for field (simple orders by quantity: ``notional``,
        ``stop_price``, the trailing fields and ``legs`` are null), plus ``filled_notional``."""
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "submitted_at": rfc3339(self.created_at),
            "filled_at": _ts(self.filled_at),
            "expired_at": _ts(self.expired_at),
            "expires_at": _ts(self.expires_at),
            "canceled_at": _ts(self.canceled_at),
            "failed_at": _ts(self.failed_at),
            "replaced_at": _ts(self.replaced_at),
            "replaced_by": self.replaced_by,
            "replaces": self.replaces,
            "asset_id": asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": str(self.qty),
            "filled_qty": str(plain(self.filled_qty)),
            "filled_avg_price": _dec(self.filled_avg_price),
            "filled_notional": str(self.filled_notional),  # an extension: the exact sum
            "order_class": "simple",
            "order_type": self.order_type,
            "type": self.order_type,
            "side": self.side,
            "position_intent": "buy_to_open" if self.side == "buy" else "sell_to_close",
            "time_in_force": self.time_in_force,
            "limit_price": _dec(self.limit_price),
            "stop_price": None,
            "status": self.status,
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
        }

    def to_record(self) -> dict[str, Any]:
        return {
            **self.to_json(),
            "_seq": self.seq,
            "_expires_at": _ts(self.expires_at),
            "_parts": self.parts,
            "_matched_once": self.matched_once,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Order:
        limit = r["limit_price"]
        return cls(
            id=r["id"],
            client_order_id=r["client_order_id"],
            seq=r["_seq"],
            symbol=r["symbol"],
            qty=Decimal(r["qty"]),
            side=r["side"],
            order_type=r["order_type"],
            time_in_force=r["time_in_force"],
            limit_price=None if limit is None else Decimal(limit),
            status=r["status"],
            created_at=parse_rfc3339(r["created_at"]),
            updated_at=parse_rfc3339(r["updated_at"]),
            expires_at=_dt(r["_expires_at"]),
            # A state file from before orders kept their part count: the rest in one fill.
            parts=r.get("_parts", 1),
            filled_qty=Decimal(r["filled_qty"]),
            filled_notional=Decimal(r["filled_notional"]),
            filled_at=_dt(r["filled_at"]),
            canceled_at=_dt(r["canceled_at"]),
            expired_at=_dt(r["expired_at"]),
            failed_at=_dt(r["failed_at"]),
            # State files from before replace existed have none of these.
            replaced_at=_dt(r.get("replaced_at")),
            replaced_by=r.get("replaced_by"),
            replaces=r.get("replaces"),
            matched_once=r["_matched_once"],
        )


def fill_parts(qty: Decimal, parts: int) -> int:
    """How many fills ``qty`` splits into: ``parts``, or one per 1e-9 share when it has fewer
    (3e-9 in 2 parts is 1e-9 and 2e-9; 1e-9 in 7 parts is a single fill)."""
    return max(1, min(parts, int(qty / QTY_QUANTUM)))


def fill_size(qty: Decimal, parts: int, filled: Decimal) -> Decimal:
    """The next of ``parts`` fills of ``qty`` once ``filled`` is filled: qty / parts rounded down
    to the 1e-9 grid, the last fill the remainder, so exactly ``parts`` positive fills sum to qty.
    Each part is at least 1e-9 because ``parts`` comes from ``fill_parts``."""
    part = (qty / parts).quantize(QTY_QUANTUM, rounding=ROUND_DOWN)
    return part if filled < part * (parts - 1) else qty - filled


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    qty: Decimal
    side: str
    order_type: str
    time_in_force: str
    limit_price: Decimal | None
    client_order_id: str


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if not isinstance(value, str) or value.lower() not in allowed:
        raise invalid(f"invalid {name}: {shown(value)} (expected one of {', '.join(allowed)})")
    return value.lower()


def _limit_price(body: dict[str, Any], order_type: str) -> Decimal | None:
    value = body.get("limit_price")
    if order_type == "market":
        return None
    if value is None:
        raise invalid("limit_price is required for limit orders")
    return plain(inputs.price(value))


def _client_order_id(value: object) -> str:
    if value is None or value == "":
        return str(uuid.uuid4())
    return inputs.text(value, "client_order_id", MAX_CLIENT_ORDER_ID)


def parse_order_request(body: dict[str, Any], symbols: set[str]) -> OrderRequest:
    """Validate a POST /v2/orders body; raises ApiError(422) on the first problem."""
    raw_symbol = body.get("symbol")
    symbol = raw_symbol.upper() if isinstance(raw_symbol, str) else ""
    if symbol not in symbols:
        name = raw_symbol if isinstance(raw_symbol, str) else shown(raw_symbol)
        raise invalid(f'asset "{name[:40]}" not found')
    qty = plain(inputs.qty(body.get("qty")))
    side = _choice(body, "side", SIDES)
    order_type = _choice(body, "type", TYPES)
    tif = _choice(body, "time_in_force", TIFS)
    return OrderRequest(
        symbol=symbol,
        qty=qty,
        side=side,
        order_type=order_type,
        time_in_force=tif,
        limit_price=_limit_price(body, order_type),
        client_order_id=_client_order_id(body.get("client_order_id")),
    )


def parse_replace_request(body: dict[str, Any], old: Order) -> OrderRequest:
    """Validate a PATCH /v2/orders/{id} body against the order it replaces; each field given
    overrides the old order's, the others stay (Alpaca's rule). 422 on the first problem."""
    fields = ("qty", "time_in_force", "limit_price", "stop_price", "trail", "client_order_id")
    if unknown := sorted(set(body) - set(fields)):
        raise invalid(f"unknown fields: {shown(', '.join(unknown))}")
    if not any(body.get(name) is not None for name in fields):
        raise invalid("nothing to replace: give qty, time_in_force, limit_price or client_order_id")
    if body.get("stop_price") is not None or body.get("trail") is not None:
        raise invalid("stop_price and trail apply to stop and trailing stop orders only")
    if body.get("limit_price") is not None and old.order_type != "limit":
        raise invalid("limit_price applies to limit orders only")
    qty = old.qty if body.get("qty") is None else plain(inputs.qty(body["qty"]))
    tif = old.time_in_force
    if body.get("time_in_force") is not None:
        tif = _choice(body, "time_in_force", TIFS)
    limit = old.limit_price
    if body.get("limit_price") is not None:
        limit = plain(inputs.price(body["limit_price"]))
    return OrderRequest(
        symbol=old.symbol,
        qty=qty,
        side=old.side,
        order_type=old.order_type,
        time_in_force=tif,
        limit_price=limit,
        client_order_id=_client_order_id(body.get("client_order_id")),
    )
