"""Hostile faults: input an attacker (or a careless caller) sends through the parts it can reach.

Accidents (chaos/faults.py) break processes and networks; these send lies. Each goes through the
real door: the Temporal client (signals, workflow inputs), the simulator's admin hooks (raw
events, quote overrides), the Redis quote cache and fence counters, the client SDK. What each
one did is counted in ``HostileLog.counts``; hostile input that got through where it must be
refused is a ``finding`` (a violation of the run). Whether money moved is the invariants' call,
at the end (chaos/invariants.py: no booked fill above the broker's, fills equal the broker's,
caller settings ignored, no workflow FAILED).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError

from chaos.workload import START_CASH, SYMBOLS
from core.errors import UserError
from core.keys import RedisKeys
from core.redisconn import redis_client
from core.settings import Settings
from ordersaga.client import OrderClient
from workflows.models import BrokerReport, OrderInput, OrderRequest
from workflows.order import OrderWorkflow

HOSTILE_KINDS: tuple[str, ...] = (
    "forged_signal",
    "poison_event",
    "corrupt_quote",
    "future_quote",
    "caller_commission",
    "extreme_decimals",
    "colliding_deposit_key",
    "fence_rollback",
)
# Kinds whose fix is on a branch not merged yet, kept out of ``all`` (name them to run them).
# Empty an entry when its branch lands; docs/CHAOS.md says what each does before the fix.
PENDING_KINDS: dict[str, str] = {}
# Values no amount or price may take: each must be refused by the SDK with a one-line UserError.
EXTREME_VALUES = (
    "1e-1000030",
    "1e400",
    "NaN",
    "-Infinity",
    "0." + "1" * 31,
    "1E+999999999",
    "-1",
)
# What a caller_commission order asks for in its workflow input: no commission, its own queue.
CALLER_CONFIG: dict[str, Any] = {
    "commission_rate": "0",
    "commission_minimum": "0",
    "market_buy_buffer": "0.5",
    "broker_task_queue": "caller-owned-broker-queue",
}
# What the broker serves for the symbol meanwhile: quotes the feed refuses, so it stops writing
# the symbol and the planted record stays in the cache.
BROKER_QUOTE_OVERRIDES: tuple[object, ...] = (
    {"ap": "NaN", "bp": "NaN", "as": 100, "bs": 100, "t": "2026-01-01T00:00:00Z"},
    "not a quote",
    {"ap": -5, "bp": -6, "as": 100, "bs": 100, "t": "2999-01-01T00:00:00Z"},
)
OPEN_STATUSES = ("ACCEPTED", "SUBMITTED", "PARTIALLY_FILLED", "CANCEL_REQUESTED")
_OPEN_ORDERS = """
SELECT account_id, order_id, qty, limit_price, side, symbol FROM orders
WHERE account_id LIKE $1 AND status = ANY($2::text[]) ORDER BY created_at DESC LIMIT 40
"""
_BALANCES = "SELECT asset, available, held FROM ledger_accounts WHERE owner = $1 ORDER BY asset"


def hostile_account(seed: int) -> str:
    """Places the hostile orders (refused quotes, caller settings)."""
    return f"chaos{seed}-hostile"


def extreme_account(seed: int) -> str:
    """Takes the extreme-decimal placements and deposits: nothing may ever be written to it."""
    return f"chaos{seed}-extreme"


@dataclass
class HostileLog:
    counts: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    caller_orders: list[str] = field(default_factory=list)
    # Every order these faults placed (extreme-decimal placements must never start one).
    order_keys: list[str] = field(default_factory=list)


class Hostile:
    """Injects one hostile fault kind at a time (``inject``) against a running chaos stack."""

    def __init__(
        self,
        temporal: Client,
        pool: asyncpg.Pool,
        session: aiohttp.ClientSession,
        settings: Settings,
        seed: int,
        listener_alive: Any,
    ) -> None:
        self.temporal = temporal
        self.pool = pool
        self.session = session
        self.settings = settings
        self.seed = seed
        self.keys = RedisKeys(settings.redis_prefix)
        self.oc = OrderClient(temporal, pool, settings)
        self.listener_alive = listener_alive  # callable: is the broker listener's process up?
        self.rng = random.Random(seed * 104_729 + 13)
        self.log = HostileLog()
        self._n = 0

    async def setup(self) -> None:
        acct = hostile_account(self.seed)
        await self.oc.open_account(acct)
        await self.oc.deposit(acct, START_CASH, key=f"chaos-hostile-{self.seed}-cash")
        await self.oc.open_account(extreme_account(self.seed))

    async def inject(self, kind: str, window_s: float) -> None:
        await getattr(self, f"_{kind}")(window_s)

    def _next_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n:04d}"

    def _count(self, what: str, n: int = 1) -> None:
        self.log.counts[what] += n

    async def _open_orders(self, limit: int) -> list[asyncpg.Record]:
        rows = list(
            await self.pool.fetch(_OPEN_ORDERS, f"chaos{self.seed}-a%", list(OPEN_STATUSES))
        )
        self.rng.shuffle(rows)
        return rows[:limit]

    # ------------------------------------------------------------------ forged signals

    async def _forged_signal(self, window_s: float) -> None:
        """Reports of source "event" straight to open orders' workflows: never booked."""
        rows = await self._open_orders(4)
        deadline = time.monotonic() + 10
        while not rows and time.monotonic() < deadline:  # none open this moment: wait for one
            await asyncio.sleep(0.5)
            rows = await self._open_orders(4)
        for i, row in enumerate(rows):
            report = self._forgery(i, row)
            handle = self.temporal.get_workflow_handle(
                f"order/{row['account_id']}/{row['order_id']}"
            )
            try:
                await handle.signal(OrderWorkflow.broker_update, report)
                self._count("signals_sent")
            except RPCError:
                self._count("signals_to_closed_orders")  # it ended meanwhile
        if not rows:
            self._count("forged_signal_no_open_order")
        await asyncio.sleep(window_s)

    def _forgery(self, i: int, row: asyncpg.Record) -> BrokerReport:
        qty = Decimal(row["qty"])
        variants = (
            ("partially_filled", qty * 10, qty * 10 * 100, None, False),  # above the quantity
            ("filled", qty, qty, None, True),  # every share at $1
            ("filled", qty, qty * 100, "forged-broker-order", True),  # another broker order
            ("canceled", Decimal(0), Decimal(0), None, True),  # a forged ending
            ("filled", qty, qty * 100, None, True),  # a forged ending with fills
        )
        status, filled, notional, broker_id, terminal = variants[(self._n + i) % len(variants)]
        self._count(f"forged_{status}")
        return BrokerReport(
            source="event",
            broker_order_id=broker_id or f"forged-{self._next_id('s')}",
            status=status,
            filled_qty=filled,
            filled_notional=notional,
            terminal=terminal,
            execution_id=f"forged-{self._n}",
        )

    # ------------------------------------------------------------------ poison events

    async def _poison_event(self, window_s: float) -> None:
        """Malformed events planted in the broker's stream: dead-lettered, the listener lives."""
        rows = await self._open_orders(1)
        key = f"{rows[0]['account_id']}/{rows[0]['order_id']}" if rows else "chaos/none"
        base = {
            "id": "forged-" + self._next_id("p"),
            "client_order_id": key,
            "symbol": rows[0]["symbol"] if rows else "AAPL",
            "side": "buy",
            "qty": "1",
            "filled_qty": "0",
            "status": "new",
        }
        poison: list[dict[str, Any]] = [
            {"raw": "this is not json {"},
            {"raw": "[1, 2, 3]"},
            {"event": {"event": "fill", "order": {**base, "filled_qty": "NaN"}}},
            {"event": {"event": "fill", "order": {**base, "filled_qty": "10"}}},
            {"event": {"event": "fill", "order": {**base, "status": "teleported"}}},
            {"event": {"event": "fill", "order": {**base, "id": " "}}},
            {"event": {"event": "fill", "order": {**base, "filled_notional": "-5"}}},
        ]
        # Well formed, so it is delivered: a fill at $1 for a real open order; the saga asks
        # the broker and books only its answer.
        filled = {**base, "filled_qty": "1", "filled_notional": "1", "status": "filled"}
        forged = {"event": {"event": "fill", "order": filled}}
        redis = redis_client(self.settings)
        try:
            before = int(await redis.llen(self.keys.listener_dead_letters()))
            for body in [*poison, forged]:
                await self._admin("POST", "/admin/events", body)
            self._count("poison_events_planted", len(poison))
            self._count("well_formed_forgeries_planted")
            deadline = time.monotonic() + max(window_s, 15)
            seen = 0
            while time.monotonic() < deadline:
                seen = int(await redis.llen(self.keys.listener_dead_letters())) - before
                if seen >= len(poison):
                    break
                await asyncio.sleep(0.3)
        finally:
            await redis.aclose()
        self._count("dead_letters", max(0, seen))
        if seen < len(poison):
            self.log.findings.append(f"poison_event: {seen} of {len(poison)} dead-lettered")
        if not self.listener_alive():
            self.log.findings.append("poison_event: the broker listener died")

    # ------------------------------------------------------------------ quotes

    async def _corrupt_quote(self, window_s: float) -> None:
        stamp = {"symbol": "{s}", "timestamp": "2026-01-01T00:00:00Z", "received_at": "{now}"}
        variants = (
            json.dumps({**stamp, "bid": "NaN", "ask": "NaN"}),
            "this is not json",
            json.dumps({**stamp, "bid": 189.5, "ask": 190.5}),  # JSON numbers, not decimal text
        )
        which = self._n % len(variants)
        self._n += 1
        await self._bad_quote("corrupt_quote", variants[which], window_s, ahead_s=0)

    async def _future_quote(self, window_s: float) -> None:
        # A usable price stored an hour ahead: were it read, it would stay fresh for an hour.
        record = json.dumps(
            {
                "symbol": "{s}",
                "bid": "1.00",
                "ask": "1.01",
                "timestamp": "2999-01-01T00:00:00Z",
                "received_at": "{now}",
            }
        )
        await self._bad_quote("future_quote", record, window_s, ahead_s=3600)

    async def _bad_quote(self, kind: str, template: str, window_s: float, ahead_s: float) -> None:
        """Corrupt a symbol's quote at the broker (the feed refuses it and stops writing the
        symbol) and plant a bad record in the Redis cache; market orders must be refused."""
        symbol = self.rng.choice(SYMBOLS)
        override = self.rng.choice(BROKER_QUOTE_OVERRIDES)
        await self._admin("PUT", "/admin/quote_overrides", {symbol: override})
        self._count("quote_overrides_planted")
        await asyncio.sleep(1.2)  # a feed poll in flight has written by now
        redis = redis_client(self.settings)
        try:
            for _ in range(3):
                record = template.replace("{s}", symbol).replace(
                    '"{now}"', f"{time.time() + ahead_s:.3f}"
                )
                await redis.set(self.keys.quote(symbol), record)
                self._count("quote_records_planted")
                await self._place_against_bad_quote(kind, symbol)
            await asyncio.sleep(window_s)
        finally:
            await self._admin("PUT", "/admin/quote_overrides", {symbol: None})
            await redis.delete(self.keys.quote(symbol))  # the feed writes a good one again
            await redis.aclose()

    async def _place_against_bad_quote(self, kind: str, symbol: str) -> None:
        req = OrderRequest(
            account_id=hostile_account(self.seed),
            order_id=self._next_id("q"),
            symbol=symbol,
            side="buy",
            qty=Decimal(1),
        )
        self.log.order_keys.append(req.key)
        try:
            res = await self.oc.place_order(req)
        except Exception as exc:
            self.log.findings.append(f"{kind}: placing {req.key} failed: {exc!r}"[:300])
            return
        if not res.accepted and (res.reason or "").startswith("no price"):
            self._count("refused_no_price")
        else:
            self.log.findings.append(
                f"{kind}: {req.key} against a bad quote was {res.status} ({res.reason})"
            )

    # ------------------------------------------------------------------ caller settings

    async def _caller_commission(self, window_s: float) -> None:
        """Orders started straight through Temporal with the caller's own saga settings."""
        for _ in range(2):
            req = OrderRequest(
                account_id=hostile_account(self.seed),
                order_id=self._next_id("c"),
                symbol=self.rng.choice(SYMBOLS),
                side="buy",
                qty=Decimal(1),
            )
            start = WithStartWorkflowOperation(
                OrderWorkflow.run,
                OrderInput(request=req, config=CALLER_CONFIG),
                id=req.workflow_id,
                task_queue=self.settings.orders_task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
            self.log.order_keys.append(req.key)
            self.log.caller_orders.append(req.key)
            res = await self.temporal.execute_update_with_start_workflow(
                OrderWorkflow.place, req, start_workflow_operation=start
            )
            self._count("caller_orders_accepted" if res.accepted else "caller_orders_refused")
        await asyncio.sleep(window_s)

    # ------------------------------------------------------------------ extreme decimals

    async def _extreme_decimals(self, window_s: float) -> None:
        """Placements and deposits of absurd numbers through the SDK: one-line UserErrors,
        nothing held, nothing written (the account's balances and orders stay empty)."""
        acct = extreme_account(self.seed)
        before = await self._balances(acct)
        for value in EXTREME_VALUES:
            order_id = self._next_id("x")
            await self._expect_refusal(
                f"qty {value}",
                self.oc.place_order(
                    account_id=acct, symbol="AAPL", side="sell", qty=value, order_id=order_id
                ),
            )
            order_id = self._next_id("x")
            await self._expect_refusal(
                f"limit price {value}",
                self.oc.place_order(
                    account_id=acct,
                    symbol="AAPL",
                    side="buy",
                    qty="1",
                    order_type="limit",
                    limit_price=value,
                    order_id=order_id,
                ),
            )
            await self._expect_refusal(f"deposit {value}", self.oc.deposit(acct, value))
            await self._expect_refusal(
                f"share deposit {value}", self.oc.deposit(acct, value, asset="AAPL")
            )
        after = await self._balances(acct)
        if after != before:
            self.log.findings.append(f"extreme_decimals: {acct} balances {before} -> {after}")
        rows = await self.pool.fetchval("SELECT count(*) FROM orders WHERE account_id = $1", acct)
        if rows:
            self.log.findings.append(f"extreme_decimals: {rows} orders row(s) for {acct}")
        await asyncio.sleep(window_s)

    async def _expect_refusal(self, what: str, call: Any) -> None:
        try:
            outcome = await asyncio.wait_for(call, timeout=30)
        except UserError as exc:
            if "\n" in str(exc) or not str(exc):
                self.log.findings.append(f"extreme_decimals: {what}: not one line: {exc!r}")
            else:
                self._count("refused_extreme_values")
            return
        except Exception as exc:
            self.log.findings.append(f"extreme_decimals: {what}: {type(exc).__name__}: {exc}"[:300])
            return
        self.log.findings.append(f"extreme_decimals: {what} was not refused: {outcome!r}"[:300])

    async def _balances(self, owner: str) -> list[tuple[str, Decimal, Decimal]]:
        rows = await self.pool.fetch(_BALANCES, owner)
        return [(r["asset"], r["available"], r["held"]) for r in rows]

    # ------------------------------------------------------------------ pending kinds

    async def _colliding_deposit_key(self, window_s: float) -> None:
        """Deposits keyed with an open order's void step key ``<account>/<order>:void``."""
        for row in await self._open_orders(3):
            key = f"{row['account_id']}/{row['order_id']}:void"
            try:
                await self.oc.deposit(row["account_id"], "1.00", key=key)
                self._count("colliding_deposits_accepted")
            except Exception as exc:
                self._count("colliding_deposits_refused")
                self.log.counts[f"colliding_refused_{type(exc).__name__}"] += 1
        await asyncio.sleep(window_s)

    async def _fence_rollback(self, window_s: float) -> None:
        """A hot account's fence counter set back, as a restore from an old snapshot would."""
        acct = f"chaos{self.seed}-a000"
        redis = redis_client(self.settings)
        try:
            current = await redis.get(self.keys.fence(acct))
            await redis.set(self.keys.fence(acct), 1)
        finally:
            await redis.aclose()
        self._count("fence_counters_set_back")
        self._count("fence_steps_back", max(0, int(current or 1) - 1))
        await asyncio.sleep(window_s)

    async def _admin(self, method: str, path: str, body: object) -> None:
        async with self.session.request(method, self.settings.broker_url + path, json=body) as r:
            r.raise_for_status()
