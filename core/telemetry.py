"""Metrics and health for the long-running processes (workers, listener, market-data feed).

One Temporal runtime per process carries every metric: the SDK's own (``temporal_*``: polls,
task latencies, slots) and the business ones (``ordersaga_*``), which workflow code records
through ``workflow.metric_meter()`` (suppressed while a workflow replays) and process code
through the runtime's meter (:class:`ProcessMetrics`). The runtime's Prometheus exporter listens
on a loopback port of its own; :class:`OpsServer` (aiohttp, ``metrics_port``) serves it as
``/metrics`` beside ``/healthz`` and ``/readyz``, so a process has one port to scrape and probe.

Readiness (``/readyz``): 200 when every store the process uses answers (Temporal's frontend,
Postgres ``SELECT 1``, Redis ``PING``), 503 naming the one that does not. The broker is reported
in the body but never fails readiness: a broker outage must not make an orchestrator restart
the workers that are waiting it out. ``/healthz`` is 200 while the process's event loop runs.

Labels are low-cardinality by rule: statuses, reason categories, error kinds, symbols of the
configured feed; never an account or an order id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.broker_client import BrokerClient

log = logging.getLogger(__name__)

# --- metric names: one home, read by the alert rules' test ---------------------------------
PREFIX = "ordersaga_"
# recorded by workflow code (workflows/metrics.py)
ORDERS_PLACED = PREFIX + "orders_placed"  # every order decided: accepted + refused
ORDERS_ACCEPTED = PREFIX + "orders_accepted"
ORDERS_REFUSED = PREFIX + "orders_refused"  # label reason (a category)
ORDERS_TERMINAL = PREFIX + "orders_terminal"  # label status
PLACEMENT_SECONDS = PREFIX + "placement_seconds"  # label outcome
SETTLE_SECONDS = PREFIX + "settle_seconds"  # label status
# recorded by process code (ProcessMetrics)
BROKER_ERRORS = PREFIX + "broker_errors"  # labels kind, call
HOLDS_OUTSTANDING = PREFIX + "holds_outstanding"  # label asset
ORDERS_OPEN = PREFIX + "orders_open"  # label status (non-terminal, NEEDS_ATTENTION = parked)
ORDERS_STUCK = PREFIX + "orders_stuck"
BREAKS_OPEN = PREFIX + "breaks_open"  # label kind
LATE_ORDERS = PREFIX + "late_orders"
ERROR_ACCOUNT_FILLS = PREFIX + "error_account_fills"
LISTENER_LAG = PREFIX + "listener_lag_events"
LISTENER_OFFSET = PREFIX + "listener_offset"
LISTENER_DEAD_LETTERS = PREFIX + "listener_dead_letters"
QUOTE_AGE = PREFIX + "quote_age_seconds"  # label symbol
QUOTE_MISSING = PREFIX + "quote_missing"  # label symbol
COLLECTOR_ERRORS = PREFIX + "collector_errors"

# Seconds. A decision takes milliseconds to a lock wait's 30 s; an order lives seconds to weeks.
HISTOGRAM_BUCKETS: dict[str, list[float]] = {
    PLACEMENT_SECONDS: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    SETTLE_SECONDS: [1, 5, 15, 30, 60, 300, 900, 3600, 14400, 86400, 604800],
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Telemetry:
    """The process's runtime (pass it to ``Client.connect``) and where its exporter listens."""

    runtime: Runtime
    exporter: str  # host:port of the SDK's Prometheus exporter (loopback)

    @property
    def meter(self) -> MetricMeter:
        return self.runtime.metric_meter


def new_telemetry() -> Telemetry:
    """A runtime whose metrics the SDK exports on a free loopback port (OpsServer serves them).

    Counters end in ``_total`` and durations are seconds, as Prometheus names them."""
    exporter = f"127.0.0.1:{free_port()}"
    config = PrometheusConfig(
        bind_address=exporter,
        counters_total_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides=HISTOGRAM_BUCKETS,
    )
    return Telemetry(Runtime(telemetry=TelemetryConfig(metrics=config)), exporter)


class ProcessMetrics:
    """The business metrics process code records (workflow code records its own)."""

    def __init__(self, meter: MetricMeter | None = None) -> None:
        m = meter or MetricMeter.noop
        self.broker_errors = m.create_counter(
            BROKER_ERRORS, "Broker calls that failed, by error kind and call"
        )
        self.holds_outstanding = m.create_gauge(HOLDS_OUTSTANDING, "Open holds, by asset")
        self.orders_open = m.create_gauge(ORDERS_OPEN, "Non-terminal orders, by status")
        self.orders_stuck = m.create_gauge(
            ORDERS_STUCK, "Orders non-terminal for longer than reconcile_stuck_after_s"
        )
        self.breaks_open = m.create_gauge(
            BREAKS_OPEN, "Breaks the last full reconcile run found, by kind"
        )
        self.late_orders = m.create_gauge(
            LATE_ORDERS, "Broker orders we gave up on, as the last full reconcile run found them"
        )
        self.error_account_fills = m.create_gauge(
            ERROR_ACCOUNT_FILLS, "Late broker orders whose fills sit in the firm error account"
        )
        self.listener_lag = m.create_gauge(
            LISTENER_LAG, "The broker's newest event offset minus the listener's"
        )
        self.listener_offset = m.create_gauge(LISTENER_OFFSET, "The listener's delivered offset")
        self.listener_dead_letters = m.create_counter(
            LISTENER_DEAD_LETTERS, "Broker events the listener set aside as poison"
        )
        # The SDK refuses a negative gauge value (a ValueError): a missing quote is a gauge of
        # its own, and an age is never below 0.
        self.quote_age = m.create_gauge_float(
            QUOTE_AGE, "Seconds since the feed stored the symbol's quote", "s"
        )
        self.quote_missing = m.create_gauge(
            QUOTE_MISSING, "1 while no readable quote of the symbol is stored, else 0"
        )
        self.collector_errors = m.create_counter(
            COLLECTOR_ERRORS, "Failed reads of the gauges from Postgres or the broker"
        )


NOOP_METRICS = ProcessMetrics()

# --- health -------------------------------------------------------------------------------

Check = Callable[[], Awaitable[object]]


async def _outcome(check: Check, timeout_s: float) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            await check()
    except Exception as exc:  # every failure is the answer: not ready
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


@dataclass
class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` of one process on ``host:port``.

    ``required``: the stores readiness needs; ``reported``: checked and shown, never failing
    readiness (the broker)."""

    host: str
    port: int
    exporter: str | None = None
    required: Mapping[str, Check] = field(default_factory=dict)
    reported: Mapping[str, Check] = field(default_factory=dict)
    timeout_s: float = 2.0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("metrics and health on http://%s:%d (/metrics /healthz /readyz)", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        names = [*self.required, *self.reported]
        checks = [*self.required.values(), *self.reported.values()]
        results = await asyncio.gather(*(_outcome(c, self.timeout_s) for c in checks))
        outcome = dict(zip(names, results, strict=True))
        ready = all(outcome[n] == "ok" for n in self.required)
        body: dict[str, object] = {
            "ready": ready,
            "checks": {n: outcome[n] for n in self.required},
            "reported": {n: outcome[n] for n in self.reported},
        }
        return ready, body

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, body = await self.readiness()
        return web.json_response(body, status=200 if ready else 503, dumps=json.dumps)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _metrics(self, _: web.Request) -> web.Response:
        if self.exporter is None:
            return web.Response(text="", content_type="text/plain")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with self._session.get(f"http://{self.exporter}/metrics") as resp:
            text = await resp.text()
        return web.Response(text=text, content_type="text/plain", charset="utf-8")


def temporal_check(client: Client) -> Check:
    """The frontend answers its gRPC health check."""

    async def check() -> None:
        if not await client.service_client.check_health(timeout=timedelta(seconds=2)):
            raise RuntimeError("the frontend reports it is not serving")

    return check


def postgres_check(pool: asyncpg.Pool) -> Check:
    async def check() -> None:
        await pool.fetchval("SELECT 1")

    return check


def redis_check(client: aioredis.Redis) -> Check:
    """PING as the application's ACL user (PING is one of its commands)."""

    async def check() -> None:
        await client.ping()

    return check


def broker_check(broker: BrokerClient) -> Check:
    """One cheap read of the trading API (reported, never failing readiness)."""

    async def check() -> None:
        await broker.list_orders(status="open", limit=1)

    return check
