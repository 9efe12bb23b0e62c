"""``LedgerActivities``: the ledger's Temporal activities, each a thin call into ``Ledger``.

The activity names are the saga's recorded history: they must not change.
"""

from __future__ import annotations

from temporalio import activity

from activities.ledger.models import (
    DepositInput,
    ErrorFillInput,
    ErrorFillResult,
    OpenAccountInput,
    OpenAccountResult,
    PostFillInput,
    PostFillResult,
    ReserveInput,
    ReserveResult,
    ResizeHoldInput,
    ResizeHoldResult,
    TransferResult,
    VoidInput,
    VoidResult,
    WithdrawInput,
)
from activities.ledger.service import Ledger


class LedgerActivities:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @activity.defn
    async def open_account(self, input: OpenAccountInput) -> OpenAccountResult:
        """Open a customer account and its USD row. Retry-safe: opening twice is a no-op."""
        return await self._ledger.open_account(input)

    @activity.defn
    async def deposit(self, input: DepositInput) -> TransferResult:
        """Move ``amount`` of ``asset`` from '$external' to the customer (cash or a share
        transfer-in). Retry-safe: the idempotency key books it once and returns the first result."""
        return await self._ledger.deposit(input)

    @activity.defn
    async def withdraw(self, input: WithdrawInput) -> TransferResult:
        """Move ``amount`` from the customer's available balance to '$external'. Retry-safe:
        the idempotency key books it once; too little available is InsufficientFunds."""
        return await self._ledger.withdraw(input)

    @activity.defn
    async def reserve_funds(self, input: ReserveInput) -> ReserveResult:
        """Hold ``amount`` of ``asset`` for an order and record its row, guarded by the fencing
        token. Retry-safe: the idempotency key holds once and returns the first result, even when
        the retry carries a newer fencing token; a second key for the same order is refused."""
        return await self._ledger.reserve(input)

    @activity.defn
    async def post_fill(self, input: PostFillInput) -> PostFillResult:
        """Book the increase of an order's cumulative fill against its hold. Retry-safe and
        source-agnostic: keyed by order key + cumulative qty, so a fill seen twice, or once by
        each source, or out of order, is booked once."""
        return await self._ledger.post_fill(input)

    @activity.defn
    async def resize_hold(self, input: ResizeHoldInput) -> ResizeHoldResult:
        """Give an open hold a new budget and bounds (a replaced order): grow it from the
        account's available funds under the lock's fencing token, or release what it no longer
        needs. Retry-safe: the idempotency key resizes once and returns the first result."""
        return await self._ledger.resize_hold(input)

    @activity.defn
    async def void_funds(self, input: VoidInput) -> VoidResult:
        """Release whatever is left of the order's hold and close it. Retry-safe: the key
        returns the first result; an order with no hold answers found=False and no late reserve
        can create one afterwards."""
        return await self._ledger.void(input)

    @activity.defn
    async def book_error_fill(self, input: ErrorFillInput) -> ErrorFillResult:
        """Book the increase of a stray broker order's cumulative fill between '$omnibus' and
        '$error' (never a customer). Retry-safe: keyed by broker order id + cumulative qty."""
        return await self._ledger.book_error_fill(input)
