"""What counts as a usable quote: the rules the market-data feed writes by and the reader reads by.

Pure (no I/O; the clock is passed in). The feed stores one JSON record per symbol (see
feeds/marketdata.py); ``parse_quote_record`` is the only reader of that record, and the feed
runs every record it is about to write through it, so the feed never writes a quote the reader
would refuse.

A record is refused (``InvalidQuote``, with a one-line reason) unless:
- it is a JSON object (JSON's ``NaN``/``Infinity`` literals refused) for the symbol asked for;
- ``bid`` and ``ask`` are decimal TEXT (``"190.13"``): a JSON number is refused, so no price
  ever passes through a float; finite, > 0, ≤ ``MAX_PRICE``, at most ``MAX_PRICE_PLACES``
  decimals;
- ``timestamp`` (the broker's own time) is an RFC 3339 time with a zone. It is not compared with
  this machine's clock: the broker's clock is not ours (the simulator's can be advanced);
- ``received_at`` (this machine's epoch seconds when the feed stored it) is a number no more
  than ``CLOCK_SKEW_S`` in the future (a quote from the future would otherwise stay fresh for
  ever) and, for ``fresh``, no older than the reader's ``max_age_s``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_PRICE = Decimal(1_000_000)
MAX_PRICE_PLACES = 4
MAX_SIZE = Decimal(1_000_000_000)
CLOCK_SKEW_S = 2.0

_DECIMAL_TEXT = re.compile(r"[0-9]{1,16}(\.[0-9]{1,16})?")


class InvalidQuote(ValueError):
    """A quote that is not a usable price; the message is the one-line reason."""


@dataclass(frozen=True)
class QuoteRecord:
    symbol: str
    bid: Decimal
    ask: Decimal
    timestamp: datetime
    received_at: float


def check_price(value: object, what: str) -> Decimal:
    """A price from decimal text (``"190.13"``); anything that is not such text is refused."""
    if not isinstance(value, str):
        raise InvalidQuote(f"{what} must be decimal text, got {type(value).__name__}")
    if not _DECIMAL_TEXT.fullmatch(value):
        raise InvalidQuote(f"{what} is not decimal text: {value[:40]!r}")
    price = Decimal(value)
    if price <= 0:
        raise InvalidQuote(f"{what} must be positive: {value!r}")
    if price > MAX_PRICE:
        raise InvalidQuote(f"{what} above {MAX_PRICE}: {value!r}")
    exponent = price.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_PRICE_PLACES:
        raise InvalidQuote(f"{what} has more than {MAX_PRICE_PLACES} decimals: {value!r}")
    return price


def check_size(value: object, what: str) -> Decimal:
    try:
        size = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidQuote(f"{what} is not a number: {str(value)[:40]!r}") from None
    if isinstance(value, bool | float) or not size.is_finite() or not 0 <= size <= MAX_SIZE:
        raise InvalidQuote(f"{what} out of range: {str(value)[:40]!r}")
    return size


def check_timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidQuote("timestamp must be RFC 3339 text")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidQuote(f"timestamp is not RFC 3339: {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise InvalidQuote(f"timestamp has no zone: {value[:40]!r}")
    return moment


def _refuse_constant(name: str) -> Any:
    raise InvalidQuote(f"not a number: {name}")


def loads_exact(raw: str | bytes) -> Any:
    """JSON with every number exact (Decimal/int) and ``NaN``/``Infinity`` refused."""
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, InvalidQuote):
            raise
        raise InvalidQuote("not JSON") from None


def parse_quote_record(raw: str | bytes, symbol: str, now: float) -> QuoteRecord:
    """The feed's record for ``symbol``, checked; raises InvalidQuote with the reason.

    Age is not judged here (the caller compares ``now - received_at`` with its own limit), but
    a record stored in the future (beyond ``CLOCK_SKEW_S``) is refused.
    """
    record = loads_exact(raw)
    if not isinstance(record, dict):
        raise InvalidQuote("not a JSON object")
    if record.get("symbol") != symbol:
        raise InvalidQuote(f"wrong symbol: {str(record.get('symbol'))[:20]!r}, not {symbol}")
    bid, ask = check_price(record.get("bid"), "bid"), check_price(record.get("ask"), "ask")
    for size in ("bid_size", "ask_size"):
        if size in record:
            check_size(record[size], size)
    timestamp = check_timestamp(record.get("timestamp"))
    received = record.get("received_at")
    if isinstance(received, bool) or not isinstance(received, int | Decimal):
        raise InvalidQuote("received_at must be a number")
    received_at = float(received)
    if not math.isfinite(received_at):
        raise InvalidQuote("received_at must be finite")
    if received_at > now + CLOCK_SKEW_S:
        raise InvalidQuote(f"received_at in the future: {received_at - now:.1f}s ahead")
    return QuoteRecord(symbol, bid, ask, timestamp, received_at)


def broker_price(value: object, what: str) -> Decimal:
    """A price in the broker's JSON: decimal text, or a JSON number already parsed exactly
    (Decimal or int); floats (JSON's NaN/Infinity literals) and anything else refused."""
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        if not Decimal(value).is_finite():
            raise InvalidQuote(f"{what} must be finite")
        value = f"{Decimal(value):f}"
    return check_price(value, what)
