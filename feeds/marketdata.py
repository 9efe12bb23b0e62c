"""The market-data feed: keeps the latest quote per symbol in Redis.

Pricing a market order reads Redis only (activities/marketdata.py), so it never waits on the
broker. Each quote is stored under ``RedisKeys.quote(symbol)`` as JSON:
``{"symbol", "bid", "ask", "bid_size", "ask_size" (strings), "timestamp" (the quote's own time,
RFC 3339), "received_at" (this machine's epoch seconds when the feed wrote it)}``. Readers judge
freshness by ``received_at``: the quote's own timestamp comes from the broker's clock (the
simulator's can be advanced), while "how long since we last heard" is what staleness means.

A quote from the broker that is not a usable price (core/quotes.py: NaN, garbage, a negative,
absurd or over-precise price, no timestamp) is skipped: counted in ``skipped``, logged one line
each, and the symbol's previous record is left to go stale. Every record is run through the
reader's own parser before it is written, so the feed never writes a quote the reader refuses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from core.broker_client import BrokerClient, BrokerError, Quote
from core.keys import RedisKeys
from core.quotes import InvalidQuote, parse_quote_record
from core.telemetry import NOOP_METRICS, ProcessMetrics

log = logging.getLogger(__name__)

# A feed that stops leaves its last quotes behind; readers already treat them as stale after
# max_age_s, and this TTL just keeps dead symbols from lingering forever.
QUOTE_TTL_S = 3600


def quote_record(quote: Quote, received_at: float) -> str:
    return json.dumps(
        {
            "symbol": quote.symbol,
            "bid": f"{quote.bid:f}",
            "ask": f"{quote.ask:f}",
            "bid_size": f"{quote.bid_size:f}",
            "ask_size": f"{quote.ask_size:f}",
            "timestamp": quote.timestamp.isoformat().replace("+00:00", "Z"),
            "received_at": received_at,
        }
    )


def _age(record: str | bytes | None, now: float) -> float | None:
    """Seconds since the record was stored (0 for a time ahead of ``now``); None for no record
    or one without a readable time."""
    try:
        received = float(json.loads(record)["received_at"]) if record else None
    except (ValueError, KeyError, TypeError):
        return None
    if received is None or received != received:  # none, or NaN
        return None
    return max(0.0, now - received)


class MarketDataFeed:
    """Polls the broker's latest quotes every ``interval_s`` and writes them to Redis."""

    def __init__(
        self,
        client: BrokerClient,
        redis: aioredis.Redis,
        keys: RedisKeys,
        symbols: list[str],
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        metrics: ProcessMetrics = NOOP_METRICS,
    ) -> None:
        self._metrics = metrics
        metrics.collector_errors.add(0, {"source": "redis"})
        self._client = client
        self._redis = redis
        self._keys = keys
        self.symbols = [s.upper() for s in symbols]
        self.interval_s = interval_s
        self._clock = clock
        self.polls = 0
        self.errors = 0
        self.skipped = 0

    async def poll_once(self) -> dict[str, Quote]:
        """One poll: fetch and store every usable quote the broker has. Raises the broker's
        errors; a single bad quote is skipped (counted and logged), never raised."""
        refused: dict[str, str] = {}
        quotes = await self._client.latest_quotes(self.symbols, refused)
        received_at = self._clock()
        records: dict[str, str] = {}
        for symbol, quote in quotes.items():
            record = quote_record(quote, received_at)
            try:
                parse_quote_record(record, symbol.upper(), received_at)
            except InvalidQuote as exc:
                refused[symbol] = str(exc)
                continue
            records[symbol] = record
        for symbol, reason in sorted(refused.items()):
            self.skipped += 1
            log.warning("quote for %s skipped: %s", symbol, reason)
        if records:
            async with self._redis.pipeline(transaction=False) as pipe:
                for symbol, record in records.items():
                    pipe.set(self._keys.quote(symbol), record, ex=QUOTE_TTL_S)
                await pipe.execute()
        missing = set(self.symbols) - set(quotes) - set(refused)
        if missing:
            log.warning("no quote from the broker for %s", ",".join(sorted(missing)))
        self.polls += 1
        return {s: q for s, q in quotes.items() if s in records}

    async def record_ages(self) -> dict[str, float | None]:
        """Each symbol's quote age in Redis, as the reader judges it (now minus ``received_at``;
        None when none is stored or its time cannot be read), into
        ``ordersaga_quote_age_seconds`` and ``ordersaga_quote_missing``. Read from Redis, not
        from this feed's memory: what the saga prices with is what Redis holds."""
        raw = await self._redis.mget([self._keys.quote(s) for s in self.symbols])
        now = self._clock()
        ages: dict[str, float | None] = {}
        for symbol, value in zip(self.symbols, raw, strict=True):
            age = ages[symbol] = _age(value, now)
            labels = {"symbol": symbol}
            self._metrics.quote_missing.set(int(age is None), labels)
            if age is not None:
                self._metrics.quote_age.set(age, labels)
        return ages

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll until ``stop`` is set. Broker and Redis errors are logged and polling goes on."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                quotes = await self.poll_once()
                log.info("stored %d quotes (poll %d)", len(quotes), self.polls)
            except (BrokerError, aioredis.RedisError, OSError) as exc:
                self.errors += 1
                log.warning("market-data poll failed (%s): %s", type(exc).__name__, exc)
            except Exception:  # a bug must not stop the prices: log it and poll again
                self.errors += 1
                log.exception("market-data poll failed unexpectedly")
            try:
                await self.record_ages()
            except (aioredis.RedisError, OSError) as exc:
                self._metrics.collector_errors.add(1, {"source": "redis"})
                log.debug("quote ages not read: %s", exc)
            except Exception:  # the gauges must never stop the prices (it did once)
                self._metrics.collector_errors.add(1, {"source": "redis"})
                log.exception("quote ages not recorded")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
