"""The ledger's inputs and results: what the activities take and return, and what the reads show.

Fields that hold the order key ``<account>/<order>`` are ``order_key``; they also accept the old
name ``order_id``, because in-flight workflows carry old inputs and ``ledger_operations`` replays
results stored as JSON before the rename.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated

from pydantic import AliasChoices, BaseModel, Field

from activities.ledger.postings import Side
from activities.orders import OrderRecord
from core.money import CASH_ASSET
from core.orderkey import OrderKey

# Inputs accept any Decimal so a NaN or infinity reaches the activity and is refused there as a
# non-retryable InvalidAmount, rather than failing payload decoding (which Temporal would retry).
AnyDecimal = Annotated[Decimal, Field(allow_inf_nan=True)]
# The order key, read under its new name or the old one (see the module docstring).
OrderKeyField = Annotated[OrderKey, Field(validation_alias=AliasChoices("order_key", "order_id"))]

__all__ = [
    "AccountBalances",
    "AnyDecimal",
    "Balance",
    "DepositInput",
    "ErrorFillInput",
    "ErrorFillResult",
    "OpenAccountInput",
    "OpenAccountResult",
    "OrderRecord",
    "PostFillInput",
    "PostFillResult",
    "ReserveInput",
    "ReserveResult",
    "ResizeHoldInput",
    "ResizeHoldResult",
    "Side",
    "TransferResult",
    "VoidInput",
    "VoidResult",
    "WithdrawInput",
]


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


class ReserveInput(BaseModel):
    account_id: str
    order_key: OrderKeyField
    asset: str
    amount: AnyDecimal
    fence: int
    idempotency_key: str
    side: Side
    symbol: str
    order: OrderRecord | None = None
    # The most a buy may pay (the least a sell may receive) per share, when it is not the
    # order's own limit: a market buy's cap. The hold records it and the database refuses a post
    # beyond it; without it the hold takes ``order.limit_price``. Optional, so inputs of
    # workflows started before it decode, and left out of the idempotency hash.
    price_bound: AnyDecimal | None = None
    # The order's notional for the pre-trade risk check (core/risk.py), where the hold records no
    # price bound to compute it from: a market sell's qty x the ask the saga read. Optional and
    # out of the idempotency hash, like price_bound.
    notional: AnyDecimal | None = None
    # An order paid (a buy) or paid out (a sell) in won: KRW, and the won-per-dollar rate the
    # saga read (the FX ask for a buy, the bid for a sell). A buy's ``asset`` and ``amount`` are
    # then in won. The hold keeps both; every fill converts at the rate (docs/LEDGER.md).
    pay_asset: str | None = None
    fx_rate: AnyDecimal | None = None


class ReserveResult(BaseModel):
    hold_id: int
    order_key: OrderKeyField
    asset: str
    amount: Decimal
    available_after: Decimal
    fence: int
    # The price bound the hold records (a market buy's cap, else the order's limit; None for a
    # market sell). None too in results stored before it was returned.
    price_bound: Decimal | None = None
    # The rate the hold converts at (an order paid in won), fixed by the first reserve: a retried
    # workflow task that read another rate adopts this one with the first amount.
    fx_rate: Decimal | None = None


class PostFillInput(BaseModel):
    order_key: OrderKeyField
    cum_qty: AnyDecimal
    cum_notional: AnyDecimal
    cum_fee: AnyDecimal = Decimal("0")


class PostFillResult(BaseModel):
    order_key: OrderKeyField
    applied: bool  # False: this cumulative quantity was already booked
    qty_delta: Decimal
    cash_delta: Decimal
    fee_delta: Decimal
    posted_qty: Decimal
    posted_notional: Decimal
    posted_cash: Decimal
    posted_fee: Decimal
    held_remaining: Decimal


class ResizeHoldInput(BaseModel):
    """Give an open hold a new budget (what it has used plus what it keeps) and new bounds: an
    order replaced at the broker (workflows/replace.py). ``fence`` is the account lock's token:
    a hold that grows takes funds from the account, under the lock, as a reserve does; one that
    shrinks gives them back and may go without (None)."""

    order_key: OrderKeyField
    budget: AnyDecimal
    qty: AnyDecimal
    # The most a buy may pay (the least a sell may receive) per share, over every broker order the
    # customer's order has had; None for a market sell.
    limit_price: AnyDecimal | None = None
    fence: int | None = None
    idempotency_key: str
    # The replace's pre-trade check (activities/ledger/risk.py, check_amendment), made with a
    # grow: the amended order's quantity and notional in all, and the notional it adds to the
    # old one's (None: no check).
    amended_qty: AnyDecimal | None = None
    notional: AnyDecimal | None = None
    added_notional: AnyDecimal | None = None


class ResizeHoldResult(BaseModel):
    order_key: OrderKeyField
    asset: str
    budget: Decimal
    held_remaining: Decimal
    moved: Decimal
    """Funds moved into the hold (positive) or released from it (negative)."""


class VoidInput(BaseModel):
    order_key: OrderKeyField
    idempotency_key: str


class VoidResult(BaseModel):
    order_key: OrderKeyField
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
    # Sale proceeds not yet settled (part of available: a buy may spend them, a withdrawal may
    # not; activities/ledger/settlement.py) and when the first of them settles.
    unsettled: Decimal = Decimal(0)
    next_settles: date | None = None

    @property
    def settled(self) -> Decimal:
        """What a withdrawal may take: available less unsettled."""
        return self.available - self.unsettled


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
