"""Settlement's pure rules (activities/ledger/settlement.py): T+1 by the NYSE calendar, what a
sell's fill leaves unsettled, and what a withdrawal may take (unsettled cash is spent last)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import click
import pytest

from activities.ledger.postings import Hold, Move, Refused, Row, fill, fill_moves
from activities.ledger.settlement import (
    check_withdrawal,
    proceeds,
    settled_cash,
    settlement_date,
    trade_date_of,
    unsettled_cash,
)
from cli.commands.settle import parse_settle_date
from core import errors

D = Decimal


@pytest.mark.parametrize(
    ("trade", "settles"),
    [
        (date(2026, 11, 23), date(2026, 11, 24)),  # Monday -> Tuesday
        (date(2026, 11, 25), date(2026, 11, 27)),  # Thanksgiving (the 26th) in between
        (date(2026, 11, 27), date(2026, 11, 30)),  # Friday -> Monday (the weekend)
        (date(2026, 11, 28), date(2026, 11, 30)),  # a fill posted on Saturday settles Monday
        (date(2026, 12, 24), date(2026, 12, 28)),  # Christmas (Friday) and the weekend
        (date(2026, 7, 2), date(2026, 7, 6)),  # Independence Day observed on Friday the 3rd
    ],
)
def test_t_plus_one_is_the_next_session(trade: date, settles: date) -> None:
    assert settlement_date(trade) == settles


def test_the_trade_date_is_new_yorks() -> None:
    # 01:30 UTC on the 24th is still the 23rd in New York (EST, UTC-5)
    assert trade_date_of(datetime(2026, 11, 24, 1, 30, tzinfo=UTC)) == date(2026, 11, 23)
    assert trade_date_of(datetime(2026, 11, 24, 5, 30, tzinfo=UTC)) == date(2026, 11, 24)


def row(id: int, owner: str, asset: str, available: str = "0") -> Row:
    return Row(
        id, owner, "customer" if owner == "a" else "omnibus", asset, D(available), D(0), 0, 0
    )


ROWS = [row(1, "a", "USD"), row(2, "a", "AAPL"), row(3, "$omnibus", "USD"),
        row(4, "$omnibus", "AAPL"), row(5, "$fees", "USD")]  # fmt: skip


def test_a_sells_proceeds_less_its_fee_are_what_is_unsettled() -> None:
    hold = Hold("a/o1", "a", "AAPL", D(2), "sell", "AAPL")
    post = fill(hold, D(2), D("401.50"), D("1.00"))
    assert post is not None
    assert proceeds(hold, fill_moves(post, ROWS)) == ("USD", D("400.50"))


def test_a_buy_leaves_nothing_unsettled() -> None:
    hold = Hold("a/o2", "a", "USD", D(500), "buy", "AAPL")
    post = fill(hold, D(2), D("401.50"), D("1.00"))
    assert post is not None
    assert proceeds(hold, fill_moves(post, ROWS)) is None


def test_a_sale_whose_fee_eats_the_proceeds_leaves_nothing_unsettled() -> None:
    hold = Hold("a/o3", "a", "AAPL", D(1), "sell", "AAPL")
    assert proceeds(hold, [Move(ROWS[0], "available", D("-0.01"))]) is None


@pytest.mark.parametrize(
    ("available", "unsettled", "settled"),
    [
        ("100", "0", "100"),
        ("100", "60", "40"),  # 40 deposited, 60 of proceeds
        ("30", "60", "0"),  # a buy spent 70: settled cash first, then 30 of the proceeds
        ("0", "60", "0"),
        ("100", "100", "0"),
    ],
)
def test_unsettled_cash_is_spent_last(available: str, unsettled: str, settled: str) -> None:
    assert settled_cash(D(available), D(unsettled)) == D(settled)
    assert settled_cash(D(available), D(unsettled)) + unsettled_cash(
        D(available), D(unsettled)
    ) == D(available)


def test_a_withdrawal_takes_only_settled_cash() -> None:
    check_withdrawal("a", "USD", D(100), D(60), D(40))  # all the settled cash: fine
    check_withdrawal("a", "USD", D(100), D(0), D(500))  # nothing unsettled: transfer's own rule
    with pytest.raises(Refused) as refused:
        check_withdrawal("a", "USD", D(100), D(60), D("40.01"))
    assert refused.value.error_type == errors.INSUFFICIENT_FUNDS
    assert refused.value.message == (
        "insufficient settled USD in a: available 100.00, unsettled 60.00 (sale proceeds settle"
        " T+1), withdrawable 40.00, requested 40.01"
    )


def test_the_settle_command_refuses_a_bad_or_future_date() -> None:
    today = date(2026, 11, 30)
    assert parse_settle_date(None, today) is None
    assert parse_settle_date("2026-11-30", today) == today
    for bad in ("2026-12-01", "1999-12-31", "tomorrow", "2026-11-3", "2026-02-30", "x" * 500):
        with pytest.raises(click.BadParameter):
            parse_settle_date(bad, today)
