"""``ordersaga trading`` and ``ordersaga risk`` as a user runs them: real processes against a
database of their own. Hostile arguments are refused in one line and change nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.conftest import scratch_database
from tests.integration.test_cli_ledger import cli, new_account

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

# No Temporal listens here: the trading commands must still change the state (Postgres is the
# authority) and only warn that the Web UI's mirror was not updated.
NO_TEMPORAL = "127.0.0.1:9"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def db() -> AsyncIterator[str]:
    async with scratch_database("cli-risk") as url:
        yield url


async def trading(db: str, *args: str) -> tuple[int, str, str]:
    import os

    os.environ["ORDERSAGA_TEMPORAL_ADDRESS"] = NO_TEMPORAL
    try:
        done = await cli(db, "trading", *args)
    finally:
        del os.environ["ORDERSAGA_TEMPORAL_ADDRESS"]
    return done.returncode, done.stdout, done.stderr


def one_error_line(err: str) -> bool:
    """One "Error: ..." line and no traceback (click adds its usage lines to a usage error)."""
    lines = err.strip().splitlines()
    return "Traceback" not in err and [x for x in lines if "Error" in x] == lines[-1:]


async def history(db: str) -> list[dict[str, object]]:
    code, out, err = await trading(db, "history", "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


async def test_halt_reduce_resume_are_recorded_with_who_and_why(db: str) -> None:
    code, out, err = await trading(db, "halt", "--reason", "exchange outage", "--by", "alice")
    assert code == 0, err
    assert "trading HALTED since" in out and "by alice: exchange outage (was ACTIVE" in out
    assert "warning: the Web UI's trading-state workflow was not updated" in err
    code, out, _ = await trading(db, "status")
    assert code == 0 and "trading HALTED" in out and "alice: exchange outage" in out
    code, out, _ = await trading(db, "reduce", "--reason", "wind down")  # who: the OS user
    assert code == 0 and "trading REDUCING" in out
    code, out, _ = await trading(db, "resume", "--reason", "all clear", "--by", "bob")
    assert code == 0 and "trading ACTIVE" in out and "(was REDUCING" in out
    log = await history(db)
    assert [(c["previous"], c["state"], c["reason"]) for c in log[:3]] == [
        ("REDUCING", "ACTIVE", "all clear"),
        ("HALTED", "REDUCING", "wind down"),
        ("ACTIVE", "HALTED", "exchange outage"),
    ]
    assert log[0]["changed_by"] == "bob" and log[1]["changed_by"]


@pytest.mark.parametrize(
    "args",
    [
        ["halt"],  # no reason
        ["halt", "--reason", ""],
        ["halt", "--reason", "   "],
        ["halt", "--reason", "line\ninjected"],
        ["halt", "--reason", "\x1b[2Jcleared"],
        ["halt", "--reason", "x" * 201],
        ["halt", "--reason", "ok", "--by", ""],
        ["halt", "--reason", "ok", "--by", "eve\r"],
        ["halt", "--reason", "ok", "--by", "x" * 65],
        ["reduce", "--reason", "ok", "--by", " padded"],
        ["history", "--limit", "0"],
        ["status", "--bogus"],
    ],
)
async def test_hostile_trading_arguments_are_refused_and_change_nothing(
    db: str, args: list[str]
) -> None:
    before = await history(db)
    code, out, err = await trading(db, *args)
    assert code != 0 and out == ""
    assert one_error_line(err), err
    assert await history(db) == before


async def test_risk_set_show_clear(db: str) -> None:
    account = await new_account(db)
    done = await cli(db, "risk", "show", account, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["usage"] == {"notional": "0.00", "orders": 0}
    assert all(v is None for v in shown["overrides"].values())
    done = await cli(
        db,
        "risk",
        "set",
        account,
        "--max-order-notional",
        "2500.50",
        "--max-daily-orders",
        "7",
        "--by",
        "risk-desk",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["limits"]["max_order_notional"] == "2500.50"
    assert shown["limits"]["max_daily_orders"] == 7 and shown["updated_by"] == "risk-desk"
    assert shown["overrides"]["max_order_qty"] is None  # the default stays
    human = await cli(db, "risk", "show", account)
    assert "max-daily-orders" in human.stdout and "account" in human.stdout
    done = await cli(db, "risk", "clear", account, "--json")
    assert done.returncode == 0, done.stderr
    assert all(v is None for v in json.loads(done.stdout)["overrides"].values())


@pytest.mark.parametrize(
    "args",
    [
        ["set", "{account}"],  # no limit given
        ["set", "{account}", "--max-order-notional", "1.001"],
        ["set", "{account}", "--max-order-notional", "NaN"],
        ["set", "{account}", "--max-order-notional", "-5"],
        ["set", "{account}", "--max-daily-notional", "1e400"],
        ["set", "{account}", "--max-daily-orders", "3.5"],
        ["set", "{account}", "--max-order-qty", "2000000"],
        ["set", "{account}", "--max-daily-orders", "5", "--by", "a\tb"],
        ["set", "bad account!", "--max-daily-orders", "5"],
        ["set", "nobody-here", "--max-daily-orders", "5"],  # unknown account
        ["clear", "x" * 65],
        ["show", "nobody-here"],
    ],
)
async def test_hostile_risk_arguments_are_refused_and_change_nothing(
    db: str, args: list[str]
) -> None:
    account = await new_account(db)
    await cli(db, "risk", "set", account, "--max-daily-orders", "9")
    before = (await cli(db, "risk", "show", account, "--json")).stdout
    done = await cli(db, "risk", *(a.format(account=account) for a in args))
    assert done.returncode != 0 and done.stdout == ""
    assert one_error_line(done.stderr), done.stderr
    assert (await cli(db, "risk", "show", account, "--json")).stdout == before
