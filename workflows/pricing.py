"""What an order holds and what its fills cost: the saga's arithmetic as pure functions.

No I/O, no clock, no Temporal: the workflow calls these with plain values, and the unit tests
(tests/unit/test_pricing.py) call them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from core.money import CASH_ASSET, ceil_cash, commission, round_cash
from core.settings import SagaSettings
from workflows.models import OrderRequest


@dataclass(frozen=True)
class Hold:
    """What to hold for an order, and the limit price to send the broker (None: a market order)."""

    asset: str
    amount: Decimal
    limit_sent: Decimal | None


def market_buy_cap(ask: Decimal, buffer: Decimal) -> Decimal:
    """Price protection: a market buy goes out as a limit this far above the ask, in cents up."""
    return ceil_cash(ask * (1 + buffer))


def hold_for(req: OrderRequest, ask: Decimal | None, saga: SagaSettings) -> Hold:
    """The hold of a validated request; ``ask`` is the fresh quote a market buy needs.

    A buy holds its notional at the cap, rounded up to the cent, plus the commission on it; a
    sell holds its shares.
    """
    cap = req.limit_price
    if req.order_type == "market" and req.side == "buy":
        if ask is None:
            raise ValueError("a market buy is priced from a quote")
        cap = market_buy_cap(ask, saga.market_buy_buffer)
    if req.side == "sell":
        return Hold(asset=req.symbol, amount=req.qty, limit_sent=cap)
    if cap is None:
        raise ValueError("a limit buy has a limit price")
    notional = ceil_cash(req.qty * cap)
    fee = commission(notional, saga.commission_rate, saga.commission_minimum)
    return Hold(asset=CASH_ASSET, amount=notional + fee, limit_sent=cap)


def cumulative_fee(side: str, filled_notional: Decimal, saga: SagaSettings) -> Decimal:
    """The commission on an order's cumulative fill; a sell's never exceeds its proceeds."""
    cash = round_cash(filled_notional)
    fee = commission(cash, saga.commission_rate, saga.commission_minimum)
    return min(fee, cash) if side == "sell" else fee


def hold_budget(
    side: str,
    *,
    qty: Decimal,
    filled_qty: Decimal,
    filled_notional: Decimal,
    limit: Decimal | None,
    saga: SagaSettings,
) -> Decimal:
    """What an order of ``qty`` in all, ``filled_qty`` of it filled for ``filled_notional``, can
    still cost at most with what it has paid: the hold's budget (its used plus what it keeps).

    A buy: the notional so far plus the open quantity at ``limit``, rounded up to the cent, plus
    the commission on it (for an order not yet filled, exactly ``hold_for``'s amount). A sell:
    its shares."""
    if side == "sell":
        return qty
    if limit is None:
        raise ValueError("a buy's budget needs its limit")
    cash = ceil_cash(filled_notional + (qty - filled_qty) * limit)
    return cash + commission(cash, saga.commission_rate, saga.commission_minimum)
