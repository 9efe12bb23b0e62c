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


# --- activities ---------------------------------------------------------------------------


class BrokerActivities:
    def __init__(self, client: BrokerClient) -> None:
        self._client = client

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
            order = await self._existing(req, f"outcome of the submit unknown: {exc}")
        except BrokerError as exc:
            raise _app_error(exc) from exc
        return SubmitOrderResult.of(order)

    async def _existing(self, req: SubmitOrderInput, why: str) -> BrokerOrder:
        try:
            order = await self._client.get_order_by_client_id(req.client_order_id)
        except BrokerError as exc:
            raise _app_error(exc) from exc
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
            raise _app_error(exc) from exc
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
            raise _app_error(exc) from exc
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
                raise _app_error(exc) from exc
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
