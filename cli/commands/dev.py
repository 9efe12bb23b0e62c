"""``ordersaga dev up|down|status|restart|kill``: the local dev stack (ordersaga/devstack.py)."""

from __future__ import annotations

import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from cli.commands.common import echo_json, run, table
from core.settings import masked_env
from devstack.stack import DevStack, ServiceStatus, StackError, StackOptions

T = TypeVar("T")
_COLUMNS = ["service", "state", "pid", "address", "log"]


def _stack(state_dir: Path | None, embedded: bool = False) -> DevStack:
    options = StackOptions(state_dir=state_dir, force_embedded=embedded)
    return DevStack(options=options, echo=click.echo)


def _show(stack: DevStack, rows: list[ServiceStatus], as_json: bool) -> None:
    # Printed: secrets masked, URLs without their passwords (the full env is in stack.json, 0600).
    env = masked_env(stack.env())
    if as_json:
        echo_json({"services": [r.as_row() for r in rows], "env": env})
        return
    if not rows:
        click.echo("nothing is running (ordersaga dev up)")
        return
    click.echo(table([r.as_row() for r in rows], _COLUMNS))
    if "ORDERSAGA_TEMPORAL_UI_URL" in env:
        click.echo(f"\nTemporal Web UI: {env['ORDERSAGA_TEMPORAL_UI_URL']}")


def _guard(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return run(coro)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None


def register(cli: click.Group) -> None:
    state_opt = click.option(
        "--state-dir", type=click.Path(path_type=Path), default=None,
        help="State folder (default: ORDERSAGA_STATE_DIR or .state).",
    )  # fmt: skip

    @cli.group()
    def dev() -> None:
        """The local dev stack: Postgres, Redis, Temporal and the project's processes."""

    @dev.command("up")
    @state_opt
    @click.option("--embedded", is_flag=True, help="Embedded Postgres and Redis even if reachable.")
    @click.option("--json", "as_json", is_flag=True)
    def up(state_dir: Path | None, embedded: bool, as_json: bool) -> None:
        """Start what is not running yet, migrate, wait for health, show what runs where."""
        stack = _stack(state_dir, embedded)
        rows: list[ServiceStatus] = _guard(stack.up())
        _show(stack, rows, as_json)

    @dev.command("down")
    @state_opt
    def down(state_dir: Path | None) -> None:
        """Stop only what `dev up` started."""
        stopped: list[str] = _guard(_stack(state_dir).down())
        click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")

    @dev.command("status")
    @state_opt
    @click.option("--json", "as_json", is_flag=True)
    def status(state_dir: Path | None, as_json: bool) -> None:
        """Show what runs where."""
        stack = _stack(state_dir)
        _show(stack, _guard(stack.status()), as_json)

    @dev.command("restart")
    @state_opt
    @click.argument("name")
    def restart(state_dir: Path | None, name: str) -> None:
        """Stop and start one service of the stack."""
        _guard(_stack(state_dir).restart(name))

    @dev.command("kill")
    @state_opt
    @click.argument("name")
    def kill(state_dir: Path | None, name: str) -> None:
        """SIGKILL one service of the stack (for chaos experiments); `dev restart` revives it."""
        killed: bool = _guard(_stack(state_dir).kill(name, signal.SIGKILL))
        click.echo(f"killed {name}" if killed else f"{name} is not running")
