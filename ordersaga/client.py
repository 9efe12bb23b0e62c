"""OrderClient: the typed client SDK over Temporal (orders) and Postgres (accounts, records).

    async with OrderClient.connect(Settings()) as oc:
        placed = await oc.place_order(account_id="acct-1", symbol="AAPL", side="buy", qty="1")
        state = await oc.wait(placed.account_id, placed.order_id)

``place_order`` is idempotent on (account, order id): the same id with the same parameters is
the same order (the first answer again); with other parameters it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar

import asyncpg
from pydantic import ValidationError
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger import (
    AccountBalances,
    DepositInput,
    FxPosition,
    Ledger,
    OpenAccountInput,
    OpenAccountResult,
    TransferResult,
    WithdrawInput,
    fx_position,
    get_balances,
)
from activities.orders import OrderRow, OrderStore
from core.db import create_pool
from core.errors import NON_RETRYABLE_LEDGER, UserError
from core.ids import is_id, is_symbol
from core.money import (
    CURRENCIES,
    MAX_LIMIT_PRICE,
    MAX_ORDER_QTY,
    PRICE_PLACES,
    SHARE_PLACES,
    InvalidAmount,
    parse_bounded,
    parse_decimal,
    validate_amount,
)
from core.orderkey import WORKFLOW_PREFIX, InvalidOrderKey, OrderKey
from core.settings import Settings
from core.statuses import OrderStatus
from core.temporal import connect
from ordersaga.risk import RiskAdmin
from workflows.models import (
    ID_RULE,
    CancelResult,
    OrderInput,
    OrderRequest,
    OrderState,
    PlaceResult,
    ReplaceRequest,
    ReplaceResult,
    place_result,
    validate_request,
)
from workflows.order import OrderWorkflow

MAX_LIST_LIMIT = 1000


T = TypeVar("T")


def _key(account_id: str, order_id: str) -> OrderKey:
    try:
        return OrderKey.of(account_id, order_id)
    except InvalidOrderKey as exc:
        raise UserError(str(exc)) from None


def check_account_id(account_id: object) -> str:
    """An account id by ``core.ids``'s rule, or UserError."""
    if not is_id(account_id):
        raise UserError(f"invalid account id {_shown(account_id)}: {ID_RULE}")
    assert isinstance(account_id, str)
    return account_id


def check_asset(asset: object) -> str:
    """A currency (USD, KRW) or a ticker symbol (upper-cased), or UserError."""
    text = asset.upper() if isinstance(asset, str) else asset
    if text not in CURRENCIES and not is_symbol(text):
        raise UserError(f"unknown asset {_shown(asset)} (USD, KRW or a ticker symbol)")
    assert isinstance(text, str)
    return text


def check_currency(currency: object) -> str:
    """A currency the ledger keeps (USD, KRW; upper-cased), or UserError."""
    text = currency.upper() if isinstance(currency, str) else currency
    if text not in CURRENCIES:
        raise UserError(f"unknown currency {_shown(currency)} ({', '.join(CURRENCIES)})")
    assert isinstance(text, str)
    return text


def check_amount(amount: object, asset: str) -> Decimal:
    """A deposit's or withdrawal's amount: ``parse_bounded`` at the asset's decimals."""
    try:
        return validate_amount(amount, asset)
    except InvalidAmount as exc:
        raise UserError(str(exc)) from None


def _number(value: object, what: str, *, places: int, maximum: Decimal) -> Decimal:
    """``parse_bounded``'s check; the number as written (the same value, exactly)."""
    parse_bounded(value, what, places=places, maximum=maximum)
    return parse_decimal(value, what)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def build_request(
    *,
    account_id: str,
    symbol: str,
    side: str,
    qty: Decimal | str | int,
    order_type: str = "market",
    limit_price: Decimal | str | int | None = None,
    time_in_force: str = "day",
    order_id: str | None = None,
    pay: str = "USD",
) -> OrderRequest:
    """A validated request, with no connection: bad input raises UserError (one line) before
    anything is contacted. Numbers go through ``parse_bounded`` (kept as written: ``1``, not
    ``1.000000000``), ids and symbols through ``core.ids``, and the result through
    ``validate_request``, the workflow's own check. ``pay``: the currency the order pays in (a
    buy) or is paid out in (a sell), USD or KRW (through the firm's FX desk)."""
    check_account_id(account_id)
    if order_id is not None and not is_id(order_id):
        raise UserError(f"invalid order id {_shown(order_id)}: {ID_RULE}")
    if not isinstance(symbol, str) or not is_symbol(symbol.upper()):
        raise UserError(f"invalid symbol {_shown(symbol)}")
    pay = check_currency(pay)
    try:
        parsed_qty = _number(qty, "quantity", places=SHARE_PLACES, maximum=MAX_ORDER_QTY)
        parsed_limit = (
            None
            if limit_price is None
            else _number(limit_price, "limit price", places=PRICE_PLACES, maximum=MAX_LIMIT_PRICE)
        )
        req = OrderRequest(
            account_id=account_id,
            order_id=order_id or uuid.uuid4().hex[:16],
            symbol=symbol.upper(),
            side=side,  # type: ignore[arg-type]
            qty=parsed_qty,
            order_type=order_type,  # type: ignore[arg-type]
            time_in_force=time_in_force,  # type: ignore[arg-type]
            limit_price=parsed_limit,
            pay=pay,  # type: ignore[arg-type]
        )
    except ValidationError as exc:  # side, order type, time in force
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{where}: {first['msg']}") from None
    except InvalidAmount as exc:
        raise UserError(str(exc)) from None
    reason = validate_request(req)
    if reason:
        raise UserError(reason)
    return req


def build_replace(
    *, qty: Decimal | str | int | None = None, limit_price: Decimal | str | int | None = None
) -> ReplaceRequest:
    """A replace's numbers, parsed as ``build_request`` parses an order's (UserError, one line,
    before anything is contacted); at least one of them."""
    if qty is None and limit_price is None:
        raise UserError("give a new quantity, a new limit price, or both")
    try:
        return ReplaceRequest(
            qty=None
            if qty is None
            else _number(qty, "quantity", places=SHARE_PLACES, maximum=MAX_ORDER_QTY),
            limit_price=None
            if limit_price is None
            else _number(limit_price, "limit price", places=PRICE_PLACES, maximum=MAX_LIMIT_PRICE),
        )
    except InvalidAmount as exc:
        raise UserError(str(exc)) from None


def _failure_message(err: BaseException) -> str:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return cause.message
        cause = cause.__cause__
    return str(err)


class OrderClient:
    def __init__(self, temporal: Client, pool: asyncpg.Pool, settings: Settings) -> None:
        self.temporal = temporal
        self.settings = settings
        self._pool = pool
        self._ledger = Ledger(pool, cas_attempts=settings.ledger_cas_attempts)
        self._store = OrderStore(pool)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, settings: Settings, temporal: Client | None = None
    ) -> AsyncIterator[OrderClient]:
        pool = await create_pool(settings.database_url, 1, 5)
        try:
            if temporal is None:
                try:
                    temporal = await connect(settings)
                except RuntimeError as exc:  # the SDK's "Failed client connect"
                    raise UserError(
                        f"cannot connect to Temporal at {settings.temporal_address}: "
                        f"{str(exc).splitlines()[0]}"
                    ) from None
            yield cls(temporal, pool, settings)
        finally:
            await pool.close()

    @property
    def risk(self) -> RiskAdmin:
        """The trading state and the accounts' limit overrides (ordersaga/risk.py)."""
        return RiskAdmin(self._pool, self.settings, self.temporal)

    # ---------------------------------------------------------------- orders

    build_request = staticmethod(build_request)

    async def place_order(self, request: OrderRequest | None = None, **fields: Any) -> PlaceResult:
        """Start (or find) the order's workflow and return once it is held or refused."""
        req = request or self.build_request(**fields)
        reason = validate_request(req)  # a request built elsewhere is checked here too
        if reason:
            raise UserError(reason)
        start = WithStartWorkflowOperation(
            OrderWorkflow.run,
            OrderInput(request=req),
            id=req.workflow_id,
            task_queue=self.settings.orders_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            task_timeout=timedelta(seconds=self.settings.workflow_task_timeout_s),
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(
                        SearchAttributeKey.for_keyword("AccountId"), req.account_id
                    ),
                    SearchAttributePair(SearchAttributeKey.for_keyword("Symbol"), req.symbol),
                    SearchAttributePair(SearchAttributeKey.for_keyword("OrderStatus"), "NEW"),
                ]
            ),
            static_summary=(
                f"{req.side} {req.qty} {req.symbol} ({req.order_type}) for {req.account_id}"
            ),
        )
        try:
            return await self.temporal.execute_update_with_start_workflow(
                OrderWorkflow.place, req, start_workflow_operation=start
            )
        except WorkflowUpdateFailedError as err:
            raise UserError(_failure_message(err)) from None
        except WorkflowAlreadyStartedError:
            # Retrieve the start operation's failure too, or asyncio reports it as never retrieved.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await start.workflow_handle()
        # The order's workflow has already finished: answer from its final state.
        return await self._place_result_of_closed(req)

    async def _place_result_of_closed(self, req: OrderRequest) -> PlaceResult:
        state = await self.get_order(req.account_id, req.order_id)
        if state.request.params_hash() != req.params_hash():
            raise UserError(f"order id {req.order_id} is already used with other parameters")
        return place_result(state)

    async def get_order(self, account_id: str, order_id: str) -> OrderState:
        """The order as its workflow sees it while it runs (a query); once it has completed, its
        result, read from its history (no worker has to replay it); ended otherwise (failed,
        terminated) or gone past retention: its orders row."""
        handle = self.temporal.get_workflow_handle_for(
            OrderWorkflow.run, _key(account_id, order_id).workflow_id
        )
        status = None
        try:
            status = (await handle.describe()).status
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        if status == WorkflowExecutionStatus.RUNNING:
            return await handle.query(OrderWorkflow.status)
        if status == WorkflowExecutionStatus.COMPLETED:
            return await handle.result()
        row = await self._store.get(account_id, order_id)
        if row is None:
            raise UserError(f"unknown order {account_id}/{order_id}")
        return state_from_row(row)

    async def cancel_order(self, account_id: str, order_id: str) -> CancelResult:
        return await self._order_update(
            account_id, order_id, lambda handle: handle.execute_update(OrderWorkflow.cancel)
        )

    async def replace_order(
        self,
        account_id: str,
        order_id: str,
        *,
        qty: Decimal | str | int | None = None,
        limit_price: Decimal | str | int | None = None,
    ) -> ReplaceResult:
        """Amend a live limit order: its new total quantity, its new limit, or both. Answers
        once the broker has replaced it or refused (``accepted``), with the order as it stands;
        a replace the order cannot take (filled, canceling, a market order, nothing changed, bad
        numbers) is one UserError and changes nothing."""
        ask = build_replace(qty=qty, limit_price=limit_price)
        return await self._order_update(
            account_id, order_id, lambda handle: handle.execute_update(OrderWorkflow.replace, ask)
        )

    async def resume_order(self, account_id: str, order_id: str) -> CancelResult:
        """Resume an order parked in NEEDS_ATTENTION once its cause is fixed (an operator's
        call): the step that could not go on is tried again."""
        return await self._order_update(
            account_id, order_id, lambda handle: handle.execute_update(OrderWorkflow.resume)
        )

    async def _order_update(
        self,
        account_id: str,
        order_id: str,
        update: Callable[[WorkflowHandle[Any, Any]], Awaitable[T]],
    ) -> T:
        """An update of a running order; its refusal, or a closed order, is one UserError."""
        handle = self.temporal.get_workflow_handle(_key(account_id, order_id).workflow_id)
        try:
            return await update(handle)
        except WorkflowUpdateFailedError as err:
            raise UserError(_failure_message(err)) from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                state = await self.get_order(account_id, order_id)
                raise UserError(f"order is already {state.status.value}") from None
            raise

    async def wait(self, account_id: str, order_id: str, timeout_s: float = 300) -> OrderState:
        handle = self.temporal.get_workflow_handle_for(
            OrderWorkflow.run, _key(account_id, order_id).workflow_id
        )
        try:
            return await asyncio.wait_for(handle.result(), timeout_s)
        except TimeoutError:
            raise UserError(f"order {account_id}/{order_id} not final after {timeout_s}s") from None

    async def list_orders(
        self,
        account_id: str | None = None,
        status: str | None = None,
        symbol: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Orders through Temporal visibility, then the orders table for those past retention.

        The filters are checked (ids, symbols, statuses by their rules; ``limit`` 1..1000)
        before anything is queried."""
        if account_id is not None:
            check_account_id(account_id)
        if symbol is not None and not is_symbol(symbol):
            raise UserError(f"invalid symbol {_shown(symbol)}")
        if status is not None and status not in OrderStatus.__members__:
            raise UserError(
                f"unknown status {_shown(status)} (one of {', '.join(OrderStatus.__members__)})"
            )
        if type(limit) is not int or not 1 <= limit <= MAX_LIST_LIMIT:
            raise UserError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}: {limit!r}")
        clauses = ["WorkflowType = 'OrderWorkflow'"]
        for attr, value in (("AccountId", account_id), ("OrderStatus", status), ("Symbol", symbol)):
            if value:
                clauses.append(f"{attr} = '{_quote(value)}'")
        seen: dict[str, dict[str, Any]] = {}
        async for wf in self.temporal.list_workflows(" AND ".join(clauses), limit=limit):
            sa = wf.typed_search_attributes
            key = wf.id.removeprefix(WORKFLOW_PREFIX)
            seen[key] = {
                "order": key,
                "status": sa.get(SearchAttributeKey.for_keyword("OrderStatus")),
                "symbol": sa.get(SearchAttributeKey.for_keyword("Symbol")),
                "workflow_status": wf.status.name if wf.status else "",
                "started": wf.start_time.isoformat(timespec="seconds"),
                "source": "temporal",
            }
        for row in await self._store.list(account_id, status, symbol, limit):
            key = OrderKey.of(row.account_id, row.order_id)
            seen.setdefault(
                key,
                {
                    "order": key,
                    "status": row.status,
                    "symbol": row.symbol,
                    "workflow_status": "",
                    "started": row.created_at.isoformat(timespec="seconds"),
                    "source": "orders table",
                },
            )
        return sorted(seen.values(), key=lambda r: r["started"], reverse=True)[:limit]

    # ---------------------------------------------------------------- accounts

    async def open_account(self, account_id: str, currency: str = "USD") -> OpenAccountResult:
        check_account_id(account_id)
        return await self._ledger.open_account(
            OpenAccountInput(account_id=account_id, currency=currency)
        )

    async def deposit(
        self,
        account_id: str,
        amount: Decimal | str,
        asset: str = "USD",
        key: str | None = None,
        *,
        currency: str | None = None,
    ) -> TransferResult:
        """Deposit ``amount`` of ``asset`` (or of ``currency``: USD, KRW in whole won)."""
        if currency is not None:
            asset = check_currency(currency)
        return await self._transfer("deposit", account_id, amount, asset, key)

    async def withdraw(
        self, account_id: str, amount: Decimal | str, asset: str = "USD", key: str | None = None
    ) -> TransferResult:
        return await self._transfer("withdraw", account_id, amount, asset, key)

    async def _transfer(
        self,
        kind: Literal["deposit", "withdraw"],
        account_id: str,
        amount: Decimal | str,
        asset: str,
        key: str | None,
    ) -> TransferResult:
        """A deposit or withdrawal, checked before any query; a refusal is one UserError."""
        asset = check_asset(asset)
        fields = {
            "account_id": check_account_id(account_id),
            "amount": check_amount(amount, asset),
            "asset": asset,
            "idempotency_key": key or f"{kind}:{uuid.uuid4().hex}",
        }
        async with _ledger_refusals():
            if kind == "deposit":
                return await self._ledger.deposit(DepositInput.model_validate(fields))
            return await self._ledger.withdraw(WithdrawInput.model_validate(fields))

    async def balance(self, account_id: str) -> AccountBalances:
        return await get_balances(self._pool, check_account_id(account_id))

    async def fx_position(self) -> FxPosition:
        """The FX desk's won and dollars and the implied average rate (docs/LEDGER.md)."""
        return await fx_position(self._pool)


@asynccontextmanager
async def _ledger_refusals() -> AsyncIterator[None]:
    """A refused amount or a ledger refusal (funds, unknown account, a key used for something
    else) is the caller's to fix: a one-line UserError, as for orders."""
    try:
        yield
    except InvalidAmount as exc:
        raise UserError(str(exc)) from None
    except ApplicationError as exc:
        if exc.type not in NON_RETRYABLE_LEDGER:
            raise
        raise UserError(exc.message) from None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def state_from_row(row: OrderRow) -> OrderState:
    """An order's state from its permanent record (once Temporal's history is gone)."""
    req = OrderRequest(
        account_id=row.account_id,
        order_id=row.order_id,
        symbol=row.symbol,
        side=row.side,  # type: ignore[arg-type]
        qty=row.qty,
        order_type=row.order_type,  # type: ignore[arg-type]
        time_in_force=row.time_in_force,  # type: ignore[arg-type]
        limit_price=row.limit_price,
    )
    return OrderState(
        request=req,
        status=OrderStatus(row.status),
        reason=row.reason,
        workflow_id=row.workflow_id,
        broker_order_id=row.broker_order_id,
        filled_qty=row.filled_qty,
        filled_notional=row.filled_notional,
        fees=row.fees,
        held=row.held,
        hold_asset=row.hold_asset,
    )
