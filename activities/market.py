"""The broker's market clock, asked by an order waiting for the open (on the broker asks queue).

The broker's clock is the authority on whether the market is open: an order is sent only once
the broker says so. Its answer is parsed strictly (core/broker_models.MarketClock); one that does
not add up is a non-retryable ``BrokerBadClock``, which parks the order for an operator rather
than send it, or hold it, on a clock nobody can trust.
"""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.broker import _app_error
from core import errors
from core.broker_client import BrokerClient, BrokerError, InvalidMarketClock, MarketClock


class MarketClockInput(BaseModel):
    """Nothing yet (a model, so fields can be added)."""


class MarketActivities:
    def __init__(self, client: BrokerClient) -> None:
        self._client = client

    @activity.defn
    async def market_clock(self, _: MarketClockInput) -> MarketClock:
        """The broker's market clock now. A read: a retry asks again and may answer later."""
        try:
            return await self._client.market_clock()
        except InvalidMarketClock as exc:
            raise ApplicationError(
                f"the broker's market clock: {exc}",
                type=errors.BROKER_BAD_CLOCK,
                non_retryable=True,
            ) from exc
        except BrokerError as exc:
            raise _app_error(exc) from exc
