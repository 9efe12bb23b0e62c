"""The saga's pricing and fee arithmetic, on plain values."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import CASH_ASSET
from core.settings import SagaSettings
from tests.support.requests import order_request as request
from workflows.pricing import cumulative_fee, hold_for, market_buy_cap

SAGA = SagaSettings()  # rate 0.0025, minimum 0.50, market buy buffer 0.05


def test_a_market_buy_holds_the_capped_notional_and_its_fee() -> None:
    hold = hold_for(request(qty=Decimal(3)), Decimal("100.01"), SAGA)
    # cap = ceil(100.01 x 1.05) = 105.02 (105.0105 up); notional = 315.06; fee = 0.79
    assert hold.limit_sent == Decimal("105.02")
    assert hold.asset == CASH_ASSET
    assert hold.amount == Decimal("315.06") + Decimal("0.79")


def test_a_limit_buy_holds_at_its_limit_rounded_up_to_the_cent() -> None:
    hold = hold_for(
        request(qty=Decimal("0.333"), order_type="limit", limit_price=Decimal("10.01")),
        None,
        SAGA,
    )
    # 0.333 x 10.01 = 3.33333 -> 3.34; the fee is the minimum
    assert (hold.amount, hold.limit_sent) == (Decimal("3.84"), Decimal("10.01"))


def test_a_sell_holds_its_shares_and_a_market_sell_sends_no_limit() -> None:
    hold = hold_for(request(side="sell", qty=Decimal("2.5")), Decimal("100"), SAGA)
    assert (hold.asset, hold.amount, hold.limit_sent) == ("AAPL", Decimal("2.5"), None)


def test_a_market_buy_needs_a_quote() -> None:
    with pytest.raises(ValueError):
        hold_for(request(), None, SAGA)


@given(
    qty=st.decimals(Decimal("0.000000001"), Decimal(1000), places=9),
    price=st.decimals(Decimal("0.01"), Decimal(5000), places=4),
)
def test_fills_at_or_below_the_limit_never_cost_more_than_the_hold(
    qty: Decimal, price: Decimal
) -> None:
    hold = hold_for(request(qty=qty, order_type="limit", limit_price=price), None, SAGA)
    filled_notional = qty * price  # the worst case: everything at the limit
    cost = filled_notional.quantize(Decimal("0.01")) + cumulative_fee("buy", filled_notional, SAGA)
    assert cost <= hold.amount


def test_a_sells_fee_never_exceeds_its_proceeds() -> None:
    assert cumulative_fee("sell", Decimal("0.20"), SAGA) == Decimal("0.20")
    assert cumulative_fee("buy", Decimal("0.20"), SAGA) == Decimal("0.50")
    assert cumulative_fee("sell", Decimal("1000"), SAGA) == Decimal("2.50")


def test_the_cap_rounds_up_to_the_cent() -> None:
    assert market_buy_cap(Decimal("100"), Decimal("0.05")) == Decimal("105.00")
    assert market_buy_cap(Decimal("0.01"), Decimal("0.05")) == Decimal("0.02")
