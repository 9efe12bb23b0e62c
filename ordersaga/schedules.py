"""The reconciler's Temporal Schedule, and running it on demand."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from core.settings import Settings
from core.temporal import connect
from workflows.reconcile import ReconcileInput, ReconcileReport, ReconcileWorkflow

SCHEDULE_ID = "ordersaga-reconcile"


async def ensure_reconcile_schedule(client: Client, settings: Settings) -> bool:
    """Create the schedule if missing; True when it was created."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            ReconcileWorkflow.run,
            ReconcileInput.from_settings(settings),
            id="reconcile/scheduled",
            task_queue=settings.orders_task_queue,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_every_s))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:
        return False
    return True


async def run_reconcile_now(
    settings: Settings, client: Client | None = None, client_order_ids: list[str] | None = None
) -> ReconcileReport:
    client = client or await connect(settings)
    return await client.execute_workflow(
        ReconcileWorkflow.run,
        ReconcileInput.from_settings(settings, client_order_ids),
        id=f"reconcile/manual/{uuid.uuid4().hex[:12]}",
        task_queue=settings.orders_task_queue,
    )
