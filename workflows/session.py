"""The market's hours in the saga: an order accepted while the market is closed waits for the open.

With the saga setting ``market_hours = "enforce"`` an order that has been accepted (its funds or
shares held) asks the broker's market clock before the submit, the pivot. While the broker says
the market is closed the order is ``QUEUED`` (its status, its orders row, its search attribute)
and waits on a durable timer until the broker's next open, asking the broker's clock again at
least every ``market_recheck_s``: the broker's clock is the authority, not ``workflow.now()``
(a simulator's clock may run ahead of real time, and the broker decides when an order trades).
A cancel wakes it at once; the order is then never sent (``OrderWorkflow._execute`` voids its
hold and ends it CANCELED). At the open it goes on to the submit as any other order.

Runs from ``market-hours-v1`` on; runs started before, and every run whose worker leaves the
setting "off" (the default), are submitted at once, as before.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.market import MarketActivities, MarketClockInput
    from core import errors
    from core.broker_client import MarketClock
    from core.statuses import OrderStatus
    from workflows.saga_base import SagaBase, error_message, error_type

MARKET_HOURS_PATCH = "market-hours-v1"
# The shortest wait between two asks: a broker whose clock says the open has passed but the
# market is still closed (its open is a moment late) is not asked in a busy loop.
MIN_RECHECK_S = 1.0
# Asked until the broker answers; a clock that does not add up, or keys it refuses, do not
# improve by asking again: they park the order.
CLOCK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[errors.BROKER_REJECTED, errors.BROKER_AUTH, errors.BROKER_BAD_CLOCK],
)


class MarketHours(SagaBase):
    """The QUEUED phase, between the accept phase and the submit."""

    async def _wait_for_open(self) -> None:
        """Return once the broker says the market is open, or the order is canceled."""
        if self._cfg.market_hours != "enforce" or not workflow.patched(MARKET_HOURS_PATCH):
            return
        clock = await self._market_clock()
        if clock.is_open or self._state.cancel_requested:
            return
        self._set_status(
            OrderStatus.QUEUED, f"the market is closed; it opens at {clock.next_open.isoformat()}"
        )
        await self._store(OrderStatus.QUEUED)
        while not clock.is_open:
            wait_s = min(
                self._cfg.market_recheck_s, max(MIN_RECHECK_S, clock.until_open.total_seconds())
            )
            try:
                await workflow.wait_condition(
                    lambda: self._state.cancel_requested, timeout=timedelta(seconds=wait_s)
                )
            except TimeoutError:
                pass
            if self._state.cancel_requested:
                return  # never sent: the caller voids the hold and ends the order CANCELED
            clock = await self._market_clock()
        self._set_status(OrderStatus.ACCEPTED, "the market is open; submitting")
        await self._store(OrderStatus.ACCEPTED)

    async def _market_clock(self) -> MarketClock:
        """The broker's market clock (an ordinary activity on the asks queue). A clock that does
        not add up parks the order until an operator resumes it; refused keys park it until the
        broker answers again."""
        while True:
            try:
                return await self._broker(
                    MarketActivities.market_clock,
                    MarketClockInput(),
                    retry=CLOCK_RETRY,
                    park=False,
                    ask=True,
                )
            except ActivityError as err:
                if not self._parks():
                    raise
                await self._park_for(
                    f"market_clock at the broker: {error_message(err, str(err))}",
                    broker_fault=error_type(err) == errors.BROKER_AUTH,
                )
