"""``ordersaga marketdata`` and ``ordersaga broker-listener``: the two long-running feeds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import click

from cli.commands.common import metrics_port_option, run, with_metrics_port
from core.broker_client import BrokerClient
from core.keys import RedisKeys
from core.redisconn import check_redis, redis_client
from core.settings import Settings, masked
from core.telemetry import OpsServer, ProcessMetrics, broker_check, new_telemetry, redis_check
from feeds import listener
from feeds.fx import FxFeed, WalkingRate
from feeds.marketdata import MarketDataFeed


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def _marketdata(settings: Settings, symbols: list[str], interval_s: float) -> None:
    settings.check_secrets(broker=True)
    stop = _stop_on_signals()
    redis = redis_client(settings, decode_responses=True)
    telemetry = new_telemetry() if settings.metrics_port else None
    try:
        await check_redis(redis, settings)
        async with (
            BrokerClient.from_settings(settings) as client,
            contextlib.AsyncExitStack() as extras,
        ):
            keys = RedisKeys(settings.redis_prefix)
            metrics = ProcessMetrics(telemetry.meter if telemetry else None)
            feed = MarketDataFeed(client, redis, keys, symbols, interval_s, metrics=metrics)
            if telemetry is not None:  # ready: Redis answers (the broker only reported)
                ops = OpsServer(
                    settings.metrics_host,
                    settings.metrics_port,
                    telemetry.exporter,
                    {"redis": redis_check(redis)},
                    {"broker": broker_check(client)},
                )
                await extras.enter_async_context(ops)
            logging.getLogger(__name__).info(
                "market data: %s from %s every %.2fs",
                ",".join(feed.symbols),
                masked(settings.market_data_url),
                interval_s,
            )
            if settings.fx_feed:  # the firm's KRW/USD quote beside the stock quotes
                fx = FxFeed(
                    redis,
                    keys,
                    WalkingRate(settings.fx_mid, settings.fx_walk),
                    spread=settings.fx_spread,
                    ttl_s=settings.fx_quote_ttl_s,
                    interval_s=interval_s,
                )
                await asyncio.gather(feed.run(stop), fx.run(stop))
            else:
                await feed.run(stop)
    finally:
        await redis.aclose()


async def _listen(settings: Settings, name: str) -> None:
    from core.temporal import connect
    from feeds.delivery import signal_workflows

    settings.check_secrets(broker=True)
    # Each event becomes a signal to its order's workflow (or a targeted reconcile).
    telemetry = new_telemetry() if settings.metrics_port else None
    client = await connect(settings, telemetry.runtime if telemetry else None)
    deliver = signal_workflows(client, settings)
    await listener.serve(
        settings,
        on_event=deliver,
        name=name,
        stop=_stop_on_signals(),
        telemetry=telemetry,
        temporal=client,
    )


def register(cli: click.Group) -> None:
    @cli.command("marketdata")
    @click.option("--symbols", default=None, help="Comma-separated (default: settings).")
    @click.option("--interval", type=float, default=None, help="Seconds between polls.")
    @metrics_port_option
    def marketdata_cmd(
        symbols: str | None, interval: float | None, metrics_port: int | None
    ) -> None:
        """Keep the latest quote per symbol, and the firm's KRW/USD quote, in Redis (runs
        until interrupted)."""
        _configure_logging()
        settings = with_metrics_port(Settings(), metrics_port)
        chosen = [s.strip().upper() for s in symbols.split(",")] if symbols else settings.symbols
        run(
            _marketdata(
                settings, [s for s in chosen if s], interval or settings.marketdata_interval_s
            )
        )

    @cli.command("broker-listener")
    @click.option("--name", default="default", help="Listener name (its offset key in Redis).")
    @metrics_port_option
    def broker_listener_cmd(name: str, metrics_port: int | None) -> None:
        """Consume the broker's trade events from the stored offset (runs until interrupted)."""
        _configure_logging()
        run(_listen(with_metrics_port(Settings(), metrics_port), name))
