"""Deliberately broken variants, for the claims experiments only (never switches in the product).

- ``BlindLedger.reserve``: the hold a writer decided under the lock, written back without a
  version check or fencing token (lock alone).
- ``submit_with_fresh_id``: a broker submission that invents a new client_order_id on every
  attempt instead of sending the order's own id.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg

from core.broker_client import BrokerClient, BrokerOrder

_READ = "SELECT id, available, held FROM ledger_accounts WHERE owner = $1 AND asset = $2"
_BLIND_WRITE = "UPDATE ledger_accounts SET available = $2, held = $3 WHERE id = $1"


class BlindLedger:
    """Read, (pause), write: what a writer does when it trusts the lock alone."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def reserve(
        self,
        account_id: str,
        asset: str,
        amount: Decimal,
        pause: Callable[[], Awaitable[None]],
    ) -> None:
        row = await self._pool.fetchrow(_READ, account_id, asset)
        await pause()
        await self._pool.execute(
            _BLIND_WRITE, row["id"], row["available"] - amount, row["held"] + amount
        )


async def submit_with_fresh_id(
    client: BrokerClient, order_id: str, symbol: str, qty: Decimal
) -> BrokerOrder:
    """One attempt with a new client_order_id: a retry can no longer be recognised."""
    return await client.submit_order(
        symbol=symbol,
        qty=qty,
        side="buy",
        type="market",
        time_in_force="day",
        limit_price=None,
        client_order_id=f"{order_id}~{uuid.uuid4().hex[:8]}",
    )
