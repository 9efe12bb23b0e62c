"""Every input the simulator accepts is read here, strictly: bounded JSON bodies and numbers.

A value is refused (ApiError 4xx), never rounded, clamped or left to fail later: numbers go
through ``core.money.parse_bounded`` (finite, within explicit bounds, at most so many decimals,
checked before any arithmetic), bodies are at most ``MAX_BODY_BYTES`` of UTF-8 JSON nested at
most ``MAX_JSON_DEPTH`` deep, with no NaN or Infinity.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, NoReturn

from aiohttp import web
from pydantic import BeforeValidator

from core.money import InvalidAmount, parse_bounded

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 64
MAX_QTY = Decimal(1_000_000_000)
QTY_PLACES = 9
MAX_PRICE = Decimal(1_000_000)
PRICE_PLACES = 4
MAX_ADVANCE_S = Decimal(10 * 366 * 86_400)  # ten years
MAX_MS = 3_600_000  # an hour: the longest delay a fault may add
MAX_TICK_MS = 60_000
MAX_SEED = 2**63 - 1
MAX_SYMBOLS = 100
SYMBOL = re.compile(r"[A-Z][A-Z.]{0,9}")
# Printable text only: a lone surrogate cannot be stored (SQLite wants UTF-8), a control
# character has no business in an id.
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]*")


class ApiError(Exception):
    """An HTTP error answer: status, Alpaca-style numeric code and message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(422, 40010001, message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, 40010000, message)


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut short: messages echo input, but never a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _depth(data: object) -> int:
    """Nesting depth, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json_object(raw: bytes, *, exact: bool = True) -> dict[str, Any]:
    """A request body: UTF-8 JSON, an object, numbers as Decimal; 400 for anything else.

    ``exact=False`` keeps JSON's own numbers (floats, NaN): only for the admin hooks that plant
    malformed quotes and events on purpose, so tests can send what a broken broker would."""
    try:
        text = raw.decode("utf-8")
        if exact:
            data = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
        else:
            data = json.loads(text)
    except ValueError:  # also UnicodeDecodeError, and ints of more than 4300 digits
        raise bad_request("malformed JSON") from None
    except RecursionError:
        raise bad_request(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise bad_request(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    return data


async def read_json_object(request: web.Request, *, exact: bool = True) -> dict[str, Any]:
    """The request's body (the app refuses more than MAX_BODY_BYTES with 413)."""
    return parse_json_object(await request.read(), exact=exact)


def number(
    value: object, what: str, *, places: int, maximum: Decimal, zero: bool = False
) -> Decimal:
    """``parse_bounded`` with its refusal as a 422."""
    if value is None:
        raise invalid(f"{what} is required")
    try:
        return parse_bounded(value, what, places=places, maximum=maximum, allow_zero=zero)
    except InvalidAmount as exc:
        raise invalid(str(exc)) from None


def qty(value: object) -> Decimal:
    """0 < qty <= 1e9 shares with at most 9 decimals."""
    return number(value, "qty", places=QTY_PLACES, maximum=MAX_QTY)


def price(value: object, what: str = "limit_price", places: int = PRICE_PLACES) -> Decimal:
    """0 < price <= 1e6 with at most ``places`` (4) decimals."""
    return number(value, what, places=places, maximum=MAX_PRICE)


def whole(value: object, what: str, low: int, high: int) -> int:
    """An integer in [low, high]; ``"5"``, ``5.0`` and ``5E0`` are 5, ``5.5`` is refused."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    if isinstance(value, str | float | int | Decimal) and not isinstance(value, bool):
        signed = str(value).strip()
        negative = signed.startswith("-")
        unsigned = signed.removeprefix("-")
        if negative and unsigned.startswith("+"):
            raise invalid(f"{what} is not a number: {shown(value)}")
        bound = Decimal(max(-low, high))
        magnitude = number(unsigned, what, places=0, maximum=bound, zero=True)
        result = -int(magnitude) if negative else int(magnitude)
        if low <= result <= high:
            return result
    raise invalid(f"{what} must be an integer from {low} to {high}, got {shown(value)}")


def text(value: object, what: str, max_chars: int) -> str:
    """A printable string of at most ``max_chars`` characters."""
    if not isinstance(value, str) or len(value) > max_chars or not _PRINTABLE.fullmatch(value):
        raise invalid(f"{what} must be printable text of at most {max_chars} characters")
    return value


def _for_pydantic(check: Callable[[object], Any]) -> Callable[[object], Any]:
    """``check`` raising ValueError, which pydantic reports as a validation error (422)."""

    def validate(value: object) -> Any:
        try:
            return check(value)
        except ApiError as exc:
            raise ValueError(exc.message) from None

    return validate


def _probability(value: object) -> float:
    return float(number(value, "probability", places=18, maximum=Decimal(1), zero=True))


def _count(low: int, high: int) -> Callable[[object], int]:
    return lambda value: whole(value, "value", low, high)


# Field types for the admin models: the same strict numbers as every other input.
Probability = Annotated[float, BeforeValidator(_for_pydantic(_probability))]
Millis = Annotated[int, BeforeValidator(_for_pydantic(_count(0, MAX_MS)))]
Seed = Annotated[int, BeforeValidator(_for_pydantic(_count(-MAX_SEED, MAX_SEED)))]
Parts = Annotated[int, BeforeValidator(_for_pydantic(_count(1, 1000)))]
TickMillis = Annotated[int, BeforeValidator(_for_pydantic(_count(1, MAX_TICK_MS)))]
# Requests allowed per rate-limit window (0: no limit), and the window's length in seconds.
RequestCount = Annotated[int, BeforeValidator(_for_pydantic(_count(0, 1_000_000)))]
WindowSeconds = Annotated[int, BeforeValidator(_for_pydantic(_count(1, 3_600)))]
