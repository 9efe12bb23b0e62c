"""``ordersaga deploy status | promote BUILD [--ramp PERCENT]``: the saga's Worker Deployment
(docs/DEPLOY.md, "Rolling out a new build")."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from cli.commands.common import echo_json, printable, run, table, text_value
from core.errors import UserError
from core.settings import Settings


def _build_value(ctx: click.Context, param: click.Parameter, value: str) -> str:
    text = printable(value, param)
    if not text or any(ch.isspace() for ch in text):
        raise click.ClickException(f"BUILD: invalid build id {value[:70]!r}")
    return text


def _ramp_value(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    from ordersaga.deployment import check_ramp

    try:
        check_ramp(value)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    return value


def _print(status: Any, as_json: bool) -> None:
    if as_json:
        echo_json(dataclasses.asdict(status))
        return
    ramping = (
        f"{status.ramping} at {status.ramp_percent:g}%" if status.ramping is not None else "none"
    )
    current = status.current if status.current is not None else "none (unversioned workers)"
    click.echo(f"deployment {status.name}: current {current}; ramping {ramping}")
    rows = [
        {
            "build": v.build_id,
            "status": v.status or "-",
            "drainage": v.drainage or "-",
            "created": v.created.isoformat(timespec="seconds") if v.created else "",
            "task queues (backlog)": ", ".join(
                f"{tq.name} {tq.kind} ({tq.backlog})" for tq in v.task_queues
            ),
        }
        for v in status.versions
    ]
    click.echo(table(rows, ["build", "status", "drainage", "created", "task queues (backlog)"]))


def register(cli: click.Group) -> None:
    @cli.group("deploy")
    def deploy_group() -> None:
        """Worker versioning: which build new orders start on."""

    deployment_option = click.option(
        "--deployment",
        default=None,
        callback=text_value,
        help="Worker Deployment name (default: ORDERSAGA_DEPLOYMENT_NAME, 'ordersaga').",
    )

    @deploy_group.command("status")
    @deployment_option
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def status_cmd(deployment: str | None, as_json: bool) -> None:
        """The current and ramping build, and each build's status and drainage (a build whose
        workers may stop shows 'drained')."""
        from ordersaga.deployment import connect_temporal, deployment_status

        settings = Settings()

        async def go() -> Any:
            client = await connect_temporal(settings)
            return await deployment_status(client, deployment or settings.deployment_name)

        _print(run(go()), as_json)

    @deploy_group.command("promote")
    @click.argument("build", callback=_build_value)
    @click.option(
        "--ramp",
        type=float,
        default=None,
        callback=_ramp_value,
        metavar="PERCENT",
        help="Send this share of new orders (0 < PERCENT < 100) to BUILD; without it, all.",
    )
    @deployment_option
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def promote_cmd(build: str, ramp: float | None, deployment: str | None, as_json: bool) -> None:
        """Make BUILD current (new orders start on it; running orders stay on their build), or
        with --ramp send that share of new orders to it."""
        from ordersaga.deployment import connect_temporal, promote

        settings = Settings()

        async def go() -> Any:
            client = await connect_temporal(settings)
            return await promote(client, deployment or settings.deployment_name, build, ramp)

        _print(run(go()), as_json)
