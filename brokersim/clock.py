"""The simulated clock: real UTC time plus a persisted, only-growing offset.

The only session boundary modelled is the daily close at 21:00 UTC, where ``day`` orders expire.
Matching runs around the clock so tests and demos work at any real hour.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

MARKET_CLOSE = time(21, 0, tzinfo=UTC)
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
