"""Reading the market-data cache (Redis) that ``ordersaga marketdata`` keeps up to date.

A missing, stale or unusable quote is NOT an error here: get_quote answers ``fresh=False`` with
no prices, and the saga turns that into a REJECTED order ("no price"). Raising would make the
activity's retry policy decide, and a retry seconds later rarely finds a price the feed did not
have; the workflow is the right place to decide how long to wait for one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import redis.asyncio as aioredis
from pydantic import BaseModel
from temporalio import activity

from core.keys import RedisKeys


class GetQuoteInput(BaseModel):
    symbol: str


class GetQuoteResult(BaseModel):
    symbol: str
    bid: Decimal | None = None
    """None unless fresh: a stale price must not be usable by accident."""
    ask: Decimal | None = None
    as_of: datetime | None = None
    """The quote's own timestamp (the broker's clock), when a quote was found at all."""
    age_s: float | None = None
    """Seconds since the feed stored the quote (this machine's clock)."""
    fresh: bool = False


class MarketDataActivities:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.max_age_s = max_age_s
        self._clock = clock

    @activity.defn
    async def get_quote(self, req: GetQuoteInput) -> GetQuoteResult:
        """The latest quote for a symbol from Redis (never the broker).

        fresh=True only when the feed stored it less than max_age_s ago and both bid and ask are
        positive. A read: retries change nothing (a later retry may see a newer quote).
        """
        symbol = req.symbol.upper()
        raw = await self._redis.get(self._keys.quote(symbol))
        if raw is None:
            return GetQuoteResult(symbol=symbol)
        record = json.loads(raw)
        age_s = self._clock() - float(record["received_at"])
        bid, ask = Decimal(record["bid"]), Decimal(record["ask"])
        as_of = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        if age_s > self.max_age_s or bid <= 0 or ask <= 0:
            return GetQuoteResult(symbol=symbol, as_of=as_of, age_s=age_s)
        return GetQuoteResult(symbol=symbol, bid=bid, ask=ask, as_of=as_of, age_s=age_s, fresh=True)
