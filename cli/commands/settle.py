"""``ordersaga settle [--date D]``: run the settlement job now (workflows/settlement.py)."""

from __future__ import annotations

from datetime import date, datetime

import click

from cli.commands.common import echo_json, run
from core.calendar import FIRST_DAY, NEW_YORK
from core.settings import Settings


def parse_settle_date(text: str | None, today: date) -> date | None:
    """A ``--date``: YYYY-MM-DD, not before the calendar's first day and not after today in New
    York (settling for a later date would release cash before its settlement date)."""
    if text is None:
        return None
    try:
        day = date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise click.BadParameter(f"{text[:40]!r} is not a date (YYYY-MM-DD)", param_hint="--date")
    if day < FIRST_DAY or day > today:
        raise click.BadParameter(
            f"{day.isoformat()} is outside {FIRST_DAY.isoformat()} .. {today.isoformat()}"
            " (today in New York): lots settle on their date, never before",
            param_hint="--date",
        )
    return day


def register(cli: click.Group) -> None:
    @cli.command("settle")
    @click.option("--date", "day", default=None, help="Session date (default: today in New York).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def settle(day: str | None, as_json: bool) -> None:
        """Run the settlement job now: every unsettled sale's proceeds due on or before the date
        become settled cash (withdrawable). Idempotent; needs a worker on the orders queue."""
        from ordersaga.schedules import run_settlement_now

        as_of = parse_settle_date(day, datetime.now(NEW_YORK).date())
        report = run(run_settlement_now(Settings(), as_of=as_of))
        if as_json:
            echo_json(report.model_dump(mode="json"))
            return
        amounts = ", ".join(f"{v} {k}" for k, v in sorted(report.amounts.items())) or "nothing"
        click.echo(
            f"settled {report.settled} lots due on or before {report.as_of.isoformat()}"
            f" ({amounts}) in {report.pages} pages"
        )
