"""``ordersaga chaos``: the chaos harness on its own stack (docs/CHAOS.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click


def register(cli: click.Group) -> None:
    @cli.command("chaos")
    @click.option("--seed", type=int, default=1, show_default=True, help="Reproduces a run.")
    @click.option("--orders", type=click.IntRange(1), default=200, show_default=True)
    @click.option("--accounts", type=click.IntRange(1), default=10, show_default=True)
    @click.option(
        "--duration", type=click.FloatRange(5), default=90.0, show_default=True,
        help="Seconds over which orders are placed and faults injected.",
    )  # fmt: skip
    @click.option(
        "--faults", default="all", show_default=True,
        help="Comma-separated fault kinds, 'all' or 'none' (see docs/CHAOS.md).",
    )  # fmt: skip
    @click.option("--concurrency", type=click.IntRange(1), default=8, show_default=True)
    @click.option("--settle-timeout", type=float, default=240.0, show_default=True)
    @click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--keep-state", is_flag=True, help="Keep the stack's temp folder (logs).")
    def chaos(
        seed: int,
        orders: int,
        accounts: int,
        duration: float,
        faults: str,
        concurrency: int,
        settle_timeout: float,
        json_file: Path | None,
        keep_state: bool,
    ) -> None:
        """Place orders under injected faults on an own stack, then check every invariant.

        Exits non-zero on any violation.
        """
        from chaos.faults import parse_kinds
        from chaos.harness import ChaosOptions, run_chaos

        try:
            parse_kinds(faults)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--faults") from None
        opts = ChaosOptions(
            seed=seed,
            orders=orders,
            accounts=accounts,
            duration_s=duration,
            faults=faults,
            concurrency=concurrency,
            settle_timeout_s=settle_timeout,
            keep_state=keep_state,
        )
        report = asyncio.run(run_chaos(opts))
        click.echo(report.render())
        if json_file is not None:
            json_file.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
        if not report.ok:
            raise SystemExit(1)
