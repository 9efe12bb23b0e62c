"""``ordersaga db migrate [--init-roles]``: the only command that changes the schema.

It connects as the schema's owner (``ORDERSAGA_DATABASE_OWNER_URL``), never as the application
role the other commands use; ``--init-roles`` first creates the owner and application roles and
the database as the admin (``ORDERSAGA_DATABASE_ADMIN_URL``). docs/DEPLOY.md, "Postgres roles".
"""

from __future__ import annotations

import asyncpg
import click

from cli.commands.common import run
from core.db import database_name, init_roles, migrate, role_of
from core.errors import UserError
from core.settings import Settings


async def _migrate(settings: Settings, with_roles: bool) -> list[str]:
    if with_roles:
        await init_roles(
            settings.database_admin_url, settings.database_owner_url, settings.database_url
        )
    try:
        return await migrate(settings.database_owner_url, app_role=role_of(settings.database_url))
    except asyncpg.InvalidCatalogNameError:
        raise UserError(
            f"database {database_name(settings.database_owner_url)!r} does not exist:"
            " run `ordersaga db migrate --init-roles` (or create it, docs/DEPLOY.md)"
        ) from None
    except (
        asyncpg.InvalidAuthorizationSpecificationError,  # no owner role
        asyncpg.UndefinedObjectError,  # no application role
        asyncpg.InsufficientPrivilegeError,  # a database or tables the owner does not own yet
    ) as exc:
        raise UserError(f"{exc}: run `ordersaga db migrate --init-roles`") from None


def register(cli: click.Group) -> None:
    @cli.group()
    def db() -> None:
        """Database schema."""

    @db.command("migrate")
    @click.option(
        "--init-roles",
        is_flag=True,
        help="First create the owner and application roles and the database, as the admin"
        " (ORDERSAGA_DATABASE_ADMIN_URL); safe to repeat.",
    )
    def migrate_cmd(init_roles: bool) -> None:
        """Apply pending migrations as the owner (a second run is a no-op), then set the
        application role's privileges."""
        applied = run(_migrate(Settings(), init_roles))
        if applied:
            for name in applied:
                click.echo(f"applied {name}")
        else:
            click.echo("schema is up to date")
