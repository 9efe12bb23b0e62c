"""Two drills the fault schedule plays like faults (one at a time, never beside another fault):

- ``market_closed``: the simulator's clock moves to the next close (the stack runs with the
  saga's ``market_hours=enforce`` and the simulator in enforce mode), so orders accepted in the
  window wait QUEUED; after the window the clock moves to the next open and they go on. The
  drill counts the orders it saw QUEUED.
- ``trading_halt``: a resting order is placed, trading is HALTED with a reason, a new order must
  be refused with that reason while the resting one must still cancel; after the window trading
  is ACTIVE again. Orders the clients place in the window are refused likewise (counted by the
  workload under the halt's reason). What does not happen as it must is a finding (a violation).

The harness also opens the market before the run (``open_market``) and, while orders settle,
closes and reopens it to expire the day orders still resting (``next_day``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg

from core.risk import TradingState
from core.statuses import OrderStatus
from ordersaga.client import OrderClient
from ordersaga.risk import MirrorFailed
from workflows.models import OrderRequest

DRILL_KINDS = ("market_closed", "trading_halt")
# The windows' lengths: long enough for several of the clients' orders to arrive in each.
DRILL_WINDOWS = {"market_closed": 6.0, "trading_halt": 4.0}
HALT_REASON = "chaos drill"
HALTED_WORDS = "trading halted"  # the start of a halt's refusal (core/risk.py)


@dataclass
class DrillLog:
    counts: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    queued_keys: set[str] = field(default_factory=set)
    probe_keys: list[str] = field(default_factory=list)
    # The resting orders canceled while trading was halted: each must end CANCELED.
    canceled_in_halt: list[tuple[str, str]] = field(default_factory=list)


class Drills:
    def __init__(
        self,
        oc: OrderClient,
        pool: asyncpg.Pool,
        admin: Callable[[str, str, Any], Awaitable[dict[str, Any]]],
        seed: int,
        account: str,
        symbol: str,
        price: Decimal,
    ) -> None:
        self.oc = oc
        self.pool = pool
        self.admin = admin  # (method, path, body) -> the simulator's JSON answer
        self.seed = seed
        self.account = account
        self.symbol = symbol
        self.price = price
        self.log = DrillLog()
        self._halts = 0

    async def inject(self, kind: str, window_s: float) -> None:
        if kind == "market_closed":
            await self.market_closed(window_s)
        elif kind == "trading_halt":
            await self.trading_halt(window_s)
        else:
            raise ValueError(f"unknown drill {kind}")

    # ---------------------------------------------------------------- the market's clock

    async def open_market(self) -> None:
        """Move the simulator's clock to the next open unless the market is open now (a run
        must trade at any real hour, weekends included)."""
        clock = await self.admin("GET", "/admin/clock", None)
        if not clock["market_open"]:
            await self.admin("POST", "/admin/clock/advance", {"to": "next_open"})

    async def next_day(self) -> None:
        """To the next close (day orders resting at the broker expire) and on to the open."""
        await self.admin("POST", "/admin/clock/advance", {"to": "next_close"})
        await self.admin("POST", "/admin/clock/advance", {"to": "next_open"})

    async def market_closed(self, window_s: float) -> None:
        clock = await self.admin("POST", "/admin/clock/advance", {"to": "next_close"})
        if clock["market_open"]:
            raise RuntimeError(f"the market is open after the close: {clock}")
        try:
            deadline = time.monotonic() + window_s
            while time.monotonic() < deadline:
                await self._see_queued()
                await asyncio.sleep(0.3)
        finally:
            await self._retrying(lambda: self.open_market())
        self.log.counts["closed_windows"] += 1
        self.log.counts["queued_seen"] = len(self.log.queued_keys)

    async def _see_queued(self) -> None:
        try:
            rows = await self.pool.fetch(
                "SELECT account_id || '/' || order_id AS key FROM orders"
                " WHERE status = $1 AND account_id LIKE $2",
                OrderStatus.QUEUED.value,
                f"chaos{self.seed}-%",
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return
        self.log.queued_keys.update(r["key"] for r in rows)

    # ---------------------------------------------------------------- the trading state

    async def trading_halt(self, window_s: float) -> None:
        self._halts += 1
        n = self._halts
        resting = OrderRequest(
            account_id=self.account,
            order_id=f"halt{n:02d}-rest",
            symbol=self.symbol,
            side="buy",
            qty=Decimal(1),
            order_type="limit",
            limit_price=(self.price * Decimal("0.8")).quantize(Decimal("0.01")),
            time_in_force="gtc",
        )
        self.log.probe_keys.append(resting.key)
        rest = await self.oc.place_order(resting)
        reason = f"{HALT_REASON} {n}"
        await self._set_state(TradingState.HALTED, reason)
        started = time.monotonic()
        try:
            probe = resting.model_copy(
                update={
                    "order_id": f"halt{n:02d}-new",
                    "order_type": "market",
                    "limit_price": None,
                    "time_in_force": "day",
                }
            )
            self.log.probe_keys.append(probe.key)
            result = await self.oc.place_order(probe)
            said = result.reason or ""
            if result.accepted:
                self.log.findings.append(f"{probe.key} accepted while trading was halted")
            elif HALTED_WORDS not in said or reason not in said:
                self.log.findings.append(f"{probe.key} refused, not for the halt: {said!r}")
            else:
                self.log.counts["probes_refused_for_halt"] += 1
            if rest.accepted:
                canceled = await self.oc.cancel_order(resting.account_id, resting.order_id)
                if canceled.accepted:
                    self.log.canceled_in_halt.append((resting.account_id, resting.order_id))
                    self.log.counts["canceled_while_halted"] += 1
                else:
                    self.log.findings.append(
                        f"{resting.key}: cancel refused while halted ({canceled.detail})"
                    )
            await asyncio.sleep(max(0.0, window_s - (time.monotonic() - started)))
        finally:
            await self._retrying(lambda: self._set_state(TradingState.ACTIVE, "drill over"))
        self.log.counts["halts"] += 1

    async def _set_state(self, state: TradingState, reason: str) -> None:
        try:
            await self.oc.risk.set_trading_state(state, reason, by="chaos")
        except MirrorFailed:
            pass  # the state stands in Postgres, which is what orders follow

    async def check_cancels(self) -> None:
        """After the run: each order canceled while halted ended CANCELED."""
        for account_id, order_id in self.log.canceled_in_halt:
            state = await self.oc.get_order(account_id, order_id)
            if state.status != OrderStatus.CANCELED:
                self.log.findings.append(
                    f"{account_id}/{order_id}: canceled while halted, ended {state.status.value}"
                )

    async def _retrying(self, step: Callable[[], Awaitable[None]], attempts: int = 20) -> None:
        for attempt in range(attempts):
            try:
                await step()
                return
            except (OSError, aiohttp.ClientError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5)
