"""The pure comparison of positions and cash (activities/positions.py): the broker's account
against the omnibus ledger rows, with fills in flight accounted for."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from activities.positions import (
    BrokerFill,
    BrokerSide,
    InFlightOrder,
    LedgerSide,
    compare_positions,
)

BASE = D("10000000")


def ledger(
    omnibus: dict[str, str], rounding: str = "0", *flying: InFlightOrder, baseline: D = BASE
) -> LedgerSide:
    return LedgerSide(
        baseline=baseline,
        omnibus={k: D(v) for k, v in omnibus.items()},
        cash_rounding=D(rounding),
        in_flight=list(flying),
    )


def broker(cash: str, positions: dict[str, str], *fills: BrokerFill) -> BrokerSide:
    return BrokerSide(cash=D(cash), positions={k: D(v) for k, v in positions.items()}, orders=fills)


def flying(bid: str, side: str, qty: str = "0", notional: str = "0", symbol: str = "AAPL"):
    return InFlightOrder(
        client_order_id=f"a/{bid}",
        broker_order_id=bid,
        symbol=symbol,
        side=side,
        booked_qty=D(qty),
        booked_notional=D(notional),
    )


def fill(bid: str, qty: str, notional: str) -> BrokerFill:
    return BrokerFill(id=bid, filled_qty=D(qty), filled_notional=D(notional))


def kinds(breaks: list) -> dict[str, str]:
    return {f"{b.kind} {b.client_order_id}": b.detail for b in breaks}


def test_nothing_traded_agrees() -> None:
    assert compare_positions(ledger({}), broker("10000000.00", {})) == []


def test_a_booked_buy_and_a_booked_sell_agree() -> None:
    # bought 3 AAPL for 450.10, sold 1 MSFT (short) for 300.00
    led = ledger({"USD": "150.10", "AAPL": "-3", "MSFT": "1"})
    assert compare_positions(led, broker("9999849.90", {"AAPL": "3", "MSFT": "-1"})) == []


def test_shards_are_summed_by_the_ledger_read_so_a_zero_position_is_absent_at_the_broker() -> None:
    led = ledger({"USD": "0", "AAPL": "0"})
    assert compare_positions(led, broker("10000000", {})) == []


def test_a_fill_the_ledger_never_booked_is_a_position_and_a_cash_break() -> None:
    found = kinds(compare_positions(ledger({}), broker("9999850.00", {"AAPL": "1"})))
    assert found == {
        "position AAPL": "broker 1 vs ledger 0 (booked 0, in flight 0)",
        "cash USD": "broker 9999850.00 vs ledger 10000000.00 (baseline 10000000, in flight 0)",
    }


def test_a_booked_fill_the_broker_does_not_have_is_a_break() -> None:
    found = kinds(compare_positions(ledger({"USD": "150", "AAPL": "-1"}), broker("1e7", {})))
    assert set(found) == {"position AAPL", "cash USD"}
    assert found["position AAPL"] == "broker 0 vs ledger 1 (booked 1, in flight 0)"


def test_an_unbooked_fill_of_an_order_in_flight_is_not_a_break() -> None:
    led = ledger({}, "0", flying("b1", "buy"))
    assert compare_positions(led, broker("9999850", {"AAPL": "1"}, fill("b1", "1", "150"))) == []


def test_in_flight_counts_only_what_the_ledger_has_not_booked() -> None:
    # 2 of 5 booked (300.00), the broker filled 5 (750.00)
    led = ledger({"USD": "300", "AAPL": "-2"}, "0", flying("b1", "buy", "2", "300"))
    agree = broker("9999250", {"AAPL": "5"}, fill("b1", "5", "750"))
    assert compare_positions(led, agree) == []
    # counting the whole broker fill as in flight (ignoring what is booked) would be wrong
    found = kinds(compare_positions(led, broker("9999250", {"AAPL": "7"}, fill("b1", "5", "750"))))
    assert found == {"position AAPL": "broker 7 vs ledger 5 (booked 2, in flight 3)"}


def test_a_sell_in_flight_is_signed() -> None:
    led = ledger({"AAPL": "-10", "USD": "1500"}, "0", flying("s1", "sell"))
    agree = broker("9998650", {"AAPL": "9"}, fill("s1", "1", "150"))
    assert compare_positions(led, agree) == []
    wrong_sign = broker("9998350", {"AAPL": "11"}, fill("s1", "1", "150"))
    assert set(kinds(compare_positions(led, wrong_sign))) == {"position AAPL", "cash USD"}


def test_an_in_flight_order_the_broker_does_not_have_adds_nothing() -> None:
    led = ledger({}, "0", flying("gone", "buy"))
    assert compare_positions(led, BrokerSide(cash=BASE, missing=["gone"])) == []


def test_in_flight_of_a_symbol_neither_side_holds_yet() -> None:
    led = ledger({}, "0", flying("b1", "buy", symbol="TSLA"))
    found = kinds(compare_positions(led, broker("1e7", {}, fill("b1", "2", "0"))))
    assert found == {"position TSLA": "broker 0 vs ledger 2 (booked 0, in flight 2)"}


@pytest.mark.parametrize(
    ("broker_cash", "agrees"),
    [("9999900.00", True), ("9999900.01", True), ("9999899.99", False), ("9999900.02", False)],
)
def test_cash_is_compared_exactly_within_half_a_cent(broker_cash: str, agrees: bool) -> None:
    # buys of exact notional 99.995 booked as 99.99 (the ledger rounded 0.005 down): the exact
    # expected cash is 9999900.005, a tie the broker may round either way, and nothing further
    led = ledger({"USD": "99.99"}, "-0.005")
    result = compare_positions(led, broker(broker_cash, {}))
    assert (result == []) is agrees, result


def test_the_ledger_rounding_is_added_back_not_accumulated() -> None:
    # 1000 orders each booked half a cent up: the ledger row is 5.00 above the exact notional
    led = ledger({"USD": "1005.00"}, "5.00")
    assert compare_positions(led, broker("9999000.00", {})) == []
    assert compare_positions(ledger({"USD": "1005.00"}), broker("9999000.00", {})) != []


def test_the_baseline_is_the_funded_cash() -> None:
    funded = ledger({}, baseline=D("250000"))
    assert compare_positions(funded, broker("250000", {})) == []
    assert [b.kind for b in compare_positions(ledger({}), broker("250000", {}))] == ["cash"]


def test_fractional_quantities_compare_exactly() -> None:
    led = ledger({"AAPL": "-0.123456789"})
    assert compare_positions(led, broker("1e7", {"AAPL": "0.123456789"})) == []
    found = kinds(compare_positions(led, broker("1e7", {"AAPL": "0.123456788"})))
    assert (
        found["position AAPL"]
        == "broker 0.123456788 vs ledger 0.123456789 (booked 0.123456789, in flight 0)"
    )


def test_the_detail_does_not_depend_on_how_a_number_is_written() -> None:
    a = compare_positions(ledger({"AAPL": "-1.000"}), broker("1e7", {"AAPL": "2.0"}))
    b = compare_positions(ledger({"AAPL": "-1"}), broker("1e7", {"AAPL": "2"}))
    assert a == b
