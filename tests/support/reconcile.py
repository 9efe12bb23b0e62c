"""What the reconciler's tests plant: a broker order as the listing shows it, an orders row."""

from __future__ import annotations

from decimal import Decimal as D

import asyncpg

from activities.reconcile import BrokerOrderView


def view(acct: str, oid: str, status: str, filled: str, *, terminal: bool) -> BrokerOrderView:
    """Broker order ``b-<oid>`` of order ``<acct>/<oid>``: a buy of 2 AAPL at 100."""
    return BrokerOrderView(
        id=f"b-{oid}",
        client_order_id=f"{acct}/{oid}",
        symbol="AAPL",
        side="buy",
        qty=D(2),
        status=status,
        filled_qty=D(filled),
        filled_notional=D(filled) * 100,
        terminal=terminal,
    )


async def row(
    pool: asyncpg.Pool, acct: str, oid: str, status: str, filled: str = "0",
    *, reason: str | None = None, broker: bool = True, age_s: int = 0,
) -> None:  # fmt: skip
    """The orders row of ``<acct>/<oid>`` (broker order ``b-<oid>`` unless ``broker`` is off),
    last updated ``age_s`` ago."""
    await pool.execute(
        "INSERT INTO orders (account_id, order_id, workflow_id, symbol, side, order_type,"
        " time_in_force, qty, params_hash, status, reason, broker_order_id, filled_qty, updated_at)"
        " VALUES ($1, $2, 'w', 'AAPL', 'buy', 'market', 'day', 2, 'h', $3, $4, $5, $6,"
        " now() - make_interval(secs => $7))",
        acct,
        oid,
        status,
        reason,
        f"b-{oid}" if broker else None,
        D(filled),
        age_s,
    )
