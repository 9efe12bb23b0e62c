"""MarketDataActivities.get_quote reads the feed's records from real Redis and judges their age."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from activities.marketdata import GetQuoteInput, MarketDataActivities
from core.broker_client import Quote
from core.keys import RedisKeys
from feeds.marketdata import quote_record

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NOW = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def store(redis: aioredis.Redis, keys: RedisKeys, symbol: str, bid: str, ask: str) -> None:
    quote = Quote(
        symbol=symbol,
        bid=Decimal(bid),
        ask=Decimal(ask),
        bid_size=Decimal(1),
        ask_size=Decimal(2),
        timestamp=datetime(2026, 11, 25, 14, 30, tzinfo=UTC),
    )
    await redis.set(keys.quote(symbol), quote_record(quote, received_at=NOW))


async def test_fresh_quote_is_returned(redis_client: aioredis.Redis, redis_keys: RedisKeys) -> None:
    await store(redis_client, redis_keys, "RDA", "190.11", "190.13")
    acts = MarketDataActivities(redis_client, redis_keys, max_age_s=10, clock=FakeClock(NOW + 9))
    got = await acts.get_quote(GetQuoteInput(symbol="rda"))
    assert got.fresh
    assert (got.bid, got.ask) == (Decimal("190.11"), Decimal("190.13"))
    assert got.as_of == datetime(2026, 11, 25, 14, 30, tzinfo=UTC)


async def test_stale_quote_reads_as_missing(
    redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    await store(redis_client, redis_keys, "RDB", "190.11", "190.13")
    acts = MarketDataActivities(redis_client, redis_keys, max_age_s=10, clock=FakeClock(NOW + 11))
    got = await acts.get_quote(GetQuoteInput(symbol="RDB"))
    assert not got.fresh
    assert got.bid is None and got.ask is None
    assert got.age_s == pytest.approx(11)


async def test_absent_quote_reads_as_missing(
    redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    acts = MarketDataActivities(redis_client, redis_keys, max_age_s=10, clock=FakeClock(NOW))
    got = await acts.get_quote(GetQuoteInput(symbol="NOPE"))
    assert not got.fresh
    assert got.ask is None and got.as_of is None


async def test_zero_ask_is_not_a_price(redis_client: aioredis.Redis, redis_keys: RedisKeys) -> None:
    await store(redis_client, redis_keys, "RDC", "190.11", "0")
    acts = MarketDataActivities(redis_client, redis_keys, max_age_s=10, clock=FakeClock(NOW))
    assert not (await acts.get_quote(GetQuoteInput(symbol="RDC"))).fresh
