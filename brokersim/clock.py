"""The simulated clock: real UTC time plus a persisted, only-growing offset.

The only session boundary matching follows is the daily close at 21:00 UTC, where ``day`` orders
expire; matching runs around the clock so tests and demos work at any real hour. The market
clock and calendar served to clients (GET /v2/clock, /v2/calendar) are a plain weekday calendar:
every Monday to Friday open 9:30 to 16:00 America/New_York (no holidays, no early closes) with
the extended session 4:00 to 20:00 and settlement one weekday later (T+1).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

MARKET_CLOSE = time(21, 0, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")
SESSION_OPEN, SESSION_CLOSE = time(9, 30), time(16, 0)
EXTENDED_OPEN, EXTENDED_CLOSE = "0400", "2000"
# The offset never passes a century: far from datetime's year 9999, so `now` always exists.
MAX_OFFSET_US = 100 * 366 * 86_400 * 1_000_000


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "+"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def next_close(dt: datetime) -> datetime:
    """The first market close strictly after ``dt``."""
    close = datetime.combine(dt.astimezone(UTC).date(), MARKET_CLOSE)
    return close if close > dt else close + timedelta(days=1)


class SimClock:
    def __init__(self, offset_us: int = 0, now_fn: Callable[[], datetime] = utcnow) -> None:
        self.offset_us = offset_us
        self._now_fn = now_fn

    def now(self) -> datetime:
        return self._now_fn() + timedelta(microseconds=self.offset_us)

    def advance(self, micros: int) -> None:
        """Move forward ``micros`` microseconds; ValueError (and no change) if out of range."""
        if micros < 0:
            raise ValueError("the simulated clock never goes back")
        if self.offset_us + micros > MAX_OFFSET_US:
            raise ValueError("the simulated clock may run at most 100 years ahead")
        self.offset_us += micros


def is_trading_day(day: date) -> bool:
    return day.weekday() < 5


def next_trading_day(day: date) -> date:
    day += timedelta(days=1)
    while not is_trading_day(day):
        day += timedelta(days=1)
    return day


def _session(day: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(day, SESSION_OPEN, tzinfo=NEW_YORK),
        datetime.combine(day, SESSION_CLOSE, tzinfo=NEW_YORK),
    )


def market_clock(now: datetime) -> dict[str, Any]:
    """Alpaca's Clock entity at ``now``: timestamps in New York time with their offset."""
    local = now.astimezone(NEW_YORK)
    day = local.date()
    opens, closes = _session(day)
    is_open = is_trading_day(day) and opens <= local < closes
    if not is_trading_day(day) or local >= closes:
        opens, closes = _session(next_trading_day(day))
    elif is_open:
        opens = _session(next_trading_day(day))[0]
    return {
        "timestamp": local.isoformat(),
        "is_open": is_open,
        "next_open": opens.isoformat(),
        "next_close": closes.isoformat(),
    }


def calendar(start: date, end: date) -> list[dict[str, str]]:
    """Alpaca's Calendar entities of the trading days from ``start`` to ``end``, inclusive."""
    days = []
    day = start if is_trading_day(start) else next_trading_day(start)
    while day <= end:
        days.append(
            {
                "date": day.isoformat(),
                "open": SESSION_OPEN.strftime("%H:%M"),
                "close": SESSION_CLOSE.strftime("%H:%M"),
                "session_open": EXTENDED_OPEN,
                "session_close": EXTENDED_CLOSE,
                "settlement_date": next_trading_day(day).isoformat(),
            }
        )
        day = next_trading_day(day)
    return days
