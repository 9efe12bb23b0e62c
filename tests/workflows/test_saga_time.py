"""Workflow-side waits, tested with time skipping (no real sleeps) and stand-in activities.

The stand-ins are registered under the real activities' names, so the workflow code under test is
the product's own; only the outside world is scripted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.broker import (
    CancelOrderInput,
    CancelOrderResult,
    ReconcileOrderInput,
    ReconcileOrderResult,
    SubmitOrderInput,
    SubmitOrderResult,
)
from activities.config import ConfigActivities
from activities.ledger import (
    PostFillInput,
    PostFillResult,
    ReserveInput,
    ReserveResult,
    VoidInput,
    VoidResult,
)
from activities.lock import AcquireLockInput, AcquireLockResult, ReleaseLockInput, ReleaseLockResult
from activities.marketdata import GetQuoteInput, GetQuoteResult
from activities.orders import (
    RecordOrderInput,
    RecordOrderResult,
    UpdateOrderInput,
    UpdateOrderResult,
)
from core import errors
from core.broker_client import BrokerOrder
from core.settings import SagaConfig
from core.statuses import OrderStatus
from tests.support.saga import SEARCH_ATTRIBUTES, temporal_binary
from tests.workflows.planted import PlantedBugOrderWorkflow
from workflows.models import BrokerReport, OrderInput, OrderRequest, OrderState
from workflows.order import OrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")

DAY = 86_400.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping_v2(
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.WorkflowTimeSkippingEnabled=true",
        ],
    )
    yield env
    await env.shutdown()


def broker_order(status: str, filled: str, qty: str = "2", price: str = "100") -> BrokerOrder:
    return BrokerOrder.model_validate(
        {
            "id": "b-1",
            "client_order_id": "acct/o-1",
            "symbol": "AAPL",
            "qty": qty,
            "filled_qty": filled,
            "filled_avg_price": price if Decimal(filled) > 0 else None,
            "side": "buy",
            "type": "limit",
            "order_type": "limit",
            "time_in_force": "gtc",
            "limit_price": "120",
            "status": status,
        }
    )


class World:
    """The scripted outside world; records what the saga did to it."""

    def __init__(
        self,
        broker_script: list[BrokerOrder | None],
        submit_fails: bool,
        reserve_delay_s: float = 0.0,
        submit_delay_s: float = 0.0,
        lock_busy: bool = False,
        stale_fence_seen: int = 0,
    ) -> None:
        self.broker_script = broker_script
        self.submit_fails = submit_fails
        self.reserve_delay_s = reserve_delay_s
        self.submit_delay_s = submit_delay_s
        self.lock_busy = lock_busy
        self.lock_waits: list[int] = []
        self.stale_fence_seen = stale_fence_seen  # the first reserve is refused: StaleFence
        self.lock_floors: list[int] = []
        self.reserve_fences: list[int] = []
        self.reserved = asyncio.Event()
        self.submitting = asyncio.Event()
        self.canceled_at_broker = False
        self.statuses: list[str] = []
        self.asked_at: list[datetime] = []
        self.voided_at: list[datetime] = []
        self.posts: list[Decimal] = []
        self.post_refused = False  # the ledger refuses every post for good (a hold gone wrong)

    def activities(self) -> list[object]:
        world = self

        @activity.defn(name="get_quote")
        async def get_quote(inp: GetQuoteInput) -> GetQuoteResult:
            return GetQuoteResult(symbol=inp.symbol, bid=Decimal(99), ask=Decimal(100), fresh=True)

        @activity.defn(name="acquire_lock")
        async def acquire_lock(inp: AcquireLockInput) -> AcquireLockResult:
            world.lock_waits.append(inp.wait_ms)
            world.lock_floors.append(inp.floor)
            if world.lock_busy and inp.wait_ms == 0:
                raise ApplicationError("busy", type=errors.LOCK_NOT_ACQUIRED)
            return AcquireLockResult(fence=inp.floor + 1, reacquired=False)

        @activity.defn(name="release_lock")
        async def release_lock(inp: ReleaseLockInput) -> ReleaseLockResult:
            return ReleaseLockResult(released=True)

        @activity.defn(name="reserve_funds")
        async def reserve_funds(inp: ReserveInput) -> ReserveResult:
            world.reserve_fences.append(inp.fence)
            if world.stale_fence_seen and len(world.reserve_fences) == 1:
                raise ApplicationError(
                    "stale fencing token",
                    {"fence": inp.fence, "last_fence": world.stale_fence_seen},
                    type=errors.STALE_FENCE,
                    non_retryable=True,
                )
            world.reserved.set()
            await asyncio.sleep(world.reserve_delay_s)  # no heartbeat: cannot see a cancel
            return ReserveResult(
                hold_id=1,
                order_key=inp.order_key,
                asset=inp.asset,
                amount=inp.amount,
                available_after=Decimal(0),
                fence=inp.fence,
            )

        @activity.defn(name="submit_order")
        async def submit_order(inp: SubmitOrderInput) -> SubmitOrderResult:
            world.submitting.set()
            await asyncio.sleep(world.submit_delay_s)  # no heartbeat: cannot see a cancel
            if world.submit_fails:
                raise ApplicationError(
                    "timed out", type=errors.BROKER_OUTCOME_UNKNOWN, non_retryable=True
                )
            return SubmitOrderResult.of(broker_order("new", "0"))

        @activity.defn(name="reconcile_order")
        async def reconcile_order(inp: ReconcileOrderInput) -> ReconcileOrderResult:
            world.asked_at.append(activity.info().current_attempt_scheduled_time)
            order = (
                world.broker_script.pop(0)
                if len(world.broker_script) > 1
                else world.broker_script[0]
            )
            if order is None:
                return ReconcileOrderResult(state="absent")
            return ReconcileOrderResult(
                state="terminal" if order.is_terminal else "open", order=order
            )

        @activity.defn(name="cancel_order")
        async def cancel_order(inp: CancelOrderInput) -> CancelOrderResult:
            world.canceled_at_broker = True
            return CancelOrderResult(status="pending_cancel")

        @activity.defn(name="post_fill")
        async def post_fill(inp: PostFillInput) -> PostFillResult:
            if world.post_refused:
                raise ApplicationError(
                    "hold of the order is voided", type=errors.HOLD_STATE, non_retryable=True
                )
            world.posts.append(inp.cum_qty)
            return PostFillResult(
                order_key=inp.order_key,
                applied=True,
                qty_delta=inp.cum_qty,
                cash_delta=Decimal(0),
                fee_delta=Decimal(0),
                posted_qty=inp.cum_qty,
                posted_notional=inp.cum_notional,
                posted_cash=Decimal(0),
                posted_fee=inp.cum_fee,
                held_remaining=Decimal(0),
            )

        @activity.defn(name="void_funds")
        async def void_funds(inp: VoidInput) -> VoidResult:
            world.voided_at.append(activity.info().current_attempt_scheduled_time)
            return VoidResult(order_key=inp.order_key, found=True, released=Decimal(5), asset="USD")

        @activity.defn(name="record_order")
        async def record_order(inp: RecordOrderInput) -> RecordOrderResult:
            return RecordOrderResult(created=True)

        @activity.defn(name="update_order")
        async def update_order(inp: UpdateOrderInput) -> UpdateOrderResult:
            world.statuses.append(inp.status)
            return UpdateOrderResult(updated=True)

        return [
            get_quote,
            acquire_lock,
            release_lock,
            reserve_funds,
            submit_order,
            reconcile_order,
            cancel_order,
            post_fill,
            void_funds,
            record_order,
            update_order,
        ]


@contextlib.asynccontextmanager
async def started(
    env: WorkflowEnvironment,
    world: World,
    config: SagaConfig,
    workflow_cls: type = OrderWorkflow,
    **start: Any,
) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """A limit buy started on its own queue, with a worker running the world's stand-ins."""
    queue = f"ts-{uuid.uuid4().hex[:8]}"
    config = config.model_copy(update={"orders_task_queue": queue, "broker_task_queue": queue})
    req = OrderRequest(
        account_id="acct",
        order_id=f"o-{uuid.uuid4().hex[:6]}",
        symbol="AAPL",
        side="buy",
        qty=Decimal(2),
        order_type="limit",
        time_in_force="gtc",
        limit_price=Decimal(120),
    )
    settings = ConfigActivities(config)  # the worker's own, as in production
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[workflow_cls],
        activities=[*world.activities(), settings.saga_config],
    ):
        yield await env.client.start_workflow(
            OrderWorkflow.run,
            OrderInput(request=req),
            id=req.workflow_id,
            task_queue=queue,
            **start,
        )


async def run_order(env: WorkflowEnvironment, world: World, config: SagaConfig) -> OrderState:
    async with started(env, world, config) as handle:
        return await handle.result()


async def test_an_absent_order_is_voided_only_after_the_grace_period(
    skipping_env: WorkflowEnvironment,
) -> None:
    world = World(broker_script=[None], submit_fails=True)
    config = SagaConfig(absent_grace_s=3 * DAY, fill_poll_interval_s=6 * 3600)

    final = await run_order(skipping_env, world, config)

    assert final.status == OrderStatus.REJECTED
    assert final.reason == "the broker never received the order"
    assert len(world.voided_at) == 1
    # It kept asking the broker for the whole grace period before releasing anything.
    assert len(world.asked_at) >= 3 * DAY / (6 * 3600)
    # The void is a local activity, whose scheduled time is the worker's clock: the workflow's
    # own (skipped) clock on its timeline says when the hold was released.
    [released] = [e.at for e in final.timeline if e.event.startswith("released")]
    assert (released - world.asked_at[0]).total_seconds() >= 3 * DAY


async def test_without_events_timed_polls_book_fills_until_final(
    skipping_env: WorkflowEnvironment,
) -> None:
    script = [
        broker_order("new", "0"),
        broker_order("partially_filled", "0.5"),
        broker_order("partially_filled", "0.5"),
        broker_order("partially_filled", "1.5"),
        broker_order("filled", "2"),
    ]
    world = World(broker_script=script, submit_fails=False)
    config = SagaConfig(fill_poll_interval_s=12 * 3600)

    final = await run_order(skipping_env, world, config)

    assert final.status == OrderStatus.SETTLED
    assert final.filled_qty == Decimal(2)
    assert world.posts == [Decimal("0.5"), Decimal("1.5"), Decimal(2)]
    assert len(world.voided_at) == 1
    assert (world.asked_at[-1] - world.asked_at[0]).total_seconds() >= 3 * 12 * 3600


async def test_a_long_lived_order_continues_as_new_and_keeps_its_fills(
    skipping_env: WorkflowEnvironment,
) -> None:
    script = [broker_order("new", "0")]
    script += [broker_order("partially_filled", "0.5")] * 40
    script += [broker_order("filled", "2")]
    world = World(broker_script=script, submit_fails=False)
    config = SagaConfig(fill_poll_interval_s=DAY, max_history_events=60)

    final = await run_order(skipping_env, world, config)

    assert final.status == OrderStatus.SETTLED
    assert world.posts == [Decimal("0.5"), Decimal(2)]  # the carried fill is not booked again
    assert any("continued" in e.event for e in final.timeline)


async def test_a_cancel_during_the_reserve_voids_the_hold(
    skipping_env: WorkflowEnvironment,
) -> None:
    # The reserve (a local activity) outlasts the workflow task's heartbeat (80 % of a 1 s task
    # timeout), so the cancel reaches the workflow while the reserve is still running.
    world = World(broker_script=[None], submit_fails=False, reserve_delay_s=3.0)
    async with started(skipping_env, world, SagaConfig(), task_timeout=timedelta(seconds=1)) as h:
        await asyncio.wait_for(world.reserved.wait(), 30)
        await h.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await h.result()

    assert isinstance(failure.value.cause, CancelledError)
    # A reserve interrupted by the cancel may still commit: the void covers it (and the ledger's
    # tombstone refuses a reserve that arrives after the void).
    assert len(world.voided_at) == 1
    assert world.statuses[-1] == "CANCELED"


async def test_a_cancel_during_the_submit_is_the_customers_cancel(
    skipping_env: WorkflowEnvironment,
) -> None:
    # Past the pivot a Temporal cancel must not cut the submit short (its answer would be lost):
    # the submit finishes, and the cancel goes to the broker like a customer's.
    world = World(
        broker_script=[broker_order("canceled", "0")], submit_fails=False, submit_delay_s=1.0
    )
    async with started(skipping_env, world, SagaConfig(fill_poll_interval_s=60)) as handle:
        await asyncio.wait_for(world.submitting.wait(), 30)
        await handle.cancel()
        final = await handle.result()

    assert final.cancel_requested and final.cancel_sent
    assert world.canceled_at_broker
    assert final.broker_order_id == "b-1"  # the submit's answer was kept
    assert final.status == OrderStatus.CANCELED
    assert len(world.voided_at) == 1
    assert world.statuses[-1] == "CANCELED"


async def test_a_busy_lock_is_waited_for_by_an_ordinary_activity(
    skipping_env: WorkflowEnvironment,
) -> None:
    # The local try does not wait; a busy lock is waited for by the ordinary acquire activity.
    world = World(broker_script=[broker_order("filled", "2")], submit_fails=False, lock_busy=True)

    final = await run_order(skipping_env, world, SagaConfig(fill_poll_interval_s=60))

    assert world.lock_waits == [0, SagaConfig().lock_wait_ms]
    assert final.status == OrderStatus.SETTLED


async def test_a_free_lock_is_taken_by_the_local_try_alone(
    skipping_env: WorkflowEnvironment,
) -> None:
    world = World(broker_script=[broker_order("filled", "2")], submit_fails=False)

    final = await run_order(skipping_env, world, SagaConfig(fill_poll_interval_s=60))

    assert world.lock_waits == [0]
    assert final.status == OrderStatus.SETTLED


async def test_a_stale_fence_answer_is_the_next_acquires_floor(
    skipping_env: WorkflowEnvironment,
) -> None:
    # The ledger has seen fence 41 (the lock's counter went back): the saga locks again above it.
    world = World(
        broker_script=[broker_order("filled", "2")], submit_fails=False, stale_fence_seen=41
    )

    final = await run_order(skipping_env, world, SagaConfig(fill_poll_interval_s=60))

    assert world.lock_floors == [0, 41]
    assert world.reserve_fences == [1, 42]
    assert final.status == OrderStatus.SETTLED


async def test_a_bug_retries_the_workflow_task_and_moves_no_money(
    skipping_env: WorkflowEnvironment,
) -> None:
    """A KeyError is not a failure of the order: no compensation (no void), the workflow is not
    failed; its task is retried until the code is fixed."""
    world = World([broker_order("new", "0")], submit_fails=False)
    async with started(
        skipping_env, world, SagaConfig(), workflow_cls=PlantedBugOrderWorkflow
    ) as handle:
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            desc = await handle.describe()
            attempts = desc.raw_description.pending_workflow_task.attempt
            if attempts >= 2:
                break
            await asyncio.sleep(0.2)
        assert attempts >= 2, "the workflow task was not retried"
        assert desc.status is not None and desc.status.name == "RUNNING"
        assert world.voided_at == []
        await handle.terminate("test over")


async def test_a_signal_that_the_broker_has_the_order_defers_giving_it_up_once(
    skipping_env: WorkflowEnvironment,
) -> None:
    """The lookup by client id keeps saying absent while an event says the order exists: the
    saga asks for one more grace period before it voids, and no more."""
    world = World(broker_script=[None], submit_fails=True)
    config = SagaConfig(absent_grace_s=DAY, fill_poll_interval_s=6 * 3600)
    async with started(skipping_env, world, config) as handle:
        event = BrokerReport(source="event", broker_order_id="b-1", status="new")
        await handle.signal(OrderWorkflow.broker_update, event)
        final: OrderState = await handle.result()
    assert final.status == OrderStatus.REJECTED
    notes = [e.event for e in final.timeline]
    assert any("asking a while longer" in n for n in notes), notes
    [released] = [e.at for e in final.timeline if e.event.startswith("released")]
    assert (released - world.asked_at[0]).total_seconds() >= 2 * DAY


async def test_a_parked_order_keeps_following_the_broker_until_resumed(
    skipping_env: WorkflowEnvironment,
) -> None:
    """The ledger refuses the fill for good: the order parks (NEEDS_ATTENTION, the workflow
    running), and while it waits the saga keeps asking the broker, backing off, and notes what
    it says; once resumed with the ledger fixed, the fill is booked and the order settles."""
    script = [broker_order("partially_filled", "1"), broker_order("filled", "2")]
    world = World(script, submit_fails=False)
    world.post_refused = True
    async with started(skipping_env, world, SagaConfig(fill_poll_interval_s=60)) as handle:
        deadline = asyncio.get_running_loop().time() + 30
        state: OrderState = await handle.query(OrderWorkflow.status)
        while asyncio.get_running_loop().time() < deadline:
            state = await handle.query(OrderWorkflow.status)
            if any(e.event.startswith("parked; the broker says") for e in state.timeline):
                break
            await asyncio.sleep(0.2)
        assert state.status == OrderStatus.NEEDS_ATTENTION, state.status
        assert state.reason and "post_fill" in state.reason
        assert world.posts == []
        asks_when_parked = len(world.asked_at)
        world.post_refused = False
        await handle.execute_update(OrderWorkflow.resume)
        final: OrderState = await handle.result()
    assert final.status == OrderStatus.SETTLED and final.filled_qty == 2
    assert world.posts == [Decimal(1), Decimal(2)]  # the refused post, then the last fill
    notes = [e.event for e in final.timeline]
    assert any(n.startswith("parked; the broker says filled") for n in notes), notes
    assert asks_when_parked >= 2


async def until(done: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if done():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out waiting")


def timer_seconds(history: Any) -> list[float]:
    return [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
        for e in history.events
        if e.HasField("timer_started_event_attributes")
    ]


def timers_after_signal(history: Any) -> list[float]:
    signaled, out = False, []
    for e in history.events:
        if e.HasField("workflow_execution_signaled_event_attributes"):
            signaled = True
        elif signaled and e.HasField("timer_started_event_attributes"):
            timeout = e.timer_started_event_attributes.start_to_fire_timeout
            out.append(timeout.ToTimedelta().total_seconds())
    return out


async def test_a_resting_orders_polls_back_off_and_news_brings_them_back(
    skipping_env: WorkflowEnvironment,
) -> None:
    """No events and nothing new at the broker: each poll doubles the wait, 5 s up to 300 s (a
    dozen asks in the first hour, not 720). An event with news brings the interval back to 5 s."""
    world = World([broker_order("new", "0")], submit_fails=False)
    config = SagaConfig(fill_poll_interval_s=5, fill_poll_max_interval_s=300)
    async with started(skipping_env, world, config) as handle:
        await until(lambda: len(world.asked_at) >= 10)
        quiet = list(world.asked_at)
        world.broker_script[:] = [broker_order("partially_filled", "1")]
        news = BrokerReport(
            source="event",
            broker_order_id="b-1",
            status="partially_filled",
            filled_qty=Decimal(1),
            filled_notional=Decimal(100),
        )
        await handle.signal(OrderWorkflow.broker_update, news)
        await until(lambda: world.posts == [Decimal(1)])
        # The fill comes only once the order waits again after the news (on a busy machine the
        # fill could otherwise be polled before that wait is ever set, and there is nothing to
        # assert about it).
        deadline = asyncio.get_running_loop().time() + 30
        while not timers_after_signal(await handle.fetch_history()):
            assert asyncio.get_running_loop().time() < deadline, "no wait after the news"
            await asyncio.sleep(0.1)
        world.broker_script[:] = [broker_order("filled", "2")]
        final: OrderState = await handle.result()
        history = await handle.fetch_history()
        timers = timer_seconds(history)
    assert final.status == OrderStatus.SETTLED and world.posts == [Decimal(1), Decimal(2)]
    assert len(quiet) >= 10
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(quiet)]
    # The asks' own times: each gap is the timer's plus the second the ask takes to schedule.
    assert gaps[:6] == pytest.approx([10, 20, 40, 80, 160, 300], abs=2), gaps
    assert timers[:8] == [5, 10, 20, 40, 80, 160, 300, 300], timers
    # After the event: the interval starts again at 5 s.
    assert timers_after_signal(history)[0] == 5, timers
