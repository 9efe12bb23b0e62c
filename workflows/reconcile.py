"""The reconciler: broker orders against our records (activities/reconcile.py). Late orders are
canceled at the broker and their fills booked to the firm error account; every break is recorded
in Postgres (``reconcile_breaks``).

- ``IncrementalReconcileWorkflow``: what the Temporal Schedule and ``ordersaga reconcile [--full]``
  run. Page by page, each page an activity: the broker orders created after the watermark (minus
  an overlap), then the broker's open orders, then the followed orders that closed since; the
  watermark moves once a page is settled; it continues as new every few pages.
- ``ReconcileWorkflow``: a run targeted at named broker orders (an event the listener could not
  deliver). Its listing of every broker order in one payload is kept only so executions started
  before the incremental reconciler replay; nothing starts it without ids any more.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.broker import (
        BrokerActivities,
        CancelOrderInput,
        GetBrokerOrdersInput,
        GetHoldingsInput,
        ListBrokerOrdersInput,
        ListBrokerOrdersPageInput,
        ReconcileOrderInput,
    )
    from activities.ledger import ErrorFillInput, LedgerActivities
    from activities.positions import (
        BrokerFill,
        BrokerSide,
        LedgerSideInput,
        PositionActivities,
        PositionBreaksInput,
        compare_positions,
    )
    from activities.reconcile import (
        Break,
        BrokerOrderView,
        ClassifyPageInput,
        FindBreaksInput,
        FollowedInput,
        OrderBreaksInput,
        ReconcileActivities,
        WatermarkInput,
    )
    from core import errors
    from core.broker_models import BrokerOrder

if TYPE_CHECKING:
    from core.settings import Settings


class ReconcileInput(BaseModel):
    broker_task_queue: str = "broker"
    stuck_after_s: float = 900.0
    # empty: every broker order in one listing (runs started before IncrementalReconcileWorkflow)
    client_order_ids: list[str] = Field(default_factory=list)

    @classmethod
    def from_settings(
        cls, settings: Settings, client_order_ids: list[str] | None = None
    ) -> ReconcileInput:
        return cls(
            broker_task_queue=settings.broker_task_queue,
            stuck_after_s=settings.reconcile_stuck_after_s,
            client_order_ids=client_order_ids or [],
        )


class ReconcileReport(BaseModel):
    checked: int = 0
    late_orders: int = 0
    canceled_at_broker: int = 0
    error_fills_booked: int = 0
    breaks: list[Break] = Field(default_factory=list)  # ReconcileWorkflow's; the table has all
    # IncrementalReconcileWorkflow's (its breaks are rows of reconcile_breaks)
    full: bool = False
    pages: int = 0
    breaks_recorded: int = 0
    stuck: int = 0
    parked: int = 0
    stalled_listings: int = 0
    watermark: datetime | None = None
    # positions and cash against the omnibus ledger (runs with the positions-v1 patch): None
    # when not compared, False when the ledger or the broker kept moving for every round
    positions_stable: bool | None = None
    position_breaks: int = 0
    cash_breaks: int = 0


ASK = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# The incremental reconciler's steps give up: a run that cannot go on fails, and the next one
# starts again from the watermark (the schedule's action bounds the run itself too).
BOUNDED = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)


def _error_fill_policy(attempts: int) -> RetryPolicy:
    return RetryPolicy(
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=attempts,
        non_retryable_error_types=errors.NON_RETRYABLE_LEDGER,
    )


def view_of(o: BrokerOrder) -> BrokerOrderView:
    return BrokerOrderView(
        id=o.id,
        client_order_id=o.client_order_id,
        symbol=o.symbol,
        side=o.side,
        qty=o.qty,
        status=o.status,
        filled_qty=o.filled_qty,
        filled_notional=o.filled_notional,
        terminal=o.is_terminal,
        created_at=o.submitted_at or o.created_at,
    )


async def settle_late(
    late: BrokerOrderView,
    broker_task_queue: str,
    report: ReconcileReport,
    retry: RetryPolicy = ASK,
    attempts: int = 0,
) -> None:
    """Cancel a late order at the broker, then book what it filled to the error account."""
    order = late
    if not late.terminal:
        res = await workflow.execute_activity_method(
            BrokerActivities.cancel_order,
            CancelOrderInput(client_order_id=late.client_order_id, broker_order_id=late.id),
            task_queue=broker_task_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=retry,
        )
        report.canceled_at_broker += 1
        if res.order is not None and res.order.filled_qty > late.filled_qty:
            order = late.model_copy(
                update={
                    "filled_qty": res.order.filled_qty,
                    "filled_notional": res.order.filled_notional,
                }
            )
    if order.filled_qty <= 0:
        return
    await workflow.execute_activity_method(
        LedgerActivities.book_error_fill,
        ErrorFillInput(
            broker_order_id=order.id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            cum_qty=order.filled_qty,
            cum_notional=order.filled_notional,
        ),
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=_error_fill_policy(attempts),
    )
    report.error_fills_booked += 1


# Pinned like the orders when the workers are versioned (worker/main.py): a run lasts seconds
# to minutes, so it finishes on the build that started it and the next scheduled run starts on
# the current one; nothing of it needs to replay on another build's code.
@workflow.defn
class ReconcileWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileReport:
        orders = await self._broker_orders(inp)
        views = [view_of(o) for o in orders]
        found = await workflow.execute_activity_method(
            ReconcileActivities.find_breaks,
            FindBreaksInput(
                broker_orders=views,
                stuck_after_s=inp.stuck_after_s,
                full=not inp.client_order_ids,
            ),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=ASK,
        )
        report = ReconcileReport(
            checked=found.checked, late_orders=len(found.late), breaks=found.breaks
        )
        for late in found.late:
            await settle_late(late, inp.broker_task_queue, report)
        return report

    async def _broker_orders(self, inp: ReconcileInput) -> list[Any]:
        """Every broker order, or only the named ones (a targeted run asks for each by id, so an
        undeliverable event costs one lookup, not a listing of the whole broker account)."""
        if not inp.client_order_ids:
            listed = await workflow.execute_activity_method(
                BrokerActivities.list_broker_orders,
                ListBrokerOrdersInput(status="all"),
                task_queue=inp.broker_task_queue,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=ASK,
            )
            return list(listed.orders)
        found = []
        for cid in inp.client_order_ids:
            view = await workflow.execute_activity_method(
                BrokerActivities.reconcile_order,
                ReconcileOrderInput(client_order_id=cid),
                task_queue=inp.broker_task_queue,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=ASK,
            )
            if view.order is not None:
                found.append(view.order)
        return found


# --- the incremental reconciler -----------------------------------------------------------

Phase = Literal["new", "open", "followed", "orders", "done"]


class SweepCursor(BaseModel):
    """Where a run is: carried across continue-as-new."""

    mark: datetime  # the run's start: followed orders not seen open since are asked for by id
    phase: Phase = "new"
    after: datetime | None = None
    skip_ids: list[str] = Field(default_factory=list)
    report: ReconcileReport = Field(default_factory=ReconcileReport)


class SweepInput(BaseModel):
    broker_task_queue: str = "broker"
    stuck_after_s: float = 900.0
    overlap_s: float = 300.0
    page_size: int = 500
    pages_per_run: int = 8
    full: bool = False  # every broker order from the first, not from the watermark
    cursor: SweepCursor | None = None  # None: a new run

    @classmethod
    def from_settings(cls, settings: Settings, full: bool = False) -> SweepInput:
        return cls(
            broker_task_queue=settings.broker_task_queue,
            stuck_after_s=settings.reconcile_stuck_after_s,
            overlap_s=settings.reconcile_overlap_s,
            page_size=settings.reconcile_page_size,
            pages_per_run=settings.reconcile_pages_per_run,
            full=full,
        )


STEP = timedelta(seconds=60)  # a Postgres step's start-to-close
POSITIONS_PATCH = "positions-v1"
# Rounds of (ledger, broker, ledger) before a run gives up comparing positions for this time.
POSITION_ROUNDS = 3


@workflow.defn
class IncrementalReconcileWorkflow:
    """Broker orders created after the watermark minus the overlap (or all, ``full``), then the
    broker's open orders, then the followed orders that closed since the last run; then stuck and
    parked orders. Each page is one activity, classified in one query and settled (late orders
    canceled and booked) before the watermark moves past it."""

    @workflow.run
    async def run(self, inp: SweepInput) -> ReconcileReport:
        cur = inp.cursor or await self._start(inp)
        steps = 0
        while cur.phase != "done":
            if steps >= inp.pages_per_run or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(inp.model_copy(update={"cursor": cur}))
            if cur.phase in ("new", "open"):
                await self._listed_page(inp, cur)
            elif cur.phase == "followed":
                await self._followed_page(inp, cur)
            else:
                found = await workflow.execute_activity_method(
                    ReconcileActivities.find_order_breaks,
                    OrderBreaksInput(stuck_after_s=inp.stuck_after_s),
                    start_to_close_timeout=STEP,
                    retry_policy=BOUNDED,
                )
                cur.report.stuck, cur.report.parked = found.stuck, found.parked
                cur.phase = "done"
            steps += 1
        if workflow.patched(POSITIONS_PATCH):
            await self._positions(inp, cur.report)
        return cur.report

    async def _positions(self, inp: SweepInput, rep: ReconcileReport) -> None:
        """Positions and cash against the omnibus ledger (activities/positions.py). The ledger
        is read, then the broker, then the ledger again: a fill booked in between changes the
        second read, and the round is repeated; only a comparison of a ledger that did not move
        is recorded (and the breaks it no longer finds resolved)."""
        rep.positions_stable = False
        for _ in range(POSITION_ROUNDS):
            first = await self._ledger_side()
            held = await workflow.execute_activity_method(
                BrokerActivities.get_holdings,
                GetHoldingsInput(broker_order_ids=[o.broker_order_id for o in first.in_flight]),
                task_queue=inp.broker_task_queue,
                start_to_close_timeout=timedelta(seconds=120),
                retry_policy=BOUNDED,
            )
            if not held.stable or await self._ledger_side() != first:
                continue
            broker = BrokerSide(
                cash=held.cash,
                positions=held.positions,
                orders=[
                    BrokerFill(id=o.id, filled_qty=o.filled_qty, filled_notional=o.filled_notional)
                    for o in held.orders
                ],
                missing=held.missing,
            )
            breaks = compare_positions(first, broker)
            await workflow.execute_activity_method(
                PositionActivities.record_position_breaks,
                PositionBreaksInput(breaks=breaks),
                start_to_close_timeout=STEP,
                retry_policy=BOUNDED,
            )
            rep.positions_stable = True
            rep.position_breaks = sum(b.kind == "position" for b in breaks)
            rep.cash_breaks = sum(b.kind == "cash" for b in breaks)
            rep.breaks_recorded += len(breaks)
            return

    async def _ledger_side(self) -> Any:
        return await workflow.execute_activity_method(
            PositionActivities.read_ledger_side,
            LedgerSideInput(),
            start_to_close_timeout=STEP,
            retry_policy=BOUNDED,
        )

    async def _start(self, inp: SweepInput) -> SweepCursor:
        cur = SweepCursor(mark=workflow.now(), report=ReconcileReport(full=inp.full))
        if not inp.full:
            wm = await workflow.execute_activity_method(
                ReconcileActivities.read_watermark,
                WatermarkInput(),
                start_to_close_timeout=STEP,
                retry_policy=BOUNDED,
            )
            cur.report.watermark = wm.created_up_to
            if wm.created_up_to is not None:
                cur.after = wm.created_up_to - timedelta(seconds=inp.overlap_s)
        return cur

    async def _listed_page(self, inp: SweepInput, cur: SweepCursor) -> None:
        page = await workflow.execute_activity_method(
            BrokerActivities.list_broker_orders_page,
            ListBrokerOrdersPageInput(
                status="open" if cur.phase == "open" else "all",
                after=cur.after,
                skip_ids=cur.skip_ids,
                limit=inp.page_size,
            ),
            task_queue=inp.broker_task_queue,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=BOUNDED,
        )
        views = [view_of(o) for o in page.orders]
        await self._settle_page(inp, cur, views, [])
        newest = max((v.created_at for v in views if v.created_at is not None), default=None)
        if cur.phase == "new" and newest is not None:
            # Only now that every late order of the page is canceled and booked.
            wm = await workflow.execute_activity_method(
                ReconcileActivities.advance_watermark,
                WatermarkInput(created_up_to=newest),
                start_to_close_timeout=STEP,
                retry_policy=BOUNDED,
            )
            cur.report.watermark = wm.created_up_to
        cur.report.stalled_listings += page.stalled
        if page.last:
            # a full sweep lists the open orders with the rest
            cur.phase = "followed" if cur.phase == "open" or inp.full else "open"
            cur.after, cur.skip_ids = None, []
        else:
            cur.after, cur.skip_ids = page.next_after, page.next_skip_ids

    async def _followed_page(self, inp: SweepInput, cur: SweepCursor) -> None:
        followed = await workflow.execute_activity_method(
            ReconcileActivities.followed_not_seen,
            FollowedInput(mark=cur.mark, limit=inp.page_size),
            start_to_close_timeout=STEP,
            retry_policy=BOUNDED,
        )
        if not followed.broker_order_ids:
            cur.phase = "orders"
            return
        got = await workflow.execute_activity_method(
            BrokerActivities.get_broker_orders,
            GetBrokerOrdersInput(broker_order_ids=followed.broker_order_ids),
            task_queue=inp.broker_task_queue,
            start_to_close_timeout=timedelta(seconds=120),
            retry_policy=BOUNDED,
        )
        await self._settle_page(inp, cur, [view_of(o) for o in got.orders], got.missing)

    async def _settle_page(
        self, inp: SweepInput, cur: SweepCursor, views: list[BrokerOrderView], gone: list[str]
    ) -> None:
        rep = cur.report
        rep.pages += 1
        if not views and not gone:
            return  # an empty page (the end of a listing): nothing to classify
        found = await workflow.execute_activity_method(
            ReconcileActivities.classify_page,
            ClassifyPageInput(broker_orders=views, mark=cur.mark, forget_ids=gone),
            start_to_close_timeout=STEP,
            retry_policy=BOUNDED,
        )
        rep.checked += found.checked
        rep.late_orders += len(found.late)
        rep.breaks_recorded += found.breaks
        for late in found.late:
            await settle_late(late, inp.broker_task_queue, rep, BOUNDED, BOUNDED.maximum_attempts)
