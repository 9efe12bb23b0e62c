"""The firm's KRW/USD rate: its quote record and the conversion rules, as pure functions.

Pure (no I/O; the clock is passed in), so workflow code may import it. The FX feed
(feeds/fx.py) writes one JSON record under ``RedisKeys.fx(PAIR)``; ``parse_fx_record`` is its only
reader, and the feed runs every record through it before writing. The rate is won per dollar.

A record is refused (``InvalidQuote``, one line) unless:
- it is a JSON object for the pair asked for;
- ``bid`` and ``ask`` are decimal text (never a JSON number), finite, > 0, at most
  ``MAX_RATE`` and ``RATE_PLACES`` decimals, with ``bid <= ask`` (the firm's spread);
- ``timestamp`` is RFC 3339 with a zone; ``received_at`` and ``expires_at`` are numbers (this
  machine's epoch seconds), ``received_at`` no more than ``CLOCK_SKEW_S`` ahead of now and
  ``expires_at`` after ``received_at``.
Freshness is the reader's: ``stale`` is true once ``now`` passes ``expires_at`` or the record is
older than the reader's ``max_age_s``, whichever comes first. A stale rate refuses the order
("no FX rate"), as a stale stock quote does.

Conversions, always in the firm's favour, in whole won (KRW has no minor unit):
- what a customer pays for dollars: ``krw_cost(usd, ask)`` = ceil(usd x ask);
- what a customer gets for dollars: ``krw_proceeds(usd, bid)`` = floor(usd x bid).
Both are taken of *cumulative* dollar figures (an order's fills and fees so far), and each fill
moves the increase, so the rounding never accumulates: an order paid in won is charged at most
one won more than the exact total, and a sale paid out in won gets at most one won less.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from core.money import KRW
from core.quotes import CLOCK_SKEW_S, InvalidQuote, check_timestamp, loads_exact

PAIR = "USDKRW"  # the won price of one dollar
MAX_RATE = Decimal(100_000)
RATE_PLACES = 4
WON = Decimal(1)

__all__ = [
    "KRW",
    "PAIR",
    "FxQuote",
    "InvalidQuote",
    "check_rate",
    "firm_quote",
    "fx_record",
    "krw_cost",
    "krw_proceeds",
    "parse_fx_record",
]


@dataclass(frozen=True)
class FxQuote:
    pair: str
    bid: Decimal
    ask: Decimal
    timestamp: datetime
    received_at: float
    expires_at: float

    def stale(self, now: float, max_age_s: float) -> bool:
        return now >= self.expires_at or now - self.received_at > max_age_s


def check_rate(value: object, what: str) -> Decimal:
    """A rate from decimal text (``"1391.25"``): positive, at most MAX_RATE and RATE_PLACES
    decimals; anything else is refused."""
    if not isinstance(value, str) or len(value) > 40:
        raise InvalidQuote(f"{what} must be decimal text")
    try:
        rate = Decimal(value)
    except ArithmeticError:
        raise InvalidQuote(f"{what} is not decimal text: {value!r}") from None
    if not value.replace(".", "", 1).isdigit() or not value.isascii():
        raise InvalidQuote(f"{what} is not decimal text: {value!r}")
    if not 0 < rate <= MAX_RATE:
        raise InvalidQuote(f"{what} must be in (0, {MAX_RATE}]: {value!r}")
    exponent = rate.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > RATE_PLACES:
        raise InvalidQuote(f"{what} has more than {RATE_PLACES} decimals: {value!r}")
    return rate


def _epoch(record: dict[str, object], name: str) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InvalidQuote(f"{name} must be a number")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise InvalidQuote(f"{name} must be finite")
    return seconds


def parse_fx_record(raw: str | bytes, pair: str, now: float) -> FxQuote:
    """The feed's record for ``pair``, checked (not judged for age: ``FxQuote.stale``)."""
    record = loads_exact(raw)
    if not isinstance(record, dict):
        raise InvalidQuote("not a JSON object")
    if record.get("pair") != pair:
        raise InvalidQuote(f"wrong pair: {str(record.get('pair'))[:20]!r}, not {pair}")
    bid, ask = check_rate(record.get("bid"), "bid"), check_rate(record.get("ask"), "ask")
    if bid > ask:
        raise InvalidQuote(f"bid {bid} above ask {ask}")
    timestamp = check_timestamp(record.get("timestamp"))
    received_at, expires_at = _epoch(record, "received_at"), _epoch(record, "expires_at")
    if received_at > now + CLOCK_SKEW_S:
        raise InvalidQuote(f"received_at in the future: {received_at - now:.1f}s ahead")
    if expires_at <= received_at:
        raise InvalidQuote("expires_at is not after received_at")
    return FxQuote(pair, bid, ask, timestamp, received_at, expires_at)


def fx_record(
    bid: Decimal, ask: Decimal, timestamp: datetime, received_at: float, expires_at: float
) -> str:
    """The record the feed writes (``parse_fx_record``'s input)."""
    return json.dumps(
        {
            "pair": PAIR,
            "bid": f"{bid:f}",
            "ask": f"{ask:f}",
            "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
            "received_at": received_at,
            "expires_at": expires_at,
        }
    )


def firm_quote(mid: Decimal, spread: Decimal) -> tuple[Decimal, Decimal]:
    """The firm's bid and ask around a mid rate: ``spread`` is the whole spread as a fraction of
    the mid, half each side; the bid rounds down and the ask up, to 2 decimals."""
    half = mid * spread / 2
    cents = Decimal("0.01")
    return (mid - half).quantize(cents, ROUND_FLOOR), (mid + half).quantize(cents, ROUND_CEILING)


def krw_cost(usd: Decimal, ask: Decimal) -> Decimal:
    """Won a customer pays for ``usd`` dollars at the firm's ask: rounded up to the won."""
    return (usd * ask).quantize(WON, ROUND_CEILING)


def krw_proceeds(usd: Decimal, bid: Decimal) -> Decimal:
    """Won a customer gets for ``usd`` dollars at the firm's bid: rounded down to the won (never
    below zero)."""
    return max((usd * bid).quantize(WON, ROUND_FLOOR), Decimal(0))
