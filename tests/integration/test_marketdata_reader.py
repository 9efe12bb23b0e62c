"""MarketDataActivities.get_quote reads the feed's records from real Redis and judges their age."""

from __future__ import annotations

import json
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


def good_record(symbol: str, **override: object) -> dict[str, object]:
    record: dict[str, object] = {
        "symbol": symbol,
        "bid": "190.11",
        "ask": "190.13",
        "bid_size": "1",
        "ask_size": "2",
        "timestamp": "2026-11-25T14:30:00Z",
        "received_at": NOW,
    }
    record.update(override)
    return record


# Each is answered "not fresh" with a reason, never an exception (which would fail the saga).
BAD_RECORDS: dict[str, str] = {
    "not JSON": "{not json",
    "garbage": '"just a string"',
    "NaN ask text": json.dumps(good_record("X", ask="NaN")),
    "NaN literal": json.dumps(good_record("X")).replace('"190.13"', "NaN"),
    "JSON-number ask": json.dumps(good_record("X")).replace('"190.13"', "190.13"),
    "negative bid": json.dumps(good_record("X", bid="-1")),
    "absurd ask": json.dumps(good_record("X", ask="1000000.01")),
    "over-precise ask": json.dumps(good_record("X", ask="190.12345")),
    "exponent ask": json.dumps(good_record("X", ask="1E+2")),
    "future received_at": json.dumps(good_record("X", received_at=NOW + 3600)),
    "no timestamp": json.dumps(good_record("X", timestamp=None)),
    "other symbol": json.dumps(good_record("Y")),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
async def test_bad_record_is_not_fresh_and_counted(
    case: str, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    symbol = f"BAD{abs(hash(case)) % 10_000}"
    raw = BAD_RECORDS[case].replace('"X"', json.dumps(symbol))
    await redis_client.set(redis_keys.quote(symbol), raw)
    acts = MarketDataActivities(redis_client, redis_keys, max_age_s=10, clock=FakeClock(NOW))
    got = await acts.get_quote(GetQuoteInput(symbol=symbol))
    assert not got.fresh
    assert got.bid is None and got.ask is None
    assert got.refused
    assert acts.refused == 1


async def test_small_clock_skew_is_allowed_and_a_stored_json_number_is_never_a_float(
    redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    await redis_client.set(
        redis_keys.quote("SKEW"), json.dumps(good_record("SKEW", received_at=NOW + 1.5))
    )
    acts = MarketDataActivities(redis_client, redis_keys, max_age_s=10, clock=FakeClock(NOW))
    got = await acts.get_quote(GetQuoteInput(symbol="SKEW"))
    assert got.fresh and got.ask == Decimal("190.13")
    assert acts.refused == 0
