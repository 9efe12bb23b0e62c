"""Metrics and health (issue 15, parts 4 and 5) on the real stack.

A real worker process (orders and broker queues), the broker listener and the market-data feed
run against the session's Temporal dev server, a scratch Postgres database, Redis and the broker
simulator, each serving /metrics, /healthz and /readyz on a port of its own. The worker reaches
Postgres and Redis through TCP proxies the tests cut. Orders are placed through the real
OrderClient, and /metrics is scraped over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from temporalio.testing import WorkflowEnvironment

from activities.reconcile import BREAK_KINDS
from core.broker_client import BrokerClient
from core.keys import RedisKeys
from core.statuses import OrderStatus
from core.telemetry import free_port
from feeds.listener import BrokerListener, log_event
from tests.support.brokersim import BrokerSim
from tests.support.e2e import Stack, e2e_stack
from tests.support.tcpproxy import TcpProxy
from tests.support.workerproc import start_worker, worker_env
from worker.collector import OPEN_BREAKS
from workflows.reconcile import ReconcileInput, ReconcileWorkflow

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ordersaga.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


async def get(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url) as resp,
    ):
        return resp.status, await resp.text()


async def scrape(port: int) -> Samples:
    status, text = await get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return parse(text)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.2)


@dataclass
class Observed:
    stack: Stack
    sim: BrokerSim
    pg: TcpProxy
    redis: TcpProxy
    worker_port: int
    listener_port: int
    feed_port: int

    async def ready(self, port: int) -> tuple[int, dict[str, Any]]:
        status, text = await get(f"http://127.0.0.1:{port}/readyz")
        return status, json.loads(text)

    async def worker_metric(self, name: str, **labels: str) -> float:
        return value(await scrape(self.worker_port), name, **labels)


def _spawn_cli(env: dict[str, str], log: Path, *argv: str) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *argv],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _serving(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    async def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError((await asyncio.to_thread(log.read_text))[-2000:])
        try:
            return (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        except aiohttp.ClientError:
            return False

    await eventually(up, f"{log.name} serving on {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def metrics_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSim]:
    # Nothing fills until the test ticks: an order can rest, holding, at the broker.
    sim = BrokerSim.start(
        tmp_path_factory.mktemp("metrics-sim") / "broker.db",
        fill_model={"mode": "instant", "parts": 1, "auto": False},
    )
    yield sim
    sim.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def observed(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    metrics_sim: BrokerSim,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Observed]:
    logs = tmp_path_factory.mktemp("metrics-logs")
    async with e2e_stack(temporal_env.client, redis_keys, metrics_sim, "metrics") as stack:
        s = stack.settings
        pg, redis = await TcpProxy.to_url(s.database_url), await TcpProxy.to_url(s.redis_url)
        base = worker_env(s, temporal_env.client.service_client.config.target_host)
        base["ORDERSAGA_METRICS_INTERVAL_S"] = "0.3"
        ports = {name: free_port() for name in ("worker", "listener", "feed")}
        # In a thread: the worker reaches Postgres through the proxies, served by this loop.
        worker = await asyncio.to_thread(
            start_worker,
            {
                **base,
                "ORDERSAGA_DATABASE_URL": pg.url_through(s.database_url),
                "ORDERSAGA_REDIS_URL": redis.url_through(s.redis_url),
                "ORDERSAGA_METRICS_PORT": str(ports["worker"]),
            },
            logs / "worker.log",
        )
        listener = _spawn_cli(
            base, logs / "listener.log", "broker-listener", "--metrics-port", str(ports["listener"])
        )
        # The feed writes under a prefix of its own: the orders here must find no quote.
        feed_env = {**base, "ORDERSAGA_REDIS_PREFIX": f"{s.redis_prefix}feed:"}
        feed = _spawn_cli(
            feed_env,
            logs / "feed.log",
            "marketdata",
            "--symbols",
            "AAPL,MSFT",
            "--interval",
            "0.3",
            "--metrics-port",
            str(ports["feed"]),
        )
        try:
            await _serving(worker, ports["worker"], logs / "worker.log")
            await _serving(listener, ports["listener"], logs / "listener.log")
            await _serving(feed, ports["feed"], logs / "feed.log")
            yield Observed(
                stack, metrics_sim, pg, redis, ports["worker"], ports["listener"], ports["feed"]
            )
        finally:
            for proc in (worker, listener, feed):
                _stop(proc)
            await pg.close()
            await redis.close()


async def _resting(observed: Observed, acct: str, limit: Decimal | None = None) -> str:
    """A limit buy accepted and resting at the broker (its USD hold open); its order id."""
    stack = observed.stack
    limit = limit or await stack.price("1.1")
    placed = await stack.orders.place_order(stack.limit_buy(acct, limit))
    assert placed.accepted, placed

    async def at_broker() -> bool:
        return bool(await stack.broker_orders(f"{acct}/{placed.order_id}"))

    await eventually(at_broker, "the order at the broker")
    return placed.order_id


async def _settle(observed: Observed, acct: str, order_id: str) -> None:
    await observed.sim.admin("POST", "/admin/tick")
    final = await observed.stack.orders.wait(acct, order_id, timeout_s=60)
    assert final.status == OrderStatus.SETTLED, final


async def _settled_limit_buy(observed: Observed, acct: str) -> None:
    await _settle(observed, acct, await _resting(observed, acct))


async def test_business_metrics_count_what_happened(observed: Observed) -> None:
    stack, oc = observed.stack, observed.stack.orders
    before = await scrape(observed.worker_port)
    acct = await stack.funded_account("1000")

    await _settled_limit_buy(observed, acct)
    # Refused for funds: 100 shares at 1.1 times the ask is far beyond 1000 USD.
    big = await oc.place_order(
        account_id=acct,
        symbol="AAPL",
        side="buy",
        qty="100",
        order_type="limit",
        limit_price=await stack.price("1.1"),
    )
    assert not big.accepted and big.reason.startswith("insufficient funds"), big
    # Refused, no price: the worker's Redis prefix holds no quote (the feed writes elsewhere).
    market = await oc.place_order(account_id=acct, symbol="MSFT", side="buy", qty="1")
    assert not market.accepted and market.reason.startswith("no price"), market

    after = await scrape(observed.worker_port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ordersaga_orders_placed_total") == 3
    assert delta("ordersaga_orders_placed_total", outcome="accepted") == 1
    assert delta("ordersaga_orders_accepted_total") == 1
    assert delta("ordersaga_orders_refused_total") == 2
    assert delta("ordersaga_orders_refused_total", reason="insufficient_funds") == 1
    assert delta("ordersaga_orders_refused_total", reason="no_price") == 1
    assert delta("ordersaga_orders_terminal_total", status="SETTLED") == 1
    assert delta("ordersaga_orders_terminal_total", status="REJECTED") == 2
    assert delta("ordersaga_orders_terminal_total") == 3
    assert delta("ordersaga_placement_seconds_count") == 3
    assert delta("ordersaga_placement_seconds_count", outcome="refused") == 2
    assert delta("ordersaga_settle_seconds_count", status="SETTLED") == 1
    assert delta("ordersaga_settle_seconds_count") == 1  # refusals never reached the broker
    # No account or order id in any label.
    for _name, labels in after:
        assert not any(acct in v for _, v in labels), labels
    # The SDK's own metrics are on the same endpoint.
    assert any(n.startswith("temporal_") for n in names(after)), sorted(names(after))[:20]


async def test_gauges_follow_postgres_and_the_reconciler(observed: Observed) -> None:
    stack = observed.stack
    acct = await stack.funded_account("1000")
    worker = observed.worker_metric

    async def open_usd_holds() -> int:
        return int(
            await stack.pool.fetchval(
                "SELECT count(*) FROM holds WHERE status = 'open' AND asset = 'USD'"
            )
        )

    async def gauge_is(expected: int) -> bool:
        return await worker("ordersaga_holds_outstanding", asset="USD") == expected

    before = await open_usd_holds()
    order_id = await _resting(observed, acct)
    assert await open_usd_holds() == before + 1
    await eventually(lambda: gauge_is(before + 1), "the resting order's hold counted")

    async def submitted() -> bool:
        return await worker("ordersaga_orders_open", status="SUBMITTED") >= 1

    await eventually(submitted, "the resting order counted as SUBMITTED")
    await _settle(observed, acct, order_id)
    assert await open_usd_holds() == before
    await eventually(lambda: gauge_is(before), "the hold gone from the gauge once settled")

    # A late order: the broker executed an order of ours we have no row for.
    late_key = f"{acct}/late-{uuid.uuid4().hex[:6]}"
    await observed.sim.admin(
        "POST",
        "/v2/orders",
        {
            "symbol": "AAPL",
            "qty": "1",
            "side": "buy",
            "type": "market",
            "time_in_force": "day",
            "client_order_id": late_key,
        },
    )
    await observed.sim.admin("POST", "/admin/tick")
    report = await stack.orders.temporal.execute_workflow(
        ReconcileWorkflow.run,
        ReconcileInput.from_settings(stack.settings),
        id=f"reconcile/metrics/{uuid.uuid4().hex[:6]}",
        task_queue=stack.settings.orders_task_queue,
    )
    late = sum(1 for b in report.breaks if b.kind == "late_order")
    assert late >= 1 and report.error_fills_booked >= 1, report
    # The gauges read the breaks the run recorded (the reconcile_breaks table), by kind.

    async def breaks_counted() -> bool:
        rows = await stack.pool.fetch(OPEN_BREAKS)
        recorded = {r["kind"]: r["n"] for r in rows}
        samples = await scrape(observed.worker_port)
        return (
            recorded.get("late_order", 0) >= 1
            and all(
                value(samples, "ordersaga_breaks_open", kind=kind) == recorded.get(kind, 0)
                for kind in BREAK_KINDS
            )
            and value(samples, "ordersaga_late_orders") == recorded["late_order"]
        )

    await eventually(breaks_counted, "the recorded open breaks counted by kind")

    error_fills = await stack.pool.fetchval(
        "SELECT count(*) FROM error_positions WHERE posted_qty > 0"
    )
    assert error_fills >= 1

    async def error_fill_counted() -> bool:
        return await worker("ordersaga_error_account_fills") == error_fills

    await eventually(error_fill_counted, "the late order's fill counted in the error account")


async def test_ready_needs_postgres_and_redis_but_not_the_broker(observed: Observed) -> None:
    port = observed.worker_port
    status, body = await observed.ready(port)
    assert status == 200, body
    assert body["checks"] == {"temporal": "ok", "postgres": "ok", "redis": "ok"}
    assert body["reported"] == {"broker": "ok"}

    for name, proxy in (("postgres", observed.pg), ("redis", observed.redis)):
        await proxy.cut()
        try:
            status, body = await observed.ready(port)
            assert status == 503, body
            assert body["checks"][name].startswith("error"), body
            assert [n for n, v in body["checks"].items() if v != "ok"] == [name], body
            assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        finally:
            proxy.restore()

        async def ready_again() -> bool:
            return (await observed.ready(port))[0] == 200

        await eventually(ready_again, f"ready again once {name} is back")

    # The broker down: reported, counted, and still ready (no restart of waiting workers).
    stack = observed.stack
    acct = await stack.funded_account("1000")
    order_id = await _resting(observed, acct)
    labels = {"kind": "BrokerUnavailable", "call": "reconcile_order"}
    errors_before = await observed.worker_metric("ordersaga_broker_errors_total", **labels)
    observed.sim.stop()
    try:
        status, body = await observed.ready(port)
        assert status == 200, body
        assert body["reported"]["broker"].startswith("error"), body
        status, body = await observed.ready(observed.listener_port)
        assert status == 200 and body["reported"]["broker"].startswith("error"), body

        async def counted() -> bool:
            now = await observed.worker_metric("ordersaga_broker_errors_total", **labels)
            return now > errors_before

        # The resting order's polls fail while the broker is down.
        await eventually(counted, "the failed polls counted as BrokerUnavailable")
    finally:
        observed.sim._launch()  # the same port and state
    await _settle(observed, acct, order_id)


async def test_feeds_serve_listener_lag_and_quote_ages(
    observed: Observed, redis_client: Any
) -> None:
    for port in (observed.listener_port, observed.feed_port):
        status, body = await observed.ready(port)
        assert status == 200 and body["checks"]["redis"] == "ok", body
    status, body = await observed.ready(observed.listener_port)
    assert body["checks"]["temporal"] == "ok", body

    async def fresh_quotes() -> bool:
        samples = await scrape(observed.feed_port)
        ages = {
            dict(labels)["symbol"]: v
            for (name, labels), v in samples.items()
            if name == "ordersaga_quote_age_seconds"
        }
        return set(ages) == {"AAPL", "MSFT"} and all(0 <= a < 5 for a in ages.values())

    await eventually(fresh_quotes, "both symbols' quote ages near 0")

    # The listener caught up with the broker's events (this order's among them): lag 0, its
    # offset the broker's newest.
    await _settled_limit_buy(observed, await observed.stack.funded_account("1000"))
    settings = observed.stack.settings
    async with BrokerClient.from_settings(settings) as client:
        newest = max((f.offset or 0 for f in await client.event_frames_since(0)), default=0)

        async def caught_up() -> bool:
            samples = await scrape(observed.listener_port)
            return (
                value(samples, "ordersaga_listener_offset") == newest
                and value(samples, "ordersaga_listener_lag_events") == 0
            )

        await eventually(caught_up, f"the listener at offset {newest} with no lag")
        # A listener that has delivered nothing yet is that many events behind.
        behind = BrokerListener(client, redis_client, RedisKeys(settings.redis_prefix), log_event)
        assert newest > 0
        assert await behind.measure_lag() == newest


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ordersaga|temporal)_[a-z0-9_]+)", expr))


async def _all_exported(observed: Observed) -> set[str]:
    exported: set[str] = set()
    for port in (observed.worker_port, observed.listener_port, observed.feed_port):
        exported |= names(await scrape(port))
    return exported


async def test_alert_rules_and_dashboard_use_exported_metrics(observed: Observed) -> None:
    # What makes the business series appear: one order settled, one refused, a full reconcile.
    stack = observed.stack
    acct = await stack.funded_account("1000")
    await _settled_limit_buy(observed, acct)
    refused = await stack.orders.place_order(account_id=acct, symbol="AAPL", side="buy", qty="1")
    assert not refused.accepted
    await stack.orders.temporal.execute_workflow(
        ReconcileWorkflow.run,
        ReconcileInput.from_settings(stack.settings),
        id=f"reconcile/metrics/{uuid.uuid4().hex[:6]}",
        task_queue=stack.settings.orders_task_queue,
    )

    async def listener_measured() -> bool:
        return "ordersaga_listener_lag_events" in names(await scrape(observed.listener_port))

    await eventually(listener_measured, "the listener's lag measured")
    exported = await _all_exported(observed)

    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    wanted = {
        "OrdersagaOpenBreaks": "ordersaga_breaks_open",
        "OrdersagaParkedOrders": "ordersaga_orders_open",
        "OrdersagaStuckOrders": "ordersaga_orders_stuck",
        "OrdersagaErrorAccountFills": "ordersaga_error_account_fills",
        "OrdersagaListenerLag": "ordersaga_listener_lag_events",
        "OrdersagaStaleQuotes": "ordersaga_quote_age_seconds",
    }
    by_name = {r["alert"]: r for r in rules}
    for alert, metric in wanted.items():
        assert metric in _metric_names(by_name[alert]["expr"]), alert
    for rule in rules:
        used = _metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']}: {sorted(used - exported)} not exported"
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    panel_names = set().union(*(_metric_names(e) for e in exprs))
    assert panel_names <= exported, sorted(panel_names - exported)
    assert {"ordersaga_orders_refused_total", "ordersaga_settle_seconds_bucket"} <= panel_names
    assert any(n.startswith("temporal_") for n in panel_names)
