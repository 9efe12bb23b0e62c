"""Hostile input to the FX leg's commands and SDK calls: refused in one line, before anything is
contacted (tests/unit/test_cli_input.py's fixtures: every connection fails the test)."""

from __future__ import annotations

import pytest

from core.errors import UserError
from ordersaga.client import build_request, check_currency
from tests.unit.test_cli_input import no_connections, refused, stack_down  # noqa: F401

PLACE = ["order", "place", "--account", "alice", "--symbol", "AAPL", "--side", "buy", "--qty", "1"]


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["account", "deposit", "alice", "100", "--currency", "bogus"], "unknown currency 'bogus'"),
        (["account", "deposit", "alice", "1.5", "--currency", "KRW"], "more than 0 decimals"),
        (["account", "deposit", "alice", "1000.0001", "--asset", "krw"], "more than 0 decimals"),
        (["account", "withdraw", "alice", "1", "--currency", "EUR"], "unknown currency 'EUR'"),
        (["account", "deposit", "alice", "1", "--asset", "USD", "--currency", "KRW"], "not both"),
        (["account", "deposit", "alice", "1", "--currency", "KR\x00W"], "control"),
        ([*PLACE, "--pay", "EUR"], "unknown currency 'EUR'"),
        ([*PLACE, "--pay", ""], "unknown currency"),
        ([*PLACE, "--symbol", "KRW"], "invalid symbol"),
    ],
)
def test_bad_fx_arguments_are_refused_in_one_line_before_connecting(
    args: list[str], says: str
) -> None:
    assert says in refused(*args)


def test_the_sdk_refuses_a_bogus_payment_currency_and_takes_krw_in_any_case() -> None:
    with pytest.raises(UserError, match="unknown currency 'JPY'"):
        build_request(account_id="alice", symbol="AAPL", side="buy", qty="1", pay="JPY")
    with pytest.raises(UserError, match="unknown currency"):
        check_currency(7)
    req = build_request(account_id="alice", symbol="AAPL", side="buy", qty="1", pay="krw")
    assert req.pay == "KRW"
    usd = req.model_copy(update={"pay": "USD"})
    assert req.params_hash() != usd.params_hash()  # the same id paid otherwise is another order
    legacy = {"account_id": "alice", "order_id": usd.order_id, "symbol": "AAPL", "side": "buy",
              "qty": "1"}  # fmt: skip
    assert type(usd).model_validate(legacy).params_hash() == usd.params_hash()  # unchanged
