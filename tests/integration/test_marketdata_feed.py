"""The market-data feed against the simulator: it stores quotes that the reader then serves,
and it keeps polling through broker errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from activities.marketdata import GetQuoteInput, MarketDataActivities
from core.broker_client import BrokerClient
from core.keys import RedisKeys
from feeds.marketdata import MarketDataFeed
from tests.support.brokersim import BrokerSim, brokersim_fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

sim = brokersim_fixture(scope="module")


@pytest_asyncio.fixture(loop_scope="session")
async def client(sim: BrokerSim) -> AsyncIterator[BrokerClient]:
    async with BrokerClient(
        sim.url, key_id=sim.key_id, secret_key=sim.secret_key, request_timeout_s=1.0
    ) as broker_client:
        yield broker_client
    await sim.admin("PUT", "/admin/faults", {"error_5xx_prob": 0.0})


async def eventually(check: Callable[[], bool], what: str) -> None:
    for _ in range(250):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def test_feed_writes_quotes_the_reader_serves(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    await sim.admin("PUT", "/admin/prices", {"AAPL": "190.00", "MSFT": "420.00"})
    feed = MarketDataFeed(
        client, redis_client, redis_keys, ["AAPL", "MSFT", "NOPE"], clock=lambda: 1000.0
    )
    quotes = await feed.poll_once()
    assert set(quotes) == {"AAPL", "MSFT"}

    raw = await redis_client.get(redis_keys.quote("AAPL"))
    assert raw is not None
    record = json.loads(raw)
    assert record["received_at"] == 1000.0
    assert Decimal(record["bid"]) < Decimal(record["ask"])
    assert record["timestamp"].endswith("Z")

    reader = MarketDataActivities(redis_client, redis_keys, max_age_s=5, clock=lambda: 1004.0)
    got = await reader.get_quote(GetQuoteInput(symbol="AAPL"))
    assert got.fresh
    assert got.ask == quotes["AAPL"].ask
    assert abs(got.ask - Decimal("190.00")) < Decimal("1.00")
    assert not (await reader.get_quote(GetQuoteInput(symbol="NOPE"))).fresh

    later = MarketDataActivities(redis_client, redis_keys, max_age_s=5, clock=lambda: 1006.0)
    assert not (await later.get_quote(GetQuoteInput(symbol="AAPL"))).fresh


async def test_feed_keeps_polling_through_broker_errors(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    feed = MarketDataFeed(client, redis_client, redis_keys, ["TSLA"], interval_s=0.02)
    await sim.admin("PUT", "/admin/faults", {"error_5xx_prob": 1.0})
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop))
    try:
        await eventually(lambda: feed.errors >= 2, "two failed polls")
        assert feed.polls == 0
        await sim.admin("PUT", "/admin/faults", {"error_5xx_prob": 0.0})
        await eventually(lambda: feed.polls >= 2, "polls after the broker recovered")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert await redis_client.get(redis_keys.quote("TSLA")) is not None


BAD_BROKER_QUOTES: dict[str, object] = {
    "NVDA": {"ap": "NaN", "bp": "129.99", "as": 1, "bs": 1, "t": "2026-11-25T14:30:00Z"},
    "AMZN": {"ap": "garbage", "bp": 1, "t": "2026-11-25T14:30:00Z"},
    "GOOGL": {"ap": -5, "bp": -6, "t": "2026-11-25T14:30:00Z"},
    "META": {"ap": 500.123456, "bp": 500.1, "t": "2026-11-25T14:30:00Z"},
    "NFLX": {"ap": 650.01, "bp": 649.99},  # no timestamp
    "AMD": "not a quote",
}


async def test_feed_skips_bad_broker_quotes_and_keeps_writing_good_ones(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    bad = sorted(BAD_BROKER_QUOTES)
    await sim.admin("PUT", "/admin/quote_overrides", BAD_BROKER_QUOTES)
    # A JSON NaN literal too (json.dumps writes one; the simulator sends it on as it is).
    nan_quote = {"ap": float("nan"), "bp": 1, "t": "2026-11-25T14:30:00Z"}
    await sim.admin("PUT", "/admin/quote_overrides", {"INTC": nan_quote})
    feed = MarketDataFeed(client, redis_client, redis_keys, ["AAPL", "INTC", *bad], interval_s=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop))
    try:
        await eventually(lambda: feed.polls >= 3, "three polls")
        assert not task.done()
        assert feed.errors == 0
        assert feed.skipped >= 3 * (len(bad) + 1)
        for symbol in [*bad, "INTC"]:
            assert await redis_client.get(redis_keys.quote(symbol)) is None, symbol
        reader = MarketDataActivities(redis_client, redis_keys, max_age_s=10)
        assert (await reader.get_quote(GetQuoteInput(symbol="AAPL"))).fresh
        # The broker heals: the same feed, still running, writes the symbol again.
        await sim.admin("PUT", "/admin/quote_overrides", {"NVDA": None})
        await eventually(lambda: feed.polls >= 6, "three more polls")
        assert (await reader.get_quote(GetQuoteInput(symbol="NVDA"))).fresh
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await sim.admin("PUT", "/admin/quote_overrides", {s: None for s in [*bad, "INTC"]})
