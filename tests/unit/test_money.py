import decimal
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import (
    CASH_PLACES,
    MAX_AMOUNT,
    MAX_ORDER_QTY,
    PRICE_PLACES,
    SHARE_PLACES,
    InvalidAmount,
    canonical,
    ceil_cash,
    commission,
    exact_product,
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


# ---------------------------------------------------------------- parse_bounded at every boundary

HOSTILE = [
    "1e-1000030",  # normalised in the default context it was 0, and hashed as "0"
    Decimal("1e-1000030"),
    "1e400",
    Decimal("1e400"),
    "1e999999999",
    "NaN",
    Decimal("sNaN"),
    "Infinity",
    Decimal("-Infinity"),
    "1_000",  # Decimal() reads underscores
    "١٢",  # and other scripts' digits
    "1\n2",
    "1\x00",
    "0x10",
    "",
    "1" * 70,
    float("nan"),
    True,
    None,
    [1],
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_parse_bounded_refuses_without_normalising(bad: object) -> None:
    with pytest.raises(InvalidAmount):
        parse_bounded(bad, "quantity", places=SHARE_PLACES, maximum=MAX_ORDER_QTY)


def test_a_deposit_with_31_decimals_is_refused_not_rounded() -> None:
    thirty_one = "1." + "0" * 30 + "1"
    with pytest.raises(InvalidAmount, match="more than 2 decimals"):
        validate_amount(thirty_one, "USD")
    with pytest.raises(InvalidAmount, match="decimals"):
        validate_amount("0.0000000001", "AAPL")
    # trailing zeros round nothing: accepted, exactly
    assert validate_amount("1.50000000000000000000", "USD") == Decimal("1.50")


def test_parse_bounded_bounds_are_explicit() -> None:
    assert parse_bounded("1000000", "qty", places=9, maximum=MAX_ORDER_QTY) == MAX_ORDER_QTY
    with pytest.raises(InvalidAmount, match="exceeds the maximum"):
        parse_bounded("1000000.000000001", "qty", places=9, maximum=MAX_ORDER_QTY)
    with pytest.raises(InvalidAmount, match="> 0"):
        parse_bounded("-0", "qty", places=9, maximum=MAX_AMOUNT)
    with pytest.raises(InvalidAmount, match="more than 4 decimals"):
        parse_bounded("1.00001", "limit price", places=PRICE_PLACES, maximum=MAX_AMOUNT)
    assert parse_bounded("0", "amount", places=2, maximum=MAX_AMOUNT, allow_zero=True) == 0
    assert parse_bounded(7, "qty", places=9, maximum=MAX_AMOUNT) == Decimal(7)


def test_parse_bounded_never_uses_the_global_context() -> None:
    """Under a global context that rounds to one digit and traps everything, the answers are
    the same: the checks' arithmetic is in a local context."""
    signals = [decimal.Inexact, decimal.Rounded, decimal.Overflow, decimal.Underflow]
    hostile = decimal.Context(prec=1, Emax=1, Emin=-1, traps=[*signals, decimal.InvalidOperation])
    with decimal.localcontext(hostile):
        assert parse_bounded("123456.789", "qty", places=9, maximum=MAX_AMOUNT) == Decimal(
            "123456.789"
        )
        assert validate_amount("99999.99", "USD") == Decimal("99999.99")
        with pytest.raises(InvalidAmount, match="decimals"):
            parse_bounded("123.4567891234", "qty", places=9, maximum=MAX_AMOUNT)
        assert exact_product(Decimal("999999.999999999"), Decimal("1000000")) == Decimal(
            "999999999999.999000000"
        )


def test_canonical_text_is_exact() -> None:
    assert canonical(Decimal("1.500")) == str(Decimal("1.500").normalize()) == "1.5"
    assert canonical(Decimal("100")) == str(Decimal("100").normalize()) == "1E+2"
    assert canonical(Decimal("0.000")) == "0"
    assert canonical(Decimal("1e-1000030")) == "1E-1000030"  # normalize() said "0"
    assert canonical(Decimal("1e-1000030")) != canonical(Decimal("1e-1000031"))


ASCII_NUMBERS = st.from_regex(r"\A[+-]?[0-9]{0,16}(\.[0-9]{0,14})?([eE][+-]?[0-9]{1,3})?\Z")


@given(
    text=st.one_of(ASCII_NUMBERS, st.text(max_size=20)),
    places=st.sampled_from([CASH_PLACES, PRICE_PLACES, SHARE_PLACES]),
)
def test_what_parse_bounded_accepts_is_exactly_what_was_written(text: str, places: int) -> None:
    try:
        d = parse_bounded(text, "n", places=places, maximum=MAX_AMOUNT)
    except InvalidAmount:
        return
    written = Decimal(text.strip())  # exact: construction never rounds
    assert d == written  # the same number, at the asset's precision: nothing was rounded
    assert canonical(d) == canonical(written)
    assert 0 < d <= MAX_AMOUNT and d.as_tuple().exponent == -places


@given(
    whole=st.integers(min_value=0, max_value=10**6),
    fraction=st.integers(min_value=1, max_value=10**12),
    places=st.sampled_from([CASH_PLACES, PRICE_PLACES, SHARE_PLACES]),
    extra=st.integers(min_value=1, max_value=25),
)
def test_a_digit_beyond_the_decimals_is_refused_never_rounded(
    whole: int, fraction: int, places: int, extra: int
) -> None:
    scale = places + extra
    digits = str(fraction).rjust(scale, "0")[-scale:]
    if digits[-1] == "0":
        digits = digits[:-1] + "7"  # the last written digit is non-zero, beyond the places
    text = f"{whole}.{digits}"
    with pytest.raises(InvalidAmount, match="decimals"):
        parse_bounded(text, "n", places=places, maximum=MAX_AMOUNT)
    with pytest.raises(InvalidAmount, match="decimals"):
        parse_bounded(Decimal(text), "n", places=places, maximum=MAX_AMOUNT)
