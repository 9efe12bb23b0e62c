"""The feed's quote-age gauges with the SDK's real meter (which refuses negative values): a symbol
with no quote, one whose record cannot be read and one stamped in the future are reported, and
the feed goes on; before, the first of them raised and killed the feed (no price for anyone)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import pytest
import redis.asyncio as aioredis

from core.broker_client import BrokerClient, Quote
from core.keys import RedisKeys
from core.settings import Settings
from core.telemetry import ProcessMetrics, new_telemetry
from feeds.marketdata import MarketDataFeed, quote_record

pytestmark = pytest.mark.asyncio(loop_scope="session")


def record(symbol: str, received_at: float) -> str:
    quote = Quote(
        symbol=symbol,
        bid=Decimal("99.98"),
        ask=Decimal("100.02"),
        bid_size=Decimal(1),
        ask_size=Decimal(1),
        timestamp=datetime.now(UTC),
    )
    return quote_record(quote, received_at=received_at)


async def test_missing_unreadable_and_future_quotes_are_gauged_not_fatal(
    redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    keys = RedisKeys(f"{redis_keys.prefix}ages:")
    now = time.time()
    await redis_client.set(keys.quote("AAPL"), record("AAPL", now - 4))
    await redis_client.set(keys.quote("MSFT"), record("MSFT", now + 3600))  # ahead of the clock
    await redis_client.set(keys.quote("TSLA"), json.dumps({"received_at": "soon"}))
    telemetry = new_telemetry()
    async with BrokerClient.from_settings(Settings()) as client:
        feed = MarketDataFeed(
            client,
            redis_client,
            keys,
            ["AAPL", "MSFT", "TSLA", "NVDA"],
            clock=lambda: now,
            metrics=ProcessMetrics(telemetry.meter),
        )
        ages = await feed.record_ages()
    assert ages == {"AAPL": pytest.approx(4), "MSFT": 0.0, "TSLA": None, "NVDA": None}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{telemetry.exporter}/metrics") as resp,
    ):
        text = await resp.text()
    missing = {
        line.split('symbol="')[1].split('"')[0]: line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith("ordersaga_quote_missing{")
    }
    assert missing == {"AAPL": "0", "MSFT": "0", "TSLA": "1", "NVDA": "1"}, text
