"""The saga's plumbing, shared by its phases: how a step runs (local or ordinary activity, on the
broker queue), what happens when one cannot go on (the order is parked), the endings (void,
refuse, finish), the orders row, the timeline and the search attributes.

``OrderWorkflow`` (workflows/order.py) is built on it; nothing here is a workflow by itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.broker import BrokerActivities, ReconcileOrderInput
    from activities.ledger import (
        LedgerActivities,
        OrderRecord,
        VoidInput,
    )
    from activities.lock import AcquireLockInput, LockActivities, ReleaseLockInput
    from activities.orders import OrderStoreActivities, RecordOrderInput, UpdateOrderInput
    from core import errors
    from core.orderkey import InvalidOrderKey, OrderKey
    from core.settings import SagaConfig
    from core.statuses import OrderStatus
    from workflows.metrics import record_terminal
    from workflows.models import (
        BrokerReport,
        OrderState,
        TimelineEntry,
        foreign_ids,
    )

ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
ACCOUNT_ID = SearchAttributeKey.for_keyword("AccountId")
SYMBOL = SearchAttributeKey.for_keyword("Symbol")

ORDER_TERMINAL = "OrderTerminal"
ORDER_CONFLICT_REASON = "order id already used with other parameters"

In = TypeVar("In")
Out = TypeVar("Out")
MAX_TIMELINE = 60
MAX_FENCE_RETRIES = 5
# The timeline's note when a reserve is refused for a stale fence and the saga locks again.
RELOCK_NOTE = "lock expired under the reserve; locking again"
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
# Runs from this version on keep asking the broker about a parked order (its word noted, nothing
# booked) until it is resumed.
PARKED_FOLLOWS_PATCH = "parked-follows-broker-v1"
PARKED_POLL_MAX_S = 3_600.0
# Runs from this version on resume an order parked by a broker call that failed for good (our
# keys refused) by themselves once the broker answers again; runs before wait for an operator.
BROKER_PARK_RESUMES_PATCH = "broker-park-resumes-v1"
# A parked order's asks: a few tries each, so a resume is never kept waiting behind one.
PARKED_ASK_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))
# Runs from this version on refuse an order, with its reason and its row, when a step fails for
# good before the order is decided; runs before failed the workflow (after compensating).
DECIDED_OR_REFUSED_PATCH = "decided-or-refused-v1"
# Runs from this version on back their polls off while the broker has no news (doubling from
# fill_poll_interval_s to fill_poll_max_interval_s, back at the start on any news).
POLL_BACKOFF_PATCH = "poll-backoff-v1"
# Runs from this version on read the signals that arrived before giving an unknown submit up.
SIGNALS_BEFORE_GIVE_UP_PATCH = "signals-before-give-up-v1"
# Runs from this version on, cancelled before the order is decided, void the order's hold
# whatever this run saw (a dead try of the task may have reserved), record it CANCELED and answer
# the customer; a continued run cancelled while it reads its settings takes it as the customer's
# cancel. Runs before compensated only the steps they had reached themselves.
CANCEL_BEFORE_DECISION_PATCH = "cancel-before-decision-v1"

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


def error_type(err: BaseException) -> str | None:
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause.type if isinstance(cause, ApplicationError) else None


def step_name(method: Callable[..., Any]) -> str:
    return getattr(method, "__name__", "a step")


def fence_seen(err: BaseException) -> int:
    """The newest fence a StaleFence refusal says the ledger has seen (0 if it does not say)."""
    cause = err.cause if isinstance(err, ActivityError) else err
    details = cause.details if isinstance(cause, ApplicationError) else ()
    seen = details[0].get("last_fence") if details and isinstance(details[0], dict) else None
    return seen if isinstance(seen, int) and seen > 0 else 0


def innermost(err: BaseException) -> BaseException:
    """The failure under an activity's wrapping: what actually went wrong."""
    while isinstance(err, ActivityError) and err.cause is not None:
        err = err.cause
    return err


def error_message(err: BaseException, default: str) -> str:
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause.message if isinstance(cause, ApplicationError) else default


@dataclass(frozen=True)
class Refusal:
    """Why an order is refused; ``recorded``: its orders row says so already."""

    reason: str
    recorded: bool = False


class SagaBase:
    """State and plumbing of one order's saga; the phases live in its subclasses."""

    _cfg: SagaConfig
    _state: OrderState
    _decided: bool
    _stage: str
    _backoff: bool  # POLL_BACKOFF_PATCH: quiet polls back off
    _poll_s: float  # the follow loop's poll interval now
    _pivoted: bool
    _reports: list[BrokerReport]
    _compensations: list[Callable[[], Awaitable[None]]]
    _local: bool
    _guarded: bool
    _past_accept: bool
    _parking: bool
    _resume: bool
    _replace_asked: Any  # ReplaceOrder's (workflows/replace.py): a replace waiting for the loop

    async def _step(
        self,
        method: Callable[[Any, In], Awaitable[Out]],
        arg: In,
        *,
        start_to_close: timedelta,
        retry: RetryPolicy,
        park: bool = True,
    ) -> Out:
        """A quote, unlock, ledger or orders-table step: Postgres or Redis work of milliseconds.

        It runs as a local activity, in this worker and inside the workflow task: no task-queue
        round trip and no activity events, which is most of what Temporal costs per step (the
        saga settles about 1.2 times as many orders per second; docs/PERFORMANCE.md). A local
        activity is retried by this worker with the same policy (by timers once retries outlast
        a minute). What it costs: its result reaches history only when the workflow task
        completes, so a worker that dies first leaves the step done and unrecorded, and the
        retried task runs every step of the task again, the quote included, with fresh inputs.
        So every step is idempotent (idempotency keys, the lock's owner token, compare-and-set),
        and the accept phase's decision is held where the retry reads it: the reserve made first
        is what the order holds whatever the new quote says (``first_reserve``), and a refusal
        written first stands (``OrderRefused``; a refusal that finds a hold voids it). Broker
        calls stay ordinary activities on the broker queue, where a slow broker cannot hold these
        steps up.
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
                if not (park and self._parks()):
                    raise
                await self._park_for(f"{step_name(method)}: {error_message(err, str(err))}")

    async def _ledger(
        self, method: Callable[[Any, In], Awaitable[Out]], arg: In, *, park: bool = True
    ) -> Out:
        """A ledger step; past the pivot one that fails for good parks the order, unless
        ``park`` is off (the caller reads the refusal)."""
        return await self._step(
            method, arg, start_to_close=timedelta(seconds=30), retry=LEDGER_RETRY, park=park
        )

    async def _broker(
        self,
        method: Callable[[Any, In], Awaitable[Out]],
        arg: In,
        *,
        retry: RetryPolicy,
        schedule_to_close: timedelta | None = None,
        park: bool = True,
        ask: bool = False,
    ) -> Out:
        """A broker call: an ordinary activity on the broker queue (the bulkhead), or for a
        question (``ask``) on the asks queue beside it, each attempt bounded by the submit
        timeout. Past the pivot one that fails for good (wrong keys, say) parks the order,
        unless ``park`` is off (the submit reads its own failures)."""
        queue = self._cfg.broker_task_queue
        if ask and self._cfg.broker_asks_task_queue:
            queue = self._cfg.broker_asks_task_queue
        while True:
            try:
                return await workflow.execute_activity_method(
                    method,
                    arg,
                    task_queue=queue,
                    start_to_close_timeout=timedelta(seconds=self._cfg.submit_start_to_close_s),
                    schedule_to_close_timeout=schedule_to_close,
                    retry_policy=retry,
                )
            except ActivityError as err:
                if not (park and self._parks()):
                    raise
                reason = error_message(err, str(err))
                await self._park_for(
                    f"{step_name(method)} at the broker: {reason}", broker_fault=True
                )

    async def _fenced(self, step: Callable[[int], Awaitable[Out]], what: str) -> Out:
        """Lock the account, run ``step`` with the lock's fencing token, unlock.

        A stale-fence refusal means our lock expired and someone else wrote since, or the lock's
        counter went back and handed our fence out before: lock again, asking for a fence above
        the newest the ledger has seen, and run the same step again (same idempotency key, same
        figures). Any other failure of the step is the caller's to read (after the unlock).
        """
        floor = 0
        for _ in range(MAX_FENCE_RETRIES):
            self._stage = "locking the account"
            fence = await self._acquire_lock(floor)
            try:
                return await step(fence)
            except STEP_ERRORS as err:
                if error_type(err) != errors.STALE_FENCE:
                    raise
                floor = max(floor, fence_seen(err))
                self._note(RELOCK_NOTE)
            finally:
                self._stage = "unlocking the account"
                await self._release_lock()
        self._stage = "locking the account"
        raise ApplicationError(f"{what} kept losing its lock", type=errors.LOCK_LOST)

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
            # The whole wait is bounded: past it the order is refused, account busy.
            schedule_to_close_timeout=timedelta(seconds=self._cfg.lock_wait_total_s),
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

    async def _park_for(self, reason: str, *, broker_fault: bool = False) -> None:
        """Stop here, visibly, until an operator resumes the order (the ``resume`` update).

        Past the pivot the broker may hold the order, so no step may end it by failing: the
        hold stays, reports keep arriving (they are applied once resumed), the order is listed
        under ``OrderStatus = 'NEEDS_ATTENTION'`` with its reason, and the broker is still
        followed (``_follow_while_parked``). ``broker_fault``: a broker call failed for good
        (our keys refused, say: a rotation not yet rolled out); the order resumes by itself
        once the broker answers again, since that answer is the proof the cause is gone.
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
        if broker_fault and workflow.patched(BROKER_PARK_RESUMES_PATCH):
            await self._follow_while_parked(resume_on_answer=True)
        elif st.broker_order_id is not None and workflow.patched(PARKED_FOLLOWS_PATCH):
            await self._follow_while_parked()
        else:
            await workflow.wait_condition(lambda: self._resume)
        self._resume = False
        st.reason = reason_before
        self._set_status(before, "resumed")

    async def _follow_while_parked(self, *, resume_on_answer: bool = False) -> None:
        """Until resumed, ask the broker now and then and keep its word on the order's state and
        timeline (its status and fills, for the operator to see), booking nothing. The asks back
        off from the poll interval to an hour: an order may stay parked for days, and its
        history must not grow past what Temporal keeps. ``resume_on_answer``: the first answer
        resumes the order (it was parked because the broker would not answer)."""
        interval = self._cfg.fill_poll_interval_s
        while True:
            try:
                await workflow.wait_condition(
                    lambda: self._resume, timeout=timedelta(seconds=interval)
                )
                return
            except TimeoutError:
                interval = min(interval * 2, PARKED_POLL_MAX_S)
            try:
                view = await self._broker(
                    BrokerActivities.reconcile_order,
                    ReconcileOrderInput(client_order_id=self._state.leg_id),
                    retry=PARKED_ASK_RETRY,
                    park=False,
                    ask=True,
                )
            except ActivityError as err:
                self._note(f"parked; the broker could not be asked: {error_message(err, '')}")
                continue
            if resume_on_answer:
                self._note("the broker answers again; resuming")
                return
            order = view.order
            if order is not None and order.status != self._state.broker_status:
                self._state.broker_status = order.status
                self._note(f"parked; the broker says {order.status}, filled {order.filled_qty}")

    def _parks(self) -> bool:
        """Whether a failed step parks the order rather than failing the workflow."""
        return self._guarded and self._past_accept and not self._parking

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

    async def _refuse(self, reason: str, *, recorded: bool, void: bool = False) -> None:
        """End the order before it reaches the broker; ``recorded``: its row says so already;
        ``void``: release whatever it may hold first (a step failed after a reserve may have
        committed)."""
        self._state.reason = reason
        self._set_status(OrderStatus.REJECTED, reason)
        if recorded:
            self._decided = True
            return
        if void:
            await self._void("refused")
        # The permanent record first: the customer's answer must not outrun it.
        try:
            res = await self._step(
                OrderStoreActivities.record_order,
                RecordOrderInput(record=self._order_record(), status="REJECTED", reason=reason),
                start_to_close=timedelta(seconds=10),
                retry=LEDGER_RETRY,
            )
        except STEP_ERRORS as err:
            if not (error_type(err) == errors.ORDER_CONFLICT and self._refuses_on_failure()):
                raise
            # The order id is another order's (other parameters): its row is not ours to write.
            self._state.reason = f"{ORDER_CONFLICT_REASON} ({self._state.request.order_id})"
            self._set_status(OrderStatus.REJECTED, self._state.reason)
            self._decided = True
            return
        if res.status == OrderStatus.REJECTED.value and res.reason:
            # An earlier try of this workflow task refused it first: its reason stands.
            self._state.reason = res.reason
            self._set_status(OrderStatus.REJECTED, res.reason)
        elif res.status == OrderStatus.ACCEPTED.value:
            # An earlier try of this workflow task held funds before it died, and this try
            # refuses (its quote went stale meanwhile): release that hold and say so on the row.
            if not void:
                await self._void("refused on a retried workflow task")
            await self._store(OrderStatus.REJECTED)
        self._decided = True

    def _refuses_on_failure(self) -> bool:
        return workflow.patched(DECIDED_OR_REFUSED_PATCH)

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
                qty=st.qty,  # None until replaced: the row keeps the order as placed
                limit_price=st.limit_sent if st.qty is not None else None,
            ),
            start_to_close=timedelta(seconds=10),
            retry=LEDGER_RETRY,
        )

    def _account_of_record(self) -> str:
        """The account the order is listed under: its workflow id's (``order/<account>/<order>``),
        never a request's that names another (a start straight through the frontend can send
        any): the request is refused, and nobody else's account is tagged with it."""
        st = self._state
        if foreign_ids(st.request, st.workflow_id) is None:
            return st.request.account_id
        try:
            return OrderKey.from_workflow_id(st.workflow_id).account_id
        except InvalidOrderKey:
            return "(not an order workflow)"

    def _use_local_steps(self) -> bool:
        return workflow.patched(LOCAL_STEPS_PATCH)

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

    def _should_continue_as_new(self) -> str | None:
        """Why the run should continue as new now, None while it should not.

        A gtc order may outlive the build it is pinned to by weeks, keeping that build's workers
        needed; once a newer build is the deployment's target it moves onto it at its next
        wake-up (a continue-as-new starts the new run on the target: ``_continue``). A day order
        ends with its trading day, on its own build. The server sets the flag in the workflow
        task's started event, so a replay decides the same; unversioned runs never see it."""
        info = workflow.info()
        if info.is_continue_as_new_suggested():
            return "Temporal suggests it"
        if info.get_current_history_length() > self._cfg.max_history_events:
            return "history is long"
        if (
            self._state.request.time_in_force == "gtc"
            and info.is_target_worker_deployment_version_changed()
        ):
            return "moving onto the current build"
        return None

    def _set_status(self, status: OrderStatus, detail: str) -> None:
        if status.terminal and not self._state.status.terminal:
            record_terminal(status, self._pivoted)
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
        account = self._account_of_record()
        workflow.upsert_search_attributes(
            [
                ORDER_STATUS.value_set(st.status.value),
                ACCOUNT_ID.value_set(account),
                SYMBOL.value_set(req.symbol),
            ]
        )
        filled = f"filled {st.filled_qty}/{st.order_qty}"
        workflow.set_current_details(
            f"**{st.status.value}** {req.side} {st.order_qty} {req.symbol} "
            f"({req.order_type}, {req.time_in_force}) for {account}; {filled}; "
            f"held {st.held} {st.hold_asset or ''}; fees {st.fees}"
            + (f"; reason: {st.reason}" if st.reason else "")
        )
