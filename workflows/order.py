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

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ApplicationError,
    FailureError,
    TimeoutError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from activities.config import ConfigActivities, SagaConfigInput
    from activities.ledger import (
        LedgerActivities,
        ReserveInput,
        ReserveResult,
    )
    from activities.marketdata import GetQuoteInput, MarketDataActivities
    from core import errors
    from core.money import MAX_AMOUNT
    from core.risk import order_notional
    from core.settings import SagaConfig
    from core.statuses import OrderStatus
    from workflows.fxleg import FX_LEG_PATCH, FxLeg
    from workflows.metrics import record_decision
    from workflows.models import (
        BrokerReport,
        CancelResult,
        OrderInput,
        OrderRequest,
        OrderState,
        PlaceResult,
        ReplaceRequest,
        ReplaceResult,
        foreign_ids,
        place_result,
        validate_request,
    )
    from workflows.pricing import Hold, hold_for
    from workflows.replace import ReplaceOrder, replace_problem, replace_refused
    from workflows.saga_base import (  # the patches and names others import from here
        CANCEL_BEFORE_DECISION_PATCH,
        DECIDED_OR_REFUSED_PATCH,
        LOCAL_STEPS_PATCH,
        ORDER_CONFLICT_REASON,
        ORDER_NOT_PARKED,
        ORDER_TERMINAL,
        STEP_ERRORS,
        TRUST_BOUNDARY_PATCH,
        WORKER_SETTINGS_PATCH,
        Refusal,
        error_message,
        error_type,
        innermost,
    )
    from workflows.session import MarketHours

__all__ = [
    "DECIDED_OR_REFUSED_PATCH",
    "FX_LEG_PATCH",
    "LOCAL_STEPS_PATCH",
    "TRUST_BOUNDARY_PATCH",
    "WORKER_SETTINGS_PATCH",
    "OrderWorkflow",
]

# Runs started from this version on write no orders-table row for a request refused at the door:
# its numbers may not fit the table (1e-1000030 was retried forever) and its ids may be another
# order's. Runs started before record it, as they did.
STRICT_INPUT_PATCH = "strict-input-v1"


# Pinned when the workers are versioned (worker/main.py, deployment_config; the SDK refuses a
# behaviour on the definition to unversioned workers): an order runs to its end on the build that
# started it (its history replays only on the code that wrote it), so a new build changes new
# orders without a patch. A gtc order that outlives its build moves onto the current one at a
# continue-as-new (FollowBroker._continue). Changes that must reach running orders still go
# behind workflow.patched (docs/DEPLOY.md).
@workflow.defn
class OrderWorkflow(MarketHours, ReplaceOrder, FxLeg):
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
        self._stage = "validating"  # what the accept phase is doing: a failure's reason names it
        self._undecodable = inp.undecodable
        self._refusal_kind: str | None = None  # the metric's category where the text has none
        self._ask: Decimal | None = None  # the quote a market order was priced from (risk check)
        self._backoff = False
        self._poll_s = self._cfg.fill_poll_interval_s
        self._replace_asked: ReplaceRequest | None = None
        self._replace_answer: ReplaceResult | None = None

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
    async def replace(self, request: ReplaceRequest) -> ReplaceResult:
        """Amend the live order (workflows/replace.py); answers once the broker has said yes or
        no: the order as it then stands."""
        self._replace_asked, self._replace_answer = request, None
        self._note("replace requested")
        await workflow.wait_condition(lambda: self._replace_answer is not None)
        assert self._replace_answer is not None
        return self._replace_answer

    @replace.validator
    def _validate_replace(self, request: ReplaceRequest) -> None:
        reason = replace_problem(self._state, request)
        if reason is None and not self._guarded:
            reason = "order was placed before replaces existed"
        if reason is None and self._replace_asked is not None:
            reason = "a replace of this order is in progress"
        if reason is not None:
            raise replace_refused(reason)

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
        lifted = self._lift(report)  # a replaced order's: its fills span its broker orders
        if lifted is not None:
            self._reports.append(lifted)

    @workflow.query
    def status(self) -> OrderState:
        return self._state

    @workflow.run
    async def run(self, inp: OrderInput) -> OrderState:
        self._local = self._use_local_steps()
        try:
            await self._load_config(inp)
        except asyncio.CancelledError:
            # The cancel came before anything else: on a retried workflow task, say, whose first
            # try reserved and died (a local activity's result is nothing until its task
            # completes), so this run never heard of the hold.
            if not workflow.patched(CANCEL_BEFORE_DECISION_PATCH):
                raise
            await self._load_config(inp)  # a cancel is delivered once: this read runs
            if inp.carried is None:
                await self._cancelled_before_decision()
                raise
            self._state.cancel_requested = True  # past the pivot: the customer's cancel
            self._note("workflow cancel requested")
        self._guarded = workflow.patched(TRUST_BOUNDARY_PATCH)
        self._upsert_search_attributes()
        if inp.carried is None:
            try:
                await self._accept()
            except (FailureError, asyncio.CancelledError) as err:
                # A step failed for good before the order was decided (a quote that cannot be
                # read, an account locked too long by other orders, a ledger refusal nobody
                # expected): the order is refused, with its reason and its row, and the customer
                # is answered; never a failed workflow and an unanswered place.
                if not is_cancelled_exception(err) and workflow.patched(DECIDED_OR_REFUSED_PATCH):
                    self._compensations.clear()
                    await self._refuse(self._failure_reason(err), recorded=False, void=True)
                    record_decision(self._state.status, self._state.reason)
                    return self._state
                # Cancelled before the decision (or started before the patch): every step so far
                # has a compensation; run them, keep the error. Only on failures that end the
                # workflow: a bug (KeyError, TypeError, ...) fails the workflow task, which
                # Temporal retries, and must move no money on each attempt. Never on other
                # BaseExceptions: the worker evicts workflows from its cache with one, and this
                # run will be replayed elsewhere, compensations and all.
                if is_cancelled_exception(err) and workflow.patched(CANCEL_BEFORE_DECISION_PATCH):
                    await self._cancelled_before_decision()
                    raise
                await self._compensate()
                raise
            record_decision(self._state.status, self._state.reason, self._refusal_kind)
            if self._state.terminal:
                return self._state
        await self._past_the_pivot()
        return self._state

    async def _load_config(self, inp: OrderInput) -> None:
        if workflow.patched(WORKER_SETTINGS_PATCH):
            self._cfg = await workflow.execute_local_activity_method(
                ConfigActivities.saga_config,
                SagaConfigInput(),
                start_to_close_timeout=timedelta(seconds=5),
            )
        else:  # started before the worker owned them: replays with what it was given
            self._cfg = SagaConfig.model_validate(inp.config or {})

    async def _cancelled_before_decision(self) -> None:
        """Cancelled before the order was decided: void its hold, whatever this run saw.

        A try of this workflow task that died may have committed a reserve this run never heard
        of; the void releases it (and is a no-op with no hold, its tombstone refusing a reserve
        that arrives later). The order is recorded CANCELED and the customer answered before the
        workflow ends.
        """
        self._compensations.clear()
        await self._void_before_pivot()
        await workflow.wait_condition(workflow.all_handlers_finished)

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
        if self._undecodable:  # refused at the door; its ids may be anyone's: no row
            self._refusal_kind = "invalid"
            await self._refuse(f"invalid request: {self._undecodable}", recorded=True)
            return
        reason = validate_request(req) or foreign_ids(req, self._state.workflow_id)
        if reason:
            self._refusal_kind = "invalid"
            # recorded=True writes no row. Patched only here: the marker goes into refused runs'
            # histories only.
            await self._refuse(reason, recorded=workflow.patched(STRICT_INPUT_PATCH))
            return
        self._stage = "pricing"
        hold = await self._price()
        if hold is None:
            await self._refuse("no price: no fresh quote for " + req.symbol, recorded=False)
            return
        if hold.amount > MAX_AMOUNT:  # a market buy of the most shares at the highest ask
            await self._refuse(
                f"the order would hold {hold.amount} {hold.asset}, more than {MAX_AMOUNT}",
                recorded=False,
            )
            return
        if self._pays_in_won():  # workflows/fxleg.py: the rate, and a buy's hold in won
            converted = await self._in_won(hold)
            if isinstance(converted, str):
                await self._refuse(converted, recorded=False)
                return
            hold = converted
        asset, amount = hold.asset, hold.amount
        self._state.hold_asset, self._state.limit_sent = asset, hold.limit_sent
        # Pushed before the reserve: a reserve interrupted by a cancellation may still commit,
        # and the void (idempotent, and a no-op on an order with no hold) covers both cases.
        self._compensations.append(self._void_before_pivot)
        got = await self._reserve_under_lock(asset, amount)
        if isinstance(got, Refusal):
            self._compensations.pop()
            await self._refuse(got.reason, recorded=got.recorded)
            return
        # What the ledger holds is the authority, not this try's arithmetic: a retry of this
        # workflow task, after a reserve that committed and a quote that moved, gets the first
        # reserve's amount and bound back (activities/ledger/service.py, first_reserve).
        amount = got.amount
        if got.fx_rate is not None:  # the first reserve's rate, as its amount
            self._state.fx_rate = got.fx_rate
            if got.amount != hold.amount:  # this try's dollar hold is not the one held
                self._state.held_usd = None
        if got.price_bound is not None and got.price_bound != self._state.limit_sent:
            self._state.limit_sent = got.price_bound
        self._state.held = amount
        self._set_status(OrderStatus.ACCEPTED, f"held {amount} {asset}")
        self._decided = True

    async def _price(self) -> Hold | None:
        """What to hold and the limit to send; None when a market order has no fresh quote."""
        req = self._state.request
        ask = None
        if req.order_type == "market":
            ask = self._ask = await self._quote()
            if ask is None:
                return None
        return hold_for(req, ask, self._cfg)

    async def _quote(self) -> Decimal | None:
        q = await self._step(
            MarketDataActivities.get_quote,
            GetQuoteInput(symbol=self._state.request.symbol),
            start_to_close=timedelta(seconds=5),
            # A few quick tries (0.2 + 0.4 + 0.8 + 1.6 s apart): the customer is waiting.
            retry=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5),
        )
        if not q.fresh or q.ask is None or q.ask <= 0:
            return None
        return Decimal(q.ask)

    async def _reserve_under_lock(self, asset: str, amount: Decimal) -> ReserveResult | Refusal:
        """Lock, reserve, unlock (``_fenced``: a stale fence locks again and retries the same
        reserve); what is held, or why nothing is."""
        req = self._state.request
        key = req.key

        async def reserve(fence: int) -> ReserveResult:
            self._stage = "holding funds"
            return await self._ledger(
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
                    price_bound=self._state.limit_sent,  # a market buy's cap
                    notional=order_notional(req.qty, self._state.limit_sent or self._ask),
                    pay_asset=self._state.pay_asset,  # paid in won (workflows/fxleg.py)
                    fx_rate=self._state.fx_rate,
                ),
            )

        try:
            return await self._fenced(reserve, "reserve")
        except STEP_ERRORS as err:
            kind = error_type(err)
            if kind == errors.INSUFFICIENT_FUNDS:
                return Refusal(f"insufficient funds: {error_message(err, str(err))}")
            if kind == errors.UNKNOWN_ACCOUNT:
                return Refusal(f"unknown account {req.account_id}")
            if kind == errors.ORDER_CONFLICT:
                return Refusal(f"{ORDER_CONFLICT_REASON} ({req.order_id})", recorded=True)
            if kind == errors.ORDER_REFUSED:  # an earlier try of this task refused it
                return Refusal(error_message(err, "refused"), recorded=True)
            if kind == errors.RISK_LIMIT:  # a limit or the trading state (core/risk.py)
                return Refusal(error_message(err, "refused by pre-trade risk"))
            raise

    def _failure_reason(self, err: BaseException) -> str:
        """The refusal's reason for a step that failed for good before the decision."""
        cause = innermost(err)
        # The wait's schedule-to-close ends it as a timeout during a try, or as the last try's
        # "busy" when no try fits in what is left.
        busy = isinstance(cause, TimeoutError) or error_type(cause) == errors.LOCK_NOT_ACQUIRED
        if self._stage == "locking the account" and busy:
            waited = f"{self._cfg.lock_wait_total_s:g}"
            return f"account busy: other orders kept the account locked for {waited} s"
        text = cause.message if isinstance(cause, FailureError) else str(cause)
        return f"could not be placed ({self._stage}): {text or type(cause).__name__}"

    async def _execute(self) -> None:
        """From the pivot on: submit, follow the broker, finish."""
        if self._state.broker_order_id is None and not self._pivoted:
            await self._wait_for_open()  # QUEUED while the market is closed (workflows/session.py)
            if self._state.cancel_requested:
                await self._void("canceled before reaching the broker")
                await self._finish(OrderStatus.CANCELED, "canceled before reaching the broker")
                return
            if not await self._submit():
                return
        await self._follow()
