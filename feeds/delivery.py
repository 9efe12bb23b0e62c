"""The broker listener's callback: each execution event becomes a signal to its order's workflow.

An event whose workflow is closed or unknown (a late broker order, a duplicate after the order
ended) is not dropped: it starts a reconcile run targeted at that order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from core.broker_client import TradeEvent
from core.orderkey import InvalidOrderKey, OrderKey
from core.settings import Settings
from core.statuses import BROKER_FINAL
from workflows.models import BrokerReport
from workflows.order import OrderWorkflow

log = logging.getLogger(__name__)


def report_from_event(event: TradeEvent) -> BrokerReport:
    order = event.order
    return BrokerReport(
        source="event",
        broker_order_id=order.id,
        status=order.status,
        filled_qty=order.filled_qty,
        filled_notional=order.filled_notional,
        terminal=order.status in BROKER_FINAL,
        execution_id=event.execution_id,
    )


def signal_workflows(client: Client, settings: Settings) -> Callable[[TradeEvent], Awaitable[None]]:
    from workflows.reconcile import ReconcileInput, ReconcileWorkflow

    async def deliver(event: TradeEvent) -> None:
        cid = event.order.client_order_id
        try:
            key, _ = OrderKey.of_client_order_id(cid)  # a replacement's too
        except InvalidOrderKey:
            key = None  # not one of ours: the reconciler decides what it is
        if key is not None:
            handle = client.get_workflow_handle(key.workflow_id)
            try:
                await handle.signal(OrderWorkflow.broker_update, report_from_event(event))
                return
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise  # the listener retries from this event's offset
        log.info("event %s for %s has no running workflow; reconciling", event.offset, cid)
        await client.start_workflow(
            ReconcileWorkflow.run,
            ReconcileInput.from_settings(settings, [cid]),
            id=f"reconcile/event/{cid}",
            task_queue=settings.orders_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )

    return deliver
