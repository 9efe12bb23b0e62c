"""Broker activities: submit, look up, cancel and reconcile orders at the overseas broker.

These run on the "broker" task queue (their own worker pool). Every call is safe to retry: the
broker order's client_order_id is our order id, so the broker itself refuses a second order, and
every ambiguous answer is settled by looking the order up by that id before anything is sent
again. Errors reach Temporal as ApplicationError types from core.errors: BrokerUnavailable
and BrokerOutcomeUnknown are retryable; BrokerRejected, BrokerAuth, BrokerOrderNotFound and
OrderConflict are not.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core import errors
from core.broker_client import (
    BrokerAuthError,
    BrokerClient,
    BrokerError,
    BrokerOrder,
    BrokerOutcomeUnknown,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    OrderNotFound,
)
from core.telemetry import NOOP_METRICS, ProcessMetrics

# --- inputs and results -------------------------------------------------------------------


# The broker's client_order_id: for the saga its order key (core/orderkey.py), for the reconciler
# whatever the broker listed. Payloads recorded before the rename call it order_id.
ClientOrderId = Annotated[str, Field(validation_alias=AliasChoices("client_order_id", "order_id"))]


class SubmitOrderInput(BaseModel):
    client_order_id: ClientOrderId
    symbol: str
    qty: Decimal
    side: Literal["buy", "sell"]
    order_type: Literal["market", "limit"] = "market"
    time_in_force: Literal["day", "gtc", "ioc"] = "day"
    limit_price: Decimal | None = None


class SubmitOrderResult(BaseModel):
    broker_order_id: str
    status: str
    filled_qty: Decimal
    filled_notional: Decimal
    order: BrokerOrder

    @classmethod
    def of(cls, order: BrokerOrder) -> SubmitOrderResult:
        return cls(
            broker_order_id=order.id,
            status=order.status,
            filled_qty=order.filled_qty,
            filled_notional=order.filled_notional,
            order=order,
        )


class ReplaceOrderInput(BaseModel):
    """Replace broker order ``broker_order_id`` by a new one, ``client_order_id`` (the order's
    next ``<key>/r<n>``), for ``qty`` at ``limit_price``."""

    broker_order_id: str
    client_order_id: str
    qty: Decimal
    limit_price: Decimal


class ReplaceOrderResult(BaseModel):
    order: BrokerOrder
    """The replacement, as the broker answered."""
    replaced: BrokerOrder
    """The order it replaced, read after the replace: final, with every fill it had."""


class CancelOrderInput(BaseModel):
    client_order_id: ClientOrderId
    broker_order_id: str | None = None


class CancelOrderResult(BaseModel):
    status: str
    """The order's status after the request (often pending_cancel), or "absent"."""
    order: BrokerOrder | None = None


class ReconcileOrderInput(BaseModel):
    client_order_id: ClientOrderId


class ReconcileOrderResult(BaseModel):
    state: Literal["absent", "open", "terminal"]
    order: BrokerOrder | None = None


class ListBrokerOrdersInput(BaseModel):
    after: datetime | None = None
    status: Literal["open", "closed", "all"] = "all"
    page_size: int = 500
    max_orders: int = 10_000


class ListBrokerOrdersResult(BaseModel):
    orders: list[BrokerOrder]
    truncated: bool = False
    """True when the listing stopped before the last page (max_orders reached)."""


class ListBrokerOrdersPageInput(BaseModel):
    """One page of the broker's orders created after ``after``, oldest first. ``skip_ids`` are
    orders created at ``after`` + 1 µs that an earlier page already returned (pages overlap by
    one microsecond so orders sharing the boundary time are not skipped)."""

    status: Literal["open", "closed", "all"] = "all"
    after: datetime | None = None
    skip_ids: list[str] = Field(default_factory=list)
    limit: int = 500


class ListBrokerOrdersPageResult(BaseModel):
    orders: list[BrokerOrder]
    last: bool
    """No page after this one (the broker returned fewer than ``limit``)."""
    next_after: datetime | None = None
    next_skip_ids: list[str] = Field(default_factory=list)
    stalled: bool = False
    """A full page of orders all already returned (one timestamp): the API cannot page past."""


class GetBrokerOrdersInput(BaseModel):
    broker_order_ids: list[str]


class GetBrokerOrdersResult(BaseModel):
    orders: list[BrokerOrder] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)


class GetHoldingsInput(BaseModel):
    broker_order_ids: list[str] = Field(default_factory=list)
    attempts: int = 3


class GetHoldingsResult(BaseModel):
    """One consistent snapshot: the account's cash and positions did not move while the named
    orders were read (``stable``: False when they kept moving for every attempt)."""

    cash: Decimal
    positions: dict[str, Decimal] = Field(default_factory=dict)
    orders: list[BrokerOrder] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    stable: bool = True


# --- error mapping ------------------------------------------------------------------------


def _app_error(exc: BrokerError) -> ApplicationError:
    if isinstance(exc, BrokerRejected):
        return ApplicationError(
            f"broker rejected: {exc.reason}",
            {"reason": exc.reason, "status": exc.status, "code": exc.code},
            type=errors.BROKER_REJECTED,
            non_retryable=True,
        )
    if isinstance(exc, BrokerAuthError):
        return ApplicationError(str(exc), type=errors.BROKER_AUTH, non_retryable=True)
    if isinstance(exc, OrderNotFound):
        return ApplicationError(str(exc), type=errors.BROKER_ORDER_NOT_FOUND, non_retryable=True)
    if isinstance(exc, BrokerUnavailable):
        # Certainly not received: an expected retry, logged and counted as benign. A rate-limited
        # one is retried when the broker's window resets, not sooner: the retry policy's next
        # interval could fall inside the same spent window (and every retry would be a 429).
        wait_s = exc.retry_after_s if isinstance(exc, BrokerRateLimited) else None
        return ApplicationError(
            str(exc),
            type=errors.BROKER_UNAVAILABLE,
            category=ApplicationErrorCategory.BENIGN,
            next_retry_delay=timedelta(seconds=wait_s) if wait_s else None,
        )
    return ApplicationError(str(exc), type=errors.BROKER_OUTCOME_UNKNOWN)


def _same_order(order: BrokerOrder, req: SubmitOrderInput) -> bool:
    return (order.symbol, order.side, order.qty) == (req.symbol, req.side, req.qty)


BROKER_ERROR_KINDS = (
    errors.BROKER_REJECTED,
    errors.BROKER_AUTH,
    errors.BROKER_ORDER_NOT_FOUND,
    errors.BROKER_UNAVAILABLE,
    errors.BROKER_OUTCOME_UNKNOWN,
)
BROKER_CALLS = (
    "submit_order",
    "replace_order",
    "cancel_order",
    "reconcile_order",
    "list_broker_orders",
)


# --- activities ---------------------------------------------------------------------------


class BrokerActivities:
    def __init__(self, client: BrokerClient, metrics: ProcessMetrics = NOOP_METRICS) -> None:
        self._client = client
        self._metrics = metrics
        # Every kind at 0 from the start: a rate over a series that appears with its first error
        # misses that error.
        for kind in BROKER_ERROR_KINDS:
            for call in BROKER_CALLS:
                metrics.broker_errors.add(0, {"kind": kind, "call": call})

    def _count(self, kind: str, call: str) -> None:
        self._metrics.broker_errors.add(1, {"kind": kind, "call": call})

    def _failed(self, exc: BrokerError, call: str) -> ApplicationError:
        """The broker's error as Temporal sees it, counted by kind (``ordersaga_broker_errors``)."""
        err = _app_error(exc)
        self._count(err.type or "BrokerError", call)
        return err

    @activity.defn
    async def submit_order(self, req: SubmitOrderInput) -> SubmitOrderResult:
        """Create the broker order for our order, or find the one an earlier attempt created.

        Retry guarantee: at most one broker order per order_id, whatever happened to earlier
        attempts (timeouts, dropped replies, late executions): the order is sent with
        client_order_id = order_id, and a duplicate answer or an unknown outcome is resolved by
        looking the order up by that id. Not found after an unknown outcome raises a retryable
        BrokerOutcomeUnknown, so the retry sends the same id again and the broker refuses any
        second copy.
        """
        try:
            order = await self._client.submit_order(
                symbol=req.symbol,
                qty=req.qty,
                side=req.side,
                type=req.order_type,
                time_in_force=req.time_in_force,
                limit_price=req.limit_price,
                client_order_id=req.client_order_id,
            )
        except DuplicateClientOrderId:
            order = await self._existing(req, "the broker says the order already exists")
        except BrokerOutcomeUnknown as exc:
            activity.logger.warning("submit %s: outcome unknown (%s)", req.client_order_id, exc)
            self._count(errors.BROKER_OUTCOME_UNKNOWN, "submit_order")
            order = await self._existing(req, f"outcome of the submit unknown: {exc}")
        except BrokerError as exc:
            raise self._failed(exc, "submit_order") from exc
        return SubmitOrderResult.of(order)

    async def _existing(self, req: SubmitOrderInput, why: str) -> BrokerOrder:
        try:
            order = await self._client.get_order_by_client_id(req.client_order_id)
        except BrokerError as exc:
            raise self._failed(exc, "submit_order") from exc
        if order is None:
            raise ApplicationError(
                f"order {req.client_order_id} not at the broker yet ({why});"
                " retry sends the same id",
                type=errors.BROKER_OUTCOME_UNKNOWN,
            )
        if not _same_order(order, req):
            raise ApplicationError(
                f"broker order {order.id} for client id {req.client_order_id} is "
                f"{order.side} {order.qty} {order.symbol}, not {req.side} {req.qty} {req.symbol}",
                type=errors.ORDER_CONFLICT,
                non_retryable=True,
            )
        return order

    @activity.defn
    async def replace_order(self, req: ReplaceOrderInput) -> ReplaceOrderResult:
        """Replace our broker order by a new one (Alpaca's PATCH), or find the replacement an
        earlier attempt made.

        Retry guarantee: at most one replacement per client order id. A duplicate answer, an
        unknown outcome or a refusal is first checked by looking the new client order id up:
        found (and replacing this order), the replace happened; not found after an unknown
        outcome, a retryable BrokerOutcomeUnknown sends the same id again; not found after a
        refusal (the order filled or was canceled first, say), BrokerRejected, and the old order
        stands. Then the replaced order is read for its final fills.
        """
        try:
            try:
                order = await self._client.replace_order(
                    req.broker_order_id,
                    client_order_id=req.client_order_id,
                    qty=req.qty,
                    limit_price=req.limit_price,
                )
            except (DuplicateClientOrderId, BrokerOutcomeUnknown, BrokerRejected) as exc:
                found = await self._client.get_order_by_client_id(req.client_order_id)
                if found is None:
                    raise
                if found.replaces != req.broker_order_id:
                    raise ApplicationError(
                        f"client order id {req.client_order_id} is broker order {found.id},"
                        f" which does not replace {req.broker_order_id}",
                        type=errors.ORDER_CONFLICT,
                        non_retryable=True,
                    ) from exc
                order = found
            replaced = await self._client.get_order(req.broker_order_id)
        except DuplicateClientOrderId as exc:
            raise ApplicationError(
                f"client order id {req.client_order_id} is taken and not found",
                type=errors.BROKER_OUTCOME_UNKNOWN,
            ) from exc
        except BrokerError as exc:
            raise self._failed(exc, "replace_order") from exc
        return ReplaceOrderResult(order=order, replaced=replaced)

    @activity.defn
    async def cancel_order(self, req: CancelOrderInput) -> CancelOrderResult:
        """Ask the broker to cancel our order; cancellation completes asynchronously.

        Retry guarantee: asking twice is harmless. An order already terminal answers its terminal
        state (a filled order stays filled), not an error; an order the broker does not have
        answers "absent". Without broker_order_id the order is found by client order id.
        """
        try:
            broker_id = req.broker_order_id
            if broker_id is None:
                found = await self._client.get_order_by_client_id(req.client_order_id)
                if found is None:
                    return CancelOrderResult(status="absent")
                broker_id = found.id
            terminal = await self._client.cancel_order(broker_id)
            order = terminal or await self._client.get_order(broker_id)
        except OrderNotFound:
            return CancelOrderResult(status="absent")
        except BrokerError as exc:
            raise self._failed(exc, "cancel_order") from exc
        return CancelOrderResult(status=order.status, order=order)

    @activity.defn
    async def reconcile_order(self, req: ReconcileOrderInput) -> ReconcileOrderResult:
        """The broker's view of our order by client order id: absent, open or terminal.

        A read: retries change nothing. "absent" is only a snapshot: after an unknown submit
        outcome a late order may still appear, so callers decide what absence means.
        Statuses the adapter does not know count as open.
        """
        try:
            order = await self._client.get_order_by_client_id(req.client_order_id)
        except BrokerError as exc:
            raise self._failed(exc, "reconcile_order") from exc
        if order is None:
            return ReconcileOrderResult(state="absent")
        return ReconcileOrderResult(state="terminal" if order.is_terminal else "open", order=order)

    @activity.defn
    async def list_broker_orders(self, req: ListBrokerOrdersInput) -> ListBrokerOrdersResult:
        """Every broker order created after ``after``, oldest first, across pages.

        A read: retries change nothing. Pages overlap by one microsecond so orders sharing the
        boundary timestamp are not skipped; duplicates are dropped by id.
        """
        seen: dict[str, BrokerOrder] = {}
        after = req.after
        while len(seen) < req.max_orders:
            try:
                page = await self._client.list_orders(
                    status=req.status, limit=req.page_size, after=after, direction="asc"
                )
            except BrokerError as exc:
                raise self._failed(exc, "list_broker_orders") from exc
            fresh = [o for o in page if o.id not in seen]
            seen.update((o.id, o) for o in fresh)
            if len(page) < req.page_size:
                return ListBrokerOrdersResult(orders=list(seen.values()))
            if not fresh:
                # A full page of one timestamp: the API cannot page past it; say so.
                return ListBrokerOrdersResult(orders=list(seen.values()), truncated=True)
            last = page[-1].submitted_at or page[-1].created_at
            if last is None:
                break
            after = last - timedelta(microseconds=1)
        return ListBrokerOrdersResult(orders=list(seen.values())[: req.max_orders], truncated=True)

    @activity.defn
    async def list_broker_orders_page(
        self, req: ListBrokerOrdersPageInput
    ) -> ListBrokerOrdersPageResult:
        """One page of broker orders and the cursor of the next; one request to the broker.

        A read: retries change nothing. The result is at most one page (``limit`` ≤ the broker's
        own maximum, 500), so no listing passes through workflow history in one payload.
        """
        try:
            page = await self._client.list_orders(
                status=req.status, limit=req.limit, after=req.after, direction="asc"
            )
        except BrokerError as exc:
            raise _app_error(exc) from exc
        skip = set(req.skip_ids)
        fresh = [o for o in page if o.id not in skip]
        last = len(page) < req.limit
        if not page or last:
            return ListBrokerOrdersPageResult(orders=fresh, last=True)
        boundary = page[-1].submitted_at or page[-1].created_at
        if boundary is None or not fresh:
            return ListBrokerOrdersPageResult(orders=fresh, last=True, stalled=True)
        # The next page starts 1 µs before the boundary: it returns these again first (all of
        # them, as the broker orders by time); fewer than a page of them, or it is stalled.
        at_boundary = [o.id for o in page if (o.submitted_at or o.created_at) == boundary]
        return ListBrokerOrdersPageResult(
            orders=fresh,
            last=False,
            next_after=boundary - timedelta(microseconds=1),
            next_skip_ids=at_boundary,
        )

    @activity.defn
    async def get_broker_orders(self, req: GetBrokerOrdersInput) -> GetBrokerOrdersResult:
        """The named broker orders as they stand, one request each; those the broker does not
        have are listed as missing. A read: retries change nothing."""
        result = GetBrokerOrdersResult()
        for broker_order_id in req.broker_order_ids:
            try:
                result.orders.append(await self._client.get_order(broker_order_id))
            except OrderNotFound:
                result.missing.append(broker_order_id)
            except BrokerError as exc:
                raise _app_error(exc) from exc
        return result

    @activity.defn
    async def get_holdings(self, req: GetHoldingsInput) -> GetHoldingsResult:
        """The account's cash and positions and the named orders, as one snapshot: cash and
        positions are read before and after the orders, and the whole read is repeated (up to
        ``attempts``) when they moved in between (a fill landed). A read: retries change
        nothing."""
        try:
            after = await self._cash_and_positions()
            stable = False
            for _ in range(max(req.attempts, 1)):
                before = after
                got = await self.get_broker_orders(
                    GetBrokerOrdersInput(broker_order_ids=req.broker_order_ids)
                )
                after = await self._cash_and_positions()
                if after == before:
                    stable = True
                    break
            return GetHoldingsResult(
                cash=after[0],
                positions=after[1],
                orders=got.orders,
                missing=got.missing,
                stable=stable,
            )
        except BrokerError as exc:
            raise _app_error(exc) from exc

    async def _cash_and_positions(self) -> tuple[Decimal, dict[str, Decimal]]:
        account = await self._client.get_account()
        positions = await self._client.list_positions()
        return account.cash, {p.symbol: p.qty for p in positions}
