from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import (
    InvalidAmount,
    ceil_cash,
    commission,
    round_cash,
    validate_amount,
)


@pytest.mark.parametrize("bad", ["-1", "0", "NaN", "inf", "1e400", "abc", "", "1.001", True])
def test_validate_amount_refuses_bad_cash(bad: object) -> None:
    with pytest.raises(InvalidAmount):
        validate_amount(bad, "USD")


def test_validate_amount_shares_allow_nine_decimals() -> None:
    assert validate_amount("0.123456789", "AAPL") == Decimal("0.123456789")
    with pytest.raises(InvalidAmount):
        validate_amount("0.1234567891", "AAPL")


def test_rounding_rules() -> None:
    assert round_cash(Decimal("1.005")) == Decimal("1.01")
    assert round_cash(Decimal("1.0049")) == Decimal("1.00")
    assert ceil_cash(Decimal("1.001")) == Decimal("1.01")
    assert commission(Decimal("10"), Decimal("0.0025"), Decimal("0.50")) == Decimal("0.50")
    assert commission(Decimal("1000"), Decimal("0.0025"), Decimal("0.50")) == Decimal("2.50")


@given(
    st.lists(
        st.tuples(
            st.decimals(min_value=Decimal("0.000000001"), max_value=Decimal("5"), places=9),
            st.decimals(min_value=Decimal("0.01"), max_value=Decimal("500"), places=4),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_cumulative_rounding_never_exceeds_ceiling_hold(
    fills: list[tuple[Decimal, Decimal]],
) -> None:
    """Fills at or below the limit, rounded cumulatively, never exceed the hold sized by ceil."""
    limit = max(p for _, p in fills)
    total_qty = sum((q for q, _ in fills), Decimal(0))
    hold = ceil_cash(total_qty * limit)
    exact = Decimal(0)
    charged = Decimal("0.00")
    for q, p in fills:
        exact += q * p
        after = round_cash(exact)
        charged += after - charged
    assert charged <= hold
    assert abs(charged - exact) <= Decimal("0.005")
