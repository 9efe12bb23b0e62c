"""The simulator's one brokerage account (the firm's omnibus account at the broker): its cash and
positions, derived from its orders' fills, in the shapes of Alpaca's Account and Position
entities (GET /v2/account, GET /v2/positions, GET /v2/positions/{symbol}).

Cash starts at ``STARTING_CASH`` and moves by each fill's notional (Alpaca charges no commission
on equities; regulatory fees are not simulated). A position is the net filled quantity of a
symbol, long or short, at its average entry price (net cost / net quantity), valued at the
simulator's current price.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from brokersim.assets import asset_id, exchange
from brokersim.clock import rfc3339
from brokersim.orders import Order, plain

STARTING_CASH = Decimal("10000000")
ACCOUNT_ID = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
CENTS = Decimal("0.01")
AVG_QUANTUM = Decimal("0.0001")


@dataclass
class Holding:
    qty: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)  # net cash paid for the net quantity (negative for a short)


def holdings(orders: Iterable[Order]) -> tuple[Decimal, dict[str, Holding]]:
    """Cash spent (+) or received (-) on fills, and each symbol's net quantity and cost."""
    spent = Decimal(0)
    out: dict[str, Holding] = {}
    for order in orders:
        if not order.filled_qty:
            continue
        sign = 1 if order.side == "buy" else -1
        h = out.setdefault(order.symbol, Holding())
        h.qty += sign * order.filled_qty
        h.cost += sign * order.filled_notional
        spent += sign * order.filled_notional
    return spent, {s: h for s, h in out.items() if h.qty != 0}


def _money(d: Decimal) -> str:
    return str(d.quantize(CENTS))


def position_json(symbol: str, h: Holding, price: Decimal) -> dict[str, object]:
    qty = h.qty
    avg = (h.cost / qty).quantize(AVG_QUANTUM)
    market_value = qty * price
    unrealized = market_value - h.cost
    plpc = (unrealized / abs(h.cost)).quantize(Decimal("0.0000001")) if h.cost else Decimal(0)
    return {
        "asset_id": asset_id(symbol),
        "symbol": symbol,
        "exchange": exchange(symbol),
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": str(plain(avg)),
        "qty": str(plain(qty)),
        "qty_available": str(plain(qty)),
        "side": "long" if qty > 0 else "short",
        "market_value": _money(market_value),
        "cost_basis": _money(h.cost),
        "unrealized_pl": _money(unrealized),
        "unrealized_plpc": str(plain(plpc)),
        "unrealized_intraday_pl": _money(unrealized),
        "unrealized_intraday_plpc": str(plain(plpc)),
        "current_price": str(plain(price)),
        "lastday_price": str(plain(price)),
        "change_today": "0",
    }


def account_json(
    orders: Iterable[Order], prices: dict[str, Decimal], created: datetime
) -> dict[str, object]:
    spent, held = holdings(orders)
    cash = STARTING_CASH - spent
    long_value = sum((h.qty * prices[s] for s, h in held.items() if h.qty > 0), Decimal(0))
    short_value = sum((h.qty * prices[s] for s, h in held.items() if h.qty < 0), Decimal(0))
    equity = cash + long_value + short_value
    return {
        "id": str(ACCOUNT_ID),
        "account_number": "PA0RDERSAGA1",
        "status": "ACTIVE",
        "crypto_status": "INACTIVE",
        "currency": "USD",
        "cash": _money(cash),
        "portfolio_value": _money(equity),
        "equity": _money(equity),
        "last_equity": _money(equity),
        "long_market_value": _money(long_value),
        "short_market_value": _money(short_value),
        "buying_power": _money(max(cash, Decimal(0))),
        "regt_buying_power": _money(max(cash, Decimal(0))),
        "daytrading_buying_power": "0",
        "non_marginable_buying_power": _money(max(cash, Decimal(0))),
        "initial_margin": "0",
        "maintenance_margin": "0",
        "last_maintenance_margin": "0",
        "sma": "0",
        "multiplier": "1",
        "daytrade_count": 0,
        "pattern_day_trader": False,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "trade_suspended_by_user": False,
        "shorting_enabled": False,
        "created_at": rfc3339(created),
    }


def positions_json(orders: Iterable[Order], prices: dict[str, Decimal]) -> list[dict[str, object]]:
    _, held = holdings(orders)
    return [position_json(s, h, prices[s]) for s, h in sorted(held.items())]
