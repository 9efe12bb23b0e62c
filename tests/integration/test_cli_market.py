"""``ordersaga market``: the calendar's answer at a given time, the broker's clock with
``--broker``, and hostile arguments refused in one line before anything is asked."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.support.brokersim import BrokerSim, brokersim  # noqa: F401

pytestmark = [pytest.mark.integration]


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(cli, ["market", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_thanksgiving_is_closed_and_the_day_after_closes_early() -> None:
    out = ok("--at", "2026-11-26T12:00:00-05:00")
    assert out.splitlines()[0].startswith("XNYS calendar: CLOSED at Thu 2026-11-26 12:00 EST")
    assert "opens Fri 2026-11-27 09:30 EST (2026-11-27T14:30:00Z)" in out
    assert "2026-11-27 is an early close" in out
    friday = json.loads(ok("--at", "2026-11-27T17:30:00Z", "--json"))["calendar"]
    assert friday["is_open"] is True and friday["next_close"] == "2026-11-27T18:00:00+00:00"
    assert "broker" not in json.loads(ok("--json"))


@pytest.mark.asyncio(loop_scope="session")
async def test_the_brokers_clock_with_broker(brokersim: BrokerSim) -> None:  # noqa: F811
    # The simulator's clock a week ahead: the broker's word, not the calendar's now.
    await brokersim.admin("POST", "/admin/clock/advance", {"seconds": 7 * 86_400})
    env = {"ORDERSAGA_BROKER_URL": brokersim.url, "ORDERSAGA_DEV_STACK": "1"}
    clock = await brokersim.admin("GET", "/v2/clock")
    views = json.loads(await asyncio.to_thread(ok, "--broker", "--json", env=env))
    assert views["broker"]["is_open"] == clock["is_open"]
    assert datetime.fromisoformat(views["broker"]["next_open"]) == datetime.fromisoformat(
        clock["next_open"]
    )
    assert views["broker"]["at"] > views["calendar"]["at"]
    assert "broker clock: " in await asyncio.to_thread(ok, "--broker", env=env)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--at", "2026-11-27T12:00:00"], "has no time zone"),
        (["--at", "tomorrow"], "is not a time like"),
        (["--at", "2026-11-27T12:00:00Z\x1b[2J"], "control or unprintable character"),
        (["--at", "2026-11-27T12:00:00Z" + "0" * 40], "at most 40 characters"),
        (["--at", "2300-01-01T00:00:00Z"], "outside the XNYS calendar (2000-01-01 to 2130-12-31)"),
        (["--at", "1999-06-01T00:00:00Z"], "outside the XNYS calendar"),
    ],
)
def test_hostile_arguments_are_refused_in_one_line(args: list[str], says: str) -> None:
    result = CliRunner().invoke(cli, ["market", *args])
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], result.output


def test_an_unreachable_broker_is_one_line() -> None:
    env = {"ORDERSAGA_BROKER_URL": "http://127.0.0.1:9", "ORDERSAGA_DEV_STACK": "1"}
    result = CliRunner().invoke(cli, ["market", "--broker"], env=env)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the broker's market clock:"), lines
