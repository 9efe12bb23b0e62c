"""Shared helpers for commands: running coroutines, one-line errors, JSON output, and the
checks of arguments that run before any connection is made."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any, TypeVar

import click

from core.errors import UserError
from core.ids import is_id, is_symbol
from core.money import CURRENCIES, InvalidAmount
from core.settings import Settings
from core.statuses import OrderStatus

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; user errors become one-line ClickExceptions (exit status 2)."""
    try:
        return asyncio.run(coro)
    except (UserError, InvalidAmount) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot connect: {exc}") from None


def user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for synchronous command bodies raising UserError / InvalidAmount."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (UserError, InvalidAmount) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _default(obj: object) -> object:
    if isinstance(obj, Decimal):
        return str(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()  # type: ignore[no-any-return]
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")  # type: ignore[no-any-return]
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, default=_default, indent=2, sort_keys=True))


def table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    head = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = [head]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- arguments, checked at parse time
# Click callbacks: each runs while the command line is parsed, before the command body connects to
# anything, and refuses with one line (a ClickException, not a usage error with its help text).
Callback = Callable[[click.Context, click.Parameter, Any], Any]


def _name(param: click.Parameter) -> str:
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.name or "argument").upper()


def printable(text: str, param: click.Parameter) -> str:
    """Refuse control characters (NUL, newline, escape, ...) and other unprintable ones."""
    bad = next((ch for ch in text if not ch.isprintable()), None)
    if bad is not None:
        raise click.ClickException(
            f"{_name(param)}: control or unprintable character {bad!r} is not allowed"
        )
    return text


def text_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Any text option: printable characters only."""
    return None if value is None else printable(value, param)


def id_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An account or order id by ``core.ids``'s rule."""
    if value is None:
        return None
    if not is_id(printable(value, param)):
        raise click.ClickException(
            f"{_name(param)}: invalid id {value[:70]!r} (1-64 letters, digits, '_', '.', '-')"
        )
    return value


def symbol_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ticker symbol (upper-cased) by ``core.ids``'s rule."""
    if value is None:
        return None
    text = printable(value, param).upper()
    if not is_symbol(text):
        raise click.ClickException(f"{_name(param)}: invalid symbol {value[:70]!r}")
    return text


def asset_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A currency (USD, KRW) or a ticker symbol (upper-cased)."""
    if value is None:
        return None
    text = printable(value, param).upper()
    if text not in CURRENCIES and not is_symbol(text):
        raise click.ClickException(
            f"{_name(param)}: unknown asset {value[:70]!r} (USD, KRW or a ticker symbol)"
        )
    return text


def currency_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A currency the ledger keeps: USD or KRW (any case)."""
    if value is None:
        return None
    text = printable(value, param).upper()
    if text not in CURRENCIES:
        raise click.ClickException(
            f"{_name(param)}: unknown currency {value[:70]!r} ({', '.join(CURRENCIES)})"
        )
    return text


def status_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """One of the saga's statuses (any case)."""
    if value is None:
        return None
    text = printable(value, param).upper()
    if text not in OrderStatus.__members__:
        raise click.ClickException(
            f"{_name(param)}: unknown status {value[:70]!r} "
            f"(one of {', '.join(OrderStatus.__members__)})"
        )
    return text


def int_between(low: int, high: int) -> Callback:
    """A whole number from ``low`` to ``high`` (for ``type=int`` options)."""

    def check(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        if value is not None and not low <= value <= high:
            raise click.ClickException(f"{_name(param)} must be from {low} to {high}, got {value}")
        return value

    return check


# The long-running commands' port for /metrics, /healthz and /readyz (core/telemetry.py): each
# process of a machine needs its own, so it is an option as well as ORDERSAGA_METRICS_PORT.
metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65_535),
    default=None,
    help="Serve /metrics, /healthz and /readyz on this port (0: off; default: settings).",
)


def with_metrics_port(settings: Settings, port: int | None) -> Settings:
    return settings if port is None else settings.model_copy(update={"metrics_port": port})
