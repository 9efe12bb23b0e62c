"""``ordersaga market``: whether the US market is open, and when it next opens or closes.

From the NYSE calendar (core/calendar.py); with ``--broker`` also from the broker's own market
clock (GET /v2/clock), which is what an order in the enforce mode waits on (docs/ARCHITECTURE.md,
"Queued for the open").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click

from cli.commands.common import echo_json, printable, run
from core.errors import UserError
from core.settings import Settings

MAX_AT_CHARS = 40


def _at_value(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """``--at``: an RFC 3339 time with its offset, refused in one line otherwise."""
    if value is None:
        return None
    text = printable(value, param)
    if len(text) > MAX_AT_CHARS:
        raise click.ClickException(f"--at: at most {MAX_AT_CHARS} characters")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.ClickException(
            f"--at: {text!r} is not a time like 2026-11-27T12:00:00-05:00"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise click.ClickException(f"--at: {text!r} has no time zone (add Z or an offset)")
    return moment


def _when(moment: datetime) -> str:
    from core.calendar import NEW_YORK

    local = moment.astimezone(NEW_YORK)
    return f"{local:%a %Y-%m-%d %H:%M %Z} ({moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ})"


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    return " ".join(p for p in (f"{days}d" * bool(days), f"{hours}h" * bool(hours)) if p) + (
        f" {minutes}m" if days or hours else f"{minutes}m"
    )


def calendar_view(at: datetime) -> dict[str, Any]:
    """What the calendar says at ``at``; UserError (one line) outside its bounds."""
    from core.calendar import OutsideCalendar, xnys

    cal = xnys()
    try:
        is_open = cal.is_open(at)
        opens, closes = cal.next_open(at), cal.next_close(at)
        session = cal.current_or_next(at)
    except OutsideCalendar as exc:
        raise UserError(str(exc)) from None
    return {
        "exchange": cal.exchange,
        "at": at.astimezone(UTC),
        "is_open": is_open,
        "next_open": opens,
        "next_close": closes,
        "session": session.day,
        "early_close": session.early_close,
    }


async def broker_view(settings: Settings) -> dict[str, Any]:
    from core.broker_client import BrokerClient, BrokerError

    try:
        async with BrokerClient.from_settings(settings) as broker:
            clock = await broker.market_clock()
    except BrokerError as exc:
        raise UserError(f"the broker's market clock: {exc}") from None
    return {
        "at": clock.timestamp,
        "is_open": clock.is_open,
        "next_open": clock.next_open,
        "next_close": clock.next_close,
    }


def _lines(view: dict[str, Any], source: str) -> list[str]:
    state = "OPEN" if view["is_open"] else "CLOSED"
    lines = [f"{source}: {state} at {_when(view['at'])}"]
    if view["is_open"]:
        lines.append(
            f"  closes {_when(view['next_close'])}, in {_span(view['next_close'] - view['at'])}"
        )
        lines.append(f"  next opens {_when(view['next_open'])}")
    else:
        lines.append(
            f"  opens {_when(view['next_open'])}, in {_span(view['next_open'] - view['at'])}"
        )
        lines.append(f"  then closes {_when(view['next_close'])}")
    if view.get("early_close"):
        lines.append(f"  {view['session']} is an early close")
    return lines


def register(cli: click.Group) -> None:
    @cli.command("market")
    @click.option(
        "--at",
        callback=_at_value,
        help="Ask the calendar about this time (RFC 3339 with offset) instead of now.",
    )
    @click.option(
        "--broker", "ask_broker", is_flag=True, help="Also ask the broker's market clock."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def market(at: datetime | None, ask_broker: bool, as_json: bool) -> None:
        """Whether the US market (NYSE) is open, and when it next opens or closes."""

        async def gather() -> dict[str, Any]:
            views = {"calendar": calendar_view(at or datetime.now(UTC))}
            if ask_broker:
                views["broker"] = await broker_view(Settings.load())
            return views

        views = run(gather())
        if as_json:
            echo_json(views)
            return
        click.echo(
            "\n".join(_lines(views["calendar"], f"{views['calendar']['exchange']} calendar"))
        )
        if "broker" in views:
            click.echo("\n".join(_lines(views["broker"], "broker clock")))
