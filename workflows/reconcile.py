"""ReconcileWorkflow: run by a Temporal Schedule every few minutes, and on demand.

Lists the broker's orders, classifies them against our records (activities/reconcile.py),
cancels late orders at the broker and books their fills to the firm error account.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.broker import (
        BrokerActivities,
        CancelOrderInput,
        ListBrokerOrdersInput,
        ReconcileOrderInput,
    )
    from activities.ledger import ErrorFillInput, LedgerActivities
    from activities.reconcile import (
        Break,
        BrokerOrderView,
        FindBreaksInput,
        ReconcileActivities,
    )
    from core import errors

if TYPE_CHECKING:
    from core.settings import Settings


class ReconcileInput(BaseModel):
    broker_task_queue: str = "broker"
    stuck_after_s: float = 900.0
    client_order_ids: list[str] = Field(default_factory=list)  # empty: every broker order

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
    breaks: list[Break] = Field(default_factory=list)


ASK = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


# Pinned like the orders when the workers are versioned (worker/main.py): a run lasts seconds
# to minutes, so it finishes on the build that started it and the next scheduled run starts on
# the current one; nothing of it needs to replay on another build's code.
@workflow.defn
class ReconcileWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileReport:
        orders = await self._broker_orders(inp)
        views = [
            BrokerOrderView(
                id=o.id,
                client_order_id=o.client_order_id,
                symbol=o.symbol,
                side=o.side,
                qty=o.qty,
                status=o.status,
                filled_qty=o.filled_qty,
                filled_notional=o.filled_notional,
                terminal=o.is_terminal,
            )
            for o in orders
        ]
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
            await self._settle_late(late, inp, report)
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

    async def _settle_late(
        self, late: BrokerOrderView, inp: ReconcileInput, report: ReconcileReport
    ) -> None:
        """Cancel a late order at the broker, then book what it filled to the error account."""
        order = late
        if not late.terminal:
            res = await workflow.execute_activity_method(
                BrokerActivities.cancel_order,
                CancelOrderInput(client_order_id=late.client_order_id, broker_order_id=late.id),
                task_queue=inp.broker_task_queue,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=ASK,
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
            retry_policy=RetryPolicy(
                maximum_interval=timedelta(seconds=10),
                non_retryable_error_types=errors.NON_RETRYABLE_LEDGER,
            ),
        )
        report.error_fills_booked += 1
