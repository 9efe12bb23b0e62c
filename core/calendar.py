"""The US equity market's calendar: NYSE (XNYS) sessions, holidays and early closes.

The sessions come from the maintained ``exchange-calendars`` package, built once per process for
fixed bounds (``FIRST_DAY`` to ``LAST_DAY``): the library's default ends about a year ahead, and
the simulator's clock may run decades ahead of real time. A moment or a day outside the bounds is
refused with ``OutsideCalendar``, one line naming the bounds, never answered by a guess.

Pure: no I/O beyond the library's own tables. Every time it takes must carry a time zone, and
every time it returns is in UTC (``NEW_YORK`` turns one into the exchange's local time). A session
is open from its open (inclusive) to its close (exclusive): at 16:00:00 New York time the market
is closed.
"""

from __future__ import annotations

import bisect
import functools
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

EXCHANGE = "XNYS"
NEW_YORK = ZoneInfo("America/New_York")
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2130, 12, 31)
REGULAR_CLOSE = time(16, 0)
# The longest a sessions listing may span, in days (ten years).
MAX_SPAN_DAYS = 3_660


class OutsideCalendar(ValueError):
    """A moment or day the calendar cannot answer for (outside its bounds, or no time zone)."""


@dataclass(frozen=True)
class Session:
    """One trading day: its regular open and close, in UTC."""

    day: date
    open: datetime
    close: datetime

    @property
    def early_close(self) -> bool:
        return self.close.astimezone(NEW_YORK).time() < REGULAR_CLOSE

    def local(self) -> tuple[datetime, datetime]:
        """The open and close in New York time."""
        return self.open.astimezone(NEW_YORK), self.close.astimezone(NEW_YORK)


class MarketCalendar:
    """The exchange's sessions between ``first_day`` and ``last_day``, looked up by bisection."""

    def __init__(
        self, exchange: str = EXCHANGE, first_day: date = FIRST_DAY, last_day: date = LAST_DAY
    ) -> None:
        with warnings.catch_warnings():
            # exchange-calendars 4.13 uses pandas APIs that pandas 3.1 deprecates (Series.values
            # on time-zone-aware columns); their answers are still right, and the tests turn
            # warnings into errors. Only the calendar's construction runs under this filter.
            warnings.simplefilter("ignore", DeprecationWarning)
            import exchange_calendars  # heavy (pandas): only processes that need it pay for it

            cal = exchange_calendars.get_calendar(
                exchange, start=first_day.isoformat(), end=last_day.isoformat()
            )
            schedule = cal.schedule
            days = [ts.date() for ts in schedule.index]
            opens = [ts.to_pydatetime().astimezone(UTC) for ts in schedule["open"]]
            closes = [ts.to_pydatetime().astimezone(UTC) for ts in schedule["close"]]
        self.exchange = exchange
        self.first_day, self.last_day = first_day, last_day
        self._days: list[date] = days
        self._opens: list[datetime] = opens
        self._closes: list[datetime] = closes
        self._index = {day: i for i, day in enumerate(self._days)}

    # -- bounds ----------------------------------------------------------------------------

    @property
    def bounds(self) -> str:
        return f"{self.first_day.isoformat()} to {self.last_day.isoformat()}"

    def _check_day(self, day: date) -> None:
        if not self.first_day <= day <= self.last_day:
            raise OutsideCalendar(
                f"{day.isoformat()} is outside the {self.exchange} calendar ({self.bounds})"
            )

    def _check_moment(self, at: datetime) -> datetime:
        if at.tzinfo is None or at.utcoffset() is None:
            raise OutsideCalendar(f"{at.isoformat()} has no time zone")
        at = at.astimezone(UTC)
        if not self._opens[0] - timedelta(days=7) <= at <= self._closes[-1]:
            raise OutsideCalendar(
                f"{at.isoformat()} is outside the {self.exchange} calendar ({self.bounds})"
            )
        return at

    def _session(self, i: int) -> Session:
        return Session(self._days[i], self._opens[i], self._closes[i])

    def _at(self, i: int, at: datetime, what: str) -> int:
        if i >= len(self._days):
            raise OutsideCalendar(
                f"no {what} after {at.isoformat()} within the {self.exchange} calendar"
                f" ({self.bounds})"
            )
        return i

    # -- questions -------------------------------------------------------------------------

    def session(self, day: date) -> Session | None:
        """The session on ``day``, None when the market does not open that day."""
        self._check_day(day)
        i = self._index.get(day)
        return None if i is None else self._session(i)

    def is_session(self, day: date) -> bool:
        return self.session(day) is not None

    def is_open(self, at: datetime) -> bool:
        at = self._check_moment(at)
        i = bisect.bisect_right(self._opens, at) - 1
        return i >= 0 and at < self._closes[i]

    def next_open(self, at: datetime) -> datetime:
        """The first open strictly after ``at``."""
        at = self._check_moment(at)
        return self._opens[self._at(bisect.bisect_right(self._opens, at), at, "open")]

    def next_close(self, at: datetime) -> datetime:
        """The first close strictly after ``at``."""
        at = self._check_moment(at)
        return self._closes[self._at(bisect.bisect_right(self._closes, at), at, "close")]

    def current_or_next(self, at: datetime) -> Session:
        """The session open at ``at``, else the next one: the session a day order placed at
        ``at`` is for (it ends at that session's close)."""
        at = self._check_moment(at)
        return self._session(self._at(bisect.bisect_right(self._closes, at), at, "session"))

    def next_session(self, day: date) -> Session:
        """The first session after ``day`` (a T+1 settlement day)."""
        self._check_day(day)
        i = bisect.bisect_right(self._days, day)
        if i >= len(self._days):
            raise OutsideCalendar(
                f"no session after {day.isoformat()} within the {self.exchange} calendar"
                f" ({self.bounds})"
            )
        return self._session(i)

    def sessions(self, start: date, end: date) -> list[Session]:
        """The sessions from ``start`` to ``end``, both included (at most ``MAX_SPAN_DAYS``)."""
        self._check_day(start)
        self._check_day(end)
        if end < start:
            raise OutsideCalendar("end must not be before start")
        if (end - start).days > MAX_SPAN_DAYS:
            raise OutsideCalendar(f"at most {MAX_SPAN_DAYS} days at once")
        lo = bisect.bisect_left(self._days, start)
        hi = bisect.bisect_right(self._days, end)
        return [self._session(i) for i in range(lo, hi)]

    @property
    def last_moment(self) -> datetime:
        """The last time for which the next open and close are both known (a clock must not run
        past it): a month before the last session's close."""
        return self._closes[-1] - timedelta(days=31)


@functools.cache
def xnys() -> MarketCalendar:
    """The process's NYSE calendar (built once: about 0.3 s)."""
    return MarketCalendar()
