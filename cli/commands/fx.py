"""``ordersaga fx position|quote``: the FX desk's position (Postgres) and the firm's KRW/USD
quote as the saga reads it (Redis)."""

from __future__ import annotations

import time
from decimal import Decimal

import click

from activities.ledger import fx_position
from activities.marketdata import GetFxQuoteInput, MarketDataActivities
from cli.commands.account import plain, with_ledger
from cli.commands.common import echo_json, run
from core.fx import PAIR
from core.keys import RedisKeys
from core.redisconn import redis_client
from core.settings import Settings


def _rate(d: Decimal | None) -> str:
    return "-" if d is None else plain(d)


async def _quote(settings: Settings) -> dict[str, object]:
    redis = redis_client(settings, decode_responses=True)
    try:
        quotes = MarketDataActivities(
            redis, RedisKeys(settings.redis_prefix), settings.quote_max_age_s, time.time,
            fx_max_age_s=settings.fx_max_age_s,
        )  # fmt: skip
        got = await quotes.get_fx_quote(GetFxQuoteInput(pair=PAIR))
    finally:
        await redis.aclose()
    return got.model_dump(mode="json")


def register(cli: click.Group) -> None:
    @cli.group()
    def fx() -> None:
        """The FX desk (orders paid in won) and the firm's KRW/USD quote."""

    @fx.command("position")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def position_cmd(as_json: bool) -> None:
        """The desk's won and dollars over its rows, and the implied average rate."""
        pos = run(with_ledger(lambda _, pool: fx_position(pool)))
        if as_json:
            echo_json(pos.model_dump(mode="json"))
            return
        click.echo(
            f"FX desk: {plain(pos.krw)} KRW, {plain(pos.usd)} USD; "
            f"average rate {_rate(pos.average_rate)} KRW/USD over {pos.entries} entries"
        )

    @fx.command("quote")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def quote_cmd(as_json: bool) -> None:
        """The firm's KRW/USD quote in the cache, as an order would read it; exit 1 when
        it is missing, unusable or stale (orders paid in won are then refused)."""
        got = run(_quote(Settings()))
        if as_json:
            echo_json(got)
        elif got["fresh"]:
            click.echo(f"{PAIR} bid {got['bid']} ask {got['ask']} ({got['age_s']:.1f} s old)")
        else:
            why = got["refused"] or (
                f"stale, {got['age_s']:.0f} s old" if got["age_s"] is not None else "no quote"
            )
            click.echo(f"{PAIR}: no fresh quote ({why})")
        if not got["fresh"]:
            raise SystemExit(1)
