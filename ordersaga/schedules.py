"""The reconciler's and the settlement job's Temporal Schedules, and running them on demand."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
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
from workflows.settlement import SettleInput, SettlementWorkflow, SettleReport

SCHEDULE_ID = "ordersaga-reconcile"
SETTLEMENT_SCHEDULE_ID = "ordersaga-settlement"
# The settlement job runs after the close, New York time, Monday to Friday: by then the day's
# settlement at the clearing house is final. A holiday's run finds nothing due (a lot's
# settlement date is always a session), and a run that was missed is made good by the next,
# which settles everything due on or before its date.
SETTLEMENT_AT = (17, 30)
SETTLEMENT_TIME_ZONE = "America/New_York"


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


def settlement_schedule(settings: Settings) -> Schedule:
    """Weekdays at ``SETTLEMENT_AT`` in New York, one run at a time (SKIP), bounded like the
    reconciler's runs."""
    hour, minute = SETTLEMENT_AT
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SettlementWorkflow.run,
            SettleInput(),
            id="settlement/scheduled",
            task_queue=settings.orders_task_queue,
            execution_timeout=timedelta(hours=1),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=10),
                maximum_interval=timedelta(seconds=60),
                maximum_attempts=5,
            ),
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    hour=[ScheduleRange(hour)],
                    minute=[ScheduleRange(minute)],
                    second=[ScheduleRange(0)],
                    day_of_week=[ScheduleRange(1, 5)],
                )
            ],
            time_zone_name=SETTLEMENT_TIME_ZONE,
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reconcile_schedule(client: Client, settings: Settings) -> bool:
    """Create the schedule, or bring an existing one's action, spec and policy up to date (a
    schedule created by an older release started the old workflow without a timeout); True
    when it was created."""
    return await _ensure(client, SCHEDULE_ID, reconcile_schedule(settings))


async def ensure_settlement_schedule(client: Client, settings: Settings) -> bool:
    """Create the settlement job's schedule or bring it up to date; True when created."""
    return await _ensure(client, SETTLEMENT_SCHEDULE_ID, settlement_schedule(settings))


async def _ensure(client: Client, schedule_id: str, schedule: Schedule) -> bool:
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
            schedule.state = current.description.schedule.state  # paused or not: the operator's
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(update)
        return False
    return True


async def run_settlement_now(
    settings: Settings, client: Client | None = None, as_of: date | None = None
) -> SettleReport:
    """Run the settlement job now, for ``as_of`` (default: today in New York), and wait for its
    report."""
    client = client or await connect(settings)
    run_id = uuid.uuid4().hex[:12]
    return await client.execute_workflow(
        SettlementWorkflow.run,
        SettleInput(as_of=as_of),
        id=f"settlement/manual/{run_id}",
        task_queue=settings.orders_task_queue,
    )


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
