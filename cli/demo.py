"""``ordersaga demo``: the local stack, accounts, a mix of orders, and a look at the results.

Brings the dev stack up (or reuses it), opens and funds five accounts (one a won account), places
buys, sells, limits, a fractional order, one replaced at the broker (its limit chased up to the
market), one that is canceled, one refused for funds, one paid in won through the FX desk and one
refused for a pre-trade limit (an override the demo sets on that account), waits for all of them;
then closes the simulated market (its clock moved to the next close), places an order that waits
QUEUED, opens the market (the clock moved to the next open) and waits for it to fill. Prints the
orders and balances, the won order's charge and refund, the FX desk's position, runs the ledger
check and prints the Web UI link filtered to these orders. The stack stays up for looking around
until ``ordersaga dev down``.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import click

from activities.ledger import check_ledger
from cli.commands.common import table
from core.settings import Settings
from core.statuses import OrderStatus
from devstack.stack import DevStack, apply_stack_env
from ordersaga.client import OrderClient
from ordersaga.schedules import ensure_reconcile_schedule, ensure_settlement_schedule
from workflows.models import OrderState


@dataclass(frozen=True)
class DemoOrder:
    who: str
    symbol: str
    side: str
    qty: str
    order_type: str = "market"
    limit: str | None = None  # a multiple of the current price, e.g. "0.7"
    tif: str = "day"
    cancel: bool = False
    replace: str | None = None  # once at the broker, its limit moved to this multiple
    pay: str = "USD"  # KRW: paid in won through the FX desk


ACCOUNTS = {
    "alice": ("50000", {}),
    "bob": ("2000", {"AAPL": "10"}),
    "carol": ("25", {}),
    "erin": ("20000", {}),
}
WON_ACCOUNTS = {"dami": "3000000"}  # won accounts (currency KRW) and their deposit in won
LIMITS = {"erin": "1000"}  # a per-account override: the largest order's notional (USD)
# Placed while the simulated market is closed: it waits QUEUED until the demo opens it.
QUEUED_ORDER = DemoOrder("alice", "AMZN", "buy", "1")
ORDERS = (
    DemoOrder("alice", "AAPL", "buy", "1"),
    DemoOrder("alice", "MSFT", "buy", "2", "limit", limit="1.02"),
    DemoOrder("alice", "NVDA", "buy", "0.5"),
    DemoOrder("bob", "AAPL", "sell", "3"),
    DemoOrder("bob", "AAPL", "sell", "1.25", "limit", limit="0.98"),
    DemoOrder("alice", "TSLA", "buy", "3", "limit", limit="0.7", tif="gtc", cancel=True),
    DemoOrder("bob", "MSFT", "buy", "1", "limit", limit="0.8", tif="gtc", replace="1.05"),
    DemoOrder("carol", "AAPL", "buy", "1"),  # refused: insufficient funds
    DemoOrder("dami", "AAPL", "buy", "2", pay="KRW"),  # paid in won through the FX desk
    DemoOrder("erin", "AAPL", "buy", "10"),  # refused: above erin's max order notional
)


def _progress(label: str, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "-" * (width - filled)
    sys.stdout.write(f"\r{label:<10} [{bar}] {done}/{total}")
    if done >= total:
        sys.stdout.write("\n")
    sys.stdout.flush()


async def _price(oc: OrderClient, symbol: str) -> Decimal:
    from core.broker_client import BrokerClient

    async with BrokerClient.from_settings(oc.settings) as broker:
        quotes = await broker.latest_quotes([symbol])
    return quotes[symbol].ask


async def _place_all(oc: OrderClient, accounts: dict[str, str]) -> list[tuple[DemoOrder, Any]]:
    placed = []
    for i, order in enumerate(ORDERS):
        placed.append((order, await _place(oc, accounts, order)))
        _progress("placing", i + 1, len(ORDERS))
    return placed


async def _place(oc: OrderClient, accounts: dict[str, str], order: DemoOrder) -> Any:
    limit = None
    if order.limit is not None:
        price = await _price(oc, order.symbol)
        limit = (price * Decimal(order.limit)).quantize(Decimal("0.01"))
    return await oc.place_order(
        account_id=accounts[order.who],
        symbol=order.symbol,
        side=order.side,
        qty=order.qty,
        order_type=order.order_type,
        limit_price=limit,
        time_in_force=order.tif,
        pay=order.pay,
    )


async def _wait_all(oc: OrderClient, placed: list[tuple[DemoOrder, Any]]) -> list[OrderState]:
    for order, result in placed:
        if order.cancel and result.accepted:
            await _until_at_broker(oc, result.account_id, result.order_id)
            await oc.cancel_order(result.account_id, result.order_id)
        if order.replace is not None and result.accepted:
            await _until_at_broker(oc, result.account_id, result.order_id)
            price = await _price(oc, order.symbol)
            limit = (price * Decimal(order.replace)).quantize(Decimal("0.01"))
            await oc.replace_order(result.account_id, result.order_id, limit_price=limit)
    finals: list[OrderState] = []
    pending = [oc.wait(r.account_id, r.order_id, timeout_s=120) for _, r in placed]
    for i, fut in enumerate(asyncio.as_completed(pending)):
        finals.append(await fut)
        _progress("settling", i + 1, len(pending))
    return finals


async def _until_at_broker(oc: OrderClient, account_id: str, order_id: str) -> None:
    for _ in range(200):
        state = await oc.get_order(account_id, order_id)
        if state.broker_order_id or state.terminal:
            return
        await asyncio.sleep(0.1)


def _order_rows(finals: list[OrderState]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for st in sorted(finals, key=lambda s: (s.request.account_id, s.request.order_id)):
        req = st.request
        rows.append(
            {
                "account": req.account_id,
                "order": req.order_id,
                "order_desc": f"{req.side} {st.order_qty} {req.symbol} {req.order_type}"
                + (" (replaced)" if st.replaced_ids else "")
                + (f" paid in {st.pay_asset}" if st.pay_asset else ""),
                "status": st.status.value,
                "filled": st.filled_qty,
                "cost": st.posted_cash,
                "fees": st.fees,
                "reason": st.reason or "",
            }
        )
    return rows


def _fmt(amount: Decimal) -> str:
    return "0" if amount == 0 else f"{amount.normalize():f}"


async def _balance_rows(oc: OrderClient, accounts: dict[str, str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for account_id in accounts.values():
        acct = await oc.balance(account_id)
        for b in acct.balances:
            rows.append(
                {
                    "account": account_id,
                    "asset": b.asset,
                    "available": _fmt(b.available),
                    "held": _fmt(b.held),
                }
            )
    return rows


async def run_demo(settings: Settings) -> int:
    stack = DevStack(settings)
    click.echo("bringing the local stack up ...")
    await stack.up()
    apply_stack_env()
    settings = Settings()
    run_id = uuid.uuid4().hex[:6]
    async with OrderClient.connect(settings) as oc:
        if await ensure_reconcile_schedule(oc.temporal, settings):
            click.echo(f"reconciler schedule created (every {settings.reconcile_every_s:.0f}s)")
        if await ensure_settlement_schedule(oc.temporal, settings):
            click.echo("settlement schedule created (weekdays 17:30 New York: T+1 proceeds)")
        accounts = {who: f"demo-{who}-{run_id}" for who in [*ACCOUNTS, *WON_ACCOUNTS]}
        await _open_accounts(oc, accounts, run_id)
        await _wait_for_quotes(oc)
        placed = await _place_all(oc, accounts)
        finals = await _wait_all(oc, placed)
        queued = await _queued_order(oc, accounts)
        if queued is not None:
            finals.append(queued)
        click.echo("\norders")
        click.echo(
            table(
                _order_rows(finals),
                ["account", "order", "order_desc", "status", "filled", "cost", "fees", "reason"],
            )
        )
        click.echo("\nbalances")
        click.echo(
            table(await _balance_rows(oc, accounts), ["account", "asset", "available", "held"])
        )
        await _show_won_orders(oc, finals)
        report = await check_ledger(oc._pool)
    click.echo(f"\nledger check: {'OK' if report.ok else 'VIOLATIONS'}")
    ids = " OR ".join(f"AccountId = '{a}'" for a in accounts.values())
    ns = settings.temporal_namespace
    url = f"{settings.temporal_ui_url}/namespaces/{ns}/workflows?query={quote(ids)}"
    click.echo(f"Web UI, these orders: {url}")
    click.echo("metrics (Prometheus; /healthz and /readyz beside each):")
    for app, metrics_url in stack.metrics_urls().items():
        click.echo(f"  {app:<16} {metrics_url}")
    click.echo("the stack stays up; stop it with: ordersaga dev down")
    statuses = {s.status for s in finals}
    return 0 if report.ok and OrderStatus.SETTLED in statuses else 1


async def _wait_for_quotes(oc: OrderClient, timeout_s: float = 20) -> None:
    """The market-data feed needs a moment after a fresh start before market orders can price."""
    from activities.marketdata import GetQuoteInput, MarketDataActivities
    from core.keys import RedisKeys
    from core.redisconn import redis_client

    redis = redis_client(oc.settings, decode_responses=True)
    reader = MarketDataActivities(
        redis, RedisKeys(oc.settings.redis_prefix), oc.settings.quote_max_age_s
    )
    try:
        for _ in range(int(timeout_s * 10)):
            quotes = [await reader.get_quote(GetQuoteInput(symbol=s)) for s in ("AAPL", "NVDA")]
            if all(q.fresh for q in quotes):
                return
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def _open_accounts(oc: OrderClient, accounts: dict[str, str], run_id: str) -> None:
    for who, (usd, shares) in ACCOUNTS.items():
        await oc.open_account(accounts[who])
        await oc.deposit(accounts[who], usd, key=f"demo:{run_id}:{who}:usd")
        for symbol, qty in shares.items():
            await oc.deposit(accounts[who], qty, asset=symbol, key=f"demo:{run_id}:{who}:{symbol}")
    for who, won in WON_ACCOUNTS.items():
        await oc.open_account(accounts[who], currency="KRW")
        await oc.deposit(accounts[who], won, currency="KRW", key=f"demo:{run_id}:{who}:krw")
    for who, notional in LIMITS.items():
        await oc.risk.set_limits(accounts[who], max_order_notional=notional, by="demo")
        click.echo(f"{accounts[who]}: orders above {notional} USD of notional are refused")


async def _sim_admin(settings: Settings, method: str, path: str, body: object = None) -> Any:
    """The simulator's admin API (its clock): the dev stack's broker URL and keys."""
    import aiohttp

    headers = {
        "APCA-API-KEY-ID": settings.broker_key_id,
        "APCA-API-SECRET-KEY": settings.broker_secret_key.get_secret_value(),
    }
    async with aiohttp.ClientSession(headers=headers) as session:
        url = settings.broker_url + path
        async with session.request(method, url, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()


async def _queued_order(oc: OrderClient, accounts: dict[str, str]) -> OrderState | None:
    """Close the simulated market, place QUEUED_ORDER (it waits QUEUED), open the market, and
    wait for it to fill. None when the running stack's simulator keeps no market hours (a stack
    started before it did: ``ordersaga dev down`` and run the demo again)."""
    clock = await _sim_admin(oc.settings, "GET", "/admin/clock")
    if clock["market_hours"] != "enforce":
        click.echo("\n(this stack's simulator keeps no market hours: no order waits QUEUED;"
                   " restart it with `ordersaga dev down` to see one)")  # fmt: skip
        return None
    closed = await _sim_admin(oc.settings, "POST", "/admin/clock/advance", {"to": "next_close"})
    click.echo(f"\nsimulated market closed: its clock moved to {closed['now']}")
    result = await _place(oc, accounts, QUEUED_ORDER)
    what = f"{result.account_id}/{result.order_id} ({QUEUED_ORDER.side} {QUEUED_ORDER.qty}"
    what += f" {QUEUED_ORDER.symbol})"
    state = await oc.get_order(result.account_id, result.order_id)
    for _ in range(100):
        if state.status == OrderStatus.QUEUED or state.terminal:
            break
        await asyncio.sleep(0.1)
        state = await oc.get_order(result.account_id, result.order_id)
    click.echo(f"  {what}: {state.status.value} until the open, {closed['next_open']}")
    opened = await _sim_admin(oc.settings, "POST", "/admin/clock/advance", {"to": "next_open"})
    click.echo(f"simulated market open: its clock moved to {opened['now']}")
    final = await oc.wait(result.account_id, result.order_id, timeout_s=120)
    click.echo(f"  {what}: {final.status.value}, {final.filled_qty} filled")
    return final


async def _show_won_orders(oc: OrderClient, finals: list[OrderState]) -> None:
    """Each order paid in won: the won held, charged (the dollars it cost, fees included, at
    the hold's rate, rounded up to the won) and refunded; then the FX desk's position."""
    from core.fx import krw_cost

    rows: list[dict[str, object]] = []
    for st in finals:
        if st.pay_asset is None or st.fx_rate is None or st.request.side != "buy":
            continue
        usd = st.posted_cash + st.fees
        charged = krw_cost(usd, st.fx_rate)
        rows.append(
            {
                "order": f"{st.request.account_id}/{st.request.order_id}",
                "rate": _fmt(st.fx_rate),
                "held_krw": _fmt(st.held),
                "usd_cost": _fmt(usd),
                "charged_krw": _fmt(charged),
                "refunded_krw": _fmt(st.held - charged),
            }
        )
    if not rows:
        return
    click.echo(
        "\norders paid in won (KRW held at the FX ask, charged for the dollars, rest refunded)"
    )
    click.echo(
        table(rows, ["order", "rate", "held_krw", "usd_cost", "charged_krw", "refunded_krw"])
    )
    desk = await oc.fx_position()
    rate = f", average rate {desk.average_rate}" if desk.average_rate is not None else ""
    click.echo(f"FX desk position: {_fmt(desk.krw)} KRW, {_fmt(desk.usd)} USD{rate}")
