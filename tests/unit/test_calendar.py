"""The NYSE calendar (core/calendar.py) on days whose answer is known: holidays, an early close,
weekends, the daylight-saving changes, and its bounds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from core.calendar import LAST_DAY, OutsideCalendar, Session, xnys


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_thanksgiving_and_christmas_are_closed() -> None:
    cal = xnys()
    assert cal.session(date(2026, 11, 26)) is None  # Thanksgiving
    assert cal.session(date(2026, 12, 25)) is None  # Christmas (a Friday)
    assert cal.session(date(2026, 6, 19)) is None  # Juneteenth
    assert cal.session(date(2027, 7, 5)) is None  # Independence Day observed (the 4th: Sunday)
    assert not cal.is_open(utc(2026, 11, 26, 16, 0))
    assert not cal.is_open(utc(2026, 12, 25, 16, 0))


def test_the_day_after_thanksgiving_closes_at_one() -> None:
    cal = xnys()
    session = cal.session(date(2026, 11, 27))
    assert session == Session(date(2026, 11, 27), utc(2026, 11, 27, 14, 30), utc(2026, 11, 27, 18))
    assert session.early_close
    assert session.local()[1].strftime("%H:%M") == "13:00"
    assert cal.is_open(utc(2026, 11, 27, 17, 59, 59))
    assert not cal.is_open(utc(2026, 11, 27, 18, 0))  # the close itself is closed
    assert cal.next_close(utc(2026, 11, 27, 15)) == utc(2026, 11, 27, 18)
    regular = cal.session(date(2026, 11, 25))
    assert regular is not None and not regular.early_close


def test_weekends_are_closed_and_the_next_open_is_monday() -> None:
    cal = xnys()
    assert cal.session(date(2026, 11, 28)) is None
    assert cal.session(date(2026, 11, 29)) is None
    sunday = utc(2026, 11, 29, 9)
    assert not cal.is_open(sunday)
    assert cal.next_open(sunday) == utc(2026, 11, 30, 14, 30)
    assert cal.next_close(sunday) == utc(2026, 11, 30, 21)
    # Wednesday after the close: Thursday is Thanksgiving, Friday opens as usual.
    assert cal.next_open(utc(2026, 11, 25, 21)) == utc(2026, 11, 27, 14, 30)
    days = [s.day for s in cal.sessions(date(2026, 11, 23), date(2026, 11, 29))]
    assert days == [date(2026, 11, d) for d in (23, 24, 25, 27)]


def test_daylight_saving_changes_move_the_open_in_utc() -> None:
    cal = xnys()
    # 2026-03-08 (a Sunday) New York moves to EDT: 9:30 is 14:30 UTC before, 13:30 after.
    assert cal.session(date(2026, 3, 6)).open == utc(2026, 3, 6, 14, 30)  # type: ignore[union-attr]
    assert cal.session(date(2026, 3, 9)).open == utc(2026, 3, 9, 13, 30)  # type: ignore[union-attr]
    assert cal.next_open(utc(2026, 3, 6, 22)) == utc(2026, 3, 9, 13, 30)
    # 2026-11-01 (a Sunday) back to EST.
    assert cal.session(date(2026, 10, 30)).close == utc(2026, 10, 30, 20)  # type: ignore[union-attr]
    assert cal.session(date(2026, 11, 2)).close == utc(2026, 11, 2, 21)  # type: ignore[union-attr]
    assert cal.is_open(utc(2026, 3, 9, 13, 30))
    assert not cal.is_open(utc(2026, 3, 6, 14, 29))


def test_any_time_zone_is_the_same_moment() -> None:
    seoul = timezone(timedelta(hours=9))
    # 23:45 in Seoul on Monday 2026-11-30 is 14:45 UTC: New York is open.
    assert xnys().is_open(datetime(2026, 11, 30, 23, 45, tzinfo=seoul))


def test_outside_the_bounds_is_refused_in_one_line() -> None:
    cal = xnys()
    for ask in (
        lambda: cal.session(date(2200, 1, 2)),
        lambda: cal.is_open(utc(1990, 1, 2, 15)),
        lambda: cal.next_open(utc(LAST_DAY.year, 12, 31, 22)),
        lambda: cal.sessions(date(2026, 1, 1), date(2200, 1, 1)),
        lambda: cal.is_open(datetime(2026, 11, 30, 15)),  # no time zone
    ):
        with pytest.raises(OutsideCalendar) as refused:
            ask()
        assert "\n" not in str(refused.value) and str(refused.value)
    with pytest.raises(OutsideCalendar, match="before start"):
        cal.sessions(date(2026, 2, 1), date(2026, 1, 1))


def test_the_bounds_reach_past_where_the_simulated_clock_may_run() -> None:
    cal = xnys()
    last = cal.last_moment
    assert last.year >= 2126  # a century ahead of 2026: the simulator's own limit
    assert cal.next_open(last) > last and cal.next_close(last) > last
    assert cal.current_or_next(utc(2026, 11, 29, 9)).day == date(2026, 11, 30)
