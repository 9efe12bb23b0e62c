"""``run_chaos``: bring up an own stack, run the workload under the fault schedule, let every
order finish, reconcile, check the invariants, tear the stack down, return the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from temporalio.client import Client

from activities.broker import BrokerActivities, ListBrokerOrdersInput
from activities.ledger.fxdesk import fx_position
from chaos.drills import HALTED_WORDS, Drills
from chaos.faults import Injector, build_schedule, parse_kinds
from chaos.hostile import Hostile
from chaos.invariants import (
    FAILED_ORDER_WORKFLOWS,
    check_invariants,
    currency_by_kind,
)
from chaos.report import ChaosReport, Progress
from chaos.stack import ChaosStack, chaos_settings
from chaos.workload import (
    SHORT_LOCK_TTL_MS,
    SYMBOLS,
    Clients,
    PlannedOrder,
    open_accounts,
    plan_orders,
    poor_account,
    shorten_locks,
    stale_fence_relocks,
    won_account_ids,
)
from core.broker_client import BrokerClient, BrokerOrder
from core.keys import RedisKeys
from core.redisconn import redis_client
from core.settings import Settings
from core.statuses import TERMINAL_STATUS_NAMES, OrderStatus
from core.temporal import connect
from ordersaga.client import OrderClient
from ordersaga.schedules import run_reconcile_now

# Settling this long, the gtc limits still open have not filled (the price walked away): the
# harness cancels them.
GTC_CANCEL_AFTER_S = 30.0


@dataclass(frozen=True)
class ChaosOptions:
    seed: int = 1
    orders: int = 200
    accounts: int = 10
    duration_s: float = 90.0
    faults: str = "all"
    concurrency: int = 8
    settle_timeout_s: float = 240.0
    state_dir: Path | None = None  # default: a temp folder, removed afterwards
    keep_state: bool = False


class _Run:
    """One run's live parts, so the steps can be small methods."""

    def __init__(self, opts: ChaosOptions, stack: ChaosStack, progress: Progress) -> None:
        self.opts = opts
        self.stack = stack
        self.progress = progress
        self.settings: Settings = stack.settings_for_client()
        kinds = parse_kinds(opts.faults)
        self.report = ChaosReport(
            seed=opts.seed,
            orders=opts.orders,
            accounts=opts.accounts,
            duration_s=opts.duration_s,
            fault_kinds=kinds,
        )
        self.schedule = build_schedule(opts.seed, kinds, opts.duration_s)

    async def execute(self) -> None:
        s = self.settings
        secret = s.broker_secret_key.get_secret_value()
        headers = {"APCA-API-KEY-ID": s.broker_key_id, "APCA-API-SECRET-KEY": secret}
        temporal = await connect(s)
        # No connection floor: it would log its reconnect attempts while Postgres restarts.
        pool = await asyncpg.create_pool(s.database_url, min_size=0, max_size=20)
        assert pool is not None
        try:
            async with aiohttp.ClientSession(headers=headers) as session:
                self.session = session
                await self._drive(temporal, pool)
        finally:
            await pool.close()

    async def _drive(self, temporal: Client, pool: asyncpg.Pool) -> None:
        s, opts = self.settings, self.opts
        oc = OrderClient(temporal, pool, s)
        prices = await self._prices()
        accounts = await open_accounts(oc, opts.seed, opts.accounts)
        plan = plan_orders(opts.seed, opts.orders, accounts, prices)
        hostile = Hostile(temporal, pool, self.session, s, opts.seed, self._listener_up)
        await hostile.setup()
        self.drills = Drills(oc, pool, self._admin, opts.seed, accounts[-1], "MSFT", prices["MSFT"])
        await self.drills.open_market()  # the simulator keeps market hours: open it, any day
        injector = Injector(self.stack, self.session, s.broker_url, hostile, drills=self.drills)
        clients = Clients(oc, lambda: injector.lock_ttl_short, opts.concurrency)

        async def short_ttl(window_s: float) -> None:
            locked = [*accounts, poor_account(opts.seed)]
            await asyncio.gather(
                shorten_locks(s, locked, SHORT_LOCK_TTL_MS, window_s),
                clients.burst(accounts[0], "AAPL", prices["AAPL"], pool),
            )

        injector.short_ttl = short_ttl
        started = time.monotonic()
        await self._place(plan, clients, injector, started)
        self._hostile_report(hostile)
        keys = [p.request.key for p in plan] + hostile.log.order_keys + clients.tally.burst_keys
        keys += self.drills.log.probe_keys
        await self._settle(pool, keys, started, self._gtc_uncanceled(plan), clients)
        await self.drills.check_cancels()
        self._drill_report()
        self.report.stale_fence_relocks = await stale_fence_relocks(oc, clients.tally)
        # Requests held late by the broker must have executed before the reconciler looks.
        await asyncio.sleep(max(0.0, injector.late_until - time.monotonic()))
        await self._reconcile(temporal)
        await self._check(pool, temporal, plan, hostile)
        self.report.total_s = round(time.monotonic() - started, 1)

    async def _prices(self) -> dict[str, Decimal]:
        """The broker's current prices (the workload prices limits around them)."""
        out: dict[str, Decimal] = {}
        for symbol in SYMBOLS:
            url = f"{self.settings.broker_url}/v2/stocks/{symbol}/quotes/latest"
            async with self.session.get(url) as resp:
                resp.raise_for_status()
                body = await resp.json()
            out[symbol] = Decimal(str(body["quote"]["ap"]))
        await self._wait_for_quotes()
        return out

    async def _wait_for_quotes(self, timeout_s: float = 30) -> None:
        """The market-data feed must have quoted every symbol before market orders are priced."""
        keys = RedisKeys(self.settings.redis_prefix)
        client = redis_client(self.settings)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if await client.exists(*(keys.quote(s) for s in SYMBOLS)) == len(SYMBOLS):
                    return
                await asyncio.sleep(0.3)
        finally:
            await client.aclose()

    async def _place(
        self, plan: list[PlannedOrder], clients: Clients, injector: Injector, started: float
    ) -> None:
        stop = asyncio.Event()
        faults = asyncio.create_task(injector.play(self.schedule, started, stop))
        ticker = asyncio.create_task(self._tick(lambda: clients.done, len(plan), injector))
        try:
            await clients.run(plan, self.opts.duration_s)
            self.report.placing_s = round(time.monotonic() - started, 1)
            await faults  # the schedule ends within the duration: play it out
        finally:
            stop.set()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.progress.end()
        await injector.heal()
        log = injector.log
        self.report.faults_by_kind = dict(log.counts)
        self.report.fault_failures = log.failures
        self.report.fault_timeline = log.lines
        t = clients.tally
        self.report.client = {
            "placed": t.placed,
            "refused_at_once": t.refused,
            "cancels_sent": t.cancels_sent,
            "cancels_after_end": t.cancels_refused,
            "burst_orders": len(t.burst_keys),
            "drill_orders": len(self.drills.log.probe_keys),
            "refused_for_halt": sum(
                n for why, n in t.refused_reasons.items() if why.startswith(HALTED_WORDS)
            ),
        }
        self.report.client_errors = t.place_errors
        self.report.refused_reasons = dict(t.refused_reasons.most_common())
        self.report.throughput_orders_per_s = round(t.placed / max(self.report.placing_s, 0.1), 2)

    def _drill_report(self) -> None:
        log = self.drills.log
        self.report.drills = dict(sorted(log.counts.items()))
        self.report.drill_findings = list(log.findings)

    def _listener_up(self) -> bool:
        return self.stack.pid_of("broker-listener") is not None

    def _hostile_report(self, hostile: Hostile) -> None:
        self.report.hostile = dict(sorted(hostile.log.counts.items()))
        self.report.hostile["orders_placed"] = len(hostile.log.order_keys)
        self.report.hostile_findings = list(hostile.log.findings)

    async def _tick(self, done: Callable[[], int], total: int, injector: Injector) -> None:
        while True:
            faults = sum(injector.log.counts.values())
            self.progress.show("placing", done(), total, f"faults {faults}")
            await asyncio.sleep(1)

    @staticmethod
    def _gtc_uncanceled(plan: list[PlannedOrder]) -> list[tuple[str, str]]:
        """The plan's gtc limits the clients never cancel: marketable when placed, they fill,
        unless the price walked away first; then only a cancel ends them (no close expires a gtc
        order), and ``_settle`` sends it once settling has gone on for a while."""
        return [
            (p.request.account_id, p.request.order_id)
            for p in plan
            if p.request.time_in_force == "gtc" and p.cancel_after_s is None
        ]

    async def _settle(
        self,
        pool: asyncpg.Pool,
        keys: list[str],
        started: float,
        gtc: list[tuple[str, str]],
        clients: Clients,
    ) -> None:
        """Wait until every order is terminal or parked (a parked order waits for an operator:
        the invariants report it); day orders resting at the broker expire at its close (the
        clock is moved to the next close and on to the next open, every 10 s), as only the
        broker expires orders."""
        deadline = time.monotonic() + self.opts.settle_timeout_s
        settle_started = time.monotonic()
        last_advance = time.monotonic()
        while True:
            open_count = await self._open_orders(pool, keys)
            self.progress.show("settling", len(keys) - open_count, len(keys))
            if open_count == 0:
                break
            if time.monotonic() > deadline:
                self.report.error = f"{open_count} order(s) not terminal after the deadline"
                break
            if time.monotonic() - last_advance > 10:
                with contextlib.suppress(OSError, aiohttp.ClientError):
                    await self.drills.next_day()
                last_advance = time.monotonic()
            if gtc and time.monotonic() - settle_started > GTC_CANCEL_AFTER_S:
                await self._cancel_open(pool, gtc, clients)
                gtc = []
            await asyncio.sleep(1)
        self.progress.end()
        self.report.settling_s = round(time.monotonic() - settle_started, 1)

    async def _cancel_open(
        self, pool: asyncpg.Pool, orders: list[tuple[str, str]], clients: Clients
    ) -> None:
        """Cancel those of ``orders`` still open, as their client would at the end of its day."""
        keys = [f"{a}/{o}" for a, o in orders]
        try:
            rows = await pool.fetch(
                "SELECT account_id, order_id FROM orders WHERE account_id || '/' || order_id ="
                " ANY($1::text[]) AND status <> ALL($2::text[])",
                keys,
                [*TERMINAL_STATUS_NAMES, OrderStatus.NEEDS_ATTENTION.value],
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return
        for r in rows:
            try:
                res = await clients.oc.cancel_order(r["account_id"], r["order_id"])
            except Exception as exc:  # it ended meanwhile, or a store is down: reported
                clients.tally.place_errors.append(f"settle cancel {r['order_id']}: {exc!r}")
                continue
            self.report.client["gtc_canceled_at_settle"] = self.report.client.get(
                "gtc_canceled_at_settle", 0
            ) + int(res.accepted)

    async def _open_orders(self, pool: asyncpg.Pool, keys: Sequence[str]) -> int:
        """Orders not terminal yet; an order whose place call failed may have no row: not open."""
        try:
            return int(
                await pool.fetchval(
                    "SELECT count(*) FROM orders WHERE account_id || '/' || order_id ="
                    " ANY($1::text[]) AND status <> ALL($2::text[])",
                    keys,
                    [*TERMINAL_STATUS_NAMES, OrderStatus.NEEDS_ATTENTION.value],
                )
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return len(keys)

    async def _admin(self, method: str, path: str, body: object) -> dict[str, Any]:
        async with self.session.request(method, self.settings.broker_url + path, json=body) as r:
            r.raise_for_status()
            answer: dict[str, Any] = await r.json()
            return answer

    async def _reconcile(self, temporal: Client) -> None:
        """Run the reconciler until late orders are final at the broker and fully booked."""
        totals = {"runs": 0, "late_orders": 0, "canceled_at_broker": 0, "error_fills_booked": 0}
        for _ in range(5):
            rep = await asyncio.wait_for(
                run_reconcile_now(self.settings, temporal),
                timeout=180,
            )
            totals["runs"] += 1
            totals["late_orders"] = rep.late_orders
            totals["canceled_at_broker"] += rep.canceled_at_broker
            totals["error_fills_booked"] += rep.error_fills_booked
            if rep.canceled_at_broker == 0:
                break
            await asyncio.sleep(2)  # a cancel is asynchronous: let the broker finish it
        self.report.reconcile = totals

    async def _check(
        self, pool: asyncpg.Pool, temporal: Client, plan: list[PlannedOrder], hostile: Hostile
    ) -> None:
        broker_orders = await self._broker_orders()
        self.report.broker_orders = len(broker_orders)
        placed = {p.request.key for p in plan} - {
            e.split(":")[0] for e in self.report.client_errors
        }
        failed = [wf.id async for wf in temporal.list_workflows(FAILED_ORDER_WORKFLOWS)]
        self.report.invariants = await check_invariants(
            pool,
            broker_orders,
            placed,
            failed_workflows=failed,
            caller_orders=set(hostile.log.caller_orders),
            saga=self.settings.saga,
        )
        self.report.late_orders = next(
            r.checked for r in self.report.invariants if r.name == "error_account_holds_late_fills"
        )
        rows = await pool.fetch(
            "SELECT status, count(*) AS n FROM orders WHERE account_id LIKE $1 GROUP BY status",
            f"chaos{self.opts.seed}-%",
        )
        self.report.orders_by_status = {r["status"]: int(r["n"]) for r in rows}
        won = await pool.fetch(
            "SELECT status, count(*) AS n FROM orders WHERE account_id = ANY($1::text[])"
            " GROUP BY status",
            won_account_ids(self.opts.seed),
        )
        self.report.won_orders_by_status = {r["status"]: int(r["n"]) for r in won}
        totals = await currency_by_kind(pool)
        self.report.currencies = {
            asset: {kind: f"{v.normalize():f}" for kind, v in kinds.items()}
            for asset, kinds in totals.items()
        }
        desk = await fx_position(pool)
        self.report.fx_desk = {
            "krw": str(desk.krw),
            "usd": str(desk.usd),
            "average_rate": str(desk.average_rate),
            "fills": str(desk.entries),
        }
        self.report.ok = not self.report.violations()

    async def _broker_orders(self) -> list[BrokerOrder]:
        return await all_broker_orders(self.settings)


class IncompleteListing(RuntimeError):
    """The broker's listing stopped short: invariants checked on it would pass vacuously."""


async def all_broker_orders(
    settings: Settings, max_orders: int = 100_000, page_size: int = 500
) -> list[BrokerOrder]:
    """Every order the broker has; IncompleteListing if the listing was cut at ``max_orders``
    (the run then reports a harness error instead of checking a partial view)."""
    broker = BrokerClient.from_settings(settings)
    try:
        listed = await BrokerActivities(broker).list_broker_orders(
            ListBrokerOrdersInput(max_orders=max_orders, page_size=page_size)
        )
    finally:
        await broker.close()
    if listed.truncated:
        raise IncompleteListing(
            f"the broker's order listing stopped at {len(listed.orders)} orders"
            f" (max {max_orders}): the invariants would check part of it"
        )
    return listed.orders


async def run_chaos(opts: ChaosOptions, progress: Progress | None = None) -> ChaosReport:
    state_dir = opts.state_dir or Path(tempfile.mkdtemp(prefix="ordersaga-chaos-"))
    stack = ChaosStack(chaos_settings(), state_dir)
    progress = progress or Progress()
    run: _Run | None = None
    try:
        progress.show("starting", 0, 1, f"stack in {state_dir}")
        await stack.up()
        progress.end()
        run = _Run(opts, stack, progress)
        await run.execute()
        return run.report
    except Exception as exc:
        report = run.report if run else _empty_report(opts)
        report.ok = False
        report.error = f"harness error: {exc!r}"
        return report
    finally:
        with contextlib.suppress(Exception):
            await stack.down()
        if not opts.keep_state and opts.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)


def _empty_report(opts: ChaosOptions) -> ChaosReport:
    return ChaosReport(
        seed=opts.seed,
        orders=opts.orders,
        accounts=opts.accounts,
        duration_s=opts.duration_s,
        fault_kinds=parse_kinds(opts.faults),
    )
