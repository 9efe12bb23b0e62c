"""``dev up`` opens the simulated market: the dev stack's simulator keeps market hours, so on a
closed market (a night, a weekend) its clock is moved to the next open, and the stack trades at
any real hour; an open market, or a simulator matching around the clock, is left as it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings
from devstack.stack import APPS, DevStack, StackOptions
from tests.support.brokersim import BrokerSim, StartSim, brokersim_factory  # noqa: F401

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


def stack(tmp_path: Path, said: list[str]) -> DevStack:
    return DevStack(Settings(), StackOptions(state_dir=tmp_path / "state"), echo=said.append)


async def clock(sim: BrokerSim) -> dict[str, object]:
    answer: dict[str, object] = await sim.admin("GET", "/admin/clock")
    return answer


async def test_the_dev_stack_runs_its_simulator_and_workers_in_market_hours(tmp_path: Path) -> None:
    sim = next(a for a in APPS if a.name == "broker-sim")
    assert sim.args[-2:] == ("--market-hours", "enforce")
    env = stack(tmp_path, []).stack_env("postgresql://x@127.0.0.1/db", "redis://127.0.0.1/0")
    assert env["ORDERSAGA_SAGA__MARKET_HOURS"] == "enforce"
    assert float(env["ORDERSAGA_SAGA__MARKET_RECHECK_S"]) <= 5


async def test_a_closed_market_is_moved_to_its_open_and_an_open_one_left_alone(
    brokersim_factory: StartSim,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = brokersim_factory(market_hours="enforce")
    closed = await sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    assert closed["market_open"] is False
    said: list[str] = []
    await stack(tmp_path, said).open_market(sim.url)
    now = await clock(sim)
    assert now["market_open"] is True and str(now["now"]) >= str(closed["next_open"])
    assert any("clock moved to the open" in line for line in said), said
    # Open already: the clock stays in this session (not moved to another open), nothing said.
    said.clear()
    await stack(tmp_path, said).open_market(sim.url)
    again = await clock(sim)
    assert again["market_open"] is True and str(again["now"]) < str(now["next_close"])
    assert said == []


async def test_a_simulator_matching_around_the_clock_is_left_alone(
    brokersim_factory: StartSim,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = brokersim_factory()  # "always"
    closed = await sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    said: list[str] = []
    await stack(tmp_path, said).open_market(sim.url)
    after = await clock(sim)
    assert after["market_open"] is False and after["market_hours"] == "always"
    assert str(after["now"]) < str(closed["next_open"]) and said == []
