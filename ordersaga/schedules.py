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
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import RetryPolicy

from core.settings import Settings
from core.temporal import connect
from workflows.reconcile import (
    IncrementalReconcileWorkflow,
    ReconcileInput,
    ReconcileReport,
    ReconcileWorkflow,
    SweepInput,
)

SCHEDULE_ID = "ordersaga-reconcile"


def reconcile_schedule(settings: Settings) -> Schedule:
    """Every ``reconcile_every_s``, one run at a time (SKIP). Each run has an execution timeout
    and a bounded number of attempts: a run that hangs or keeps failing ends, so SKIP cannot
    silence the runs after it, and the next starts from the watermark it left."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            IncrementalReconcileWorkflow.run,
            SweepInput.from_settings(settings),
            id="reconcile/scheduled",
            task_queue=settings.orders_task_queue,
            execution_timeout=timedelta(seconds=settings.reconcile_run_timeout_s),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=10),
                maximum_interval=timedelta(seconds=60),
                maximum_attempts=settings.reconcile_run_attempts,
            ),
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_every_s))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reconcile_schedule(client: Client, settings: Settings) -> bool:
    """Create the schedule, or bring an existing one's action, spec and policy up to date (a
    schedule created by an older release started the old workflow without a timeout); True
    when it was created."""
    schedule = reconcile_schedule(settings)
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
            schedule.state = current.description.schedule.state  # paused or not: the operator's
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(SCHEDULE_ID).update(update)
        return False
    return True


async def run_reconcile_now(
    settings: Settings,
    client: Client | None = None,
    client_order_ids: list[str] | None = None,
    full: bool = False,
) -> ReconcileReport:
    """Run the reconciler and wait for its report: the incremental run (``full``: every broker
    order from the first), or a run targeted at the named client order ids."""
    client = client or await connect(settings)
    run_id = uuid.uuid4().hex[:12]
    if client_order_ids:
        return await client.execute_workflow(
            ReconcileWorkflow.run,
            ReconcileInput.from_settings(settings, client_order_ids),
            id=f"reconcile/manual/{run_id}",
            task_queue=settings.orders_task_queue,
        )
    return await client.execute_workflow(
        IncrementalReconcileWorkflow.run,
        SweepInput.from_settings(settings, full=full),
        id=f"reconcile/{'full' if full else 'manual'}/{run_id}",
        task_queue=settings.orders_task_queue,
    )
