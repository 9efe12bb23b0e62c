"""The broker's market clock is hostile input: ``MarketClock.from_alpaca`` takes Alpaca's Clock
entity and refuses, with the reason, anything that does not parse or does not add up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from core.broker_client import InvalidMarketClock, MarketClock

CLOSED = {
    "timestamp": "2026-11-28T10:00:00.123456-05:00",
    "is_open": False,
    "next_open": "2026-11-30T09:30:00-05:00",
    "next_close": "2026-11-30T16:00:00-05:00",
}
OPEN = {
    "timestamp": "2026-11-30T14:45:00Z",
    "is_open": True,
    "next_open": "2026-12-01T14:30:00Z",
    "next_close": "2026-11-30T21:00:00Z",
}


def test_alpacas_clock_parses() -> None:
    closed = MarketClock.from_alpaca(CLOSED)
    assert closed.is_open is False
    assert closed.until_open == timedelta(days=1, hours=23, minutes=29, seconds=59.876544)
    assert MarketClock.from_alpaca(OPEN).until_open == timedelta(0)
    assert MarketClock.from_alpaca({**CLOSED, "extra": [1, 2]}).is_open is False


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"is_open": "false"}, "is_open is not a boolean"),
        ({"is_open": 0}, "is_open is not a boolean"),
        ({"is_open": None}, "is_open is not a boolean"),
        ({"timestamp": None}, "timestamp is not a timestamp"),
        ({"timestamp": 1764342000}, "timestamp is not a timestamp"),
        ({"timestamp": "yesterday"}, "timestamp is not an RFC 3339 time"),
        ({"timestamp": "2026-11-28T10:00:00"}, "timestamp has no time zone"),
        ({"timestamp": "2026-11-28T10:00:00Z" + " " * 40}, "timestamp is not a timestamp"),
        ({"next_open": "2026-11-27T09:30:00-05:00"}, "next_open .* is not within 31 days"),
        ({"next_open": "2126-11-30T09:30:00-05:00"}, "next_open .* is not within 31 days"),
        ({"next_close": "2026-11-28T10:00:00.123456-05:00"}, "next_close .* is not within"),
        ({"is_open": True}, "said to be open, but it next opens"),
        ({"next_close": "2026-11-29T16:00:00-05:00"}, "said to be closed, but"),
    ],
)
def test_a_clock_that_does_not_parse_or_add_up_is_refused(change: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidMarketClock, match=why):
        MarketClock.from_alpaca({**CLOSED, **change})


@pytest.mark.parametrize("raw", [None, [], "closed", 1, [CLOSED]])
def test_a_clock_that_is_not_an_object_is_refused(raw: object) -> None:
    with pytest.raises(InvalidMarketClock, match="not a JSON object"):
        MarketClock.from_alpaca(raw)
