"""The simulator on the NYSE calendar: its market clock and calendar (holidays, early closes),
day orders that end at the session's real close, and the ``enforce`` market-hours mode, where
orders wait (``accepted``) for the open and the admin clock carries the simulator there."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from brokersim.server import open_state
from tests.integration.test_brokersim_contract import check, check_all
from tests.integration.test_brokersim_orders import MANUAL, events, submit, tick
from tests.support.brokersim import BrokerSim, StartSim, brokersim_factory  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def thanksgiving_after(day: date) -> date:
    """The first Thanksgiving (fourth Thursday of November) at least a week after ``day``."""
    year = day.year
    while True:
        first = date(year, 11, 1)
        found = first + timedelta(days=(3 - first.weekday()) % 7 + 21)
        if found > day + timedelta(days=7):
            return found
        year += 1


async def now_of(sim: BrokerSim) -> datetime:
    return datetime.fromisoformat((await sim.admin("GET", "/admin/clock"))["now"])


async def advance_to(sim: BrokerSim, moment: datetime) -> dict[str, Any]:
    seconds = (moment - await now_of(sim)).total_seconds()
    answer: dict[str, Any] = await sim.admin(
        "POST", "/admin/clock/advance", {"seconds": str(Decimal(seconds).quantize(Decimal(1)))}
    )
    return answer


async def test_clock_and_calendar_know_thanksgiving_and_its_early_close(
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(fill_model=MANUAL)
    holiday = thanksgiving_after((await now_of(sim)).date())
    wednesday, friday = holiday - timedelta(days=1), holiday + timedelta(days=1)
    # Wednesday 17:00 New York time (22:00 UTC: November is EST): closed until Friday.
    await advance_to(
        sim, datetime.combine(wednesday, datetime.min.time(), UTC) + timedelta(hours=22)
    )
    clock = check("clock", await sim.admin("GET", "/v2/clock"))
    assert clock["is_open"] is False
    assert clock["next_open"] == f"{friday.isoformat()}T09:30:00-05:00"
    assert clock["next_close"] == f"{friday.isoformat()}T13:00:00-05:00"  # the early close
    week = check_all(
        "calendar_day",
        await sim.admin(
            "GET", f"/v2/calendar?start={wednesday.isoformat()}&end={friday.isoformat()}"
        ),
    )
    assert [(d["date"], d["close"], d["session_close"]) for d in week] == [
        (wednesday.isoformat(), "16:00", "2000"),
        (friday.isoformat(), "13:00", "1700"),
    ]
    assert week[0]["settlement_date"] == friday.isoformat()  # T+1 skips the holiday
    status, body = await sim.request("GET", "/v2/calendar?start=2200-01-01&end=2200-01-05")
    assert status == 422 and "outside the XNYS calendar" in body["message"], body


async def test_a_day_order_expires_at_the_early_close(
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(fill_model=MANUAL)
    holiday = thanksgiving_after((await now_of(sim)).date())
    friday = holiday + timedelta(days=1)
    await advance_to(sim, datetime.combine(holiday, datetime.min.time(), UTC) + timedelta(hours=12))
    day = await submit(sim, type="limit", limit_price="100", time_in_force="day")
    close = datetime.combine(friday, datetime.min.time(), UTC) + timedelta(hours=18)
    assert datetime.fromisoformat(day["expires_at"]) == close  # 13:00 New York, not 16:00
    await advance_to(sim, close - timedelta(seconds=30))
    assert (await sim.admin("GET", f"/v2/orders/{day['id']}"))["status"] == "new"
    advanced = await sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    assert advanced["expired"] == 1
    assert (await sim.admin("GET", f"/v2/orders/{day['id']}"))["status"] == "expired"


async def closed_sim(start: StartSim) -> BrokerSim:
    """A simulator in the enforce mode whose clock shows a closed market."""
    sim = start(fill_model={**MANUAL, "mode": "instant"}, market_hours="enforce")
    clock = await sim.admin("GET", "/admin/clock")
    if clock["market_open"]:
        clock = await sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    assert clock["market_open"] is False and clock["market_hours"] == "enforce", clock
    return sim


async def test_enforced_hours_hold_orders_until_the_open(
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = await closed_sim(brokersim_factory)
    start = len(await events(sim))
    waiting = check("order", await submit(sim, type="limit", limit_price="250"))
    dropped = check("order", await submit(sim, type="limit", limit_price="250"))
    assert (waiting["status"], dropped["status"]) == ("accepted", "accepted")
    await tick(sim, 3)
    assert (await sim.admin("GET", f"/v2/orders/{waiting['id']}"))["status"] == "accepted"
    status, _ = await sim.request("DELETE", f"/v2/orders/{dropped['id']}")
    assert status == 204
    await tick(sim)  # cancels go through while closed
    assert (await sim.admin("GET", f"/v2/orders/{dropped['id']}"))["status"] == "canceled"
    assert [e["event"] for e in (await events(sim))[start:]] == ["pending_cancel", "canceled"]

    opened = await sim.admin("POST", "/admin/clock/advance", {"to": "next_open"})
    assert opened["market_open"] is True
    assert check("clock", await sim.admin("GET", "/v2/clock"))["is_open"] is True
    await tick(sim)
    filled = check("order", await sim.admin("GET", f"/v2/orders/{waiting['id']}"))
    assert filled["status"] == "filled", filled
    mine = [e["event"] for e in (await events(sim))[start:] if e["order"]["id"] == waiting["id"]]
    assert mine == ["new", "fill"]


async def test_the_default_mode_matches_while_closed(
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(fill_model={**MANUAL, "mode": "instant"})
    clock = await sim.admin("GET", "/admin/clock")
    if clock["market_open"]:
        clock = await sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    assert clock["market_hours"] == "always"
    order = await submit(sim, type="limit", limit_price="250")
    assert order["status"] == "new"
    await tick(sim)
    assert (await sim.admin("GET", f"/v2/orders/{order['id']}"))["status"] == "filled"


@pytest.mark.parametrize(
    "body",
    [{"to": "tomorrow"}, {"seconds": 1, "to": "next_open"}, {}, {"to": None}, {"when": 1}],
)
async def test_clock_advance_refuses_what_it_does_not_know(
    brokersim_factory: StartSim,  # noqa: F811
    body: dict[str, Any],
) -> None:
    sim = brokersim_factory(fill_model=MANUAL)
    before = await sim.admin("GET", "/admin/clock")
    status, answer = await sim.request("POST", "/admin/clock/advance", body)
    assert status == 422 and "\n" not in answer["message"], answer
    assert (await sim.admin("GET", "/admin/clock"))["now"][:16] == before["now"][:16]


async def test_the_mode_is_kept_in_the_state_file_and_checked(tmp_path: Any) -> None:
    engine, _ = open_state(tmp_path / "s.sqlite", market_hours="enforce")
    engine.store.close()
    engine, _ = open_state(tmp_path / "s.sqlite")
    assert engine.market_hours == "enforce"
    engine.store.close()
    with pytest.raises(ValueError, match="market hours must be one of always, enforce"):
        open_state(tmp_path / "s.sqlite", market_hours="sometimes")  # type: ignore[arg-type]
