"""``ordersaga worker --queues orders,broker``."""

from __future__ import annotations

import asyncio
import logging

import click

from cli.commands.common import metrics_port_option, with_metrics_port
from core.errors import UserError
from core.settings import Settings


def register(cli: click.Group) -> None:
    @cli.command("worker")
    @click.option(
        "--queues",
        default="orders,broker",
        show_default=True,
        help="Task queues to poll: orders, broker, or both (comma-separated).",
    )
    @metrics_port_option
    def worker_cmd(queues: str, metrics_port: int | None) -> None:
        """Run a worker (SIGTERM drains in-flight work within the grace period)."""
        from worker.main import parse_queues, run_workers  # the worker's imports, only here

        try:
            names = parse_queues(queues)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        settings = Settings()
        try:
            settings.check_secrets(broker="broker" in names)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        try:
            asyncio.run(run_workers(with_metrics_port(settings, metrics_port), names))
        except UserError as exc:  # e.g. Redis refused the user or its password
            raise click.ClickException(str(exc)) from None
