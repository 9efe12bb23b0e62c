"""The QUEUED phase (workflows/session.py) with time skipping and stand-in activities: an order
accepted while the broker's clock says closed waits for the broker's open, asking its clock at
least every ``market_recheck_s``; a cancel wakes it and nothing reaches the broker; a clock that
does not add up parks it; with the setting off the clock is never asked."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.market import MarketClockInput
from core import errors
from core.broker_client import MarketClock
from core.settings import SagaConfig
from core.statuses import OrderStatus
from tests.workflows.test_saga_time import (  # noqa: F401
    DAY,
    World,
    broker_order,
    skipping_env,
    started,
)
from workflows.order import OrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOUR = 3_600.0
T0 = datetime(2026, 11, 28, 12, tzinfo=UTC)  # a Saturday


def clock_at(at: datetime, opens: datetime) -> MarketClock:
    """The broker's clock at ``at``: closed until ``opens`` (open from then, for 6.5 hours)."""
    if at >= opens:
        return MarketClock(
            timestamp=at,
            is_open=True,
            next_open=opens + timedelta(days=1),
            next_close=opens + timedelta(hours=6.5),
        )
    return MarketClock(
        timestamp=at, is_open=False, next_open=opens, next_close=opens + timedelta(hours=6.5)
    )


class ClockWorld(World):
    """The world with a broker clock: each ask answers the next of ``clocks`` (the last one
    for ever), or raises ``clock_error``."""

    def __init__(self, clocks: list[MarketClock], clock_error: str | None = None) -> None:
        super().__init__(broker_script=[broker_order("filled", "2")], submit_fails=False)
        self.clocks = clocks
        self.clock_error = clock_error
        self.clock_asked_at: list[datetime] = []

    def activities(self) -> list[object]:
        world = self

        @activity.defn(name="market_clock")
        async def market_clock(_: MarketClockInput) -> MarketClock:
            world.clock_asked_at.append(activity.info().current_attempt_scheduled_time)
            if world.clock_error:
                raise ApplicationError(
                    world.clock_error, type=errors.BROKER_BAD_CLOCK, non_retryable=True
                )
            return world.clocks.pop(0) if len(world.clocks) > 1 else world.clocks[0]

        return [*super().activities(), market_clock]


ENFORCE = SagaConfig(market_hours="enforce", market_recheck_s=6 * HOUR, fill_poll_interval_s=60)


async def until(check: object, what: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_closed_market_queues_the_order_until_the_brokers_open(
    skipping_env: WorkflowEnvironment,  # noqa: F811
) -> None:
    opens = T0 + timedelta(days=2, hours=2.5)  # Monday 14:30 UTC
    # The broker's clock, as each ask finds it: closed for two days, then open. It is the
    # authority: the asks follow its distance to the open, not the workflow's clock.
    clocks = [clock_at(T0 + timedelta(hours=6 * i), opens) for i in range(9)]
    world = ClockWorld([*clocks, clock_at(opens, opens)])
    async with started(skipping_env, world, ENFORCE) as handle:
        final = await handle.result()
    assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
    assert world.statuses[:2] == ["QUEUED", "ACCEPTED"], world.statuses
    assert world.submitting.is_set()
    # Asked once before, then every 6 h while the broker's open was further away, then at its
    # open (2.5 h after its last closed answer): ten asks, the tenth saying open.
    asked = world.clock_asked_at
    gaps = [round((b - a).total_seconds() / HOUR, 1) for a, b in itertools.pairwise(asked)]
    assert gaps == [6.0] * 8 + [2.5], gaps
    notes = [e.event for e in final.timeline]
    assert any(n.startswith("QUEUED: the market is closed; it opens at 2026-11-30") for n in notes)


async def test_the_wait_ends_at_the_brokers_next_open_when_that_comes_first(
    skipping_env: WorkflowEnvironment,  # noqa: F811
) -> None:
    opens = T0 + timedelta(hours=2)
    world = ClockWorld([clock_at(T0, opens), clock_at(opens, opens)])
    async with started(skipping_env, world, ENFORCE) as handle:
        final = await handle.result()
    assert final.status == OrderStatus.SETTLED
    first, second = world.clock_asked_at[:2]
    assert round((second - first).total_seconds() / HOUR, 1) == 2.0  # not the 6 h recheck


async def test_a_cancel_while_queued_sends_nothing_and_voids_the_hold(
    temporal_env: WorkflowEnvironment,
) -> None:
    # Real time (no skipping): the order's next recheck is 6 h away, so only the cancel can
    # end its wait within the test.
    world = ClockWorld([clock_at(T0, T0 + timedelta(days=2))])
    async with started(temporal_env, world, ENFORCE) as handle:
        await until(lambda: "QUEUED" in world.statuses, "the order to be QUEUED")
        queued = await handle.query(OrderWorkflow.status)
        assert queued.status == OrderStatus.QUEUED
        answer = await handle.execute_update(OrderWorkflow.cancel)
        assert answer.accepted and "will not be sent" in answer.detail
        final = await asyncio.wait_for(handle.result(), 30)
    assert final.status == OrderStatus.CANCELED, (final.status, final.reason)
    assert not world.submitting.is_set() and not world.canceled_at_broker
    assert len(world.voided_at) == 1
    assert world.statuses[-1] == "CANCELED"
    assert len(world.clock_asked_at) == 1


async def test_a_clock_that_does_not_add_up_parks_the_order(
    skipping_env: WorkflowEnvironment,  # noqa: F811
) -> None:
    world = ClockWorld([clock_at(T0, T0)], clock_error="is_open is not a boolean")
    async with started(skipping_env, world, ENFORCE) as handle:
        await until(lambda: "NEEDS_ATTENTION" in world.statuses, "the order to be parked")
        parked = await handle.query(OrderWorkflow.status)
        assert parked.status == OrderStatus.NEEDS_ATTENTION
        assert "market_clock at the broker" in (parked.reason or ""), parked.reason
        assert not world.submitting.is_set()
        await handle.terminate("test over")


async def test_with_the_setting_off_the_clock_is_never_asked(
    skipping_env: WorkflowEnvironment,  # noqa: F811
) -> None:
    world = ClockWorld([clock_at(T0, T0 + timedelta(days=2))])
    config = SagaConfig(fill_poll_interval_s=60)
    async with started(skipping_env, world, config) as handle:
        final = await handle.result()
    assert final.status == OrderStatus.SETTLED
    assert world.clock_asked_at == [] and "QUEUED" not in world.statuses
