"""The pre-trade risk rules (core/risk.py): pure, no database."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from core.errors import UserError
from core.money import InvalidAmount
from core.risk import (
    Overrides,
    RiskLimits,
    TradingState,
    Usage,
    counted,
    effective,
    limit_refusal,
    order_notional,
    parse_actor,
    parse_limit,
    parse_reason,
    parse_state,
    state_refusal,
)

LIMITS = RiskLimits(
    max_order_notional=D("1000.00"),
    max_order_qty=D("10"),
    max_daily_notional=D("2500.00"),
    max_daily_orders=3,
)


def test_an_order_within_every_limit_passes_and_is_counted() -> None:
    assert limit_refusal(LIMITS, Usage(), D("10"), D("1000.00")) is None
    assert counted(Usage(notional=D("5"), orders=1), D("1000.00")) == Usage(
        notional=D("1005"), orders=2
    )
    assert counted(Usage(), None) == Usage(notional=D(0), orders=1)


@pytest.mark.parametrize(
    ("usage", "qty", "notional", "says"),
    [
        (Usage(), D("10.000000001"), D("1"), "quantity 10.000000001 over the per-order maximum"),
        (Usage(), D("1"), D("1000.01"), "notional 1000.01 USD over the per-order maximum"),
        (Usage(orders=3), D("1"), D("1"), "3 orders today, the daily maximum is 3"),
        (Usage(notional=D("2000"), orders=1), D("1"), D("500.01"), "2500.01 USD today"),
    ],
)
def test_each_limit_refuses_just_past_it(usage: Usage, qty: D, notional: D, says: str) -> None:
    why = limit_refusal(LIMITS, usage, qty, notional)
    assert why is not None and why.startswith("risk limit: ") and says in why


def test_exactly_at_each_limit_passes() -> None:
    assert limit_refusal(LIMITS, Usage(notional=D("1500"), orders=2), D(10), D(1000)) is None


def test_an_order_without_a_notional_is_checked_on_quantity_and_count() -> None:
    assert limit_refusal(LIMITS, Usage(notional=D("2500")), D(1), None) is None
    assert limit_refusal(LIMITS, Usage(orders=3), D(1), None) is not None


def test_an_override_replaces_its_default_only() -> None:
    got = effective(LIMITS, Overrides(max_daily_orders=0, max_order_qty=D(50)))
    assert got.max_daily_orders == 0 and got.max_order_qty == D(50)
    assert got.max_order_notional == LIMITS.max_order_notional
    assert effective(LIMITS, Overrides()) == LIMITS
    assert limit_refusal(got, Usage(), D(1), D(1)) is not None  # zero orders a day: none


def test_the_notional_is_rounded_up_to_the_cent_and_none_without_a_price() -> None:
    assert order_notional(D("3"), D("0.3333")) == D("1.00")
    assert order_notional(D("1"), None) is None
    assert order_notional(D("1"), D("1e90")) is None  # never raises in workflow code


@pytest.mark.parametrize(
    ("state", "side", "refused"),
    [
        (TradingState.ACTIVE, "buy", False),
        (TradingState.ACTIVE, "sell", False),
        (TradingState.REDUCING, "buy", True),
        (TradingState.REDUCING, "sell", False),
        (TradingState.HALTED, "buy", True),
        (TradingState.HALTED, "sell", True),
    ],
)
def test_the_trading_state_refuses_by_side(state: TradingState, side: str, refused: bool) -> None:
    why = state_refusal(state, side, "exchange outage", "alice")
    assert (why is not None) == refused
    if why is not None:
        assert why.startswith("trading ") and "(by alice: exchange outage)" in why


def test_limits_are_parsed_strictly() -> None:
    assert parse_limit("max_order_notional", "1000.50") == D("1000.50")
    assert parse_limit("max_daily_orders", "0") == 0
    assert parse_limit("max_order_qty", "0.000000001") == D("0.000000001")
    for name, bad in [
        ("max_order_notional", "1.001"),
        ("max_order_notional", "NaN"),
        ("max_order_notional", "-1"),
        ("max_order_notional", "1e400"),
        ("max_daily_notional", "1e13"),
        ("max_order_qty", "1000001"),
        ("max_daily_orders", "3.5"),
        ("max_daily_orders", "-1"),
        ("max_daily_orders", "1000001"),
        ("max_daily_orders", "٣"),  # a digit, but not ASCII
        ("max_daily_orders", True),
        ("nonsense", "1"),
    ]:
        with pytest.raises(InvalidAmount):
            parse_limit(name, bad)


def test_settings_limits_refuse_bad_values() -> None:
    with pytest.raises(ValueError):
        RiskLimits(max_order_notional=D("1.001"))
    with pytest.raises(ValueError):
        RiskLimits(max_daily_orders=-1)


def test_states_reasons_and_names_are_parsed_strictly() -> None:
    assert parse_state("halted") == TradingState.HALTED
    assert parse_reason("exchange outage") == "exchange outage"
    assert parse_actor("alice") == "alice"
    for bad_state in ["stopped", "", None, 1]:
        with pytest.raises(UserError):
            parse_state(bad_state)
    for bad_reason in ["", "   ", "a\nb", "\x1b[2J", "x" * 201, None]:
        with pytest.raises(UserError):
            parse_reason(bad_reason)
    for bad_actor in ["", " alice", "a\tb", "x" * 65, None]:
        with pytest.raises(UserError):
            parse_actor(bad_actor)
