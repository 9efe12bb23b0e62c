"""``ordersaga worker --queues orders,broker``."""

from __future__ import annotations

import asyncio
import logging

import click

from ordersaga.settings import Settings


def register(cli: click.Group) -> None:
    @cli.command("worker")
    @click.option(
        "--queues",
        default="orders,broker",
        show_default=True,
        help="Task queues to poll: orders, broker, or both (comma-separated).",
    )
    def worker_cmd(queues: str) -> None:
        """Run a worker (SIGTERM drains in-flight work within the grace period)."""
        from worker.main import run_workers

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        names = [q.strip() for q in queues.split(",") if q.strip()]
        try:
            asyncio.run(run_workers(Settings(), names))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
