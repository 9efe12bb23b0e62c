"""The positions step's race handling in IncrementalReconcileWorkflow, with stand-in activities
(registered under the real ones' names): the ledger is read, then the broker, then the ledger
again; a comparison is recorded only when both ledger reads agree and the broker stood still,
and a run whose reads never settle records nothing."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.broker import (
    GetHoldingsInput,
    GetHoldingsResult,
    ListBrokerOrdersPageInput,
    ListBrokerOrdersPageResult,
)
from activities.positions import (
    LedgerSide,
    LedgerSideInput,
    PositionBreaksInput,
    PositionBreaksResult,
)
from activities.reconcile import (
    FollowedInput,
    FollowedResult,
    OrderBreaksInput,
    OrderBreaksResult,
)
from worker.main import WORKFLOW_RUNNER
from workflows.reconcile import IncrementalReconcileWorkflow, ReconcileReport, SweepInput

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

BASE = Decimal(10_000_000)


def side(aapl: str) -> LedgerSide:
    """A ledger whose $omnibus holds -aapl AAPL and nothing else moved."""
    return LedgerSide(baseline=BASE, omnibus={"AAPL": -Decimal(aapl)})


class World:
    def __init__(self, ledger: list[LedgerSide], stable: list[bool], held: str = "1") -> None:
        self.ledger, self.stable, self.held = ledger, stable, Decimal(held)
        self.recorded: list[PositionBreaksInput] = []

    def activities(self) -> list[object]:
        world = self

        @activity.defn(name="list_broker_orders_page")
        async def page(inp: ListBrokerOrdersPageInput) -> ListBrokerOrdersPageResult:
            return ListBrokerOrdersPageResult(orders=[], last=True)

        @activity.defn(name="followed_not_seen")
        async def followed(inp: FollowedInput) -> FollowedResult:
            return FollowedResult()

        @activity.defn(name="find_order_breaks")
        async def order_breaks(inp: OrderBreaksInput) -> OrderBreaksResult:
            return OrderBreaksResult()

        @activity.defn(name="read_ledger_side")
        async def read_ledger_side(inp: LedgerSideInput) -> LedgerSide:
            return world.ledger.pop(0) if len(world.ledger) > 1 else world.ledger[0]

        @activity.defn(name="get_holdings")
        async def get_holdings(inp: GetHoldingsInput) -> GetHoldingsResult:
            stable = world.stable.pop(0) if len(world.stable) > 1 else world.stable[0]
            return GetHoldingsResult(cash=BASE, positions={"AAPL": world.held}, stable=stable)

        @activity.defn(name="record_position_breaks")
        async def record(inp: PositionBreaksInput) -> PositionBreaksResult:
            world.recorded.append(inp)
            return PositionBreaksResult(recorded=len(inp.breaks))

        return [page, followed, order_breaks, read_ledger_side, get_holdings, record]


async def run(env: WorkflowEnvironment, world: World) -> ReconcileReport:
    queue = f"pos-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[IncrementalReconcileWorkflow],
        activities=world.activities(),
        workflow_runner=WORKFLOW_RUNNER,
    ):
        return await env.client.execute_workflow(
            IncrementalReconcileWorkflow.run,
            SweepInput(broker_task_queue=queue, full=True),
            id=f"reconcile/rounds/{queue}",
            task_queue=queue,
        )


async def test_a_fill_booked_between_the_ledger_reads_repeats_the_round(
    temporal_env: WorkflowEnvironment,
) -> None:
    # The broker holds 1; the ledger booked it only after the first read: compared on the
    # first read alone it would be a break.
    world = World([side("0"), side("1")], [True])
    report = await run(temporal_env, world)
    assert report.positions_stable is True and report.position_breaks == 0
    assert [r.breaks for r in world.recorded] == [[]]  # recorded once: nothing differs


async def test_a_stable_difference_is_recorded(temporal_env: WorkflowEnvironment) -> None:
    world = World([side("0")], [True])
    report = await run(temporal_env, world)
    assert report.positions_stable is True and report.position_breaks == 1
    [recorded] = world.recorded
    assert [(b.kind, b.client_order_id) for b in recorded.breaks] == [("position", "AAPL")]


async def test_a_ledger_that_keeps_moving_records_nothing(
    temporal_env: WorkflowEnvironment,
) -> None:
    world = World([side(str(n)) for n in range(10)], [True])
    report = await run(temporal_env, world)
    assert report.positions_stable is False and world.recorded == []


async def test_a_broker_that_keeps_moving_records_nothing(
    temporal_env: WorkflowEnvironment,
) -> None:
    world = World([side("0")], [False])
    report = await run(temporal_env, world)
    assert report.positions_stable is False and world.recorded == []
    # and once it stands still, the same difference is recorded
    world = World([side("0")], [False, True])
    report = await run(temporal_env, world)
    assert report.position_breaks == 1 and len(world.recorded) == 1
