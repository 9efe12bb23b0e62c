"""The FX feed: keeps the firm's KRW/USD quote in Redis (``RedisKeys.fx(PAIR)``).

Pricing an order paid in won reads Redis only (``MarketDataActivities.get_fx_quote``). Each write
is the firm's quote around a mid rate: bid and ask ``spread`` apart (core/fx.firm_quote: the bid
rounded down, the ask up), the time, when it was stored, and when it expires (``ttl_s`` later).
A reader refuses it once expired or older than its own ``fx_max_age_s``: a feed that stops
leaves a quote that soon refuses orders paid in won ("no FX rate"), never an old rate used.

The mid comes from a ``RateSource``. Here it is ``WalkingRate``, the dev stack's and the
simulator's stand-in for the firm's FX dealer: a configured mid that walks a bounded random step
per update. A production deployment plugs in its dealer's rate instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

import redis.asyncio as aioredis

from core.fx import PAIR, FxQuote, InvalidQuote, firm_quote, fx_record, parse_fx_record
from core.keys import RedisKeys

log = logging.getLogger(__name__)


class RateSource(Protocol):
    def mid(self) -> Decimal: ...


class WalkingRate:
    """A mid rate starting at ``start`` and moving at most ``walk`` (a fraction) per call."""

    def __init__(self, start: Decimal, walk: Decimal, seed: int | None = None) -> None:
        self._mid = start
        self._walk = walk
        self._random = random.Random(seed)

    def mid(self) -> Decimal:
        step = Decimal(self._random.randint(-1000, 1000)) / 1000 * self._walk
        self._mid = (self._mid * (1 + step)).quantize(Decimal("0.0001"))
        return self._mid


class FxFeed:
    """Writes the firm's quote every ``interval_s``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        source: RateSource,
        *,
        spread: Decimal,
        ttl_s: float,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._source = source
        self.spread = spread
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self._clock = clock
        self.updates = 0
        self.errors = 0

    async def update_once(self) -> FxQuote:
        """Quote around the source's mid and store it; the record is run through the reader's
        parser first, so the feed never writes a quote the reader refuses (InvalidQuote)."""
        bid, ask = firm_quote(self._source.mid(), self.spread)
        now = self._clock()
        record = fx_record(bid, ask, datetime.now(UTC), now, now + self.ttl_s)
        quote = parse_fx_record(record, PAIR, now)
        # Kept a while past expiry so `ordersaga fx quote` can show how stale it is.
        await self._redis.set(self._keys.fx(PAIR), record, ex=int(self.ttl_s) + 3600)
        self.updates += 1
        return quote

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Update until ``stop`` is set; errors are logged and the feed goes on."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.update_once()
            except (aioredis.RedisError, OSError, InvalidQuote) as exc:
                self.errors += 1
                log.warning("FX quote not stored (%s): %s", type(exc).__name__, exc)
            except Exception:  # a bug must not stop the rate: log it and go on
                self.errors += 1
                log.exception("FX quote not stored unexpectedly")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
