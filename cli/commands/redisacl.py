"""``ordersaga redis init-acl``: the application's Redis user, created as the admin.

The user, its password and the key prefix come from ``ORDERSAGA_REDIS_URL`` and
``ORDERSAGA_REDIS_PREFIX``; the admin connects with ``ORDERSAGA_REDIS_ADMIN_URL``. Idempotent: a
second run leaves the same user, and a changed password or prefix replaces the old one.
docs/SECURITY.md, "Redis".
"""

from __future__ import annotations

import click

from cli.commands.common import run
from core.redisconn import init_acl
from core.settings import Settings


def register(cli: click.Group) -> None:
    @cli.group("redis")
    def redis_group() -> None:
        """Redis: the application's ACL user."""

    @redis_group.command("init-acl")
    def init_acl_cmd() -> None:
        """Create or update the ACL user of ORDERSAGA_REDIS_URL (keys under the prefix, the
        project's commands only) as the admin of ORDERSAGA_REDIS_ADMIN_URL; safe to repeat."""
        click.echo(run(init_acl(Settings.load())))
