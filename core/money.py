"""Money and quantities: Decimal only, with the rounding rules defined once.

Rounding (documented in docs/ARCHITECTURE.md):
- Cash is USD with 2 decimals (cents); KRW has none (whole won). Share quantities have 9
  decimals.
- A fill's cash amount is rounded from the *cumulative* exact notional of its hold:
  ``posted_cash_after = round_half_up(sum(qty_i * price_i), cents)``, and the post moves
  ``posted_cash_after - posted_cash_before``. Rounding errors therefore never accumulate: the
  total charged for a hold is within half a cent of the exact total.
- A cash hold is sized with ``ceil_cents(qty * limit_price)`` (rounded up), so the rounded
  cumulative cost of fills at or below the limit can never exceed it.
- The post that completes a share hold moves exactly the shares left in it.

Reading numbers: ``parse_bounded`` is the one strict parser, used at every boundary (the CLI, the
SDK's ``OrderClient``, the workflow's ``validate_request``, deposits and withdrawals through
``validate_amount``, the broker simulator): finite; digits and exponent checked as written,
before any arithmetic (``1e-1000030`` and ``1e400`` are refused, never normalised to 0 or
Infinity); refused rather than rounded beyond the asset's decimals (cash 2, shares 9, prices 4);
within an explicit maximum; what arithmetic it needs runs in a local exact context.

This module is pure (no I/O, no clock) so workflow code may import it.
"""

from __future__ import annotations

import re
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_UP,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Overflow,
    Underflow,
    localcontext,
)

CASH_ASSET = "USD"
CASH_PLACES = 2
# Korean won: no minor unit. An account may hold it beside USD; orders paid in won convert through
# the firm's FX desk (core/fx.py, docs/LEDGER.md).
KRW = "KRW"
# Every currency the ledger keeps, with its decimals; any other asset is a symbol's shares.
CURRENCIES = {CASH_ASSET: CASH_PLACES, KRW: 0}
SHARE_PLACES = 9
PRICE_PLACES = 4
CENT = Decimal(1).scaleb(-CASH_PLACES)
SHARE_QUANTUM = Decimal(1).scaleb(-SHARE_PLACES)

# Absurd-amount guard: no single operation moves more than this (cash or shares).
MAX_AMOUNT = Decimal("1000000000000")  # 1e12
# One order: at most this many shares, at a limit price of at most this.
MAX_ORDER_QTY = Decimal(1_000_000)
MAX_LIMIT_PRICE = Decimal(1_000_000)
# An order's notional (qty x limit price) at most a tenth of MAX_AMOUNT: what the order holds adds
# the commission (at most 5 % by the settings' range) and, for a market buy, the buffer (at most
# 50 %), and the hold must stay within what one ledger operation moves.
MAX_NOTIONAL = Decimal(100_000_000_000)  # 1e11
# Longer text is not a number anyone means: refused before Decimal() sees it.
MAX_NUMBER_CHARS = 100
# What a bounded amount may look like as text: ASCII digits, no "_", "NaN", "Infinity" or "0x".
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# Bounded amounts are computed here, never in the caller's context: enough digits for any
# accepted value, and any rounding or overflow is an error rather than a silent change.
_BOUNDED = Context(
    prec=60, Emax=99, Emin=-99, traps=[InvalidOperation, Overflow, Inexact, Underflow]
)


class InvalidAmount(ValueError):
    """An amount that is not a finite, positive, sanely-sized number of the asset's precision."""


def places_for(asset: str) -> int:
    return CURRENCIES.get(asset, SHARE_PLACES)


def quantum_for(asset: str) -> Decimal:
    return Decimal(1).scaleb(-places_for(asset))


def is_currency(asset: object) -> bool:
    return isinstance(asset, str) and asset in CURRENCIES


def parse_decimal(value: object, what: str = "amount") -> Decimal:
    """Turn user input into a finite Decimal, refusing floats' binary noise and garbage."""
    if isinstance(value, bool):
        raise InvalidAmount(f"{what} must be a number, got {value!r}")
    if isinstance(value, float):
        # floats only reach here from careless callers; their repr is the shortest exact round-trip
        value = repr(value)
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise InvalidAmount(f"{what} is not a number: {value!r}") from exc
    if not d.is_finite():
        raise InvalidAmount(f"{what} must be finite, got {value!r}")
    return d


def parse_bounded(
    value: object,
    what: str,
    *,
    places: int,
    maximum: Decimal,
    allow_zero: bool = False,
    unit: str = "",
) -> Decimal:
    """A finite number in (0, maximum] ([0, maximum] with ``allow_zero``) with at most
    ``places`` decimals, refused (InvalidAmount) rather than rounded.

    The exponent is checked before any arithmetic, so 1e-1000030 or 1E+999999999 are refused
    instead of becoming 0 or raising decimal.Overflow; the result is quantized to ``places``.
    """
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS:
            raise InvalidAmount(f"{what} is not a number: {value[:20]!r}... is too long")
        if not _NUMBER_TEXT.fullmatch(value.strip()):
            raise InvalidAmount(f"{what} is not a number: {value!r}")
    d = parse_decimal(value, what)
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)  # finite: parse_decimal refused the rest
    if len(digits) > MAX_NUMBER_CHARS:
        raise InvalidAmount(f"{what} has too many digits")
    if not any(digits):
        if allow_zero:
            return Decimal(0).quantize(Decimal(1).scaleb(-places))
        raise InvalidAmount(f"{what} must be > 0, got {d}")
    if sign:
        raise InvalidAmount(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {d}")
    # Plain tuple arithmetic only: trailing zeros do not count as decimals.
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if exponent + trailing < -places:
        suffix = f" for {unit}" if unit else ""
        raise InvalidAmount(f"{what} {d} has more than {places} decimals{suffix}")
    if d.adjusted() > maximum.adjusted() or d > maximum:
        raise InvalidAmount(f"{what} {d} exceeds the maximum of {maximum}")
    with localcontext(_BOUNDED):
        return d.quantize(Decimal(1).scaleb(-places))


def validate_amount(
    value: object, asset: str, what: str = "amount", *, allow_zero: bool = False
) -> Decimal:
    """A positive amount of ``asset`` with no more decimals than the asset allows."""
    return parse_bounded(
        value,
        what,
        places=places_for(asset),
        maximum=MAX_AMOUNT,
        allow_zero=allow_zero,
        unit=asset,
    )


def exact_product(a: Decimal, b: Decimal) -> Decimal:
    """``a * b`` of two bounded numbers, exactly (any rounding raises), in the local context."""
    with localcontext(_BOUNDED):
        return a * b


def canonical(d: Decimal) -> str:
    """Exact text of a finite Decimal with trailing zeros dropped (``1.50`` -> ``1.5``), built
    from its digits with no arithmetic, so no context can round it (``normalize()`` in the
    default context turned ``1e-1000030`` into ``0``). Non-finite values are shown as they are."""
    sign, digits, exponent = d.as_tuple()
    if not isinstance(exponent, int):
        return str(d)
    if not any(digits):
        return "-0" if sign else "0"
    kept = len(digits)
    while digits[kept - 1] == 0:
        kept -= 1
    return str(Decimal((sign, digits[:kept], exponent + len(digits) - kept)))


def round_cash(amount: Decimal) -> Decimal:
    """Round an exact cash amount half-up to cents (the rule for fills and fees)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def ceil_cash(amount: Decimal) -> Decimal:
    """Round up to cents (the rule for sizing holds)."""
    return amount.quantize(CENT, rounding=ROUND_CEILING)


def commission(notional: Decimal, rate: Decimal, minimum: Decimal) -> Decimal:
    """Commission on a (cumulative) notional: rate x notional, at least the minimum, in cents."""
    if notional <= 0:
        return Decimal("0.00")
    return max(round_cash(notional * rate), minimum.quantize(CENT))
