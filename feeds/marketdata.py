"""The market-data feed: keeps the latest quote per symbol in Redis.

Pricing a market order reads Redis only (activities/marketdata.py), so it never waits on the
broker. Each quote is stored under ``RedisKeys.quote(symbol)`` as JSON:
``{"symbol", "bid", "ask", "bid_size", "ask_size" (strings), "timestamp" (the quote's own time,
RFC 3339), "received_at" (this machine's epoch seconds when the feed wrote it)}``. Readers judge
freshness by ``received_at``: the quote's own timestamp comes from the broker's clock (the
simulator's can be advanced), while "how long since we last heard" is what staleness means.
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

log = logging.getLogger(__name__)

# A feed that stops leaves its last quotes behind; readers already treat them as stale after
# max_age_s, and this TTL just keeps dead symbols from lingering forever.
QUOTE_TTL_S = 3600


def quote_record(quote: Quote, received_at: float) -> str:
    return json.dumps(
        {
            "symbol": quote.symbol,
            "bid": str(quote.bid),
            "ask": str(quote.ask),
            "bid_size": str(quote.bid_size),
            "ask_size": str(quote.ask_size),
            "timestamp": quote.timestamp.isoformat().replace("+00:00", "Z"),
            "received_at": received_at,
        }
    )


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
    ) -> None:
        self._client = client
        self._redis = redis
        self._keys = keys
        self.symbols = [s.upper() for s in symbols]
        self.interval_s = interval_s
        self._clock = clock
        self.polls = 0
        self.errors = 0

    async def poll_once(self) -> dict[str, Quote]:
        """One poll: fetch and store every quote the broker has. Raises the broker's errors."""
        quotes = await self._client.latest_quotes(self.symbols)
        received_at = self._clock()
        if quotes:
            async with self._redis.pipeline(transaction=False) as pipe:
                for symbol, quote in quotes.items():
                    pipe.set(
                        self._keys.quote(symbol), quote_record(quote, received_at), ex=QUOTE_TTL_S
                    )
                await pipe.execute()
        missing = set(self.symbols) - set(quotes)
        if missing:
            log.warning("no quote from the broker for %s", ",".join(sorted(missing)))
        self.polls += 1
        return quotes

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
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
