"""Shared helpers for commands: running coroutines, one-line errors, JSON output."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any, TypeVar

import click

from core.errors import UserError
from core.money import InvalidAmount

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
