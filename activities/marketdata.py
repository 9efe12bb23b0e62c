"""Reading the market-data cache (Redis) that ``ordersaga marketdata`` keeps up to date.

A missing, stale or unusable quote is NOT an error here: get_quote answers ``fresh=False`` with
no prices, and the saga turns that into a REJECTED order ("no price"). Raising would make the
activity's retry policy decide, and a retry seconds later rarely finds a price the feed did not
have; the workflow is the right place to decide how long to wait for one. That holds for a
record that is not a quote at all (garbage, NaN, a JSON-number price, a time in the future):
the rules are core/quotes.py's, a refusal is counted (``refused``, ``refusals`` by reason) and
logged, at most one line per symbol every ``LOG_EVERY_S`` (a flood of orders against one bad
quote must not flood the log; the line says how many were not logged).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import redis.asyncio as aioredis
from pydantic import BaseModel
from temporalio import activity

from core.fx import PAIR, parse_fx_record
from core.keys import RedisKeys
from core.quotes import InvalidQuote, parse_quote_record

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


class GetQuoteInput(BaseModel):
    symbol: str


class QuoteView(BaseModel):
    """A quote as the cache holds it, for the saga."""

    bid: Decimal | None = None
    """None unless fresh: a stale price must not be usable by accident."""
    ask: Decimal | None = None
    as_of: datetime | None = None
    """The quote's own timestamp (the source's clock), when a quote was found at all."""
    age_s: float | None = None
    """Seconds since the feed stored the quote (this machine's clock)."""
    fresh: bool = False
    refused: str | None = None
    """Why the stored record is not a quote at all (None for a good, stale or missing one)."""


class GetQuoteResult(QuoteView):
    symbol: str


class GetFxQuoteInput(BaseModel):
    pair: str = PAIR


class GetFxQuoteResult(QuoteView):
    """The firm's FX quote (won per dollar)."""

    pair: str


class MarketDataActivities:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
        fx_max_age_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.max_age_s = max_age_s
        self.fx_max_age_s = fx_max_age_s
        self._clock = clock
        self.refused = 0
        self.refusals: Counter[str] = Counter()
        self._logged: dict[str, tuple[float, int]] = {}  # symbol -> (last line, not logged)

    @activity.defn
    async def get_quote(self, req: GetQuoteInput) -> GetQuoteResult:
        """The latest quote for a symbol from Redis (never the broker).

        fresh=True only when the record passes core/quotes.py's checks (decimal-text prices,
        finite, positive, bounded; stored no later than now + CLOCK_SKEW_S) and was stored at
        most max_age_s ago. Never raises for a bad record: it answers not fresh, with
        ``refused`` set. A read: retries change nothing (a later retry may see a newer quote).
        """
        symbol = req.symbol.upper()
        raw = await self._redis.get(self._keys.quote(symbol))
        if raw is None:
            return GetQuoteResult(symbol=symbol)
        now = self._clock()
        try:
            quote = parse_quote_record(raw, symbol, now)
        except InvalidQuote as exc:
            self._refuse(symbol, str(exc), now)
            return GetQuoteResult(symbol=symbol, refused=str(exc))
        age_s = now - quote.received_at
        if age_s > self.max_age_s:
            return GetQuoteResult(symbol=symbol, as_of=quote.timestamp, age_s=age_s)
        return GetQuoteResult(
            symbol=symbol,
            bid=quote.bid,
            ask=quote.ask,
            as_of=quote.timestamp,
            age_s=age_s,
            fresh=True,
        )

    @activity.defn
    async def get_fx_quote(self, req: GetFxQuoteInput) -> GetFxQuoteResult:
        """The firm's latest FX quote for a pair from Redis (core/fx.py's rules).

        fresh=True only for a record that passes ``parse_fx_record`` and is neither past its own
        ``expires_at`` nor older than ``fx_max_age_s``. Never raises for a bad or missing record:
        it answers not fresh (``refused`` says why a record is not a quote). A read: a retry
        changes nothing.
        """
        pair = req.pair.upper()
        if pair != PAIR:
            return GetFxQuoteResult(pair=pair[:20], refused=f"unknown pair (only {PAIR})")
        raw = await self._redis.get(self._keys.fx(pair))
        if raw is None:
            return GetFxQuoteResult(pair=pair)
        now = self._clock()
        try:
            quote = parse_fx_record(raw, pair, now)
        except InvalidQuote as exc:
            self._refuse(pair, str(exc), now)
            return GetFxQuoteResult(pair=pair, refused=str(exc))
        age_s = now - quote.received_at
        if quote.stale(now, self.fx_max_age_s):
            return GetFxQuoteResult(pair=pair, as_of=quote.timestamp, age_s=age_s)
        return GetFxQuoteResult(
            pair=pair,
            bid=quote.bid,
            ask=quote.ask,
            as_of=quote.timestamp,
            age_s=age_s,
            fresh=True,
        )

    def _refuse(self, symbol: str, reason: str, now: float) -> None:
        self.refused += 1
        self.refusals[reason.split(":")[0]] += 1
        last, quiet = self._logged.get(symbol, (float("-inf"), 0))
        if now - last < LOG_EVERY_S:
            self._logged[symbol] = (last, quiet + 1)
            return
        self._logged[symbol] = (now, 0)
        more = f" ({quiet} more since the last line)" if quiet else ""
        log.warning("quote for %s refused: %s%s", symbol, reason, more)
