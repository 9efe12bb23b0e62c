"""``ordersaga ledger check``: the whole-ledger invariants; exit status 1 on any violation."""

from __future__ import annotations

import click

from activities.ledger import LedgerReport, check_ledger
from cli.commands.account import ledger_pool
from cli.commands.common import echo_json, run


async def _check() -> LedgerReport:
    async with ledger_pool() as pool:
        return await check_ledger(pool)


def register(cli: click.Group) -> None:
    @cli.group()
    def ledger() -> None:
        """The double-entry ledger."""

    @ledger.command("check")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
    def check_cmd(as_json: bool) -> None:
        """Conservation, balances, journal and holds; exit status 1 on a violation."""
        report = run(_check())
        if as_json:
            echo_json(report.model_dump(mode="json"))
        elif report.ok:
            click.echo(f"ledger OK ({len(report.open_holds)} open holds)")
        else:
            for line in report.violations():
                click.echo(line)
        if not report.ok:
            # click returns (not raises) ctx.exit codes under standalone_mode=False
            raise SystemExit(1)
