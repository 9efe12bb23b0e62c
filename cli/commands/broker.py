"""``ordersaga broker-sim``: run the overseas-broker simulator (see docs/BROKER-SIM.md).
``ordersaga broker dead-letters``: the broker listener's set-aside events (docs/BROKER.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from pydantic import SecretStr, ValidationError

from cli.commands.common import echo_json, run, table
from core.errors import UserError
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
    register_broker_group(cli)
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
        "--rate-limit",
        callback=_json_option,
        help='Per-key limit, e.g. \'{"limit": 200, "window_s": 60}\' (Alpaca\'s); default off.',
    )
    @click.option(
        "--market-hours",
        type=click.Choice(["always", "enforce"]),
        default=None,
        help="always: match around the clock (a new state file's default); enforce: only while"
        " the NYSE calendar says open, orders submitted while closed wait for the open.",
    )
    @click.option(
        "--key-id", default=settings.broker_key_id, help="Defaults to ORDERSAGA_BROKER_KEY_ID."
    )
    @click.option("--secret-key", default=None, help="Defaults to ORDERSAGA_BROKER_SECRET_KEY.")
    def broker_sim(
        host: str,
        port: int,
        state: Path,
        seed: int,
        faults: dict[str, Any] | None,
        fill_model: dict[str, Any] | None,
        rate_limit: dict[str, Any] | None,
        market_hours: str | None,
        key_id: str,
        secret_key: str | None,
    ) -> None:
        """Run the Alpaca-compatible broker simulator until SIGTERM / Ctrl-C."""
        from brokersim.server import serve  # the simulator is only needed by this command

        keys = Settings()  # the keys it accepts; the dev secret only under the dev stack
        if secret_key is not None:
            keys = keys.model_copy(update={"broker_secret_key": SecretStr(secret_key)})
        try:
            keys.check_secrets(broker=True)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            asyncio.run(
                serve(
                    host,
                    port,
                    state,
                    key_id=key_id,
                    secret_key=keys.broker_secret_key.get_secret_value(),
                    seed=seed,
                    faults=faults,
                    fill_model=fill_model,
                    rate_limit=rate_limit,
                    market_hours=market_hours,  # type: ignore[arg-type]
                )
            )
        except ValueError as exc:  # a bad --faults / --fill-model / --rate-limit field
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None


async def _dead_letters(name: str, limit: int, as_json: bool) -> None:
    from core.keys import RedisKeys
    from core.redisconn import redis_client
    from feeds.deadletters import DeadLetters

    settings = Settings()
    redis = redis_client(settings, decode_responses=True)
    try:
        letters = await DeadLetters(redis, RedisKeys(settings.redis_prefix), name).recent(limit)
    finally:
        await redis.aclose()
    if as_json:
        echo_json([letter.model_dump(mode="json") for letter in letters])
        return
    rows: list[dict[str, object]] = [
        {
            "offset": "-" if letter.offset is None else letter.offset,
            "at": _iso(letter.at),
            "reason": letter.reason[:80],
            "raw": letter.raw[:60],
        }
        for letter in letters
    ]
    click.echo(table(rows, ["offset", "at", "reason", "raw"]))


async def _replay(name: str, offset: int, as_json: bool) -> None:
    from core.broker_client import InvalidTradeEvent
    from core.keys import RedisKeys
    from core.redisconn import redis_client
    from core.temporal import connect
    from feeds.deadletters import DeadLetterNotFound, DeadLetters
    from feeds.delivery import signal_workflows

    settings = Settings()
    redis = redis_client(settings, decode_responses=True)
    try:
        letters = DeadLetters(redis, RedisKeys(settings.redis_prefix), name)
        # The broker listener's own callback: a signal to the order's workflow (or a reconcile).
        deliver = signal_workflows(await connect(settings), settings)
        try:
            event = await letters.replay(offset, deliver)
        except DeadLetterNotFound as exc:
            raise UserError(str(exc)) from None
        except InvalidTradeEvent as exc:
            raise UserError(f"event {offset} still refused: {exc}") from None
    finally:
        await redis.aclose()
    if as_json:
        echo_json({"replayed": offset, "client_order_id": event.order.client_order_id})
    else:
        click.echo(f"event {offset} delivered ({event.order.client_order_id}) and removed")


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def register_broker_group(cli: click.Group) -> None:
    @cli.group()
    def broker() -> None:
        """The broker listener's dead letters."""

    @broker.command("dead-letters")
    @click.option("--name", default="default", show_default=True, help="The listener's name.")
    @click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
    @click.option(
        "--replay",
        "replay_offset",
        type=click.IntRange(min=1),
        default=None,
        help="Parse the event at this offset again and deliver it (needs Temporal).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def dead_letters(name: str, limit: int, replay_offset: int | None, as_json: bool) -> None:
        """List the events the listener set aside (newest first), or replay one."""
        if replay_offset is None:
            run(_dead_letters(name, limit, as_json))
        else:
            run(_replay(name, replay_offset, as_json))
