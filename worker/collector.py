"""The orders worker's gauges read from Postgres every ``metrics_interval_s``.

Outstanding holds, open orders by status (``NEEDS_ATTENTION`` is a parked order), stuck orders
(non-terminal longer than ``reconcile_stuck_after_s``, the reconciler's own rule) and late orders
whose fills sit in the firm error account. Reads only, as the application role; a failed read is
counted (``ordersaga_collector_errors_total``) and the gauges keep their last values. Every worker
of the orders queue reports the same figures: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

import asyncpg

from activities.reconcile import BREAK_KINDS
from core.statuses import TERMINAL_STATUS_NAMES, OrderStatus
from core.telemetry import ProcessMetrics

log = logging.getLogger(__name__)

OPEN_HOLDS = "SELECT asset, count(*) AS n FROM holds WHERE status = 'open' GROUP BY asset"
OPEN_ORDERS = (
    "SELECT status, count(*) AS n FROM orders WHERE status <> ALL($1::text[]) GROUP BY status"
)
STUCK_ORDERS = "SELECT count(*) FROM orders WHERE status <> ALL($1::text[]) AND updated_at < $2"
ERROR_FILLS = "SELECT count(*) FROM error_positions WHERE posted_qty > 0"
# The reconciler's open breaks (activities/reconcile.py records them), by kind; a late order is
# one of them until someone resolves it.
OPEN_BREAKS = (
    "SELECT kind, count(*) AS n FROM reconcile_breaks WHERE resolved_at IS NULL GROUP BY kind"
)
OPEN_STATUSES = tuple(s.value for s in OrderStatus if not s.terminal)


class Collector:
    def __init__(self, pool: asyncpg.Pool, metrics: ProcessMetrics, stuck_after_s: float) -> None:
        self._pool = pool
        self._metrics = metrics
        self._stuck_after = timedelta(seconds=stuck_after_s)
        self._assets: set[str] = set()
        metrics.collector_errors.add(0, {"source": "postgres"})

    async def collect(self) -> None:
        """One read of every gauge."""
        m = self._metrics
        async with self._pool.acquire() as conn:
            holds = {r["asset"]: r["n"] for r in await conn.fetch(OPEN_HOLDS)}
            orders = {
                r["status"]: r["n"] for r in await conn.fetch(OPEN_ORDERS, TERMINAL_STATUS_NAMES)
            }
            cutoff = datetime.now().astimezone() - self._stuck_after
            stuck = await conn.fetchval(STUCK_ORDERS, TERMINAL_STATUS_NAMES, cutoff)
            error_fills = await conn.fetchval(ERROR_FILLS)
            breaks = {r["kind"]: r["n"] for r in await conn.fetch(OPEN_BREAKS)}
        # An asset whose last hold closed goes to 0 rather than keeping its old count.
        self._assets |= set(holds)
        for asset in self._assets:
            m.holds_outstanding.set(holds.get(asset, 0), {"asset": asset})
        for status in {*OPEN_STATUSES, *orders}:
            m.orders_open.set(orders.get(status, 0), {"status": status})
        m.orders_stuck.set(int(stuck))
        m.error_account_fills.set(int(error_fills))
        for kind in BREAK_KINDS:
            m.breaks_open.set(breaks.get(kind, 0), {"kind": kind})
        m.late_orders.set(breaks.get("late_order", 0))

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.collect()
            except Exception as exc:  # Postgres down, a pool closed under it: keep collecting
                self._metrics.collector_errors.add(1, {"source": "postgres"})
                log.warning("gauges not read from Postgres: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
