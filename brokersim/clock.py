"""The simulated clock, and the market calendar it runs on.

The clock is real UTC time plus a persisted, only-growing offset. The market clock and calendar
served to clients (GET /v2/clock, /v2/calendar) and the close at which ``day`` orders expire
follow the NYSE calendar (core/calendar.py, from ``exchange-calendars``): holidays, early closes
and New York's daylight-saving changes, regular session 9:30 to 16:00 New York time (13:00 on
early closes), the extended session 4:00 to 20:00 (17:00 on early closes) and settlement on the
next session (T+1).

Matching follows the calendar only in the ``enforce`` market-hours mode (engine.py); by default
it runs around the clock so tests and demos work at any real hour.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from core.calendar import NEW_YORK, OutsideCalendar, Session, xnys

__all__ = ["NEW_YORK", "OutsideCalendar"]

MarketHours = Literal["always", "enforce"]
MARKET_HOURS: tuple[str, ...] = ("always", "enforce")
EXTENDED_OPEN = "0400"
# The extended session ends four hours after the regular close (20:00, or 17:00 on early closes).
EXTENDED_AFTER_CLOSE = timedelta(hours=4)
# The offset never passes a century: far from datetime's year 9999, so `now` always exists. The
# calendar's end (core/calendar.LAST_DAY) usually comes first; the engine refuses to pass it.
MAX_OFFSET_US = 100 * 366 * 86_400 * 1_000_000


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "+"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def next_close(dt: datetime) -> datetime:
    """The first market close strictly after ``dt``: when a day order placed at ``dt`` expires
    (the close of the session in progress, or of the next one while the market is closed)."""
    return xnys().next_close(dt)


def is_open(dt: datetime) -> bool:
    return xnys().is_open(dt)


def next_open(dt: datetime) -> datetime:
    return xnys().next_open(dt)


def last_moment() -> datetime:
    """The latest the simulated clock may show: the next open and close must stay known."""
    return xnys().last_moment


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
        if self.now() + timedelta(microseconds=micros) > last_moment():
            raise ValueError(
                f"the simulated clock may not pass {rfc3339(last_moment())}"
                " (the end of the market calendar)"
            )
        self.offset_us += micros


def market_clock(now: datetime) -> dict[str, Any]:
    """Alpaca's Clock entity at ``now``: timestamps in New York time with their offset."""
    cal = xnys()
    return {
        "timestamp": now.astimezone(NEW_YORK).isoformat(),
        "is_open": cal.is_open(now),
        "next_open": cal.next_open(now).astimezone(NEW_YORK).isoformat(),
        "next_close": cal.next_close(now).astimezone(NEW_YORK).isoformat(),
    }


def _calendar_day(session: Session, settles: date) -> dict[str, str]:
    opens, closes = session.local()
    return {
        "date": session.day.isoformat(),
        "open": opens.strftime("%H:%M"),
        "close": closes.strftime("%H:%M"),
        "session_open": EXTENDED_OPEN,
        "session_close": (closes + EXTENDED_AFTER_CLOSE).strftime("%H%M"),
        "settlement_date": settles.isoformat(),
    }


def calendar(start: date, end: date) -> list[dict[str, str]]:
    """Alpaca's Calendar entities of the trading days from ``start`` to ``end``, inclusive.

    Raises OutsideCalendar (one line) for days the calendar does not cover."""
    cal = xnys()
    sessions = cal.sessions(start, end)
    if not sessions:
        return []
    following = [*sessions[1:], cal.next_session(sessions[-1].day)]
    return [_calendar_day(s, t.day) for s, t in zip(sessions, following, strict=True)]
