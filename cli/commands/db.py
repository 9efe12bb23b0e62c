"""``ordersaga db migrate``."""

from __future__ import annotations

import click

from cli.commands.common import run
from core.db import ensure_database, migrate
from core.settings import Settings


async def _migrate(dsn: str) -> list[str]:
    await ensure_database(dsn)
    return await migrate(dsn)


def register(cli: click.Group) -> None:
    @cli.group()
    def db() -> None:
        """Database schema."""

    @db.command("migrate")
    def migrate_cmd() -> None:
        """Apply pending migrations (a second run is a no-op)."""
        applied = run(_migrate(Settings().database_url))
        if applied:
            for name in applied:
                click.echo(f"applied {name}")
        else:
            click.echo("schema is up to date")
