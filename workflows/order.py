"""OrderWorkflow: the saga that carries one customer order to the broker and back.

Phases (docs/ARCHITECTURE.md has the picture):

1. accept  validate (pure) -> price (quote cache) -> lock -> reserve (hold + orders row) -> unlock.
           ``place`` (an Update, used with update-with-start) answers here: accepted or refused.
2. submit  the pivot. Before it every step has a compensation (void the hold); from here on
           nothing is compensated blindly: an unknown outcome is reconciled with the broker first.
3. follow  book increases of the broker's cumulative fills from signals (the listener) or timed
           polls, until the broker reports a final status.
4. finish  void what is left of the hold, record the terminal status.

Workflow code is deterministic: no I/O, clocks or randomness outside Temporal's APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.broker import (
        BrokerActivities,
        CancelOrderInput,
        ReconcileOrderInput,
        ReconcileOrderResult,
        SubmitOrderInput,
    )
    from activities.config import ConfigActivities, SagaConfigInput
    from activities.ledger import (
        LedgerActivities,
        OrderRecord,
        PostFillInput,
        ReserveInput,
        VoidInput,
    )
    from activities.lock import AcquireLockInput, LockActivities, ReleaseLockInput
    from activities.marketdata import GetQuoteInput, MarketDataActivities
    from activities.orders import OrderStoreActivities, RecordOrderInput, UpdateOrderInput
    from core import errors
    from core.broker_client import BrokerOrder
    from core.money import MAX_AMOUNT, SHARE_QUANTUM, round_cash
    from core.settings import SagaConfig
    from core.statuses import BROKER_FINAL, BROKER_STATUSES, OrderStatus
    from workflows.models import (
        BrokerReport,
        CancelResult,
        OrderInput,
        OrderRequest,
        OrderState,
        PlaceResult,
        TimelineEntry,
        place_result,
        validate_request,
    )
    from workflows.pricing import Hold, cumulative_fee, hold_for

ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
ACCOUNT_ID = SearchAttributeKey.for_keyword("AccountId")
SYMBOL = SearchAttributeKey.for_keyword("Symbol")

ORDER_TERMINAL = "OrderTerminal"
ORDER_CONFLICT_REASON = "order id already used with other parameters"

In = TypeVar("In")
Out = TypeVar("Out")
MAX_TIMELINE = 60
MAX_FENCE_RETRIES = 5
# Runs started from this version on take their quote, lock (when free), ledger and orders-table
# steps as local activities; runs started before replay as they ran, with ordinary activities
# (see _step and _acquire_lock).
LOCAL_STEPS_PATCH = "local-steps-v1"
# Runs started from this version on take the saga's settings from their worker (a local
# activity), never from the input; runs started before read the input's, as they did.
WORKER_SETTINGS_PATCH = "worker-settings-v1"
# Runs started from this version on book only the broker's own answers (a signalled report makes
# them ask the broker), check those answers against the order, and park the order instead of
# failing when a step past the pivot cannot go on.
TRUST_BOUNDARY_PATCH = "trust-boundary-v1"
ORDER_NOT_PARKED = "OrderNotParked"

LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=errors.NON_RETRYABLE_LEDGER,
)
LOCK_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    maximum_interval=timedelta(seconds=2),
    non_retryable_error_types=[errors.LOCK_LOST],
)
# Asking the broker about an order is retried until the broker answers: nothing after the pivot
# is decided without its word.
BROKER_ASK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[errors.BROKER_REJECTED],
)
# A submit is retried within the submit's total timeout; its outcome is then asked for.
BROKER_SUBMIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=[errors.BROKER_REJECTED],
)


# What a failed step raises: an ordinary activity's failure arrives as an ActivityError around
# the activity's ApplicationError, a local activity's as the ApplicationError itself.
STEP_ERRORS = (ActivityError, ApplicationError)


def _error_type(err: BaseException) -> str | None:
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause.type if isinstance(cause, ApplicationError) else None


def _step_name(method: Callable[..., Any]) -> str:
    return getattr(method, "__name__", "a step")


def _fence_seen(err: BaseException) -> int:
    """The newest fence a StaleFence refusal says the ledger has seen (0 if it does not say)."""
    cause = err.cause if isinstance(err, ActivityError) else err
    details = cause.details if isinstance(cause, ApplicationError) else ()
    seen = details[0].get("last_fence") if details and isinstance(details[0], dict) else None
    return seen if isinstance(seen, int) and seen > 0 else 0


def _error_message(err: BaseException, default: str) -> str:
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause.message if isinstance(cause, ApplicationError) else default


@workflow.defn
class OrderWorkflow:
    @workflow.init
    def __init__(self, inp: OrderInput) -> None:
        self._cfg = SagaConfig()  # the worker's, read first thing in run()
        carried = inp.carried
        self._state = carried or OrderState(
            request=inp.request, workflow_id=workflow.info().workflow_id
        )
        self._decided = carried is not None
        self._pivoted = carried is not None
        self._reports: list[BrokerReport] = []
        self._compensations: list[Callable[[], Awaitable[None]]] = []
        self._local = False
        self._guarded = False  # TRUST_BOUNDARY_PATCH: evidence rules and parking
        self._past_accept = carried is not None
        self._parking = False
        self._resume = False

    # ------------------------------------------------------------------ handlers

    @workflow.update
    async def place(self, request: OrderRequest) -> PlaceResult:
        """Answers once the order is held or refused; never waits on the broker."""
        await workflow.wait_condition(lambda: self._decided)
        return place_result(self._state)

    @place.validator
    def _validate_place(self, request: OrderRequest) -> None:
        if request.params_hash() != self._state.request.params_hash():
            raise ApplicationError(
                f"order id {request.order_id} is already used with other parameters",
                type=errors.ORDER_CONFLICT,
            )

    @workflow.update
    async def cancel(self) -> CancelResult:
        """Records the request; the broker is asked by the main loop, so this never waits on it."""
        if not self._state.cancel_requested:
            self._state.cancel_requested = True
            self._note("cancel requested")
        if self._pivoted:
            self._set_status(OrderStatus.CANCEL_REQUESTED, "asking the broker to cancel")
            detail = "the broker is asked to cancel; the order ends when it confirms"
        else:
            detail = "the order will not be sent to the broker"
        return CancelResult(accepted=True, status=self._state.status, detail=detail)

    @cancel.validator
    def _validate_cancel(self) -> None:
        if self._state.terminal:
            raise ApplicationError(
                f"order is already {self._state.status.value}", type=ORDER_TERMINAL
            )

    @workflow.update
    async def resume(self) -> CancelResult:
        """An operator fixed what parked the order: try the step that could not go on again."""
        self._resume = True
        self._note("resume requested")
        return CancelResult(
            accepted=True, status=self._state.status, detail="the failed step is tried again"
        )

    @resume.validator
    def _validate_resume(self) -> None:
        if self._state.status != OrderStatus.NEEDS_ATTENTION:
            raise ApplicationError(
                f"order is {self._state.status.value}, not parked", type=ORDER_NOT_PARKED
            )

    @workflow.signal
    def broker_update(self, report: BrokerReport) -> None:
        self._reports.append(report)

    @workflow.query
    def status(self) -> OrderState:
        return self._state

    # ------------------------------------------------------------------ the saga

    @workflow.run
    async def run(self, inp: OrderInput) -> OrderState:
        self._local = self._use_local_steps()
        if workflow.patched(WORKER_SETTINGS_PATCH):
            self._cfg = await workflow.execute_local_activity_method(
                ConfigActivities.saga_config,
                SagaConfigInput(),
                start_to_close_timeout=timedelta(seconds=5),
            )
        else:  # started before the worker owned them: replays with what it was given
            self._cfg = SagaConfig.model_validate(inp.config or {})
        self._guarded = workflow.patched(TRUST_BOUNDARY_PATCH)
        self._upsert_search_attributes()
        if inp.carried is None:
            try:
                await self._accept()
            except (FailureError, asyncio.CancelledError):
                # Before the pivot every step has a compensation; run them, keep the error. Only
                # on failures that end the workflow: a bug (KeyError, TypeError, ...) fails the
                # workflow task, which Temporal retries, and must move no money on each attempt.
                # Never on other BaseExceptions: the worker evicts workflows from its cache with
                # one, and this run will be replayed elsewhere, compensations and all.
                await self._compensate()
                raise
            if self._state.terminal:
                return self._state
        await self._past_the_pivot()
        return self._state

    async def _past_the_pivot(self) -> None:
        """``_execute``, where a Temporal cancel of the workflow cannot cut a step short.

        From the pivot on the broker may hold the order, and a step interrupted by the cancel (a
        submit whose answer is lost, a fill half booked, a void not made) would leave the order
        unreconciled. So the steps run in their own task, and a cancel of the workflow (which
        Temporal delivers to the workflow's main task only) is recorded as the customer's cancel:
        the follow loop sends it to the broker, and the order ends when the broker says so.
        """
        self._past_accept = True
        steps = asyncio.create_task(self._execute())
        while True:
            try:
                await asyncio.shield(steps)
                return
            except asyncio.CancelledError:
                if steps.done():
                    raise
                if not self._state.cancel_requested:
                    self._state.cancel_requested = True
                    self._note("workflow cancel requested")

    async def _accept(self) -> None:
        req = self._state.request
        reason = validate_request(req)
        if reason:
            await self._refuse(reason, recorded=False)
            return
        hold = await self._price()
        if hold is None:
            await self._refuse("no price: no fresh quote for " + req.symbol, recorded=False)
            return
        asset, amount = hold.asset, hold.amount
        self._state.hold_asset, self._state.limit_sent = asset, hold.limit_sent
        # Pushed before the reserve: a reserve interrupted by a cancellation may still commit,
        # and the void (idempotent, and a no-op on an order with no hold) covers both cases.
        self._compensations.append(self._void_before_pivot)
        refused = await self._reserve_under_lock(asset, amount)
        if refused:
            self._compensations.pop()
            await self._refuse(refused, recorded=refused.startswith(ORDER_CONFLICT_REASON))
            return
        self._state.held = amount
        self._set_status(OrderStatus.ACCEPTED, f"held {amount} {asset}")
        self._decided = True

    async def _price(self) -> Hold | None:
        """What to hold and the limit to send; None when a market order has no fresh quote."""
        req = self._state.request
        ask = None
        if req.order_type == "market":
            ask = await self._quote()
            if ask is None:
                return None
        return hold_for(req, ask, self._cfg)

    async def _quote(self) -> Decimal | None:
        q = await self._step(
            MarketDataActivities.get_quote,
            GetQuoteInput(symbol=self._state.request.symbol),
            start_to_close=timedelta(seconds=5),
            retry=RetryPolicy(maximum_attempts=5),
        )
        if not q.fresh or q.ask is None or q.ask <= 0:
            return None
        return Decimal(q.ask)

    async def _reserve_under_lock(self, asset: str, amount: Decimal) -> str | None:
        """Lock, reserve, unlock; a refusal reason, or None once held.

        A stale-fence refusal means our lock expired and someone else wrote since, or the lock's
        counter went back and handed our fence out before: lock again, asking for a fence above
        the newest the ledger has seen, and retry the same reserve (same idempotency key, same
        amount).
        """
        req = self._state.request
        key = req.key
        floor = 0
        for _ in range(MAX_FENCE_RETRIES):
            fence = await self._acquire_lock(floor)
            try:
                await self._ledger(
                    LedgerActivities.reserve_funds,
                    ReserveInput(
                        account_id=req.account_id,
                        order_key=key,
                        asset=asset,
                        amount=amount,
                        fence=fence,
                        idempotency_key=f"{key}:reserve",
                        side=req.side,
                        symbol=req.symbol,
                        order=self._order_record(),
                    ),
                )
                return None
            except STEP_ERRORS as err:
                kind = _error_type(err)
                if kind == errors.STALE_FENCE:
                    floor = max(floor, _fence_seen(err))
                    self._note("lock expired under the reserve; locking again")
                    continue
                if kind == errors.INSUFFICIENT_FUNDS:
                    return f"insufficient funds: {_error_message(err, str(err))}"
                if kind == errors.UNKNOWN_ACCOUNT:
                    return f"unknown account {req.account_id}"
                if kind == errors.ORDER_CONFLICT:
                    return f"{ORDER_CONFLICT_REASON} ({req.order_id})"
                raise
            finally:
                await self._release_lock()
        raise ApplicationError("reserve kept losing its lock", type=errors.LOCK_LOST)

    async def _acquire_lock(self, floor: int = 0) -> int:
        """The account lock's fencing token, above ``floor`` (the ledger's newest fence).

        First one local try that does not wait: an account no other order is using (the common
        case) is locked with no round trip. If the lock is busy, or the try fails at all, an
        ordinary activity waits up to ``lock_wait_ms`` and is retried. The wait is never a local
        activity: one holds its workflow task open, and on a hot account (hundreds of orders
        queued on one lock, bench.contention) waiting local acquires were cancelled and retried
        as their workflow tasks timed out. A try whose answer was lost is harmless: the lock's
        owner is the order key, so taking it again returns the same fence.
        """
        req = self._state.request
        lock = AcquireLockInput(
            account_id=req.account_id,
            owner=req.key,
            ttl_ms=self._cfg.lock_ttl_ms,
            wait_ms=self._cfg.lock_wait_ms,
            floor=floor,
        )
        if self._local:
            try:
                got = await workflow.execute_local_activity_method(
                    LockActivities.acquire_lock,
                    lock.model_copy(update={"wait_ms": 0}),
                    start_to_close_timeout=timedelta(seconds=5),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
                return int(got.fence)
            except STEP_ERRORS:
                pass  # busy: wait for it as an ordinary activity
        res = await workflow.execute_activity_method(
            LockActivities.acquire_lock,
            lock,
            start_to_close_timeout=timedelta(milliseconds=self._cfg.lock_wait_ms + 5_000),
            retry_policy=LOCK_RETRY,
        )
        return int(res.fence)

    async def _release_lock(self) -> None:
        req = self._state.request
        await self._step(
            LockActivities.release_lock,
            ReleaseLockInput(account_id=req.account_id, owner=req.key),
            start_to_close=timedelta(seconds=5),
            retry=LOCK_RETRY,
        )

    async def _execute(self) -> None:
        """From the pivot on: submit, follow the broker, finish."""
        if self._state.broker_order_id is None and not self._pivoted:
            if self._state.cancel_requested:
                await self._void("canceled before reaching the broker")
                await self._finish(OrderStatus.CANCELED, "canceled before reaching the broker")
                return
            if not await self._submit():
                return
        await self._follow()

    async def _submit(self) -> bool:
        """Send the order; False when it ended here (rejected, or never reached the broker)."""
        req = self._state.request
        self._pivoted = True
        self._compensations.clear()  # from here on nothing is compensated blindly
        try:
            res = await self._broker(
                BrokerActivities.submit_order,
                SubmitOrderInput(
                    client_order_id=req.key,
                    symbol=req.symbol,
                    qty=req.qty,
                    side=req.side,
                    order_type="limit" if self._state.limit_sent is not None else "market",
                    time_in_force=req.time_in_force,
                    limit_price=self._state.limit_sent,
                ),
                retry=BROKER_SUBMIT_RETRY,
                schedule_to_close=timedelta(seconds=self._cfg.submit_schedule_to_close_s),
                park=False,
            )
        except ActivityError as err:
            if _error_type(err) == errors.BROKER_REJECTED:
                reason = _error_message(err, "rejected by the broker")
                await self._void(f"broker rejected: {reason}")
                await self._finish(OrderStatus.REJECTED, f"broker rejected: {reason}")
                return False
            self._note("submit outcome unknown; asking the broker")
            return await self._find_after_unknown()
        self._reports.append(self._report_from(res.order, "submit"))
        return True

    async def _find_after_unknown(self) -> bool:
        """After an unknown submit outcome: does the broker have the order?

        It is voided only once it has stayed absent longer than any request can remain in flight.
        """
        gave_up_at = workflow.now()
        while True:
            view = await self._ask_broker()
            if view.order is not None:  # open or terminal: the broker has it
                self._reports.append(self._report_from(view.order, "poll"))
                return True
            waited = (workflow.now() - gave_up_at).total_seconds()
            if waited >= self._cfg.absent_grace_s:
                reason = "the broker never received the order"
                await self._void(reason)
                ended = (
                    OrderStatus.CANCELED if self._state.cancel_requested else OrderStatus.REJECTED
                )
                await self._finish(ended, reason)
                return False
            await workflow.sleep(min(self._cfg.fill_poll_interval_s, self._cfg.absent_grace_s))

    async def _follow(self) -> None:
        """Book fills until the broker says the order is final, then finish it."""
        final: BrokerReport | None = None
        while final is None:
            if self._state.cancel_requested and not self._state.cancel_sent:
                await self._send_cancel()
            await self._wait_for_reports()
            reports, self._reports = self._reports, []
            final = await self._apply_reports(reports)
            if final is None and self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._reports:
                    self._note("continued as new (history is long); fills carried over")
                    workflow.continue_as_new(
                        OrderInput(request=self._state.request, carried=self._state)
                    )
        status = BROKER_FINAL[final.status]
        await self._void(f"broker says {final.status}")
        await self._finish(status, f"broker: {final.status}")

    async def _wait_for_reports(self) -> None:
        try:
            await workflow.wait_condition(
                lambda: (
                    bool(self._reports)
                    or (self._state.cancel_requested and not self._state.cancel_sent)
                ),
                timeout=timedelta(seconds=self._cfg.fill_poll_interval_s),
            )
        except TimeoutError:
            # Events stopped (lost, or the listener is down): ask the broker ourselves.
            view = await self._ask_broker()
            if view.order is not None:
                self._reports.append(self._report_from(view.order, "poll"))

    async def _apply_reports(self, reports: list[BrokerReport]) -> BrokerReport | None:
        """Book the largest cumulative fill among the reports; the final report, if any."""
        if self._guarded:
            reports = await self._evidence(reports)
        if not reports:
            return None
        best = max(reports, key=lambda r: r.filled_qty)
        final = next((r for r in reports if r.status in BROKER_FINAL), None)
        if best.broker_order_id and not self._state.broker_order_id:
            self._state.broker_order_id = best.broker_order_id
            if self._state.status == OrderStatus.ACCEPTED:
                self._set_status(OrderStatus.SUBMITTED, f"broker order {best.broker_order_id}")
            await self._store(self._state.status)
        if final is not None and final.filled_qty > best.filled_qty:
            best = final
        self._state.broker_status = (final or best).status
        await self._book(best)
        return final

    async def _evidence(self, reports: list[BrokerReport]) -> list[BrokerReport]:
        """The reports that may be booked: only the broker's own answers to our calls.

        A signalled report is anyone's word (the Temporal frontend takes signals from whoever
        reaches it), so it is never booked: one that brings news (a fill or a status the order
        has not seen) makes the saga ask the broker at once, and the answer is booked. An answer
        of the broker's that does not fit the order (``_report_problem``) parks it.
        """
        kept: list[BrokerReport] = []
        news = False
        for report in reports:
            if report.source == "event":
                news = news or self._is_news(report)
                continue
            problem = self._report_problem(report)
            if problem is None:
                kept.append(report)
            else:
                await self._park_for(f"the broker's {report.source} answer: {problem}")
        if news:
            view = await self._ask_broker()
            if view.order is not None:
                answer = self._report_from(view.order, "poll")
                problem = self._report_problem(answer)
                if problem is None:
                    kept.append(answer)
                else:
                    await self._park_for(f"the broker's answer: {problem}")
        return kept

    def _is_news(self, report: BrokerReport) -> bool:
        st = self._state
        return report.filled_qty != st.filled_qty or report.status != st.broker_status

    def _report_problem(self, report: BrokerReport) -> str | None:
        """Why a report cannot be booked as it is, or None when it fits the order."""
        st, req = self._state, self._state.request
        if report.status not in BROKER_STATUSES:
            return f"unknown status {report.status[:40]!r}"
        if st.broker_order_id is not None and report.broker_order_id != st.broker_order_id:
            return f"it names broker order {str(report.broker_order_id)[:64]!r}"
        qty, notional = report.filled_qty, report.filled_notional
        if not (qty.is_finite() and notional.is_finite()) or qty < 0 or notional < 0:
            return "negative or non-finite fills"
        if qty > req.qty:
            return f"filled {qty} of an order for {req.qty}"
        if notional > MAX_AMOUNT or qty != qty.quantize(SHARE_QUANTUM):
            return "fills out of range or finer than the share's 9 decimals"
        if (qty == 0) != (notional == 0):
            return "a notional without a quantity, or the reverse"
        if qty < st.filled_qty or notional < st.filled_notional:
            return "cumulative fills went backwards"
        limit = st.limit_sent
        if limit is not None and req.side == "buy" and notional > qty * limit:
            return f"paid more than the limit {limit}"
        if limit is not None and req.side == "sell" and notional < qty * limit:
            return f"sold below the limit {limit}"
        if req.side == "buy":
            cost = round_cash(notional) + cumulative_fee("buy", notional, self._cfg)
            if cost > st.held:
                return f"costs {cost} with fees, more than the {st.held} held"
        return None

    async def _book(self, report: BrokerReport) -> None:
        """Post the increase of the broker's cumulative fill (booked once, whoever reports it)."""
        st, req = self._state, self._state.request
        if report.filled_qty <= st.filled_qty:
            return
        cum_cash = round_cash(report.filled_notional)
        cum_fee = cumulative_fee(req.side, report.filled_notional, self._cfg)
        res = await self._ledger(
            LedgerActivities.post_fill,
            PostFillInput(
                order_key=req.key,
                cum_qty=report.filled_qty,
                cum_notional=report.filled_notional,
                cum_fee=cum_fee,
            ),
        )
        st.filled_qty, st.filled_notional, st.fees = (
            report.filled_qty,
            report.filled_notional,
            cum_fee,
        )
        st.posted_cash = res.posted_cash
        if st.filled_qty < req.qty and st.status != OrderStatus.CANCEL_REQUESTED:
            self._set_status(OrderStatus.PARTIALLY_FILLED, f"filled {st.filled_qty}/{req.qty}")
        else:
            self._note(f"filled {st.filled_qty}/{req.qty} for {cum_cash} USD")
        await self._store(st.status)

    async def _send_cancel(self) -> None:
        self._state.cancel_sent = True
        res = await self._broker(
            BrokerActivities.cancel_order,
            CancelOrderInput(
                client_order_id=self._state.request.key,
                broker_order_id=self._state.broker_order_id,
            ),
            retry=BROKER_ASK_RETRY,
        )
        if res.order is not None:
            self._reports.append(self._report_from(res.order, "cancel"))

    async def _ask_broker(self) -> ReconcileOrderResult:
        return await self._broker(
            BrokerActivities.reconcile_order,
            ReconcileOrderInput(client_order_id=self._state.request.key),
            retry=BROKER_ASK_RETRY,
        )

    async def _broker(
        self,
        method: Callable[[Any, In], Awaitable[Out]],
        arg: In,
        *,
        retry: RetryPolicy,
        schedule_to_close: timedelta | None = None,
        park: bool = True,
    ) -> Out:
        """A broker call: an ordinary activity on the broker queue (the bulkhead), each attempt
        bounded by the submit timeout. Past the pivot one that fails for good (wrong keys, say)
        parks the order, unless ``park`` is off (the submit reads its own failures)."""
        while True:
            try:
                return await workflow.execute_activity_method(
                    method,
                    arg,
                    task_queue=self._cfg.broker_task_queue,
                    start_to_close_timeout=timedelta(seconds=self._cfg.submit_start_to_close_s),
                    schedule_to_close_timeout=schedule_to_close,
                    retry_policy=retry,
                )
            except ActivityError as err:
                if not (park and self._parks()):
                    raise
                reason = _error_message(err, str(err))
                await self._park_for(f"{_step_name(method)} at the broker: {reason}")

    @staticmethod
    def _report_from(order: BrokerOrder, source: str) -> BrokerReport:
        return BrokerReport(
            source=source,  # type: ignore[arg-type]
            broker_order_id=order.id,
            status=order.status,
            filled_qty=order.filled_qty,
            filled_notional=order.filled_notional,
            terminal=order.status in BROKER_FINAL,
        )

    # ------------------------------------------------------------------ parking

    async def _park_for(self, reason: str) -> None:
        """Stop here, visibly, until an operator resumes the order (the ``resume`` update).

        Past the pivot the broker may hold the order, so no step may end it by failing: the
        hold stays, reports keep arriving (they are applied once resumed), and the order is
        listed under ``OrderStatus = 'NEEDS_ATTENTION'`` with its reason.
        """
        st = self._state
        before, reason_before = st.status, st.reason
        st.reason = reason
        self._set_status(OrderStatus.NEEDS_ATTENTION, reason)
        self._resume = False
        if not self._parking:
            self._parking = True
            try:
                await self._store(OrderStatus.NEEDS_ATTENTION)
            except STEP_ERRORS:
                self._note("the orders row could not be updated")
            finally:
                self._parking = False
        await workflow.wait_condition(lambda: self._resume)
        self._resume = False
        st.reason = reason_before
        self._set_status(before, "resumed")

    def _parks(self) -> bool:
        """Whether a failed step parks the order rather than failing the workflow."""
        return self._guarded and self._past_accept and not self._parking

    # ------------------------------------------------------------------ endings

    async def _void_before_pivot(self) -> None:
        await self._void("compensating")
        await self._finish(OrderStatus.CANCELED, "compensated before reaching the broker")

    async def _compensate(self) -> None:
        while self._compensations:
            step = self._compensations.pop()
            await step()

    async def _void(self, why: str) -> None:
        req = self._state.request
        res = await self._ledger(
            LedgerActivities.void_funds,
            VoidInput(order_key=req.key, idempotency_key=f"{req.key}:void"),
        )
        self._state.released = Decimal(res.released)
        self._note(f"released {res.released} {self._state.hold_asset or ''} ({why})".strip())

    async def _refuse(self, reason: str, *, recorded: bool) -> None:
        """End the order before anything is held; `recorded`: its row exists already."""
        self._state.reason = reason
        self._set_status(OrderStatus.REJECTED, reason)
        if recorded:
            self._decided = True
            return
        # The permanent record first: the customer's answer must not outrun it.
        await self._step(
            OrderStoreActivities.record_order,
            RecordOrderInput(record=self._order_record(), status="REJECTED", reason=reason),
            start_to_close=timedelta(seconds=10),
            retry=LEDGER_RETRY,
        )
        self._decided = True

    async def _finish(self, status: OrderStatus, reason: str) -> None:
        if status != OrderStatus.SETTLED:
            self._state.reason = self._state.reason or reason
        self._set_status(status, reason)
        self._decided = True
        await self._store(status)

    async def _store(self, status: OrderStatus) -> None:
        st, req = self._state, self._state.request
        await self._step(
            OrderStoreActivities.update_order,
            UpdateOrderInput(
                account_id=req.account_id,
                order_id=req.order_id,
                status=status.value,
                reason=st.reason,
                broker_order_id=st.broker_order_id,
                filled_qty=st.filled_qty,
                filled_notional=st.filled_notional,
                fees=st.fees,
            ),
            start_to_close=timedelta(seconds=10),
            retry=LEDGER_RETRY,
        )

    # ------------------------------------------------------------------ helpers

    def _use_local_steps(self) -> bool:
        return workflow.patched(LOCAL_STEPS_PATCH)

    async def _step(
        self,
        method: Callable[[Any, In], Awaitable[Out]],
        arg: In,
        *,
        start_to_close: timedelta,
        retry: RetryPolicy,
    ) -> Out:
        """A quote, unlock, ledger or orders-table step: Postgres or Redis work of milliseconds.

        It runs as a local activity, in this worker and inside the workflow task: no task-queue
        round trip and no activity events, which is most of what Temporal costs per step (the
        saga settles about 1.2 times as many orders per second; docs/PERFORMANCE.md). Nothing
        is weakened: a local activity is retried by this worker with the same policy (by
        timers once retries outlast a minute), and if the worker dies before its result is
        recorded the step runs again, as an ordinary activity's would; every step is idempotent
        (idempotency keys, the lock's owner token, compare-and-set). Broker calls stay ordinary
        activities on the broker queue, where a slow broker cannot hold these steps up.
        """
        while True:
            try:
                if self._local:
                    return await workflow.execute_local_activity_method(
                        method, arg, start_to_close_timeout=start_to_close, retry_policy=retry
                    )
                return await workflow.execute_activity_method(
                    method, arg, start_to_close_timeout=start_to_close, retry_policy=retry
                )
            except STEP_ERRORS as err:
                if not self._parks():
                    raise
                await self._park_for(f"{_step_name(method)}: {_error_message(err, str(err))}")

    async def _ledger(self, method: Callable[[Any, In], Awaitable[Out]], arg: In) -> Out:
        return await self._step(
            method, arg, start_to_close=timedelta(seconds=30), retry=LEDGER_RETRY
        )

    def _order_record(self) -> OrderRecord:
        req = self._state.request
        return OrderRecord(
            account_id=req.account_id,
            order_id=req.order_id,
            workflow_id=self._state.workflow_id,
            symbol=req.symbol,
            side=req.side,
            order_type=req.order_type,
            time_in_force=req.time_in_force,
            qty=req.qty,
            limit_price=req.limit_price,
            params_hash=req.params_hash(),
        )

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self._cfg.max_history_events
        )

    def _set_status(self, status: OrderStatus, detail: str) -> None:
        self._state.status = status
        self._note(f"{status.value}: {detail}" if detail else status.value)
        self._upsert_search_attributes()

    def _note(self, text: str) -> None:
        timeline = self._state.timeline
        timeline.append(TimelineEntry(at=workflow.now(), event=text))
        if len(timeline) > MAX_TIMELINE:
            del timeline[: len(timeline) - MAX_TIMELINE]

    def _upsert_search_attributes(self) -> None:
        st, req = self._state, self._state.request
        workflow.upsert_search_attributes(
            [
                ORDER_STATUS.value_set(st.status.value),
                ACCOUNT_ID.value_set(req.account_id),
                SYMBOL.value_set(req.symbol),
            ]
        )
        filled = f"filled {st.filled_qty}/{req.qty}"
        workflow.set_current_details(
            f"**{st.status.value}** {req.side} {req.qty} {req.symbol} "
            f"({req.order_type}, {req.time_in_force}) for {req.account_id}; {filled}; "
            f"held {st.held} {st.hold_asset or ''}; fees {st.fees}"
            + (f"; reason: {st.reason}" if st.reason else "")
        )
