from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import (
    InvalidAmount,
    ceil_cash,
    commission,
    parse_bounded,
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


@pytest.mark.parametrize(
    "bad",
    [
        "1e-1000030",  # once became 0E-9: a zero-share order
        Decimal("1e-1000030"),
        "1E+999999999",  # once raised decimal.Overflow from abs()
        Decimal("-1E+999999999"),
        "sNaN",
        "-0",
        "1_000",
        "0x10",
        "١٢",  # Unicode digits Decimal() would accept
        "1" * 101,
        [],
        None,
    ],
)
def test_validate_amount_refuses_extreme_exponents_and_odd_text(bad: object) -> None:
    with pytest.raises(InvalidAmount):
        validate_amount(bad, "AAPL")


@pytest.mark.parametrize(
    ("given", "asset", "expected"),
    [
        ("1", "USD", Decimal("1.00")),
        (" 2.5 ", "USD", Decimal("2.50")),
        (7, "AAPL", Decimal("7.000000000")),
        (0.1, "USD", Decimal("0.10")),
        ("1E+3", "USD", Decimal("1000.00")),
        ("100.000000000000000000", "AAPL", Decimal("100")),
        ("1000000000000", "USD", Decimal("1000000000000.00")),
    ],
)
def test_validate_amount_still_accepts_what_it_accepted(
    given: object, asset: str, expected: Decimal
) -> None:
    assert validate_amount(given, asset) == expected


def test_validate_amount_allow_zero_keeps_its_meaning() -> None:
    assert validate_amount("0", "USD", allow_zero=True) == Decimal("0.00")
    assert validate_amount("-0", "USD", allow_zero=True) == Decimal("0.00")
    with pytest.raises(InvalidAmount, match=">= 0"):
        validate_amount("-1", "USD", allow_zero=True)


def test_parse_bounded_refuses_rather_than_rounds() -> None:
    assert parse_bounded("190.1234", "p", places=4, maximum=Decimal(10**6)) == Decimal("190.1234")
    assert parse_bounded("1e6", "p", places=4, maximum=Decimal(10**6)) == Decimal(10**6)
    with pytest.raises(InvalidAmount, match="4 decimals"):
        parse_bounded("190.12345", "p", places=4, maximum=Decimal(10**6))
    with pytest.raises(InvalidAmount, match="maximum"):
        parse_bounded("1000000.0001", "p", places=4, maximum=Decimal(10**6))
    with pytest.raises(InvalidAmount, match="decimals"):
        parse_bounded("0.1234567890123456789012345678901", "p", places=4, maximum=Decimal(1))


@given(st.decimals(allow_nan=True, allow_infinity=True))
def test_parse_bounded_never_raises_anything_but_invalid_amount(value: Decimal) -> None:
    for candidate in (value, str(value)):
        try:
            got = parse_bounded(candidate, "x", places=9, maximum=Decimal(10**9))
        except InvalidAmount:
            continue
        assert 0 < got <= 10**9 and got == value


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
