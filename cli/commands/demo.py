"""``ordersaga demo``: the README's main job."""

from __future__ import annotations

import asyncio

import click

from core.settings import Settings


def register(cli: click.Group) -> None:
    @cli.command("demo")
    def demo() -> None:
        """Bring the local stack up and run sample orders through it (the stack stays up)."""
        from cli.demo import run_demo

        code = asyncio.run(run_demo(Settings()))
        if code:
            raise SystemExit(code)
