"""``ordersaga broker-sim``: run the overseas-broker simulator (see docs/BROKER-SIM.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from pydantic import ValidationError

from core.settings import Settings


def _json_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object")
    return data


def register(cli: click.Group) -> None:
    try:
        settings = Settings()
    except ValidationError:  # only the defaults shown in --help; a command reports the error
        settings = Settings.model_construct()
    default_url = urlsplit(settings.broker_url)

    @cli.command("broker-sim")
    @click.option("--host", default=default_url.hostname or "127.0.0.1", show_default=True)
    @click.option("--port", type=int, default=default_url.port or 8787, show_default=True)
    @click.option(
        "--state",
        type=click.Path(dir_okay=False, path_type=Path),
        default=settings.state_dir / "brokersim.sqlite",
        show_default=True,
        help="SQLite file holding orders, events, prices and the clock (survives restarts).",
    )
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option(
        "--faults", callback=_json_option, help="Fault config JSON, e.g. '{\"latency_ms\": 50}'."
    )
    @click.option(
        "--fill-model", callback=_json_option, help='e.g. \'{"mode": "partial", "parts": 3}\'.'
    )
    @click.option(
        "--key-id", default=settings.broker_key_id, help="Defaults to ORDERSAGA_BROKER_KEY_ID."
    )
    @click.option(
        "--secret-key",
        default=settings.broker_secret_key,
        help="Defaults to ORDERSAGA_BROKER_SECRET_KEY.",
    )
    def broker_sim(
        host: str,
        port: int,
        state: Path,
        seed: int,
        faults: dict[str, Any] | None,
        fill_model: dict[str, Any] | None,
        key_id: str,
        secret_key: str,
    ) -> None:
        """Run the Alpaca-compatible broker simulator until SIGTERM / Ctrl-C."""
        from brokersim.server import serve  # the simulator is only needed by this command

        try:
            asyncio.run(
                serve(
                    host,
                    port,
                    state,
                    key_id=key_id,
                    secret_key=secret_key,
                    seed=seed,
                    faults=faults,
                    fill_model=fill_model,
                )
            )
        except ValueError as exc:  # a bad --faults / --fill-model field
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
